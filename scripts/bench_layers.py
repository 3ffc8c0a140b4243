#!/usr/bin/env python
"""Benchmark actionrec's layers and training steps, optionally against torch in the same process.

For each workload it times forward+backward (layers) or a whole SGD training step (nets) and prints
samples/s, effective GFLOP/s (nominal multiply-adds x 2 of forward, weight gradient and, where needed,
input gradient), peak traced memory of our step, and, with ``--vs-torch``, the same for torch forms of
the *same* network (built by translating our layers, weights copied) and the ratio ours / best torch.

Torch forms of the Ji nets: ``conv3d`` (one nn.Conv3d per hardwired channel) and ``stacked2d`` (each
group of kt consecutive frames stacked as input channels of an nn.Conv2d: torch's fastest form here).
2D nets run torch in ``channels_last`` (its fastest CPU layout here) and default layout.

    python scripts/bench_layers.py --vs-torch                 # full table, batch 32 and 128
    python scripts/bench_layers.py --only ji-kth --batch 32   # one workload
    python scripts/bench_layers.py --device gpu --vs-torch    # CuPy vs torch+cuDNN

The first line names the processor and the kernels numpy's OpenBLAS runs. Where the environment pins
them (``OPENBLAS_CORETYPE``, set on some machines for older OpenBLAS builds), unset it for the
benchmark alone to measure what a current numpy does there:
``env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python scripts/bench_layers.py --vs-torch``.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from actionrec.backend import array_module_for, to_numpy  # noqa: E402
from actionrec.errors import ActionrecError  # noqa: E402
from actionrec.models import MODELS, build_model  # noqa: E402
from actionrec.nn.allocator import keep_freed_memory  # noqa: E402
from actionrec.nn.layout import empty_in_layout, lies_channels_last  # noqa: E402
from actionrec.nn.losses import SoftmaxCrossEntropy  # noqa: E402
from actionrec.nn.parallel import one_blas_thread  # noqa: E402
from actionrec.nn.optim import SGD  # noqa: E402

NETS = {  # workload -> (model name, classes)
    "ji-kth": ("ji-kth", 6),
    "ji-trecvid": ("ji-trecvid", 3),
    "mnist": ("mnist-2conv", 10),
    "cifar10": ("cifar-vgg", 10),
}


# ----------------------------------------------------------------------------------------------
# the machine line
def cpu_name():
    """The processor's model name (``platform.processor()`` often says only ``x86_64``)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def blas_description():
    """numpy's BLAS and the kernels it chose; notes an ``OPENBLAS_CORETYPE`` that pins them.

    Some machines set ``OPENBLAS_CORETYPE`` (and ``OPENBLAS_L2_SIZE``) for older OpenBLAS builds; on an
    AVX-512 processor pinned to ``Haswell`` numpy's GEMMs run at about half speed, so a table
    must say which kernels it ran on.
    """
    try:
        from threadpoolctl import threadpool_info  # noqa: PLC0415  (comes with scikit-learn)
        blas = [i for i in threadpool_info() if i.get("user_api") == "blas"]
    except Exception:  # noqa: BLE001  (a description only; never stop a benchmark for it)
        blas = []
    text = (f"{blas[0].get('internal_api')} {blas[0].get('version')} "
            f"({blas[0].get('architecture') or '?'} kernels)") if blas else "BLAS unknown"
    pinned = os.environ.get("OPENBLAS_CORETYPE")
    return text + (f", OPENBLAS_CORETYPE={pinned} set" if pinned else "")


# ----------------------------------------------------------------------------------------------
# FLOP counting
def layer_shapes(model, input_shape):
    """[(layer, input shape, output shape, input channels-last, output channels-last)] for a batch-1
    forward on zeros (the memory layouts are those the layers pass each other in a step)."""
    xp = model.layers[0].xp
    x = xp.zeros((1,) + tuple(input_shape), dtype=np.float32)
    out = []
    for layer in model.layers:
        y = layer.forward(x, training=False)
        out.append((layer, x.shape, y.shape, lies_channels_last(x), lies_channels_last(y)))
        x = y
    return out


