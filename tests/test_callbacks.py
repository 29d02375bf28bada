"""Training callbacks and History (gpunet.train.callbacks, gpunet.train.history).

A fake trainer drives the hooks in the fit loop's order over scripted metric sequences;
its model's "weights" record the epoch they were set at, so restored weights name the
epoch they came from.
"""

import json
import math
import os
import warnings

import numpy as np
import pytest

from gpunet.train.callbacks import (
    Callback,
    CallbackList,
    EarlyStopping,
    LRSchedulerCallback,
    ModelCheckpoint,
    atomic_write,
)
from gpunet.train.history import History


class FakeModel:
    """state_dict(): {name: ndarray copy}; ``w`` holds the epoch it was last set at."""

    def __init__(self):
        self.params = {"w": np.full((2, 3), -1.0, dtype=np.float32), "b": np.zeros(3)}
        self.loaded = []

    def state_dict(self):
        return {k: v.copy() for k, v in self.params.items()}

    def load_state_dict(self, state):
        self.loaded.append(state)
        for k, v in state.items():
            self.params[k][...] = v

    @property
    def epoch_of_weights(self):
        return int(self.params["w"][0, 0])


class FakeOptimizer:
    def __init__(self, lr=0.1):
        self.param_groups = [{"lr": lr}]


class FakeTrainer:
    def __init__(self):
        self.model = FakeModel()
        self.optimizer = FakeOptimizer()
        self.stop_training = False


def run(callbacks, series, batches_per_epoch=0, trainer=None):
    """Drive ``callbacks`` like the fit loop: one epoch per entry of ``series`` (a list
    of logs dicts, or of floats meaning ``{"val_loss": x}``) until ``stop_training``.
    Before each epoch's end, the model's weights are set to the epoch index.
    Returns (trainer, number of epochs run)."""
    trainer = trainer or FakeTrainer()
    cbs = CallbackList(callbacks)
    cbs.set_trainer(trainer)
    cbs.on_train_begin({})
    epochs = 0
    iteration = 0
    for epoch, item in enumerate(series):
        logs = item if isinstance(item, dict) else {"val_loss": item}
        cbs.on_epoch_begin(epoch, {})
        for _ in range(batches_per_epoch):
            cbs.on_batch_end(iteration, {"loss": logs.get("loss", 1.0)})
            iteration += 1
        trainer.model.params["w"][...] = epoch
        cbs.on_epoch_end(epoch, dict(logs))
        epochs += 1
        if trainer.stop_training:
            break
    cbs.on_train_end({})
    return trainer, epochs


# ------------------------------------------------------------------- Callback plumbing


class Recorder(Callback):
    def __init__(self):
        super().__init__()
        self.calls = []

    def on_train_begin(self, logs=None):
        self.calls.append("train_begin")

    def on_epoch_begin(self, epoch, logs=None):
        self.calls.append(f"epoch_begin {epoch}")

    def on_batch_end(self, iteration, logs=None):
        self.calls.append(f"batch_end {iteration}")

    def on_epoch_end(self, epoch, logs=None):
        self.calls.append(f"epoch_end {epoch}")

    def on_train_end(self, logs=None):
        self.calls.append("train_end")


def test_callback_list_dispatches_in_order_and_sets_trainer():
    a, b = Recorder(), Recorder()
    trainer, _ = run([a, None, b], [1.0, 0.5], batches_per_epoch=1)
    assert a.trainer is trainer and b.model is trainer.model
    assert b.optimizer is trainer.optimizer
    assert a.calls == [
        "train_begin",
        "epoch_begin 0",
        "batch_end 0",
        "epoch_end 0",
        "epoch_begin 1",
        "batch_end 1",
        "epoch_end 1",
        "train_end",
    ]
    assert a.calls == b.calls
    base = Callback()  # all hooks are no-ops
    base.on_train_begin()
    base.on_epoch_end(0, {})
    base.on_batch_begin(0)
    base.on_train_end()
    cbs = CallbackList([a])
    cbs.set_trainer(trainer)
    cbs.append(base)
    assert base.trainer is trainer and len(cbs) == 2 and "Recorder" in repr(cbs)
    with pytest.raises(TypeError, match="Callback instances"):
        CallbackList([object()])


# ---------------------------------------------------------------------- EarlyStopping


