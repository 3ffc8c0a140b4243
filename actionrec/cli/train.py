"""Sub-commands ``models``, ``train``, ``evaluate``, ``classify`` and ``demo``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from actionrec.cli.arguments import class_list, number_list
from actionrec.errors import ActionrecError

OPTIMIZERS = ("sgd", "adam", "rmsprop")
SCHEDULES = ("constant", "step", "cosine")


def register(subparsers):
    """Add this module's sub-commands to the ``actionrec`` parser."""
    p = subparsers.add_parser("models", help="list the architectures, or print one's layer table",
                              description="List the architectures with input shape and parameter count.")
    p.add_argument("--summary", metavar="NAME", help="print the layer table (name, output shape, params) of NAME")
    p.add_argument("--classes", type=int, default=None, help="number of output classes (default: 6 for video, "
                   "10 for image models)")
    _model_options(p)
    p.set_defaults(func=cmd_models)

    p = subparsers.add_parser("train", help="train a 3D CNN on an HDF5 cube dataset",
                              description="Train a model on DATA.h5 (from 'actionrec preprocess'). A checkpoint "
                              "is written after every epoch; rerunning the same command resumes it.")
    p.add_argument("data", metavar="DATA.h5")
    p.add_argument("--model", default="ji-kth", help="architecture (see 'actionrec models'; default ji-kth)")
    p.add_argument("--out", default=None, help="best model file (default models/<model>.h5); the checkpoint, "
                   "logs and curves are written next to it")
    _split_options(p, default_part=None)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--optimizer", choices=OPTIMIZERS, default="sgd",
                   help="sgd (with --momentum, paper-like; default) or adam / rmsprop")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default 0.01 for sgd, 0.001 otherwise)")
    p.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (default 0.9)")
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--schedule", choices=SCHEDULES, default="constant", help="learning-rate schedule")
    p.add_argument("--step-size", type=int, default=10, help="step schedule: epochs between decays")
    p.add_argument("--gamma", type=float, default=0.1, help="step schedule: decay factor")
    p.add_argument("--warmup", type=int, default=0, help="cosine schedule: warm-up epochs")
    p.add_argument("--patience", type=int, default=5,
                   help="early stopping: epochs without a lower validation loss (0: off; default 5)")
    p.add_argument("--balance", action="store_true",
                   help="weight the loss by inverse class frequency (every class counts the same)")
    p.add_argument("--classes", type=class_list, default=None, metavar="NAMES",
                   help="train on these classes only, e.g. walking,running (default: all of the dataset's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="cpu or gpu (default: $ACTIONREC_DEVICE or cpu)")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint (must exist)")
    p.add_argument("--restart", action="store_true", help="ignore an existing checkpoint and start again")
    p.add_argument("--no-prefetch", action="store_true", help="read batches in the main thread")
    p.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch lines")
    _model_options(p)
    p.set_defaults(func=cmd_train)

    p = subparsers.add_parser("evaluate", help="accuracy, per-class metrics and confusion matrix of a model",
                              description="Evaluate MODEL.h5 on a part of DATA.h5 at cube and video level "
                              "(video = mean of its cubes' probabilities).")
    p.add_argument("model", metavar="MODEL.h5")
    p.add_argument("data", metavar="DATA.h5")
    _split_options(p, default_part="test")
    p.add_argument("--top-k", type=int, nargs="+", default=[1, 3], help="top-k accuracies to report")
    p.add_argument("--json", nargs="?", const="-", metavar="PATH", help="write the report as JSON (to stdout "
                   "without PATH)")
    p.add_argument("--plot", metavar="PNG", help="save the video-level confusion matrix as a PNG")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default=None)
    p.set_defaults(func=cmd_evaluate)

    p = subparsers.add_parser("classify", help="recognise the action in video clips",
                              description="Classify each CLIP with the same preprocessing as the model's "
                              "training data, sliding cubes over it.")
    p.add_argument("model", metavar="MODEL.h5")
    p.add_argument("clips", metavar="CLIP", nargs="+")
    p.add_argument("--stride", type=int, default=None, help="frames between windows (default: the "
                   "preprocessing stride)")
    p.add_argument("--top-k", type=int, default=3)
    p.add_argument("--json", nargs="?", const="-", metavar="PATH", help="write results as JSON")
    p.add_argument("--annotate", metavar="OUT.mp4", help="write the clip with its running label (several "
                   "clips: OUT_<clip>.mp4 each)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default=None)
    p.set_defaults(func=cmd_classify)

    p = subparsers.add_parser("demo", help="offline end-to-end demo on synthetic clips (a few minutes)",
                              description="Generate synthetic KTH-style clips, preprocess, train, evaluate "
                              "person-independently and classify a held-out clip.")
    p.add_argument("--dir", default="demo", help="where the clips, dataset, model and plots go (default ./demo)")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default: the demo's setting)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="a tiny run (seconds; for tests, not meaningful)")
    p.add_argument("--device", default=None)
    p.set_defaults(func=cmd_demo)


def _split_options(p, default_part):
    if default_part is not None:
        p.add_argument("--split", default=default_part, choices=("train", "validation", "test", "all"),
                       help=f"which part to use (default {default_part})")
        p.add_argument("--scheme", choices=("official", "ji"), default=None,
                       help="person split (default: the one the model was trained with)")
    else:
        p.add_argument("--split", dest="scheme", choices=("official", "ji"), default="official",
                       help="person split: official (KTH: 8 train, 8 validation, 9 test persons) or ji (random "
                       "persons, as in the paper)")
    p.add_argument("--trial", type=int, default=None, help="trial number of the ji split")
    for part in ("train", "validation", "test"):
        p.add_argument(f"--{part}-persons", type=number_list, default=None, metavar="LIST",
                       help=f"explicit {part} persons, e.g. 11-14 or 1,19,20")


def _model_options(p):
    g = p.add_argument_group("model options (defaults are the paper's)")
    g.add_argument("--activation", choices=("tanh", "relu"), default="tanh")
    g.add_argument("--pooling", choices=("subsampling", "max"), default="subsampling",
                   help="trainable subsampling (paper) or max pooling")
    g.add_argument("--kernels", choices=("per-channel", "shared"), default="per-channel",
                   help="separate kernels per hardwired channel (paper) or one set shared by all")
    g.add_argument("--dropout", type=float, default=0.0, help="dropout before and after C6 (paper: 0)")


def model_options(args) -> dict:
    return {"activation": args.activation, "pooling": args.pooling, "kernels": args.kernels,
            "dropout": float(args.dropout)}


def persons_of(args):
    lists = {part: getattr(args, f"{part}_persons") for part in ("train", "validation", "test")}
    return {k: v for k, v in lists.items() if v} or None


# --- models ---------------------------------------------------------------------------------------
def cmd_models(args) -> int:
    from actionrec.models import MODELS, _load_all, build_model

    _load_all()
    if args.summary:
        if args.summary not in MODELS:
            raise ActionrecError(f"unknown model {args.summary!r}: choose one of {', '.join(sorted(MODELS))}")
        spec = MODELS[args.summary]
        classes = args.classes or (6 if spec.kind == "video" else 10)
        opts = model_options(args) if spec.kind == "video" else {}
        model = build_model(spec.name, classes, **opts)
        print(f"{spec.name}: {spec.description}")
        print(model.summary(tuple(spec.input_shape)))
        return 0
    rows = []
    for name in sorted(MODELS):
        spec = MODELS[name]
        classes = args.classes or (6 if spec.kind == "video" else 10)
        n = build_model(name, classes).num_parameters()
        rows.append((name, spec.kind, "x".join(map(str, spec.input_shape)), f"{n:,} ({classes} classes)",
                     spec.description))
    widths = [max(len(r[i]) for r in rows + [("model", "kind", "input (C,T,H,W | C,H,W)", "params", "")]) for i in range(4)]
    header = ("model", "kind", "input (C,T,H,W | C,H,W)", "params")
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)) + "  description")
    for r in rows:
        print("  ".join(v.ljust(w) for v, w in zip(r[:4], widths)) + "  " + r[4])
    return 0


