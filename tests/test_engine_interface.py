"""The engine interface (gpunet.train.engines): every engine is an ``Engine``, the
selector picks as documented, ``Trainer`` drives prepare / run_epoch / write_back, and
the engines package does not depend on the fit loop."""

import importlib
import inspect
import pkgutil
import re
import subprocess
import sys
import types

import numpy as np
import pytest

import gpunet
from gpunet import nn, optim
from gpunet.backend import get_backend
from gpunet.train import Callback, Trainer, engines
from gpunet.train.engines import (
    AutoCpuEngine,
    AutogradEngine,
    Engine,
    FusedCpuEngine,
    select_engine,
)

N_SAMPLES, N_FEATURES, N_CLASSES = 12, 3, 2


def dense_model():
    gpunet.manual_seed(0)
    return nn.Sequential(nn.Dense(N_FEATURES, 4, "relu"), nn.Dense(4, N_CLASSES)).to(
        dtype=np.float64
    )


def data():
    rng = np.random.default_rng(0)
    return rng.standard_normal((N_SAMPLES, N_FEATURES)), rng.integers(0, N_CLASSES, N_SAMPLES)


def select(choice, model, backend=None, callbacks=(), loss=None):
    return select_engine(
        choice,
        model,
        loss or nn.CrossEntropyLoss(),
        optim.SGD(model.parameters(), lr=0.1),
        backend or get_backend("cpu"),
        list(callbacks),
        track_accuracy=True,
        flush_denormals=True,
        workspace_cache={},
    )


def engine_classes():
    """Every class named ``*Engine`` defined in a module of the engines package."""
    found = []
    for info in pkgutil.iter_modules(engines.__path__):
        try:
            module = importlib.import_module(f"{engines.__name__}.{info.name}")
        except ModuleNotFoundError as error:  # a GPU engine's module without CuPy
            if (error.name or "").startswith("cupy"):
                continue
            raise
        found += [
            cls
            for name, cls in inspect.getmembers(module, inspect.isclass)
            if name.endswith("Engine") and cls.__module__ == module.__name__
        ]
    return found


def test_every_engine_implements_the_interface():
    classes = engine_classes()
    assert {AutogradEngine, FusedCpuEngine} <= set(classes)
    for cls in classes:
        if cls is Engine:
            continue
        assert issubclass(cls, Engine), cls
        assert not inspect.isabstract(cls), cls
        # a fixed name, or (engine="auto") the name of the engine running now
        assert (isinstance(cls.name, str) and cls.name) or isinstance(cls.name, property), cls
    with pytest.raises(TypeError):
        Engine()


def test_selector_picks_fused_on_the_cpu_for_a_dense_model_and_autograd_otherwise():
    auto = select("auto", dense_model())
    assert isinstance(auto, AutoCpuEngine) and auto.name == "autograd"  # until it measures
    assert isinstance(select("fused", dense_model()), FusedCpuEngine)
    assert isinstance(select("autograd", dense_model()), AutogradEngine)
    odd = nn.Sequential(nn.Flatten(), nn.Linear(N_FEATURES, N_CLASSES))
    assert isinstance(select("auto", odd), AutogradEngine)
    assert isinstance(select("auto", dense_model(), loss=nn.BCEWithLogitsLoss()), AutogradEngine)


class PerStep(Callback):
    def on_batch_end(self, iteration, logs=None):
        pass


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("flatten", "layer Flatten is not supported by the fused engine"),
        ("per_step_callback", "a callback needs a hook after every step"),
        ("other_device", "backend fake (fake:0) has no fused engine"),
    ],
)
def test_fused_on_a_setup_it_cannot_train_names_the_reason(case, reason):
    model, backend, callbacks = dense_model(), None, []
    if case == "flatten":
        model = nn.Sequential(nn.Flatten(), nn.Linear(N_FEATURES, N_CLASSES))
    elif case == "per_step_callback":
        callbacks = [PerStep()]
    else:
        backend = types.SimpleNamespace(name="fake", device="fake:0")
    with pytest.raises(
        ValueError, match=re.escape(f"engine='fused' cannot train this model: {reason}")
    ):
        select("fused", model, backend, callbacks)
    assert isinstance(select("auto", model, backend, callbacks), AutogradEngine)
    loss, opt = nn.CrossEntropyLoss(), optim.SGD(model.parameters())
    assert (
        engines.fused_unsupported_reason(model, loss, opt, backend or get_backend("cpu"), callbacks)
        == reason
    )