def random_in_layout(xp, rng, shape, last: bool):
    """A standard-normal float32 array of ``shape``, channels-last in memory when ``last``."""
    a = empty_in_layout(xp, tuple(shape), np.float32, last)
    a[...] = xp.asarray(rng.standard_normal(tuple(shape)).astype(np.float32))
    return a


def train_flops_per_sample(model, input_shape) -> float:
    """2 x multiply-adds of forward + weight gradient + input gradient (skipped where input_grad=False)."""
    total = 0.0
    for layer, _, y_shape, _, _ in layer_shapes(model, input_shape):
        w = layer.params.get("W")
        if w is None or w.ndim < 2:
            continue  # element-wise layers, subsampling, batch norm: negligible
        if type(layer).__name__ == "Dense":
            macs = w.shape[0] * w.shape[1]
        else:  # convolutions: each output element costs (C/groups) x kernel volume
            per_out = int(np.prod(w.shape[-4:] if type(layer).__name__ == "SegmentConv3D" else w.shape[1:]))
            macs = int(np.prod(y_shape[1:])) * per_out
        passes = 3 if getattr(layer, "input_grad", True) else 2
        total += 2.0 * macs * passes
    return total


# ----------------------------------------------------------------------------------------------
# Timing
def time_steps(step, sync, min_steps=3, min_seconds=2.0, warmup=1):
    """Mean seconds per call of ``step`` over at least ``min_steps`` calls and ``min_seconds``."""
    for _ in range(warmup):
        step()
    sync()
    n, start = 0, time.perf_counter()
    while n < min_steps or time.perf_counter() - start < min_seconds:
        step()
        n += 1
    sync()
    return (time.perf_counter() - start) / n


def time_interleaved(steps: dict, sync, rounds=3, min_seconds=2.0):
    """{name: best mean seconds per step} over ``rounds`` rounds that take every step in turn.

    Interleaving and keeping each one's best round makes the ratios robust on a machine whose load
    changes while the benchmark runs (a slow spell hits every implementation, not just one).
    """
    best = {}
    for r in range(rounds):
        for name, step in steps.items():
            sec = time_steps(step, sync, min_seconds=min_seconds / rounds, warmup=1 if r == 0 else 0)
            best[name] = min(best.get(name, sec), sec)
    return best


def our_step_fn(model, xp, batch, input_shape, classes, seed=0):
    rng = np.random.default_rng(seed)
    x = xp.asarray(rng.standard_normal((batch,) + tuple(input_shape)).astype(np.float32))
    y = xp.asarray(rng.integers(0, classes, batch))
    crit = SoftmaxCrossEntropy()
    opt = SGD(lr=1e-4, momentum=0.9)

    def step():
        with one_blas_thread(xp):  # as Trainer's training step holds BLAS to one thread
            logits = model.forward(x, training=True)
            crit.forward(logits, y)
            model.backward(crit.backward())
            opt.step(model)

    return step


CONV_TYPES = ("Conv2D", "Conv3D", "SegmentConv3D")


def layer_rows(model, spec, xp, batch, torch, tdev, sync, seconds, rounds):
    """(name, ours s, best torch s, flops) for forward+backward of each convolution layer."""
    rows = []
    rng = np.random.default_rng(0)
    for index, (layer, in_shape, out_shape, x_last, y_last) in enumerate(layer_shapes(model, spec.input_shape)):
        if type(layer).__name__ not in CONV_TYPES:
            continue
        # x and dy laid out as the layer gets them in a step (a 2D layer after the first gets
        # channels-last input and output gradient): each layout takes its own path in the cores
        x = random_in_layout(xp, rng, (batch,) + tuple(in_shape[1:]), x_last)
        dy = random_in_layout(xp, rng, (batch,) + tuple(out_shape[1:]), y_last)

        def step(layer=layer, x=x, dy=dy):
            layer.forward(x, training=True)
            layer.backward(dy)

        steps = {"ours": step}
        if torch is not None:
            forms = ["conv3d", "stacked2d"] if spec.kind == "video" else ["default", "channels_last"]
            for form in forms:
                tl = torch_model([layer], form, torch, tdev)
                # torch's forms get their own layouts, as before: C order, channels_last below
                tx = torch.as_tensor(np.ascontiguousarray(to_numpy(x)), device=tdev)
                tdy = torch.as_tensor(np.ascontiguousarray(to_numpy(dy)), device=tdev)
                if form == "channels_last":
                    tl = tl.to(memory_format=torch.channels_last)
                    tx = tx.contiguous(memory_format=torch.channels_last)
                tx.requires_grad_(getattr(layer, "input_grad", True))

                def tstep(tl=tl, tx=tx, tdy=tdy):
                    tl(tx).backward(tdy)

                steps[form] = tstep
        times = time_interleaved(steps, sync, rounds=rounds, min_seconds=seconds)
        ours = times.pop("ours")
        best = min(times.values()) if times else None
        flops = train_flops_per_sample(_Single(layer), in_shape[1:])
        rows.append((f"{index}:{layer.name}", ours, best, flops))
    return rows