def test_early_stopping_min_mode_patience():
    es = EarlyStopping(monitor="val_loss", patience=2)
    trainer, epochs = run([es], [1.0, 0.8, 0.9, 0.85, 0.7, 0.6])
    # best 0.8 at epoch 1; epochs 2 and 3 don't improve -> stop at the end of epoch 3
    assert epochs == 4 and trainer.stop_training
    assert es.stopped_epoch == 3 and es.best == 0.8 and es.best_epoch == 1 and es.wait == 2
    assert trainer.model.loaded == []  # no restore unless asked


def test_early_stopping_patience_zero_stops_at_first_non_improvement():
    es = EarlyStopping(patience=0)
    _, epochs = run([es], [1.0, 0.9, 0.9, 0.5])
    assert epochs == 3 and es.stopped_epoch == 2  # equal is no improvement


def test_early_stopping_never_stops_at_epoch_zero():
    # Keras stops only when epoch > 0. NaN never improves on the best, so with
    # patience 0 epoch 0 would stop but for that rule; epoch 1 stops.
    es = EarlyStopping(patience=0)
    trainer, epochs = run([es], [math.nan, math.nan])
    assert epochs == 2 and es.stopped_epoch == 1 and es.best == math.inf


def test_early_stopping_max_mode_and_auto_detection():
    logs = [{"val_accuracy": a, "val_loss": 1.0} for a in (0.5, 0.6, 0.55, 0.58, 0.7)]
    es = EarlyStopping(monitor="val_accuracy", patience=2)
    assert es.mode == "max"
    _, epochs = run([es], logs)
    assert epochs == 4 and es.best == 0.6 and es.best_epoch == 1 and es.stopped_epoch == 3
    assert EarlyStopping(monitor="acc").mode == "max"
    assert EarlyStopping(monitor="val_auc").mode == "max"
    assert EarlyStopping(monitor="loss").mode == "min"
    assert EarlyStopping(monitor="val_mae").mode == "min"
    # explicit mode wins over the name
    es = EarlyStopping(monitor="val_loss", mode="max", patience=0)
    _, epochs = run([es], [1.0, 2.0, 1.5])
    assert epochs == 3 and es.best == 2.0 and es.stopped_epoch == 2


def test_early_stopping_unknown_mode_warns_and_falls_back_to_auto():
    with pytest.warns(UserWarning, match="mode sideways is unknown"):
        es = EarlyStopping(monitor="val_accuracy", mode="sideways")
    assert es.mode == "max"


@pytest.mark.parametrize(
    ("mode", "series", "min_delta", "expected_best"),
    [
        ("min", [1.0, 0.95, 0.94], 0.1, 1.0),  # improvements smaller than min_delta
        ("min", [1.0, 0.85, 0.80], 0.1, 0.85),  # first step beats it, second doesn't
        ("min", [1.0, 0.95, 0.94], -0.1, 1.0),  # sign of min_delta is ignored
        ("max", [1.0, 1.05, 1.06], 0.1, 1.0),
        ("max", [1.0, 1.15, 1.2], 0.1, 1.15),
    ],
)
def test_early_stopping_min_delta(mode, series, min_delta, expected_best):
    es = EarlyStopping(monitor="m", mode=mode, min_delta=min_delta, patience=5)
    run([es], [{"m": x} for x in series])
    assert es.best == expected_best
    assert abs(es.min_delta) == abs(min_delta)
    assert (es.min_delta < 0) == (mode == "min")


def test_early_stopping_baseline_never_beaten_stops_after_patience():
    # improving, but never below the baseline 0.5: wait is never reset
    es = EarlyStopping(patience=3, baseline=0.5, restore_best_weights=True)
    trainer, epochs = run([es], [0.9, 0.8, 0.7, 0.75, 0.72, 0.6])
    assert epochs == 4 and es.stopped_epoch == 3 and trainer.stop_training
    assert es.wait == 4
    assert es.best == 0.7 and es.best_epoch == 2  # best still tracked
    assert trainer.model.epoch_of_weights == 2  # restored regardless of the baseline


def test_early_stopping_baseline_keras3_improving_epochs_never_stop():
    # Keras 3: an epoch that beats the best returns before the patience check, so a
    # steadily improving run that never reaches the baseline is not stopped...
    es = EarlyStopping(patience=1, baseline=0.1)
    trainer, epochs = run([es], [0.9, 0.8, 0.7, 0.6])
    assert epochs == 4 and not trainer.stop_training and es.wait == 4
    # ...but the first non-improving epoch after that stops it at once
    es = EarlyStopping(patience=1, baseline=0.1)
    _, epochs = run([es], [0.9, 0.8, 0.7, 0.6, 0.65, 0.5])
    assert epochs == 5 and es.stopped_epoch == 4


