"""2D baseline models: shapes, parameter counts, a backward pass, and short runs that learn."""

import numpy as np
import pytest

for _module in ("actionrec.nn.conv", "actionrec.nn.pool", "actionrec.nn.layers", "actionrec.nn.normalization",
                "actionrec.nn.sequential", "actionrec.nn.losses", "actionrec.nn.optim"):
    pytest.importorskip(_module, reason="the nn layers are not on this branch yet (merge main)")

from actionrec.errors import ActionrecError  # noqa: E402
from actionrec.models import MODELS, build_model  # noqa: E402
from actionrec.models import baselines  # noqa: E402, F401  (registers the models)
from actionrec.nn.losses import SoftmaxCrossEntropy  # noqa: E402
from actionrec.nn.optim import Adam  # noqa: E402
from conftest import shared_path  # noqa: E402

# Hand-counted (weights + biases; BatchNorm gamma/beta, not its running statistics).
PARAMETERS = {
    ("lenet5", (1, 28, 28)): 156 + 2416 + (400 * 120 + 120) + (120 * 84 + 84) + (84 * 10 + 10),  # 61,706
    ("lenet5", (3, 32, 32)): 456 + 2416 + 48120 + 10164 + 850,
    ("numpycnn", (1, 28, 28)): 832 + (4608 * 128 + 128) + 1290,
    ("mnist-2conv", (1, 28, 28)): 832 + 51264 + (1024 * 256 + 256) + 2570,
    ("cifar-vgg", (3, 32, 32)): (864 + 9216 + 18432 + 36864 + 73728 + 147456)
    + 2 * (32 + 32 + 64 + 64 + 128 + 128) + (2048 * 10 + 10),
}


@pytest.mark.parametrize("name, shape", sorted(PARAMETERS))
def test_shapes_and_parameter_counts(name, shape):
    assert MODELS[name].kind == "image"
    model = build_model(name, 10, input_shape=shape, seed=0)
    assert model.num_parameters() == PARAMETERS[(name, shape)]
    logits = model.forward(np.random.default_rng(0).standard_normal((2,) + shape).astype(np.float32))
    assert logits.shape == (2, 10) and logits.dtype == np.float32
    assert "Total" in model.summary(shape) or "total" in model.summary(shape)


@pytest.mark.parametrize("name", ["lenet5", "numpycnn", "mnist-2conv", "cifar-vgg"])
def test_backward_fills_every_gradient(name):
    shape = MODELS[name].input_shape
    model = build_model(name, 4, seed=1)
    x = np.random.default_rng(2).standard_normal((3,) + shape).astype(np.float32)
    crit = SoftmaxCrossEntropy()
    crit.forward(model.forward(x, training=True), np.array([0, 1, 3]))
    model.backward(crit.backward())
    for qualified, param, grad in model.named_parameters():
        assert grad.shape == param.shape, qualified
        assert np.isfinite(grad).all() and np.abs(grad).sum() > 0, qualified


def test_seed_fixes_weights():
    a = [p.copy() for _, p, _ in build_model("lenet5", 10, seed=3).named_parameters()]
    b = [p for _, p, _ in build_model("lenet5", 10, seed=3).named_parameters()]
    c = [p for _, p, _ in build_model("lenet5", 10, seed=4).named_parameters()]
    assert all(np.array_equal(u, v) for u, v in zip(a, b))
    assert not all(np.array_equal(u, v) for u, v in zip(a, c))


def test_tanh_lenet_and_bad_options():
    model = build_model("lenet5", 10, activation="tanh", seed=0)
    assert any(type(layer).__name__ == "Tanh" for layer in model.layers)
    with pytest.raises(ActionrecError, match="unknown activation 'gelu'"):
        build_model("lenet5", 10, activation="gelu")
    with pytest.raises(ActionrecError, match="convs_per_stage"):
        build_model("cifar-vgg", 10, convs_per_stage=(2, 2))
    with pytest.raises(ActionrecError, match="input_shape must be"):
        build_model("numpycnn", 10, input_shape=(28, 28))


def _train(model, x, y, steps, batch, lr):
    opt = Adam(lr=lr)
    crit = SoftmaxCrossEntropy()
    rng = np.random.default_rng(0)
    for _ in range(steps):
        idx = rng.integers(0, len(x), batch)
        crit.forward(model.forward(x[idx], training=True), y[idx])
        model.backward(crit.backward())
        opt.step(model)
    return (model.predict(x).argmax(axis=1) == y).mean()


@pytest.mark.parametrize("name", ["lenet5"])
def test_learns_real_mnist_slice(name):
    from actionrec.datasets.images import ImageArraySource
    from actionrec.datasets.mnist import load_mnist

    data = load_mnist(shared_path("mnist"))
    train = ImageArraySource(*data["train"])
    x, y = train.batch(np.arange(256))
    model = build_model(name, 10, seed=0)
    before = (model.predict(x).argmax(axis=1) == y).mean()
    after = _train(model, x, y, steps=30, batch=32, lr=2e-3)
    assert before < 0.3 and after > 0.85


def test_cifar_vgg_fits_a_small_generated_set():
    # Four colour-coded classes: a net with working BatchNorm and convolutions separates them quickly.
    rng = np.random.default_rng(0)
    y = np.arange(40) % 4
    x = rng.standard_normal((40, 3, 16, 16)).astype(np.float32) * 0.5
    x[np.arange(40), y % 3] += np.where(y < 3, 1.5, -1.5)[:, None, None]
    model = build_model("cifar-vgg", 4, input_shape=(3, 16, 16), widths=(8, 16), seed=0)
    assert _train(model, x, y, steps=30, batch=20, lr=5e-3) > 0.9


