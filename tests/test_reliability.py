"""Failure paths of training: non-finite losses, Ctrl-C, full checkpoints and exact
resume, validated state, file errors (issue 20)."""

from __future__ import annotations

import copy
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

import gpunet
from gpunet import nn, optim
from gpunet.io import load_weights, save_weights
from gpunet.optim import lr_scheduler
from gpunet.train import Callback, EarlyStopping, ModelCheckpoint, Trainer
from gpunet.train.callbacks import atomic_write
from gpunet.train.checkpoint import load_checkpoint
from gpunet.train.guard import NonFiniteError

ENGINES = ["autograd", "fused"]


def make_model(dtype=np.float64, seed=0, hidden=16, n_in=6, n_out=3):
    gpunet.manual_seed(seed)
    return nn.Sequential(
        nn.Dense(n_in, hidden, "relu", dtype=dtype),
        nn.Dense(hidden, n_out, "linear", dtype=dtype),
    )


def make_data(n=90, n_in=6, n_out=3, dtype=np.float64, seed=1):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, n_in)).astype(dtype)
    y = (X[:, 0] > 0).astype(np.int64) + (X[:, 1] > 0.5)
    return X, y % n_out


def weights(model):
    return [p.data.copy() for p in model.parameters()]


def optimizer_arrays(optimizer):
    state = optimizer.state_dict()["state"]
    return {
        (i, k): (np.array(v, copy=True) if hasattr(v, "shape") else v)
        for i, s in state.items()
        for k, v in s.items()
    }


def assert_same_state(a, b):
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=str(key))


class Recorder(Callback):
    """Keeps copies of the model and optimizer at each epoch's end; at the start of
    epoch ``blow_up_at`` sets a learning rate that makes the loss overflow."""

    def __init__(self, blow_up_at=None, lr=1e30):
        super().__init__()
        self.blow_up_at, self.lr = blow_up_at, lr
        self.ends = {}

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.blow_up_at:
            for group in self.optimizer.param_groups:
                group["lr"] = self.lr

    def on_epoch_end(self, epoch, logs=None):
        self.ends[epoch] = (weights(self.model), optimizer_arrays(self.optimizer))


# ------------------------------------------------------------------ non-finite guard
@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_nonfinite_loss_raises_naming_epoch_and_step_and_keeps_last_good_epoch(engine, dtype):
    X, y = make_data(dtype=dtype)
    model = make_model(dtype)
    opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    recorder = Recorder(blow_up_at=2, lr=float(np.finfo(dtype).max) / 10)
    trainer = Trainer(model, "cross_entropy", opt, callbacks=[recorder], engine=engine, verbose=0)
    with pytest.raises(NonFiniteError, match=r"epoch 3, step \d+ of 6") as info:
        trainer.fit(X, y, epochs=5, batch_size=16, seed=0)
    assert info.value.epoch == 3 and 1 <= info.value.step <= 6
    assert len(info.value.history) == 2  # the good epochs
    good_weights, good_state = recorder.ends[1]
    for p, w in zip(model.parameters(), good_weights):
        np.testing.assert_array_equal(p.data, w)
    assert_same_state(optimizer_arrays(opt), good_state)
    assert all(np.isfinite(p.data).all() for p in model.parameters())


@pytest.mark.parametrize("engine", ENGINES)
def test_nonfinite_stop_returns_history_and_warn_trains_on(engine):
    X, y = make_data()
    model = make_model()
    opt = optim.SGD(model.parameters(), lr=1e300)
    trainer = Trainer(model, "cross_entropy", opt, engine=engine, verbose=0, on_nonfinite="stop")
    with pytest.warns(RuntimeWarning, match="epoch 1, step 2 of 6"):
        history = trainer.fit(X, y, epochs=3, batch_size=16, shuffle=False)
    assert len(history) == 0 and "epoch 1" in history.stop_reason
    assert all(np.isfinite(p.data).all() for p in model.parameters())

    model = make_model()
    opt = optim.SGD(model.parameters(), lr=1e300)
    trainer = Trainer(model, "cross_entropy", opt, engine=engine, verbose=0, on_nonfinite="warn")
    with pytest.warns(RuntimeWarning, match="training goes on"):
        history = trainer.fit(X, y, epochs=3, batch_size=16, shuffle=False)
    assert len(history) == 3 and math.isnan(history["loss"][-1])
    # outputs that are NaN count as wrong, whatever argmax makes of them
    assert history["accuracy"][-1] == 0.0


