"""The training loop: it learns, resumes exactly, writes checkpoints atomically, stops on NaN and early."""

from __future__ import annotations

import json
import math

import h5py
import numpy as np
import pytest

from actionrec.datasets.sources import ArraySource, iterate_batches
from actionrec.errors import ActionrecError
from actionrec.models.ji import JiGeometry, build_ji
from actionrec.training import Trainer, TrainingDiverged, balanced_class_weights

TINY = JiGeometry(frames=4, height=12, width=10, c2_kernel=(3, 3), s3=2, c4_kernel=(2, 1), s5=2, features=8,
                  temporal=2)


def pattern_data(n=48, classes=3, seed=0, noise=0.5):
    """Cubes whose class is a fixed random pattern under noise: learnable in a few epochs."""
    rng = np.random.default_rng(seed)
    patterns = np.random.default_rng(99).standard_normal((classes,) + TINY.input_shape)
    y = np.arange(n) % classes
    x = patterns[y] + noise * rng.standard_normal((n,) + TINY.input_shape)
    return ArraySource(x.astype(np.float32), y)


def make_trainer(tmp_path, optimizer="sgd", epochs=2, dropout=0.0, schedule=None, **kw):
    from actionrec.nn import SGD, Adam

    model = build_ji(TINY, 3, seed=5, dropout=dropout)
    opt = SGD(lr=0.02, momentum=0.9) if optimizer == "sgd" else Adam(lr=2e-3)
    kw.setdefault("checkpoint", tmp_path / "run.ckpt.h5")
    kw.setdefault("out", tmp_path / "run.h5")
    kw.setdefault("log_prefix", tmp_path / "run")
    return Trainer(model, opt, schedule, epochs=epochs, batch_size=8, seed=11, progress=False,
                   metadata={"model": "tiny", "classes": ["a", "b", "c"]}, **kw)


def weights(model):
    return {name: np.array(p, copy=True) for name, p, _ in model.named_parameters()}


def test_training_learns_the_patterns(tmp_path):
    trainer = make_trainer(tmp_path, epochs=6)
    history = trainer.fit(pattern_data(), pattern_data(seed=1))
    assert history["train_loss"][-1] < 0.5 * history["train_loss"][0]
    assert history["val_acc"][-1] >= 0.9
    assert history["epoch"] == [1, 2, 3, 4, 5, 6]


def test_logs_curves_and_best_model_are_written(tmp_path):
    from actionrec.nn import Sequential

    trainer = make_trainer(tmp_path, epochs=2)
    trainer.fit(pattern_data(), pattern_data(seed=1))
    rows = (tmp_path / "run.history.csv").read_text().strip().splitlines()
    assert rows[0].split(",")[:4] == ["epoch", "lr", "train_loss", "train_acc"] and len(rows) == 3
    doc = json.loads((tmp_path / "run.history.json").read_text())
    assert doc["best_epoch"] in (1, 2) and len(doc["history"]["val_loss"]) == 2
    assert (tmp_path / "run.curves.png").read_bytes()[:4] == b"\x89PNG"
    best = Sequential.load(str(tmp_path / "run.h5"))
    assert best.metadata["classes"] == ["a", "b", "c"]
    assert best.metadata["epoch"] == doc["best_epoch"]


@pytest.mark.parametrize("optimizer,dropout", [("sgd", 0.0), ("adam", 0.3)])
def test_resume_reproduces_an_uninterrupted_run(tmp_path, optimizer, dropout):
    train, val = pattern_data(), pattern_data(seed=1)
    straight = make_trainer(tmp_path / "a", optimizer, epochs=3, dropout=dropout)
    straight.fit(train, val)

    first = make_trainer(tmp_path / "b", optimizer, epochs=1, dropout=dropout)
    first.fit(train, val)
    resumed = make_trainer(tmp_path / "b", optimizer, epochs=3, dropout=dropout)
    resumed.fit(train, val, resume=True)

    wa, wb = weights(straight.model), weights(resumed.model)
    for name in wa:
        np.testing.assert_allclose(wb[name], wa[name], rtol=0, atol=1e-7, err_msg=name)
    assert resumed.history["train_loss"] == pytest.approx(straight.history["train_loss"], abs=1e-9)
    assert resumed.best_epoch == straight.best_epoch


def test_resume_refuses_a_checkpoint_of_another_model(tmp_path):
    make_trainer(tmp_path, epochs=1).fit(pattern_data())
    other = make_trainer(tmp_path, epochs=2)
    other.metadata["model"] = "another"
    with pytest.raises(ActionrecError, match="another"):
        other.fit(pattern_data(), resume=True)


def read_checkpoint_epoch(path):
    with h5py.File(path, "r") as f:
        from actionrec.nn.serialization import read_model, read_state

        read_model(f["model"])
        return int(read_state(f["training"])["epoch"])