def test_early_stopping_baseline_beaten_resets_wait():
    es = EarlyStopping(patience=2, baseline=0.5)
    trainer, epochs = run([es], [0.9, 0.4, 0.45, 0.3, 0.35, 0.36, 0.37])
    # epoch 1 beats the baseline (wait -> 0); 3 beats best (wait -> 0); stop at 5
    assert epochs == 6 and es.stopped_epoch == 5 and es.best == 0.3 and es.best_epoch == 3


def test_early_stopping_restore_best_weights_after_early_stop():
    es = EarlyStopping(patience=1, restore_best_weights=True, verbose=0)
    trainer, epochs = run([es], [1.0, 0.5, 0.7, 0.9, 0.1])
    assert epochs == 3 and es.stopped_epoch == 2
    assert trainer.model.epoch_of_weights == 1 and es.best_epoch == 1
    assert len(trainer.model.loaded) == 1
    # the kept copy is detached from the live weights
    assert es.best_weights["w"][0, 0] == 1


def test_early_stopping_restore_best_weights_without_early_stop():
    es = EarlyStopping(patience=10, restore_best_weights=True)
    trainer, epochs = run([es], [1.0, 0.5, 0.7, 0.6])
    assert epochs == 4 and es.stopped_epoch == 0 and not trainer.stop_training
    assert trainer.model.epoch_of_weights == 1  # Keras restores at train end anyway


def test_early_stopping_restore_first_monitored_epoch_when_nothing_improves():
    es = EarlyStopping(patience=1, restore_best_weights=True, start_from_epoch=2)
    trainer, epochs = run([es], [0.1, 0.2, 5.0, 6.0, 7.0])
    assert epochs == 4 and es.stopped_epoch == 3
    assert trainer.model.epoch_of_weights == 2 and es.best_epoch == 2


def test_early_stopping_start_from_epoch_ignores_warmup():
    es = EarlyStopping(patience=0, start_from_epoch=3)
    _, epochs = run([es], [0.1, 0.5, 0.9, 1.0, 1.1, 1.2])
    # epochs 0-2 ignored (0.1 would otherwise be best); epoch 3 sets best, 4 stops
    assert epochs == 5 and es.stopped_epoch == 4 and es.best == 1.0 and es.best_epoch == 3


def test_early_stopping_missing_key_warns_and_does_nothing():
    es = EarlyStopping(monitor="val_loss", patience=0)
    with pytest.warns(UserWarning, match=r"`val_loss` which is not available.*loss,accuracy"):
        trainer, epochs = run([es], [{"loss": 1.0, "accuracy": 0.5}] * 3)
    assert epochs == 3 and not trainer.stop_training
    assert es.wait == 0 and es.best == math.inf


def test_early_stopping_is_reusable_and_prints_when_verbose(capsys):
    es = EarlyStopping(patience=0, verbose=1, restore_best_weights=True)
    run([es], [1.0, 2.0])
    out = capsys.readouterr().out
    assert "Epoch 2: early stopping" in out and "best epoch: 1." in out
    trainer, epochs = run([es], [3.0, 2.5, 2.0])  # a new fit forgets the old best
    assert epochs == 3 and es.best == 2.0 and es.stopped_epoch == 0
    assert "EarlyStopping(monitor='val_loss'" in repr(es)


def test_early_stopping_accepts_numpy_scalars():
    es = EarlyStopping(patience=0)
    _, epochs = run([es], [np.float32(1.0), np.array(0.5), np.float64(0.7)])
    assert epochs == 3 and es.best == 0.5 and isinstance(es.best, float)


# ---------------------------------------------------------------- LRSchedulerCallback


class StepLRFake:
    def __init__(self):
        self.calls = []

    def step(self, epoch=None):
        self.calls.append(epoch)


class ReduceLROnPlateau:
    """Named like torch's; step takes the metric."""

    def __init__(self):
        self.calls = []

    def step(self, metrics, epoch=None):
        self.calls.append(metrics)


class MetricScheduler:
    def __init__(self):
        self.calls = []

    def step(self, value):  # required first argument: a plateau-style scheduler
        self.calls.append(value)