class _Single:
    """Adapter so ``train_flops_per_sample`` can count one layer."""

    def __init__(self, layer):
        self.layers = [layer]


def peak_memory_mib(step) -> float:
    """Peak numpy memory traced during one step (numpy reports its buffers to tracemalloc)."""
    gc.collect()
    tracemalloc.start()
    step()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak / 2**20


# ----------------------------------------------------------------------------------------------
# torch forms of our networks (weights copied, so the maths is the same)
def torch_model(model, form, torch, device):
    """nn.Sequential equivalent of our ``model`` (a Sequential or a list of layers), weights copied."""
    nn, F = torch.nn, torch.nn.functional
    layers = model if isinstance(model, (list, tuple)) else model.layers

    def tensor(a):
        return torch.as_tensor(np.ascontiguousarray(to_numpy(a)), device=device)

    class SegmentConv(nn.Module):
        def __init__(self, layer):
            super().__init__()
            w, b = to_numpy(layer.params["W"]), to_numpy(layer.params["b"])
            self.segments, self.groups, self.kt = tuple(layer.segments), layer.groups, w.shape[-3]
            if w.ndim == 5:  # shared kernels
                w, b = np.stack([w] * len(self.segments)), np.stack([b] * len(self.segments))
            self.w = nn.ParameterList([nn.Parameter(tensor(ws)) for ws in w])
            self.b = nn.ParameterList([nn.Parameter(tensor(bs)) for bs in b])
            self.input_grad = getattr(layer, "input_grad", True)

        def forward(self, x):
            outs = []
            for seg, w, b in zip(torch.split(x, self.segments, dim=2), self.w, self.b):
                if form == "conv3d":
                    outs.append(F.conv3d(seg, w, b, groups=self.groups))
                else:  # stacked2d: windows of kt frames become input channels of a 2D conv
                    n, c, t, h, wd = seg.shape
                    t_out = t - self.kt + 1
                    win = seg.unfold(2, self.kt, 1)  # (N, C, T', H, W, kt)
                    win = win.permute(0, 2, 1, 5, 3, 4).reshape(n * t_out, c * self.kt, h, wd)
                    o = w.shape[0]
                    y = F.conv2d(win, w.reshape(o, -1, w.shape[-2], w.shape[-1]), b, groups=self.groups)
                    outs.append(y.reshape(n, t_out, o, y.shape[-2], y.shape[-1]).permute(0, 2, 1, 3, 4))
            return torch.cat(outs, dim=2)

    class Subsampling(nn.Module):
        def __init__(self, layer):
            super().__init__()
            self.k = tuple(layer.kernel_size) if hasattr(layer, "kernel_size") else layer.config()["kernel_size"]
            if isinstance(self.k, int):
                self.k = (self.k, self.k)
            self.w = nn.Parameter(tensor(layer.params["W"]))
            self.b = nn.Parameter(tensor(layer.params["b"]))

        def forward(self, x):
            lead = x.shape[:-2]
            y = F.avg_pool2d(x.reshape(x.shape[0], -1, *x.shape[-2:]), self.k) * (self.k[0] * self.k[1])
            y = y.reshape(*lead, *y.shape[-2:])
            return y * self.w[..., None, None] + self.b[..., None, None]

    mods = []
    for layer in layers:
        kind, cfg = type(layer).__name__, layer.config()
        if kind == "SegmentConv3D":
            mods.append(SegmentConv(layer))
        elif kind in ("Conv2D", "Conv3D"):
            w = to_numpy(layer.params["W"])
            conv = (nn.Conv2d if kind == "Conv2D" else nn.Conv3d)(
                w.shape[1] * cfg.get("groups", 1), w.shape[0], w.shape[2:], stride=cfg.get("stride", 1),
                padding=cfg.get("padding", 0), groups=cfg.get("groups", 1), bias="b" in layer.params)
            conv.weight.data = tensor(w)
            if "b" in layer.params:
                conv.bias.data = tensor(layer.params["b"])
            mods.append(conv)
        elif kind == "Subsampling":
            mods.append(Subsampling(layer))
        elif kind == "Dense":
            w = to_numpy(layer.params["W"])
            lin = nn.Linear(w.shape[1], w.shape[0], bias="b" in layer.params)
            lin.weight.data = tensor(w)
            if "b" in layer.params:
                b = to_numpy(layer.params["b"])
                lin.bias.data = tensor(b.sum(axis=1) if b.ndim == 2 else b)
            mods.append(lin)
        elif kind in ("MaxPool2D", "MaxPool3D", "AvgPool2D", "AvgPool3D"):
            cls = {"MaxPool2D": nn.MaxPool2d, "MaxPool3D": nn.MaxPool3d,
                   "AvgPool2D": nn.AvgPool2d, "AvgPool3D": nn.AvgPool3d}[kind]
            mods.append(cls(cfg["kernel_size"], cfg.get("stride") or cfg["kernel_size"]))
        elif kind == "BatchNorm":
            c = layer.params["W"].shape[0]
            mods.append(_TorchBatchNorm(c, torch))
        elif kind == "Tanh":
            mods.append(nn.Tanh())
        elif kind == "ReLU":
            mods.append(nn.ReLU())
        elif kind == "Flatten":
            mods.append(nn.Flatten())
        elif kind == "Dropout":
            mods.append(nn.Dropout(cfg.get("p", 0.5)))
        else:
            raise SystemExit(f"bench: no torch translation for layer type {kind}")
    return nn.Sequential(*mods).to(device)