def test_a_kill_while_writing_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    import actionrec.nn.serialization as serialization

    trainer = make_trainer(tmp_path, epochs=1)
    trainer.fit(pattern_data())
    assert read_checkpoint_epoch(tmp_path / "run.ckpt.h5") == 1
    before = (tmp_path / "run.ckpt.h5").read_bytes()

    real_write_state = serialization.write_state

    def killed_midway(group, state):
        real_write_state(group, {"epoch": state["epoch"]})  # part of the file is written...
        raise KeyboardInterrupt  # ...when the process is interrupted

    monkeypatch.setattr(serialization, "write_state", killed_midway)
    trainer.epochs = 2
    with pytest.raises(KeyboardInterrupt):
        trainer.fit(pattern_data())
    assert (tmp_path / "run.ckpt.h5").read_bytes() == before
    assert read_checkpoint_epoch(tmp_path / "run.ckpt.h5") == 1
    assert not [p.name for p in tmp_path.iterdir() if ".tmp" in p.name]


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(tmp_path):
    # Epoch 1 trains normally; epoch 2's learning rate blows the weights up to inf/NaN.
    trainer = make_trainer(tmp_path, epochs=3, schedule=lambda epoch: 0.02 if epoch == 0 else 1e38)
    with pytest.raises(TrainingDiverged) as err:
        trainer.fit(pattern_data())
    message = str(err.value)
    assert "epoch 2" in message and "learning rate" in message and "run.ckpt.h5" in message
    assert "\n" not in message
    assert read_checkpoint_epoch(tmp_path / "run.ckpt.h5") == 1


def test_early_stopping_on_validation_loss(tmp_path):
    # After the first epoch the learning rate is 0: the validation loss can no longer improve.
    trainer = make_trainer(tmp_path, epochs=10, patience=2, schedule=lambda epoch: 0.02 if epoch == 0 else 0.0)
    history = trainer.fit(pattern_data(), pattern_data(seed=1))
    assert history["epoch"] == [1, 2, 3]
    assert trainer.best_epoch == 1 and trainer.bad_epochs == 2


def test_balanced_class_weights_are_inverse_frequencies():
    w = balanced_class_weights(np.array([0, 0, 0, 1]), 2)
    np.testing.assert_allclose(w, [4 / (2 * 3), 4 / (2 * 1)])
    assert math.isclose(float((w[np.array([0, 0, 0, 1])]).sum()), 4.0)
    with pytest.raises(ActionrecError, match="no training samples"):
        balanced_class_weights(np.array([0, 0]), 2)


@pytest.mark.parametrize("prefetch", [False, True])
@pytest.mark.parametrize("batch_size", [1, 4, 7])
def test_iterate_batches_yields_every_position_in_order(prefetch, batch_size):
    source = ArraySource(np.arange(10, dtype=np.float32)[:, None], np.arange(10) % 2)
    order = np.random.default_rng(0).permutation(10)
    got = list(iterate_batches(source, order, batch_size, prefetch=prefetch))
    np.testing.assert_array_equal(np.concatenate([pos for pos, _, _ in got]), order)
    np.testing.assert_array_equal(np.concatenate([x[:, 0] for _, x, _ in got]), order.astype(np.float32))
    assert all(len(pos) <= batch_size for pos, _, _ in got)


def test_prefetch_reraises_reader_errors():
    class Broken(ArraySource):
        def batch(self, positions):
            if 5 in positions:
                raise ValueError("disk on fire")
            return super().batch(positions)

    source = Broken(np.zeros((10, 1), np.float32), np.zeros(10, int))
    with pytest.raises(ValueError, match="disk on fire"):
        list(iterate_batches(source, np.arange(10), 2, prefetch=True))


def test_bad_trainer_settings_are_clear_errors(tmp_path):
    with pytest.raises(ActionrecError, match="epochs"):
        make_trainer(tmp_path, epochs=0)
    with pytest.raises(ActionrecError, match="empty"):
        make_trainer(tmp_path).fit(ArraySource(np.zeros((0,) + TINY.input_shape, np.float32), np.zeros(0, int)))


@pytest.mark.parametrize("per_step", [False, True])
def test_schedule_is_applied_per_epoch_or_per_batch(tmp_path, per_step):
    from actionrec.nn.optim import CosineLR

    trainer = make_trainer(tmp_path, epochs=2, schedule=CosineLR(0.02, total_epochs=2), schedule_per_step=per_step)
    seen = []
    step = trainer.optimizer.step
    trainer.optimizer.step = lambda model: (seen.append(trainer.optimizer.lr), step(model))
    trainer.fit(pattern_data(n=48))  # 6 batches of 8 per epoch
    expected = [CosineLR(0.02, 2)(e + (s / 6 if per_step else 0)) for e in range(2) for s in range(6)]
    assert seen == pytest.approx(expected)
    assert trainer.history["lr"] == pytest.approx([0.02, 0.01])  # the log keeps each epoch's starting lr


def test_a_training_step_holds_blas_to_one_thread(tmp_path, monkeypatch):
    """The layers split their work over the cores themselves; the step holds numpy's BLAS to one
    thread throughout (forward, backward and the optimizer), and gives the setting back after."""
    from threadpoolctl import threadpool_info

    def numpy_blas_threads():
        return [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas" and "numpy" in i["filepath"]]

    before = numpy_blas_threads()
    trainer = make_trainer(tmp_path, epochs=1)
    seen = []
    for name in ("forward", "backward"):
        original = getattr(trainer.model, name)

        def spy(*args, _original=original, **kwargs):
            seen.append(numpy_blas_threads())
            return _original(*args, **kwargs)

        monkeypatch.setattr(trainer.model, name, spy)
    trainer.fit(pattern_data(n=16))
    assert seen and all(threads == [1] * len(before) for threads in seen)
    assert numpy_blas_threads() == before