def test_nonfinite_checks_are_options():
    model = make_model()
    opt = optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="on_nonfinite"):
        Trainer(model, "cross_entropy", opt, on_nonfinite="ignore")
    with pytest.raises(ValueError, match="on_interrupt"):
        Trainer(model, "cross_entropy", opt, on_interrupt="later")


def test_evaluate_counts_nonfinite_outputs_as_wrong():
    model = make_model()
    X, y = make_data()
    model[1].bias.data[...] = np.nan
    trainer = Trainer(model, "cross_entropy", optim.SGD(model.parameters(), lr=0.1), verbose=0)
    result = trainer.evaluate(X, y)
    assert result["accuracy"] == 0.0 and math.isnan(result["loss"])


def test_early_stopping_never_restores_nan_weights():
    X, y = make_data()
    model = make_model()
    opt = optim.SGD(model.parameters(), lr=0.1)
    stop = EarlyStopping(monitor="loss", patience=1, restore_best_weights=True)
    logs = iter([float("nan"), 0.5, 0.7, 0.8])

    class FakeLoss(Callback):  # the monitored value, before EarlyStopping reads it
        def on_epoch_end(self, epoch, logs_=None):
            logs_["loss"] = next(logs)

    trainer = Trainer(
        model, "cross_entropy", opt, callbacks=[FakeLoss(), stop], engine="autograd", verbose=0
    )
    trainer.fit(X, y, epochs=4, batch_size=30, shuffle=False)
    assert stop.best == 0.5 and stop.best_epoch == 1
    assert all(np.isfinite(p.data).all() for p in model.parameters())


# ----------------------------------------------------------------------- Ctrl-C
class InterruptAt(Callback):
    """Sends SIGINT to this process after optimizer step ``step`` of epoch ``epoch``."""

    def __init__(self, step):
        super().__init__()
        self.step = step

    def on_batch_end(self, iteration, logs=None):
        if iteration == self.step:
            signal.raise_signal(signal.SIGINT)


def test_ctrl_c_stops_autograd_at_a_step_boundary_with_a_whole_model():
    X, y = make_data()
    model = make_model()
    opt = optim.Adam(model.parameters(), lr=0.01)
    trainer = Trainer(
        model, "cross_entropy", opt, callbacks=[InterruptAt(2)], engine="autograd", verbose=0
    )
    history = trainer.fit(X, y, epochs=3, batch_size=16, shuffle=False)
    assert history.interrupted and history.interrupted_at == {"epoch": 1, "step": 3}
    assert len(history) == 0
    assert [s["step"] for s in opt.state.values()] == [3] * 4
    # the same three steps, uninterrupted
    reference = make_model()
    ref_opt = optim.Adam(reference.parameters(), lr=0.01)
    Trainer(reference, "cross_entropy", ref_opt, engine="autograd", verbose=0).fit(
        X[:48], y[:48], epochs=1, batch_size=16, shuffle=False
    )
    for p, q in zip(model.parameters(), reference.parameters()):
        np.testing.assert_array_equal(p.data, q.data)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_ctrl_c_can_re_raise():
    X, y = make_data()
    model = make_model()
    opt = optim.Adam(model.parameters(), lr=0.01)
    trainer = Trainer(
        model,
        "cross_entropy",
        opt,
        callbacks=[InterruptAt(0)],
        engine="autograd",
        verbose=0,
        on_interrupt="raise",
    )
    with pytest.raises(KeyboardInterrupt):
        trainer.fit(X, y, epochs=2, batch_size=16, shuffle=False)
    assert [s["step"] for s in opt.state.values()] == [1] * 4


