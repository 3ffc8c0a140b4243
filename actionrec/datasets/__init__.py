"""Dataset readers: KTH-style video folders and HDF5 cube datasets, MNIST (IDX), CIFAR-10 (binary)."""