def _TorchBatchNorm(c, torch):
    class BN(torch.nn.Module):  # any rank: normalise over all axes but 1, as ours
        def __init__(self):
            super().__init__()
            self.bn = torch.nn.BatchNorm1d(c)

        def forward(self, x):
            if x.dim() == 4:
                return torch.nn.functional.batch_norm(x, self.bn.running_mean, self.bn.running_var,
                                                      self.bn.weight, self.bn.bias, self.training)
            return self.bn(x)

    return BN()


def torch_step_fn(tmodel, torch, device, batch, input_shape, classes, channels_last=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((batch,) + tuple(input_shape), generator=g).to(device)
    y = torch.randint(0, classes, (batch,), generator=g).to(device)
    if channels_last:
        tmodel = tmodel.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.SGD(tmodel.parameters(), lr=1e-4, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss()
    tmodel.train()

    def step():
        opt.zero_grad(set_to_none=True)
        loss_fn(tmodel(x), y).backward()
        opt.step()

    return step


# ----------------------------------------------------------------------------------------------
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vs-torch", action="store_true", help="also time torch forms of the same nets")
    ap.add_argument("--device", default="cpu", choices=["cpu", "gpu"])
    ap.add_argument("--batch", type=int, nargs="+", default=[32, 128])
    ap.add_argument("--only", nargs="+", choices=sorted(NETS), help="workloads to run (default: all)")
    ap.add_argument("--seconds", type=float, default=3.0, help="minimum timed seconds per row (all rounds)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds; each row keeps its best")
    ap.add_argument("--layers", action="store_true", help="also time each convolution layer alone")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="torch intra-op threads")
    ap.add_argument("--malloc-default", action="store_true",
                    help="leave glibc's malloc as it is (by default freed memory is kept, as in training)")
    args = ap.parse_args(argv)

    xp = array_module_for(args.device)
    torch = None
    if args.vs_torch:
        try:
            import torch  # noqa: PLC0415
        except ImportError:
            raise SystemExit("bench: --vs-torch needs torch (pip install -e '.[bench]')") from None
        torch.set_num_threads(args.threads)
    tdev = "cuda" if args.device == "gpu" else "cpu"

    if args.device == "gpu":
        def sync():
            xp.cuda.Device().synchronize()
            if torch is not None and torch.cuda.is_available():
                torch.cuda.synchronize()
    else:
        def sync():
            return None

    kept = False if args.malloc_default else keep_freed_memory()  # as Trainer.fit does, for both
    print(f"# machine: {cpu_name()}, {os.cpu_count()} cores, "
          f"python {platform.python_version()}, numpy {np.__version__} with {blas_description()}"
          + (f", torch {torch.__version__} ({args.threads} threads)" if torch else "")
          + f"; device {args.device}; malloc keeps freed memory: {'yes' if kept else 'no'}")
    header = f"{'workload':<12} {'impl':<22} {'batch':>5} {'samples/s':>10} {'GFLOP/s':>8} {'ms/step':>9} {'peak MiB':>9} {'x best torch':>15}"
    print(header)
    print("-" * len(header))
    for work in args.only or list(NETS):
        model_name, classes = NETS[work]
        try:
            build_model(model_name, classes)  # registers models; fails early with a clear error
        except ActionrecError as exc:
            print(f"# {work}: skipped ({exc})", flush=True)
            continue
        spec = MODELS[model_name]
        model = build_model(model_name, classes)  # default seed: the same weights every run
        flops = train_flops_per_sample(model, spec.input_shape)
        model.to(xp)
        for batch in args.batch:
            ours_name = "actionrec (" + ("numpy" if args.device == "cpu" else "cupy") + ")"
            steps = {ours_name: our_step_fn(model, xp, batch, spec.input_shape, classes)}
            if torch is not None:
                forms = ["conv3d", "stacked2d"] if spec.kind == "video" else ["default", "channels_last"]
                for form in forms:
                    tmodel = torch_model(model, form, torch, tdev)
                    steps[f"torch {form}"] = torch_step_fn(tmodel, torch, tdev, batch, spec.input_shape, classes,
                                                           channels_last=(form == "channels_last"))
            times = time_interleaved(steps, sync, rounds=args.rounds, min_seconds=args.seconds)
            peak = peak_memory_mib(steps[ours_name]) if args.device == "cpu" else float("nan")
            rows = [(name, sec, peak if name == ours_name else float("nan")) for name, sec in times.items()]
            torch_times = [sec for name, sec in times.items() if name != ours_name]
            best_torch = min(torch_times) if torch_times else None
            for impl, s, peak_mib in rows:
                ratio = f"{best_torch / s:.2f}x" if (best_torch and impl.startswith("actionrec")) else ""
                peak_text = "-" if np.isnan(peak_mib) else f"{peak_mib:.0f}"
                print(f"{work:<12} {impl:<22} {batch:>5} {batch / s:>10.1f} {flops * batch / s / 1e9:>8.1f} "
                      f"{s * 1e3:>9.1f} {peak_text:>9} {ratio:>15}", flush=True)
            del steps
            gc.collect()
            if args.layers:
                for name, ours, best, lflops in layer_rows(model, spec, xp, batch, torch, tdev, sync,
                                                           args.seconds / 2, args.rounds):
                    ratio = f"{best / ours:.2f}x" if best else ""
                    print(f"{'  layer ' + name.split(':')[0]:<12} {name.split(':')[1] + ' fwd+bwd':<22} "
                          f"{batch:>5} {batch / ours:>10.1f} "
                          f"{lflops * batch / ours / 1e9:>8.1f} {ours * 1e3:>9.1f} {'':>9} {ratio:>15}", flush=True)


if __name__ == "__main__":
    main()