class InterruptDuringEpoch(Callback):
    """At the start of epoch ``epoch``, a thread waits until the running (compiled)
    epoch has done ``after`` steps, then sends SIGINT."""

    def __init__(self, epoch, after):
        super().__init__()
        self.epoch, self.after = epoch, after

    def on_epoch_begin(self, epoch, logs=None):
        if epoch != self.epoch:
            return
        control = self.trainer.control

        def watch():
            while control.steps < self.after:
                time.sleep(0.0005)
            os.kill(os.getpid(), signal.SIGINT)

        threading.Thread(target=watch, daemon=True).start()


def test_ctrl_c_stops_the_fused_cpu_epoch_between_steps():
    n = 4000
    X, y = make_data(n=n)
    model = make_model()
    opt = optim.Adam(model.parameters(), lr=1e-3)
    trainer = Trainer(
        model,
        "cross_entropy",
        opt,
        callbacks=[InterruptDuringEpoch(1, after=50)],
        engine="fused",
        verbose=0,
    )
    history = trainer.fit(X, y, epochs=3, batch_size=1, shuffle=False)
    assert trainer.engine_name == "fused"
    assert history.interrupted and len(history) == 1
    at = history.interrupted_at
    assert at["epoch"] == 2 and 50 <= at["step"] < n
    steps = {s["step"] for s in opt.state.values()}
    assert steps == {n + at["step"]}  # every parameter, the same whole steps
    # an independent run of the same steps with the autograd engine
    reference = make_model()
    ref_opt = optim.Adam(reference.parameters(), lr=1e-3)
    ref = Trainer(reference, "cross_entropy", ref_opt, engine="autograd", verbose=0)
    ref.fit(X, y, epochs=1, batch_size=1, shuffle=False)
    ref.fit(X[: at["step"]], y[: at["step"]], epochs=1, batch_size=1, shuffle=False)
    for p, q in zip(model.parameters(), reference.parameters()):
        np.testing.assert_allclose(p.data, q.data, rtol=0, atol=1e-10)


# ------------------------------------------------------------ checkpoints, resume
def resume_setup(engine, seed=3):
    model = make_model(hidden=12)
    opt = optim.Adam(model.parameters(), lr=0.01)
    scheduler = lr_scheduler.StepLR(opt, step_size=1, gamma=0.7)
    return model, opt, scheduler


@pytest.mark.parametrize("engine", ENGINES)
def test_resume_gives_the_uninterrupted_run_bit_for_bit(tmp_path, engine):
    X, y = make_data(n=100)  # 100 rows in batches of 16: a partial last batch
    path = tmp_path / "ckpt.safetensors"
    kwargs = {"batch_size": 16, "seed": 11, "validation_split": 0.1}

    model, opt, sched = resume_setup(engine)
    Trainer(model, "cross_entropy", opt, scheduler=sched, engine=engine, verbose=0).fit(
        X, y, epochs=4, **kwargs
    )

    first, opt1, sched1 = resume_setup(engine)
    Trainer(
        first,
        "cross_entropy",
        opt1,
        scheduler=sched1,
        callbacks=[ModelCheckpoint(path)],
        engine=engine,
        verbose=0,
    ).fit(X, y, epochs=2, **kwargs)
    gpunet.manual_seed(12345)  # a fresh process would have another generator state
    resumed, opt2, sched2 = resume_setup(engine)
    for p in resumed.parameters():  # and other initial weights
        p.data[...] = 7.0
    trainer = Trainer(resumed, "cross_entropy", opt2, scheduler=sched2, engine=engine, verbose=0)
    history = trainer.fit(X, y, epochs=4, resume_from=path, **kwargs)

    for p, q in zip(model.parameters(), resumed.parameters()):
        np.testing.assert_array_equal(p.data, q.data)
    assert_same_state(optimizer_arrays(opt), optimizer_arrays(opt2))
    assert sched2.last_epoch == sched.last_epoch == 4
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
    assert len(history) == 4 and history.epoch == [0, 1, 2, 3]