def test_cifar_vgg_stage_counts():
    model = build_model("cifar-vgg", 10, widths=(32, 64, 128), convs_per_stage=(1, 2, 1), seed=0)
    assert sum(type(layer).__name__ == "Conv2D" for layer in model.layers) == 4
    assert model.forward(np.zeros((1, 3, 32, 32), np.float32)).shape == (1, 10)


def _learnable_mnist(folder, rng, n_train, n_test):
    """Generated IDX files where each class lights a different 7x7 block of the 28x28 frame."""
    from actionrec.datasets.mnist import write_idx

    for prefix, n in (("train", n_train), ("t10k", n_test)):
        y = np.arange(n) % 10
        x = rng.integers(0, 60, (n, 28, 28))
        for k in range(10):
            r, c = divmod(k, 4)
            x[y == k, 7 * r:7 * r + 7, 7 * c:7 * c + 7] += 150
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", x)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", y)


def test_baseline_command_trains_evaluates_and_resumes(tmp_path, rng, capsys):
    pytest.importorskip("actionrec.training", reason="the training loop is not on this branch yet (merge main)")
    from actionrec.cli import main

    _learnable_mnist(tmp_path, rng, 300, 100)
    out = tmp_path / "models" / "m.h5"
    argv = ["baseline", "mnist", "--data", str(tmp_path), "--model", "lenet5", "--epochs", "2",
            "--batch-size", "32", "--lr", "0.003", "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    accuracy = float(printed.split("test accuracy: ")[1].split()[0])
    assert accuracy > 0.9 and "training time:" in printed and "recall" in printed
    assert out.exists() and out.with_name("m.confusion.png").exists()
    # Same command again: the finished checkpoint is resumed, nothing is retrained.
    assert main(argv) == 0
    assert float(capsys.readouterr().out.split("test accuracy: ")[1].split()[0]) == accuracy


def test_baseline_command_on_cifar_format_with_augmentation(tmp_path, capsys):
    pytest.importorskip("actionrec.training", reason="the training loop is not on this branch yet (merge main)")
    from actionrec.cli import main
    from actionrec.datasets.cifar10 import write_batch

    rng = np.random.default_rng(0)
    for name, n in (("data_batch_1.bin", 200), ("test_batch.bin", 50)):
        y = np.arange(n) % 3  # the dominant colour channel is the class
        x = rng.integers(0, 80, (n, 3, 32, 32))
        x[np.arange(n), y] += 150
        write_batch(tmp_path / name, x, y)
    out = tmp_path / "c.h5"
    assert main(["baseline", "cifar10", "--data", str(tmp_path), "--model", "lenet5", "--epochs", "2",
                 "--batch-size", "20", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert float(printed.split("test accuracy: ")[1].split()[0]) > 0.9
    assert "airplane" in printed  # default class names without batches.meta.txt


def test_validation_hold_out_is_the_last_training_images(tmp_path, rng, capsys):
    from actionrec.cli import main
    from actionrec.cli.baseline import make_sources
    from actionrec.datasets.mnist import load_mnist

    _learnable_mnist(tmp_path, rng, 120, 30)
    data = load_mnist(tmp_path)
    train, held_out, test = make_sources(data, validation=20)
    assert (len(train), len(held_out), len(test)) == (100, 20, 30)
    np.testing.assert_array_equal(held_out.labels, data["train"][1][100:])
    assert held_out.mean == train.mean and test.std == train.std  # one normalisation, the training part's
    assert make_sources(data)[1] is None
    out = tmp_path / "v.h5"
    assert main(["baseline", "mnist", "--data", str(tmp_path), "--model", "lenet5", "--epochs", "1",
                 "--validation", "20", "--out", str(out)]) == 0
    assert "validation loss" in capsys.readouterr().err  # the per-epoch line reports the held-out images
    assert main(["baseline", "mnist", "--data", str(tmp_path), "--validation", "120"]) == 2
    assert "--validation 120: hold out between 0 and 119" in capsys.readouterr().err


def test_baseline_command_errors(tmp_path, capsys):
    from actionrec.cli import main

    (tmp_path / "data_batch_1").write_bytes(b"pickle")
    assert main(["baseline", "cifar10", "--data", str(tmp_path)]) == 2
    assert "download the binary version cifar-10-binary.tar.gz" in capsys.readouterr().err
    assert main(["baseline", "mnist"]) == 2
    assert "give --data DIR" in capsys.readouterr().err


def test_command_line_overrides_the_dataset_defaults():
    from actionrec.cli import build_parser
    from actionrec.cli.baseline import DEFAULTS, settings_for

    parse = build_parser().parse_args
    assert settings_for(parse(["baseline", "cifar10"])) == DEFAULTS["cifar10"]
    s = settings_for(parse(["baseline", "mnist", "--epochs", "6", "--crop-padding", "3", "--flip",
                            "--weight-decay", "1e-4"]))
    assert (s["epochs"], s["crop_padding"], s["flip"], s["weight_decay"]) == (6, 3, True, 1e-4)
    assert settings_for(parse(["baseline", "cifar10", "--no-flip"]))["flip"] is False