def test_lr_scheduler_steps_every_epoch():
    sched = StepLRFake()
    cb = LRSchedulerCallback(sched)
    assert not cb.needs_metric
    run([cb], [1.0, 0.9, 0.8], batches_per_epoch=2)
    assert sched.calls == [None, None, None] and cb.steps == 3


def test_lr_scheduler_steps_every_batch():
    sched = StepLRFake()
    cb = LRSchedulerCallback(sched, interval="batch")
    run([cb], [1.0, 0.9], batches_per_epoch=3)
    assert len(sched.calls) == 6 and cb.steps == 6
    assert "interval='batch'" in repr(cb)


def test_lr_scheduler_plateau_gets_the_monitored_metric():
    sched = ReduceLROnPlateau()
    cb = LRSchedulerCallback(sched)
    assert cb.needs_metric and cb.monitor == "val_loss"
    run([cb], [{"loss": 2.0, "val_loss": 1.0}, {"loss": 1.5, "val_loss": np.float32(0.5)}])
    assert sched.calls == [1.0, 0.5] and isinstance(sched.calls[1], float)
    other = MetricScheduler()
    cb = LRSchedulerCallback(other, monitor="val_accuracy")
    assert cb.needs_metric
    run([cb], [{"val_accuracy": 0.7}])
    assert other.calls == [0.7]


def test_lr_scheduler_plateau_falls_back_to_loss_with_one_warning():
    sched = ReduceLROnPlateau()
    cb = LRSchedulerCallback(sched)
    with pytest.warns(UserWarning, match="'val_loss' is not in the logs.*on 'loss'") as rec:
        run([cb], [{"loss": 2.0}, {"loss": 1.0}])
    assert sched.calls == [2.0, 1.0]
    assert len([w for w in rec if "val_loss" in str(w.message)]) == 1


def test_lr_scheduler_explicit_missing_monitor_skips_step():
    sched = ReduceLROnPlateau()
    cb = LRSchedulerCallback(sched, monitor="val_accuracy")
    with pytest.warns(UserWarning, match="'val_accuracy' is not in the logs.*not stepped"):
        run([cb], [{"loss": 2.0}])
    assert sched.calls == [] and cb.steps == 0


def test_lr_scheduler_argument_errors():
    with pytest.raises(ValueError, match="interval must be 'epoch' or 'batch'"):
        LRSchedulerCallback(StepLRFake(), interval="step")
    with pytest.raises(TypeError, match="step"):
        LRSchedulerCallback(object())


# -------------------------------------------------------------------- ModelCheckpoint


def test_model_checkpoint_saves_every_epoch_loadable(tmp_path):
    from safetensors.numpy import load_file, safe_open

    path = tmp_path / "ckpt" / "w-{epoch:02d}-{val_loss:.2f}.safetensors"
    cb = ModelCheckpoint(path, save_weights_only=True)
    trainer, _ = run([cb], [0.5, 0.25])
    files = sorted(os.listdir(tmp_path / "ckpt"))
    assert files == ["w-01-0.50.safetensors", "w-02-0.25.safetensors"]  # no temp files left
    loaded = load_file(tmp_path / "ckpt" / files[0])
    assert set(loaded) == {"w", "b"} and loaded["w"].dtype == np.float32
    np.testing.assert_array_equal(loaded["w"], np.zeros((2, 3)))
    np.testing.assert_array_equal(load_file(cb.last_saved)["w"], np.ones((2, 3)))
    with safe_open(cb.last_saved, framework="numpy") as f:
        meta = f.metadata()
    assert meta["epoch"] == "2" and float(meta["val_loss"]) == 0.25
    trainer.model.load_state_dict(loaded)
    assert trainer.model.epoch_of_weights == 0


def test_model_checkpoint_save_best_only(tmp_path):
    from safetensors.numpy import load_file

    path = tmp_path / "best.safetensors"
    cb = ModelCheckpoint(
        str(path), monitor="val_accuracy", save_best_only=True, save_weights_only=True, verbose=1
    )
    assert cb.mode == "max"
    logs = [{"val_accuracy": a} for a in (0.5, 0.7, 0.6, 0.65)]
    run([cb], logs)
    assert cb.best == 0.7
    assert load_file(path)["w"][0, 0] == 1  # written at epoch 1, not overwritten later
    assert os.listdir(tmp_path) == ["best.safetensors"]
    with pytest.warns(UserWarning, match="val_accuracy available"):
        run([ModelCheckpoint(tmp_path / "x.safetensors", "val_accuracy", save_best_only=True)],
            [{"loss": 1.0}])  # fmt: skip
    assert not (tmp_path / "x.safetensors").exists()