def test_resume_with_dropout_and_batchnorm_continues_their_masks_and_statistics(tmp_path):
    X, y = make_data(n=100)
    path = tmp_path / "ckpt.safetensors"

    def setup():
        gpunet.manual_seed(0)
        model = nn.Sequential(
            nn.Dense(6, 12, "relu"), nn.BatchNorm1d(12), nn.Dropout(0.3), nn.Dense(12, 3)
        )
        return model, optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

    model, opt = setup()
    Trainer(model, "cross_entropy", opt, verbose=0).fit(X, y, epochs=3, batch_size=16, seed=4)
    first, opt1 = setup()
    Trainer(first, "cross_entropy", opt1, callbacks=[ModelCheckpoint(path)], verbose=0).fit(
        X, y, epochs=1, batch_size=16, seed=4
    )
    resumed, opt2 = setup()
    Trainer(resumed, "cross_entropy", opt2, verbose=0).fit(
        X, y, epochs=3, batch_size=16, seed=4, resume_from=path
    )
    a, b = model.state_dict(), resumed.state_dict()
    assert "1.running_mean" in a and a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert resumed[2].counter == model[2].counter == 21


def test_checkpoint_holds_everything_with_a_format_version(tmp_path):
    X, y = make_data()
    model, opt, sched = resume_setup("autograd")
    path = tmp_path / "c-{epoch}.safetensors"
    Trainer(
        model,
        "cross_entropy",
        opt,
        scheduler=sched,
        callbacks=[ModelCheckpoint(path, keep_last=2)],
        verbose=0,
    ).fit(X, y, epochs=4, batch_size=32, seed=5)
    assert sorted(os.listdir(tmp_path)) == ["c-3.safetensors", "c-4.safetensors"]
    ckpt = load_checkpoint(tmp_path / "c-4.safetensors")
    assert ckpt.epochs_done == 4 and ckpt.seed == 5 and ckpt.optimizer_class == "Adam"
    assert ckpt.schedulers[0]["last_epoch"] == 4
    assert len(ckpt.history["epoch"]) == 4 and ckpt.rng_state["bit_generator"] == "PCG64"
    assert {k for s in ckpt.optimizer_state["state"].values() for k in s} == {
        "step",
        "exp_avg",
        "exp_avg_sq",
    }
    fresh = make_model(hidden=12, seed=9)
    load_weights(fresh, tmp_path / "c-4.safetensors")  # the weights of either kind
    for p, q in zip(model.parameters(), fresh.parameters()):
        np.testing.assert_array_equal(p.data, q.data)


def test_resume_refuses_a_checkpoint_that_does_not_fit_and_changes_nothing(tmp_path):
    X, y = make_data()
    model, opt, sched = resume_setup("autograd")
    path = tmp_path / "c.safetensors"
    Trainer(
        model, "cross_entropy", opt, scheduler=sched, callbacks=[ModelCheckpoint(path)], verbose=0
    ).fit(X, y, epochs=1, batch_size=32)

    wider = make_model(hidden=13)
    wider_opt = optim.Adam(wider.parameters(), lr=0.01)
    before = weights(wider)
    trainer = Trainer(wider, "cross_entropy", wider_opt, verbose=0)
    with pytest.raises(ValueError, match="cannot resume from .*c.safetensors.*shape"):
        trainer.fit(X, y, epochs=2, resume_from=path)
    assert all(np.array_equal(a, p.data) for a, p in zip(before, wider.parameters()))

    same, sgd, _ = resume_setup("autograd")
    sgd = optim.SGD(same.parameters(), lr=0.1, momentum=0.9)
    before = weights(same)
    with pytest.raises(ValueError, match="holds Adam state, the optimizer is SGD"):
        Trainer(same, "cross_entropy", sgd, verbose=0).fit(X, y, epochs=2, resume_from=path)
    assert all(np.array_equal(a, p.data) for a, p in zip(before, same.parameters()))
    assert len(sgd.state) == 0

    with pytest.raises(ValueError, match="weights file, not a gpunet checkpoint"):
        save_weights(same, tmp_path / "w.safetensors")
        Trainer(same, "cross_entropy", sgd, verbose=0).fit(
            X, y, epochs=2, resume_from=tmp_path / "w.safetensors"
        )