def test_a_cupy_backend_gets_the_gpu_fused_engine():
    from gpunet.train.engines.fused_gpu import FusedGpuEngine  # noqa: PLC0415

    backend = types.SimpleNamespace(name="cupy", device="cuda:0")
    assert engines._fused_engine_class(backend) == (FusedGpuEngine, None)
    assert issubclass(FusedGpuEngine, Engine)


class RecordingEngine(Engine):
    """The autograd engine, recording the calls the fit loop makes."""

    name = "recording"
    trains_in_place = True

    def __init__(self, model, loss, optimizer, track_accuracy, calls):
        self.model = model
        self.inner = AutogradEngine(model, loss, optimizer, track_accuracy)
        self.calls = calls

    def prepare(self, X, y, batch_size):
        self.calls.append(("prepare", X.shape, y.shape, batch_size))
        self.inner.prepare(X, y, batch_size)

    def run_epoch(self, order=None, on_batch_end=None, control=None):
        self.calls.append(("run_epoch", None if order is None else order.shape))
        return self.inner.run_epoch(order, on_batch_end, control)

    def write_back(self):
        self.calls.append(("write_back",))


class EpochEnd(Callback):
    def __init__(self, calls):
        super().__init__()
        self.calls = calls

    def on_epoch_end(self, epoch, logs=None):
        self.calls.append(("on_epoch_end", epoch))


def test_trainer_uses_an_engine_factory_and_drives_the_interface():
    calls, made = [], []

    def factory(model, loss, optimizer, track_accuracy):
        made.append(track_accuracy)
        return RecordingEngine(model, loss, optimizer, track_accuracy, calls)

    model = dense_model()
    X, y = data()
    trainer = Trainer(
        model,
        nn.CrossEntropyLoss(),
        optim.SGD(model.parameters(), lr=0.1),
        metrics=["accuracy"],
        callbacks=[EpochEnd(calls)],
        engine=factory,
        progress=False,
        verbose=0,
    )
    history = trainer.fit(X, y, epochs=2, batch_size=5, seed=0)
    assert made == [True] and trainer.engine_name == "recording"
    assert calls == [
        ("prepare", (N_SAMPLES, N_FEATURES), (N_SAMPLES,), 5),
        ("run_epoch", (N_SAMPLES,)),
        ("write_back",),
        ("on_epoch_end", 0),
        ("run_epoch", (N_SAMPLES,)),
        ("write_back",),
        ("on_epoch_end", 1),
    ]
    assert len(history.history["loss"]) == 2 and "accuracy" in history.history


def test_a_factory_must_return_an_engine():
    with pytest.raises(TypeError, match="not an Engine"):
        select(lambda *args: object(), dense_model())


@pytest.mark.parametrize("engine", ["turbo", 5, None, ["fused"]])
def test_an_invalid_engine_value_raises(engine):
    model = dense_model()
    with pytest.raises(ValueError, match=r"unknown engine .*expected one of"):
        Trainer(model, "cross_entropy", optim.SGD(model.parameters()), engine=engine)
    with pytest.raises(ValueError, match="unknown engine"):
        select(engine, model)


def test_train_epoch_is_prepare_run_and_write_back():
    """The convenience call on both engines: one epoch, the same weights and state."""
    X, y = data()
    results = []
    for cls in (AutogradEngine, FusedCpuEngine):
        model = dense_model()
        opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        engine = cls(model, nn.CrossEntropyLoss(), opt, True)
        loss_sum, correct = engine.train_epoch(X, y, 5, order=np.arange(N_SAMPLES)[::-1].copy())
        assert isinstance(loss_sum, float) and isinstance(correct, int)
        engine.write_back()  # again: nothing changes
        buffers = [opt.state[p]["momentum_buffer"].copy() for p in model.parameters()]
        results.append((model.state_dict(), buffers, loss_sum, correct))
    (w_ref, b_ref, l_ref, c_ref), (w, b, l, c) = results
    for key in w_ref:
        np.testing.assert_allclose(w[key], w_ref[key], rtol=1e-10, atol=1e-12)
    for got, ref in zip(b, b_ref):
        np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-12)
    assert c == c_ref and l == pytest.approx(l_ref, rel=1e-10)


def test_importing_the_engines_does_not_import_the_fit_loop():
    code = (
        "import sys\n"
        "import gpunet.train.engines\n"
        "loaded = sorted(m for m in sys.modules if m == 'gpunet.train.loop')\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
