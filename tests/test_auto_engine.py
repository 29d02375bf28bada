"""``engine="auto"`` on the CPU (``AutoCpuEngine``): epoch 1 on autograd, then the fused
engine for one timed epoch when the rest of the fit can repay its load and its kernels are
compiled, then the faster; a switch between engines leaves the same weights as one engine."""

import numpy as np
import pytest

from gpunet import nn, optim
from gpunet.train import Trainer
from gpunet.train.engines import auto

N, FEATURES, CLASSES = 40, 6, 3


def make_fit(engine, dtype=np.float64, dropout=0.0, optimizer="sgd"):
    from gpunet.random import manual_seed  # noqa: PLC0415

    manual_seed(5)
    layers = [nn.Dense(FEATURES, 8, "tanh")]
    if dropout:
        layers.append(nn.Dropout(dropout))
    layers += [nn.Dense(8, 8, "relu"), nn.Dense(8, CLASSES)]
    model = nn.Sequential(*layers).to(dtype=dtype)
    if optimizer == "sgd":
        opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    else:
        opt = optim.Adam(model.parameters(), lr=0.01)
    trainer = Trainer(model, "cross_entropy", opt, engine=engine, verbose=0, progress=False)
    rng = np.random.default_rng(1)
    X = rng.standard_normal((N, FEATURES)).astype(dtype)
    y = rng.integers(0, CLASSES, N)
    return trainer, X, y


@pytest.fixture
def load_seconds(monkeypatch):
    """The process's measured kernel load times, replaced for the test."""
    table = {}
    monkeypatch.setattr(auto, "_load_seconds", table)
    return table


def weights(trainer):
    return [p.data.copy() for p in trainer.model.parameters()]


@pytest.mark.parametrize(
    "dtype,dropout,optimizer",
    [(np.float64, 0.0, "sgd"), (np.float64, 0.3, "adam"), (np.float32, 0.0, "adam")],
)
def test_a_switch_to_the_fused_engine_gives_the_autograd_weights(
    load_seconds, dtype, dropout, optimizer
):
    load_seconds.update(autograd=None, fused=1e-9)  # any fit repays the load
    trainer, X, y = make_fit("auto", dtype, dropout, optimizer)
    history = trainer.fit(X, y, epochs=4, batch_size=7, seed=2)
    engine = trainer.last_engine
    assert set(engine.epoch_seconds) == {"autograd", "fused"}, engine.decision
    assert engine.decision.startswith(trainer.engine_name)
    reference, X, y = make_fit("autograd", dtype, dropout, optimizer)
    expected = reference.fit(X, y, epochs=4, batch_size=7, seed=2)
    tolerance = 1e-10 if dtype == np.float64 else 1e-5
    for got, want in zip(weights(trainer), weights(reference)):
        np.testing.assert_allclose(got, want, rtol=tolerance, atol=tolerance)
    np.testing.assert_allclose(history.history["loss"], expected.history["loss"], rtol=tolerance)
    state, ref_state = trainer.optimizer.state_dict(), reference.optimizer.state_dict()
    for i, slots in ref_state["state"].items():
        for key, value in slots.items():
            np.testing.assert_allclose(
                state["state"][i][key], value, rtol=tolerance, atol=tolerance
            )


def test_short_fits_stay_on_autograd_without_loading_the_fused_kernels(load_seconds):
    load_seconds.update(fused=1e6)  # a load no fit here can repay
    trainer, X, y = make_fit("auto")
    trainer.fit(X, y, epochs=5, batch_size=4)
    engine = trainer.last_engine
    assert engine.fused is None and trainer.engine_name == "autograd"
    assert "too short" in engine.decision


def test_the_fused_engine_waits_until_its_kernels_are_compiled(load_seconds, monkeypatch):
    load_seconds.update(autograd=None, fused=1e-9)
    trainer, X, y = make_fit("auto")
    asked = []
    real = trainer._select_engine

    def select():
        engine = real()
        engine._fused_ready = lambda: asked.append(True) and False
        return engine

    monkeypatch.setattr(trainer, "_select_engine", select)
    trainer.fit(X, y, epochs=3, batch_size=4)
    engine = trainer.last_engine
    assert asked == [True] and engine.fused is None
    assert "not compiled" in engine.decision


def test_a_one_epoch_fit_runs_on_autograd(load_seconds):
    load_seconds.update(autograd=None, fused=1e-9)
    trainer, X, y = make_fit("auto")
    trainer.fit(X, y, epochs=1, batch_size=4)
    assert trainer.last_engine.fused is None and trainer.engine_name == "autograd"