def test_checkpoint_template_and_folder_are_checked_before_training(tmp_path):
    X, y = make_data()
    model = make_model()
    opt = optim.SGD(model.parameters(), lr=0.1)
    before = weights(model)
    bad = ModelCheckpoint(tmp_path / "c-{epoch}-{val_los:.2f}.safetensors")
    with pytest.raises(ValueError, match="val_los"):
        Trainer(model, "cross_entropy", opt, callbacks=[bad], verbose=0).fit(
            X, y, epochs=1, validation_split=0.2
        )
    (tmp_path / "file").write_text("")
    blocked = ModelCheckpoint(tmp_path / "file" / "c.safetensors")
    with pytest.raises(ValueError, match="not a directory"):
        Trainer(model, "cross_entropy", opt, callbacks=[blocked], verbose=0).fit(X, y, epochs=1)
    if os.path.isdir("/proc/self"):  # no file can be created there, even by root
        proc = ModelCheckpoint("/proc/self/c.safetensors")
        with pytest.raises(ValueError, match="cannot write in '/proc/self'"):
            Trainer(model, "cross_entropy", opt, callbacks=[proc], verbose=0).fit(X, y, epochs=1)
    assert all(np.array_equal(a, p.data) for a, p in zip(before, model.parameters()))
    assert len(opt.state) == 0


KILL_SCRIPT = """
import sys, time
import numpy as np
import gpunet
from gpunet import nn, optim
from gpunet.train import Trainer
import safetensors.numpy as st

gpunet.manual_seed(0)
model = nn.Sequential(nn.Dense(200, 300, "relu"), nn.Dense(300, 3))
opt = optim.Adam(model.parameters(), lr=0.01)
trainer = Trainer(model, "cross_entropy", opt, verbose=0)
X = np.random.default_rng(0).standard_normal((64, 200)).astype(np.float32)
trainer.fit(X, np.arange(64) % 3, epochs=1, batch_size=16)
trainer.save_checkpoint(sys.argv[1])
print("SAVED", flush=True)
real = st.save_file

def slow_save(tensors, filename, metadata=None):
    real(tensors, filename, metadata=metadata)
    with open(filename, "r+b") as f:  # now half of a rewritten file, forever
        f.truncate(f.seek(0, 2) // 2)
    print("WRITING", flush=True)
    time.sleep(600)

st.save_file = slow_save
for p in model.parameters():
    p.data[...] = 0
trainer.save_checkpoint(sys.argv[1])
"""