# --- train ----------------------------------------------------------------------------------------
def make_optimizer_from_args(args):
    from actionrec.nn import SGD, Adam, RMSProp

    lr = args.lr if args.lr is not None else (0.01 if args.optimizer == "sgd" else 1e-3)
    if lr <= 0:
        raise ActionrecError(f"--lr must be positive, got {lr}")
    if args.optimizer == "sgd":
        return SGD(lr=lr, momentum=args.momentum, weight_decay=args.weight_decay)
    if args.optimizer == "adam":
        return Adam(lr=lr, weight_decay=args.weight_decay)
    return RMSProp(lr=lr, weight_decay=args.weight_decay)


def make_schedule_from_args(args, lr):
    from actionrec.nn import ConstantLR, CosineLR, StepLR

    if args.schedule == "step":
        return StepLR(lr, args.step_size, gamma=args.gamma)
    if args.schedule == "cosine":
        return CosineLR(lr, args.epochs, warmup_epochs=args.warmup)
    return ConstantLR(lr)


def cmd_train(args) -> int:
    from actionrec.training import run_training

    out = Path(args.out) if args.out else Path("models") / f"{args.model}.h5"
    optimizer = make_optimizer_from_args(args)
    result = run_training(
        args.data, model_name=args.model, out=out, model_options=model_options(args),
        split=args.scheme, trial=args.trial or 0, persons=persons_of(args), epochs=args.epochs,
        batch_size=args.batch_size, optimizer=optimizer,
        schedule=make_schedule_from_args(args, optimizer.lr), patience=args.patience, balance=args.balance,
        seed=args.seed, device=args.device, resume=args.resume, restart=args.restart,
        prefetch=not args.no_prefetch, progress=not args.quiet, classes=args.classes)
    print(f"best model (epoch {result['best_epoch']}): {out}")
    print(f"checkpoint: {result['checkpoint']}; log: {result['log_prefix']}.history.csv/.json, curves: "
          f"{result['log_prefix']}.curves.png")
    print(f"next: actionrec evaluate {out} {args.data}{_evaluation_part(args)}")
    return 0