def test_the_warm_up_steps_are_undone(load_seconds):
    """The warm-up epoch on the first rows leaves no trace: the same weights as a fit
    that never warmed up (autograd engine throughout)."""
    load_seconds.update(fused=1e6)  # no "autograd" entry: this fit warms up
    trainer, X, y = make_fit("auto", dropout=0.3, optimizer="adam")
    trainer.fit(X, y, epochs=2, batch_size=4, seed=9)
    assert "autograd" in load_seconds and trainer.last_engine.fused is None
    reference, X, y = make_fit("autograd", dropout=0.3, optimizer="adam")
    reference.fit(X, y, epochs=2, batch_size=4, seed=9)
    for got, want in zip(weights(trainer), weights(reference)):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("dropout,optimizer", [(0.0, "sgd"), (0.3, "adam")])
def test_timed_steps_choose_for_the_whole_fit_and_leave_no_trace(
    load_seconds, monkeypatch, dropout, optimizer
):
    """With many steps per epoch both engines are timed on a few steps (then undone) and
    the faster trains every epoch: the autograd engine's weights either way."""
    monkeypatch.setattr(auto, "PROBE_ROWS", 2)
    monkeypatch.setattr(auto, "PROBE_SHARE_OF_EPOCH", 2)
    load_seconds.update(autograd=None, fused=1e-9)
    trainer, X, y = make_fit("auto", np.float64, dropout, optimizer)
    # one epoch: no epoch is left for the first-epoch check to try the other engine in
    # (that path has its own test below), so the probe alone decides
    trainer.fit(X, y, epochs=1, batch_size=4, seed=4)
    engine = trainer.last_engine
    assert set(engine.step_seconds) == {"autograd", "fused"}, engine.decision
    assert set(engine.epoch_seconds) == {trainer.engine_name}  # no switch between epochs
    assert engine.decision.startswith(trainer.engine_name)
    reference, X, y = make_fit("autograd", np.float64, dropout, optimizer)
    reference.fit(X, y, epochs=1, batch_size=4, seed=4)
    for got, want in zip(weights(trainer), weights(reference)):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)


def test_the_load_time_measured_on_this_machine_decides(load_seconds, monkeypatch):
    """Before this process has loaded the fused kernels, the load time recorded in the
    cache's marker is the estimate."""
    from gpunet.backend import jit_cache  # noqa: PLC0415

    monkeypatch.setattr(jit_cache, "recorded_load_seconds", lambda name: 1e6)
    trainer, X, y = make_fit("auto")
    trainer.fit(X, y, epochs=5, batch_size=4)
    assert trainer.last_engine.fused is None and "too short" in trainer.last_engine.decision
    monkeypatch.setattr(jit_cache, "recorded_load_seconds", lambda name: 1e-9)
    trainer, X, y = make_fit("auto")
    trainer.fit(X, y, epochs=5, batch_size=4)
    assert trainer.last_engine.fused is not None


def test_a_measured_choice_is_kept_for_later_fits_of_the_same_kind(load_seconds, monkeypatch):
    """Default compile mode: the first fit measures and records its choice; the next fit
    of the same network, optimizer, loss and batch size takes it without measuring (and
    still gives the autograd engine's weights); another batch size measures again."""
    from gpunet.backend import jit_cache  # noqa: PLC0415

    store = {}
    monkeypatch.setattr(jit_cache, "_mode", "background")
    monkeypatch.setattr(jit_cache, "is_ready", lambda name: True)
    monkeypatch.setattr(jit_cache, "load_choices", lambda: dict(store))
    monkeypatch.setattr(jit_cache, "save_choice", store.__setitem__)
    load_seconds.update(autograd=None, fused=1e-9)
    trainer, X, y = make_fit("auto")
    trainer.fit(X, y, epochs=3, batch_size=7, seed=2)
    first = trainer.last_engine
    assert len(store) == 1 and set(first.epoch_seconds) == {"autograd", "fused"}
    (record,) = store.values()
    assert record["engine"] == trainer.engine_name
    trainer, X, y = make_fit("auto")
    trainer.fit(X, y, epochs=3, batch_size=7, seed=2)
    again = trainer.last_engine
    assert "earlier on this machine" in again.decision and not again.step_seconds
    assert set(again.epoch_seconds) <= {record["engine"]}  # no trial of the other engine
    reference, X, y = make_fit("autograd")
    reference.fit(X, y, epochs=3, batch_size=7, seed=2)
    for got, want in zip(weights(trainer), weights(reference)):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)
    trainer, X, y = make_fit("auto")
    trainer.fit(X, y, epochs=3, batch_size=5, seed=2)
    assert len(store) == 2