def test_kill_9_during_a_checkpoint_write_leaves_the_previous_one(tmp_path):
    path = tmp_path / "ckpt.safetensors"
    script = tmp_path / "writer.py"
    script.write_text(textwrap.dedent(KILL_SCRIPT))
    proc = subprocess.Popen(
        [sys.executable, str(script), str(path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "SAVED"
        saved = load_checkpoint(path)
        assert proc.stdout.readline().strip() == "WRITING"
        proc.kill()  # SIGKILL: no cleanup runs
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    ckpt = load_checkpoint(path)  # whole, and the first one
    assert ckpt.epochs_done == 1
    for key, value in saved.model_state.items():
        np.testing.assert_array_equal(ckpt.model_state[key], value)
        assert np.abs(value).sum() > 0


# ------------------------------------------------------------- validated state
def adam_state():
    model = make_model()
    opt = optim.Adam(model.parameters(), lr=0.01)
    X, y = make_data()
    Trainer(model, "cross_entropy", opt, engine="autograd", verbose=0).fit(
        X, y, epochs=1, batch_size=45
    )
    return model, opt


def mutate(state, fn):
    state = copy.deepcopy(state)
    fn(state)
    return state


BAD_OPTIMIZER_STATES = {
    "negative lr": (lambda s: s["param_groups"][0].update(lr=-1.0), ValueError, "learning rate"),
    "betas out of range": (
        lambda s: s["param_groups"][0].update(betas=(2.0, 0.9)),
        ValueError,
        "beta parameter at index 0",
    ),
    "step not a count": (lambda s: s["state"][0].update(step="abc"), ValueError, "step='abc'"),
    "negative step": (lambda s: s["state"][0].update(step=-2), ValueError, "non-negative"),
    "missing buffer": (lambda s: s["state"][1].pop("exp_avg_sq"), ValueError, "exp_avg_sq"),
    "wrong shape": (
        lambda s: s["state"][0].update(exp_avg=np.zeros((2, 2))),
        ValueError,
        "shape",
    ),
    "nan buffer": (
        lambda s: s["state"][0]["exp_avg"].fill(np.nan),
        ValueError,
        "non-finite exp_avg",
    ),
    "lr not a number": (lambda s: s["param_groups"][0].update(lr="fast"), TypeError, "number"),
    "unknown option": (
        lambda s: s["param_groups"][0].update(nesterov=True),
        ValueError,
        "nesterov",
    ),
    "no state key": (lambda s: s.pop("state"), ValueError, "missing \\['state'\\]"),
}


@pytest.mark.parametrize("case", sorted(BAD_OPTIMIZER_STATES))
def test_optimizer_load_state_dict_refuses_bad_state_and_changes_nothing(case):
    fn, error, message = BAD_OPTIMIZER_STATES[case]
    _, opt = adam_state()
    good = opt.state_dict()
    before_groups = copy.deepcopy(opt.param_groups[0]["lr"]), opt.param_groups
    before_state = optimizer_arrays(opt)
    with pytest.raises(error, match=message):
        opt.load_state_dict(mutate(good, fn))
    assert opt.param_groups is before_groups[1] and opt.param_groups[0]["lr"] == 0.01
    assert_same_state(optimizer_arrays(opt), before_state)
    opt.load_state_dict(good)  # the untouched dict still loads


def test_optimizer_load_state_dict_refuses_another_optimizers_state():
    model, adam = adam_state()
    sgd = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match="another optimizer"):
        state = adam.state_dict()
        state["param_groups"] = sgd.state_dict()["param_groups"]
        sgd.load_state_dict(state)
    with pytest.raises(ValueError, match="SGD does not have"):
        sgd.load_state_dict(adam.state_dict())
    with pytest.raises(ValueError, match="missing"):
        sgd.load_state_dict({})
    assert len(sgd.state) == 0


def test_scheduler_load_state_dict_is_checked():
    _, opt = adam_state()
    sched = lr_scheduler.StepLR(opt, step_size=2)
    other = lr_scheduler.ExponentialLR(opt, gamma=0.5)
    before = sched.state_dict()
    with pytest.raises(ValueError, match="another scheduler"):
        sched.load_state_dict(other.state_dict())
    with pytest.raises(TypeError, match="last_epoch"):
        sched.load_state_dict({**before, "last_epoch": "three"})
    with pytest.raises(ValueError, match="last_epoch=-5"):
        sched.load_state_dict({**before, "last_epoch": -5})
    with pytest.raises(ValueError, match="base_lrs"):
        sched.load_state_dict({**before, "base_lrs": [-0.1]})
    with pytest.raises(ValueError, match="missing"):
        sched.load_state_dict({})
    assert sched.state_dict() == before


# ------------------------------------------------------------------ file errors
def test_weight_files_errors_name_the_file(tmp_path):
    model = make_model()
    with pytest.raises(IsADirectoryError, match=str(tmp_path)):
        load_weights(model, tmp_path)
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        load_weights(model, tmp_path / "nope.safetensors")
    path = tmp_path / "w.safetensors"
    save_weights(model, path)
    data = path.read_bytes()
    truncated = tmp_path / "cut.safetensors"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="cut.safetensors.*not a readable safetensors"):
        load_weights(model, truncated)
    with pytest.raises(ValueError, match="cut.safetensors"):
        load_checkpoint(truncated)


def test_weights_holding_nan_are_refused_unless_asked(tmp_path):
    model = make_model()
    model[0].weight.data[0, 0] = np.nan
    path = tmp_path / "nan.safetensors"
    save_weights(model, path)
    fresh = make_model(seed=4)
    before = weights(fresh)
    with pytest.raises(ValueError, match="nan.safetensors.*NaN or infinite"):
        load_weights(fresh, path)
    assert all(np.array_equal(a, p.data) for a, p in zip(before, fresh.parameters()))
    load_weights(fresh, path, allow_nonfinite=True)
    assert np.isnan(fresh[0].weight.data[0, 0])


def test_atomic_write_honours_the_umask_and_keeps_a_replaced_files_mode(tmp_path):
    old = os.umask(0o027)
    try:
        with atomic_write(tmp_path / "new.txt") as tmp, open(tmp, "w") as f:
            f.write("x")
    finally:
        os.umask(old)
    assert (tmp_path / "new.txt").stat().st_mode & 0o777 == 0o640
    target = tmp_path / "kept.txt"
    target.write_text("old")
    target.chmod(0o604)
    with atomic_write(target) as tmp, open(tmp, "w") as f:
        f.write("new")
    assert target.stat().st_mode & 0o777 == 0o604 and target.read_text() == "new"


# -------------------------------------------------------------------------- CLI
def run_cli(*args, **kwargs):
    return subprocess.run(
        [sys.executable, "-m", "gpunet.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        **kwargs,
    )


def test_cli_checks_the_checkpoint_template_before_loading_data(tmp_path):
    result = run_cli(
        "train", "--checkpoint", str(tmp_path / "c-{val_acc:.2f}.safetensors"), "--epochs", "1"
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--checkpoint" in lines[0] and "val_acc" in lines[0]
    result = run_cli("train", "--resume", str(tmp_path / "missing.safetensors"))
    assert result.returncode == 2 and "missing.safetensors" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_resume_continues_a_checkpointed_run(tmp_path):
    common = ["train", "--engine", "autograd", "--hidden", "16", "--no-progress"]
    common += ["--dataset", "synthetic-classification", "--seed", "2"]
    full = run_cli(*common, "--epochs", "3", "--save", str(tmp_path / "full.safetensors"))
    assert full.returncode == 0, full.stderr
    ckpt = tmp_path / "c-{epoch}.safetensors"
    first = run_cli(*common, "--epochs", "2", "--checkpoint", str(ckpt), "--keep-last", "1")
    assert first.returncode == 0, first.stderr
    assert os.listdir(tmp_path) == ["c-2.safetensors", "full.safetensors"] or sorted(
        os.listdir(tmp_path)
    ) == ["c-2.safetensors", "full.safetensors"]
    out = tmp_path / "resumed.json"
    rest = run_cli(
        *common,
        "--epochs",
        "3",
        "--resume",
        str(tmp_path / "c-2.safetensors"),
        "--save",
        str(tmp_path / "resumed.safetensors"),
        "--output",
        str(out),
    )
    assert rest.returncode == 0, rest.stderr
    assert json.loads(out.read_text())["summary"]["epochs_run"] == 3
    from safetensors.numpy import load_file

    a, b = load_file(tmp_path / "full.safetensors"), load_file(tmp_path / "resumed.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])


def test_cli_ctrl_c_saves_and_exits_130(tmp_path):
    save, out = tmp_path / "w.safetensors", tmp_path / "h.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "gpunet.cli", "train", "--engine", "autograd"]
        + ["--epochs", "100000", "--batch-size", "1", "--save", str(save), "--output", str(out)],
        stderr=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        for line in proc.stderr:  # the first epoch's line: training is running
            if line.startswith("epoch 1/"):
                break
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert [ln for ln in stderr.splitlines() if ln.startswith("gpunet: interrupted")] != []
    history = json.loads(out.read_text())["history"]
    assert history["interrupted"] is True
    model = make_model(n_in=64, hidden=128, n_out=10)
    model = nn.Sequential(
        nn.Dense(64, 128, "relu", dtype=np.float32),
        nn.Dense(128, 64, "relu", dtype=np.float32),
        nn.Dense(64, 10, dtype=np.float32),
    )
    load_weights(model, save)