def test_model_checkpoint_unknown_format_field(tmp_path):
    cb = ModelCheckpoint(tmp_path / "w-{val_f1}.safetensors", save_weights_only=True)
    with pytest.raises(KeyError, match="val_f1"):
        run([cb], [1.0])
    with pytest.raises(ValueError, match="val_f1.*will not have"):
        cb.check_config(("loss", "val_loss", "lr", "time"))
    cb.check_config(("loss", "val_f1"))  # a key the logs will hold is fine


def test_model_checkpoint_nan_is_never_best(tmp_path):
    path = tmp_path / "best.safetensors"
    cb = ModelCheckpoint(str(path), save_best_only=True, save_weights_only=True)
    with pytest.warns(UserWarning, match="never the best"):
        run([cb], [float("nan")])
    assert not path.exists()
    run([cb], [float("nan"), 0.5])
    assert cb.best == 0.5 and path.exists()


def test_atomic_write_leaves_target_untouched_on_failure(tmp_path):
    target = tmp_path / "file.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_write(target) as tmp:
        with open(tmp, "w") as f:
            f.write("half")
        raise RuntimeError("crash while writing")
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["file.txt"]
    with atomic_write(target) as tmp, open(tmp, "w") as f:
        f.write("new")
    assert target.read_text() == "new" and os.listdir(tmp_path) == ["file.txt"]


# --------------------------------------------------------------------------- History


def test_history_records_epochs_keys_and_iterations():
    h = History()
    logs = [
        {"loss": 1.0, "accuracy": 0.5, "lr": 0.1},
        {"loss": 0.5, "accuracy": 0.7, "val_loss": 0.6, "lr": np.float32(0.05)},
        {"loss": 0.25, "accuracy": 0.9, "lr": 0.025},
    ]
    run([h], logs, batches_per_epoch=4)
    assert h.epoch == [0, 1, 2] and len(h) == 3
    assert h.history["loss"] == [1.0, 0.5, 0.25]
    assert h["lr"][1] == pytest.approx(0.05) and isinstance(h["lr"][1], float)
    val = h.history["val_loss"]  # appears late, missing later: NaN-padded to align
    assert math.isnan(val[0]) and val[1] == 0.6 and math.isnan(val[2])
    assert h.iterations == 12 and h.iterations_per_epoch == 4
    assert "val_loss" in h and set(h.keys()) == {"loss", "accuracy", "lr", "val_loss"}
    text = repr(h)
    assert "epochs=3" in text and "iterations=12" in text and "loss=0.25" in text


def test_history_record_without_batch_hooks():
    h = History()
    h.record(0, {"loss": 1.0}, iterations=10)
    h.record(1, {"loss": 0.5}, iterations=10)
    assert h.iterations == 20 and h.iterations_per_epoch == 10
    d = h.to_dict()
    assert d == {
        "history": {"loss": [1.0, 0.5]},
        "epoch": [0, 1],
        "iterations": 20,
        "iterations_per_epoch": 10,
        "interrupted": False,
        "interrupted_at": None,
        "stop_reason": None,
    }
    d["history"]["loss"].append(9.0)  # a copy
    assert h.history["loss"] == [1.0, 0.5]


def test_history_json_round_trip_is_strict_and_atomic(tmp_path):
    h = History()
    run([h], [{"loss": 1.0, "val_loss": math.inf}, {"loss": 0.5}], batches_per_epoch=2)
    path = tmp_path / "out" / "history.json"
    h.to_json(path)
    assert os.listdir(path.parent) == ["history.json"]
    raw = path.read_text()
    assert "NaN" not in raw and "Infinity" not in raw
    data = json.loads(raw)
    assert data["history"]["val_loss"] == [None, None] and data["iterations"] == 4
    back = History.from_json(path)
    assert back.history["loss"] == [1.0, 0.5] and back.epoch == [0, 1]
    assert math.isnan(back.history["val_loss"][1]) and back.iterations_per_epoch == 2


def test_history_with_early_stopping_in_one_loop():
    h, es = History(), EarlyStopping(monitor="loss", patience=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no missing-key warnings
        run([h, es], [{"loss": x} for x in (1.0, 0.5, 0.6, 0.7, 0.1)], batches_per_epoch=1)
    assert h.history["loss"] == [1.0, 0.5, 0.6] and h.epoch == [0, 1, 2]