def test_autograd_kept_for_a_short_fit_is_reused_until_a_fit_is_long_enough(
    load_seconds, monkeypatch
):
    """A fit too short to repay the fused kernels' load records autograd with its seconds
    per step; the next fit of that kind takes it with no warm-up and no timed steps, while
    a fit long enough to repay the load measures again."""
    from gpunet.backend import jit_cache  # noqa: PLC0415

    store = {}
    monkeypatch.setattr(jit_cache, "_mode", "background")
    monkeypatch.setattr(jit_cache, "is_ready", lambda name: True)
    monkeypatch.setattr(jit_cache, "load_choices", lambda: dict(store))
    monkeypatch.setattr(jit_cache, "save_choice", store.__setitem__)
    monkeypatch.setattr(auto, "PROBE_ROWS", 2)
    monkeypatch.setattr(auto, "PROBE_SHARE_OF_EPOCH", 2)
    timed = []
    monkeypatch.setattr(
        auto.AutoCpuEngine, "_time_steps", lambda self, e, n: timed.append(e.name) or 1e-3
    )
    load_seconds.update(fused=1.0)  # no "autograd" entry: a measuring fit warms up
    trainer, X, y = make_fit("auto")  # 10 steps per epoch of 1 ms: 0.05 s, too short
    trainer.fit(X, y, epochs=5, batch_size=4, seed=3)
    assert "too short" in trainer.last_engine.decision and timed == ["autograd"]
    (record,) = store.values()
    assert record["engine"] == "autograd" and not record["fused_measured"]
    assert record["autograd_step_seconds"] == 1e-3

    timed.clear()
    load_seconds.clear()
    load_seconds["fused"] = 1.0  # as before, but no "autograd": a warm-up would show
    trainer, X, y = make_fit("auto")
    trainer.fit(X, y, epochs=5, batch_size=4, seed=3)
    again = trainer.last_engine
    assert timed == [] and "autograd" not in load_seconds  # no timed steps, no warm-up
    assert "earlier on this machine" in again.decision and again.fused is None
    reference, X, y = make_fit("autograd")
    reference.fit(X, y, epochs=5, batch_size=4, seed=3)
    for got, want in zip(weights(trainer), weights(reference)):
        np.testing.assert_array_equal(got, want)

    load_seconds.update(fused=1e-9)  # now any fit repays the load: measure again
    trainer, X, y = make_fit("auto")
    trainer.fit(X, y, epochs=5, batch_size=4, seed=3)
    assert timed == ["autograd", "fused"] and trainer.last_engine.fused is not None
    (record,) = store.values()
    assert record["fused_measured"]


def test_only_a_first_load_in_the_process_is_kept_as_the_load_time(load_seconds, monkeypatch):
    """The fused kernels' load time is recorded for later processes only when auto's
    warm-up was this process's first fused epoch, not after another engine loaded them."""
    from gpunet.backend import jit_cache  # noqa: PLC0415

    recorded = []
    monkeypatch.setattr(jit_cache, "is_ready", lambda name: True)
    monkeypatch.setattr(jit_cache, "recorded_load_seconds", lambda name: 1e-9)
    monkeypatch.setattr(jit_cache, "record_load_seconds", lambda *a: recorded.append(a))
    trainer, X, y = make_fit("fused")
    trainer.fit(X, y, epochs=1, batch_size=4)
    assert auto.fused_kernels_loaded()
    load_seconds.update(autograd=None)
    trainer, X, y = make_fit("auto")
    trainer.fit(X, y, epochs=5, batch_size=4)
    assert trainer.last_engine.fused is not None and recorded == []
    monkeypatch.setattr(auto, "fused_kernels_loaded", lambda: False)  # as in a new process
    load_seconds.clear()
    load_seconds.update(autograd=None)
    trainer, X, y = make_fit("auto")
    trainer.fit(X, y, epochs=5, batch_size=4)
    assert [name for name, _ in recorded] == [trainer.last_engine.kernel_set]


def test_a_first_epoch_slower_than_the_other_engines_probe_tries_that_engine(
    load_seconds, monkeypatch
):
    """The probe picked autograd, but its first epoch ran slower per step than the fused
    probe: epoch 2 runs fused, and the faster epoch decides (same weights throughout)."""
    monkeypatch.setattr(auto, "PROBE_ROWS", 2)
    monkeypatch.setattr(auto, "PROBE_SHARE_OF_EPOCH", 2)
    fake = {"autograd": 1e-7, "fused": 2e-7}  # no real step is this fast
    monkeypatch.setattr(auto.AutoCpuEngine, "_time_steps", lambda self, e, n: fake[e.name])
    load_seconds.update(autograd=None, fused=0.0)
    trainer, X, y = make_fit("auto", optimizer="adam")
    trainer.fit(X, y, epochs=4, batch_size=4, seed=6)
    engine = trainer.last_engine
    assert engine.step_seconds == fake
    assert set(engine.epoch_seconds) == {"autograd", "fused"}
    assert "an epoch took" in engine.decision
    reference, X, y = make_fit("autograd", optimizer="adam")
    reference.fit(X, y, epochs=4, batch_size=4, seed=6)
    for got, want in zip(weights(trainer), weights(reference)):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)