def _evaluation_part(args) -> str:
    """'' when the split has test cubes (evaluate's default part), else ' --split validation' (a
    dataset without test persons, such as the KTH clips in ../shared/data)."""
    from actionrec.datasets.cubes import CubeDataset

    with CubeDataset(args.data) as ds:
        select = dict(split=args.scheme, trial=args.trial or 0, persons=persons_of(args), classes=args.classes)
        if len(ds.select("test", **select)):
            return ""
        return " --split validation" if len(ds.select("validation", **select)) else " --split train"


# --- evaluate -------------------------------------------------------------------------------------
def cmd_evaluate(args) -> int:
    from actionrec.backend import array_module_for, resolve_device
    from actionrec.datasets.cubes import CubeDataset
    from actionrec.datasets.sources import CubeSource
    from actionrec.evaluation import check_compatible, evaluate_source, format_report, load_model_file
    from actionrec.plots import plot_confusion

    model = load_model_file(args.model)
    xp = array_module_for(resolve_device(args.device))
    model.to(xp)
    saved = model.metadata.get("split") or {}
    scheme = args.scheme or saved.get("scheme", "official")
    trial = args.trial if args.trial is not None else int(saved.get("trial", 0) or 0)
    persons = persons_of(args) or saved.get("persons") or None
    with CubeDataset(args.data) as ds:
        subset = check_compatible(model, args.model, ds, args.data)
        classes = subset or list(model.metadata.get("classes") or ds.classes)
        indices = ds.select(args.split, split=scheme, trial=trial, persons=persons, classes=subset)
        report = evaluate_source(model, CubeSource(ds, indices, classes=subset), classes,
                                 top_k=tuple(args.top_k), batch_size=args.batch_size)
    report.update({"model": str(args.model), "data": str(args.data), "split": args.split, "scheme": scheme,
                   "trial": trial})
    if args.json:
        _write_json(report, args.json)
    if args.json != "-":
        print(f"{args.model} on {args.data} ({args.split} part, {scheme} split)")
        print(format_report(report), end="")
    if args.plot:
        level = "video" if "video" in report else "cube"
        plot_confusion(report[level]["confusion_matrix"], classes, args.plot,
                       title=f"{level}-level confusion ({args.split})")
        if args.json != "-":
            print(f"confusion matrix plot: {args.plot}")
    return 0


def _write_json(obj, target):
    from actionrec.training import _json_safe

    text = json.dumps(_json_safe(obj), indent=2)
    if target == "-":
        print(text)
    else:
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        Path(target).write_text(text + "\n", encoding="utf-8")


# --- classify -------------------------------------------------------------------------------------
def cmd_classify(args) -> int:
    from actionrec.backend import array_module_for, resolve_device
    from actionrec.classify import annotate_clip, classify_clip, format_result, model_preprocessing
    from actionrec.evaluation import load_model_file

    model = load_model_file(args.model)
    model_preprocessing(model, args.model)  # fail before touching any clip
    model.to(array_module_for(resolve_device(args.device)))
    results = []
    for clip in args.clips:
        result = classify_clip(model, clip, model_path=args.model, stride=args.stride,
                               batch_size=args.batch_size)
        results.append(result)
        if args.json != "-":
            print(format_result(result, args.top_k))
        if args.annotate:
            target = Path(args.annotate)
            if len(args.clips) > 1:
                target = target.with_name(f"{target.stem}_{Path(clip).stem}{target.suffix or '.mp4'}")
            annotate_clip(result, target)
            if args.json != "-":
                print(f"  annotated: {target}")
    if args.json:
        _write_json(results if len(results) > 1 else results[0], args.json)
    return 0


# --- demo -----------------------------------------------------------------------------------------
def cmd_demo(args) -> int:
    from actionrec.demo import run_demo

    run_demo(args.dir, epochs=args.epochs, seed=args.seed, quick=args.quick, device=args.device,
             stream=sys.stdout)
    return 0
