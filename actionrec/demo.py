"""``actionrec demo``: the whole pipeline offline on synthetic KTH-style clips, in a few minutes on 2 cores.

Steps: generate clips of 6 actions by 22 synthetic persons -> preprocess them into hardwired-channel
cubes (7 frames of 40x30) -> train ``ji-small`` (the Ji architecture at quarter KTH size; the paper's
``ji-kth`` needs 80x60 cubes and hours) on persons 1-16 with shifted/mirrored cubes, keep the epoch
best on persons 17-18 -> evaluate on the unseen persons 19-22 -> classify one of their clips.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

DEMO_MODEL = "ji-small"
FRAMES, SIZE = 7, (40, 30)  # cube geometry of ji-small: 7 frames, 40 wide x 30 high


def demo_settings(quick: bool) -> dict:
    """Persons per part, clip scenarios and training length (``quick``: seconds, for tests only).

    Sixteen training persons in short clips (many persons teach more than long clips of few), each cube
    randomly shifted by up to ``shift`` pixels and mirrored (grad-x and flow-x negated) in training: with
    five persons and no augmentation the net learned its training persons and scored near chance on
    unseen ones (docs/results.md).
    """
    if quick:
        return {"train": [1, 2], "validation": [3], "test": [4], "scenarios": [1], "seconds": 1.2, "epochs": 1,
                "shift": 2}
    return {"train": list(range(1, 17)), "validation": [17, 18], "test": [19, 20, 21, 22], "scenarios": [1, 2],
            "seconds": 1.6, "epochs": 16, "shift": 2}


def run_demo(directory="demo", epochs=None, seed: int = 0, quick: bool = False, device=None, stream=None) -> dict:
    """Run the demo in ``directory``; return {"accuracy", "video_accuracy", "chance", "seconds", paths...}."""
    from actionrec.augment import CubeAugment
    from actionrec.classify import classify_clip, format_result
    from actionrec.datasets.cubes import CubeDataset
    from actionrec.datasets.sources import CubeSource
    from actionrec.evaluation import evaluate_source, format_report, load_model_file
    from actionrec.nn import Adam
    from actionrec.plots import plot_confusion
    from actionrec.preprocess import preprocess_folder
    from actionrec.synth import make_synthetic_kth
    from actionrec.training import run_training

    out = stream if stream is not None else sys.stdout
    settings = demo_settings(quick)
    epochs = int(epochs or settings["epochs"])
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    clips_dir, data_path, model_path = root / "clips", root / "cubes.h5", root / f"{DEMO_MODEL}.h5"
    persons = settings["train"] + settings["validation"] + settings["test"]
    split = {k: settings[k] for k in ("train", "validation", "test")}
    t0 = time.perf_counter()

    def step(text):
        print(f"[{time.perf_counter() - t0:6.1f}s] {text}", file=out, flush=True)

    step(f"1/5 generating synthetic KTH-style clips for persons {persons} in {clips_dir}")
    clips = make_synthetic_kth(clips_dir, persons=persons, scenarios=settings["scenarios"],
                               seconds=settings["seconds"], seed=seed)
    step(f"    {len(clips)} clips")
    step(f"2/5 preprocessing into hardwired-channel cubes of {FRAMES} frames of {SIZE[0]}x{SIZE[1]}: {data_path}")
    if data_path.exists():
        data_path.unlink()  # the clips were just regenerated: never reuse cubes of older ones
    preprocess_folder(clips_dir, data_path, frames=FRAMES, size=SIZE, workers=2)
    augment = CubeAugment(shift=settings["shift"], flip=True)
    step(f"3/5 training {DEMO_MODEL} (the Ji et al. architecture at quarter KTH size, tanh, trainable "
         f"subsampling, per-channel kernels) for {epochs} epochs on persons {split['train']} (cubes randomly "
         f"shifted and mirrored), keeping the epoch best on the validation persons {split['validation']}")
    for stale in (model_path, model_path.with_name(model_path.stem + ".ckpt.h5")):
        stale.unlink(missing_ok=True)
    run_training(data_path, model_name=DEMO_MODEL, out=model_path, split="official", persons=split,
                 epochs=epochs, batch_size=16, optimizer=Adam(lr=1e-3), patience=0, seed=seed,
                 device=device, progress=True, stream=out, augment=augment)
    step(f"4/5 evaluating on the unseen persons {split['test']}")
    model = load_model_file(model_path)
    with CubeDataset(data_path) as ds:
        test_idx = ds.select("test", split="official", persons=split)
        report = evaluate_source(model, CubeSource(ds, test_idx), list(ds.classes))
        test_video = ds.videos[int(ds.cube_video[test_idx[0]])]
    print(format_report(report), end="", file=out)
    level = "video" if "video" in report else "cube"
    confusion_png = plot_confusion(report[level]["confusion_matrix"], report["classes"], root / "confusion.png",
                                   title=f"{DEMO_MODEL}, unseen persons ({level} level)")
    clip_path = Path(test_video["path"])
    if not clip_path.is_absolute() and not clip_path.exists():
        clip_path = clips_dir / clip_path
    step(f"5/5 classifying a held-out clip: {clip_path}")
    result = classify_clip(model, clip_path, model_path=model_path)
    print(format_result(result), file=out)
    print(f"    true action: {test_video['action']}", file=out)
    chance = 1.0 / len(report["classes"])
    seconds = time.perf_counter() - t0
    print(f"done in {seconds:.0f}s: cube accuracy {report['cube']['accuracy']:.3f}, video accuracy "
          f"{report.get('video', report['cube'])['accuracy']:.3f} on unseen persons (chance {chance:.3f})",
          file=out)
    print(f"artefacts in {root}: clips/, {data_path.name}, {model_path.name} (+ .ckpt.h5, .history.csv/.json, "
          f".curves.png), {confusion_png.name}", file=out)
    print(f"try: actionrec classify {model_path} {clip_path} --annotate {root / 'annotated.mp4'}", file=out)
    return {"accuracy": report["cube"]["accuracy"], "video_accuracy": report.get("video", report["cube"])["accuracy"],
            "chance": chance, "seconds": seconds, "model": model_path, "data": data_path, "clip": clip_path,
            "classified": result}
