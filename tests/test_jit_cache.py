"""Kernel readiness (``gpunet.backend.jit_cache``): a set counts as compiled only with a
marker for the current stamp, a process decides once per set, and in background mode a
missing set means NumPy's reference ops and one background compile instead of a wait."""

import os
import subprocess
import sys

import numpy as np
import pytest

from gpunet import nn, optim
from gpunet.backend import jit_cache
from gpunet.train import Trainer


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """jit_cache with no decisions, a temporary cache directory, background mode, and a
    recording stand-in for the background process."""
    monkeypatch.setattr(jit_cache, "_decided", {})
    monkeypatch.setattr(jit_cache, "_compiled_here", set())
    monkeypatch.setattr(jit_cache, "_requested", [])
    monkeypatch.setattr(jit_cache, "_background", None)
    monkeypatch.setattr(jit_cache, "cache_dir", lambda: tmp_path)
    monkeypatch.setattr(jit_cache, "_mode", "background")
    started = []

    class FakePopen:
        pid = 4242
        returncode = None

        def __init__(self, args, **kwargs):
            started.append(args)
            assert kwargs["start_new_session"] and kwargs["env"]["GPUNET_COMPILE"] == "foreground"

        def poll(self):
            return self.returncode

    monkeypatch.setattr(jit_cache.subprocess, "Popen", FakePopen)
    return started


def test_a_marker_for_the_current_stamp_makes_a_set_ready(fresh, monkeypatch):
    assert not jit_cache.is_cached("ops")
    jit_cache.mark_compiled("ops", 1.5)
    assert jit_cache.is_cached("ops") and jit_cache.marker_path("ops").is_file()
    import gpunet.kernels.cpu as cpu  # noqa: PLC0415
    from gpunet import kernels  # noqa: F401, PLC0415

    monkeypatch.setattr(cpu, "package_stamp", lambda: b"edited kernel sources")
    assert not jit_cache.is_cached("ops")  # new sources: compiled again


def test_a_missing_set_starts_one_background_compile_and_the_answer_sticks(fresh, capsys):
    assert jit_cache.use("ops") is False
    assert jit_cache.use("epoch-float32") is False
    assert [args[-3:] for args in fresh] == [
        ["gpunet.train.warmup", "--background", "ops"],
        ["gpunet.train.warmup", "--background", "epoch-float32"],
    ]
    err = capsys.readouterr().err
    assert err.count("in the background (pid 4242") == 2 and err.count("gpunet compile") == 1
    assert "also compiling the fused CPU epoch kernels for float32" in err
    assert "still compiling in the background (pid 4242" in jit_cache.background_status()
    jit_cache.background_process().returncode = 0
    assert "compiled in the background within" in jit_cache.background_status()
    jit_cache.background_process().returncode = 1
    assert "failed (exit 1)" in jit_cache.background_status()
    path = jit_cache.marker_path("ops")
    path.write_text("{}")
    assert jit_cache.is_cached("ops") and jit_cache.use("ops") is False
    assert len(fresh) == 2  # asked again: nothing new started


def test_foreground_mode_counts_every_set_ready(fresh, monkeypatch):
    monkeypatch.setattr(jit_cache, "_mode", "foreground")
    assert jit_cache.use("ops") and jit_cache.use("epoch-float64") and fresh == []
    with pytest.raises(ValueError, match="unknown kernel set"):
        jit_cache.use("epoch-float16")


def test_without_compiled_kernels_a_fit_runs_on_numpy_reference_ops(fresh, monkeypatch):
    """Background mode, nothing compiled: the autograd engine, NumPy's ops (a Numba
    kernel called would fail here), the same numbers as the reference math."""
    from gpunet.kernels.cpu import dense, optim_updates, softmax_xent  # noqa: PLC0415

    def no_kernel(*args, **kwargs):
        raise AssertionError("a Numba kernel ran")

    for module, name in (
        (dense, "dense_forward"),
        (dense, "dense_backward"),
        (softmax_xent, "softmax_cross_entropy"),
    ):
        monkeypatch.setattr(module, name, no_kernel)
    monkeypatch.setattr(optim_updates, "UPDATE_KERNELS", {})
    rng = np.random.default_rng(0)
    X = rng.standard_normal((30, 4))
    y = rng.integers(0, 3, 30)
    model = nn.Sequential(nn.Dense(4, 5, "relu"), nn.Dense(5, 3)).to(dtype=np.float64)
    W0 = [p.data.copy() for p in model.parameters()]
    trainer = Trainer(model, "cross_entropy", optim.SGD(model.parameters(), lr=0.1), verbose=0)
    trainer.fit(X, y, epochs=1, batch_size=30, shuffle=False)
    assert trainer.engine_name == "autograd"
    assert ["gpunet.train.warmup", "--background", "ops"] == fresh[0][-3:]
    # one full-batch SGD step by hand, float64
    (W1, b1), (W2, b2) = W0[:2], W0[2:]
    h = np.maximum(X @ W1.T + b1, 0)
    z = h @ W2.T + b2
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    dz = (p - np.eye(3)[y]) / 30
    dh = (dz @ W2) * (h > 0)
    expected = [
        W1 - 0.1 * dh.T @ X,
        b1 - 0.1 * dh.sum(0),
        W2 - 0.1 * dz.T @ h,
        b2 - 0.1 * dz.sum(0),
    ]
    for got, want in zip(model.parameters(), expected):
        np.testing.assert_allclose(got.data, want, rtol=1e-12, atol=1e-12)


def test_explicit_fused_engine_compiles_in_the_foreground_with_a_notice(fresh, monkeypatch, capsys):
    import gpunet.train.warmup as warmup  # noqa: PLC0415

    compiled = []
    monkeypatch.setitem(warmup._WARMERS, "epoch-float64", lambda: compiled.append(1))
    model = nn.Sequential(nn.Dense(4, 3)).to(dtype=np.float64)
    trainer = Trainer(
        model, "cross_entropy", optim.SGD(model.parameters()), engine="fused", verbose=0
    )
    trainer._select_engine()
    assert compiled == [1] and fresh == []
    err = capsys.readouterr().err
    assert "compiling the fused CPU epoch kernels for float64" in err and "compiled in" in err
    assert jit_cache.is_cached("epoch-float64")


def test_the_compile_process_writes_the_marker_that_later_processes_read(tmp_path):
    """End to end through real processes: ``python -m gpunet.train.warmup ops`` (a load
    where this run's tests already compiled the kernels into the default cache) writes
    the marker; a process in background mode then uses the kernels and starts nothing."""
    env = dict(os.environ, GPUNET_COMPILE="background")
    subprocess.run(
        [sys.executable, "-m", "gpunet.train.warmup", "ops"], env=env, check=True, timeout=600
    )
    probe = (
        "from gpunet.backend import jit_cache\n"
        "print(jit_cache.use('ops'), jit_cache.background_process())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["True", "None"], out.stderr


def test_a_measured_load_time_is_kept_in_the_marker(fresh):
    assert jit_cache.recorded_load_seconds("epoch-float32") is None
    jit_cache.record_load_seconds("epoch-float32", 0.4)  # no marker yet: nothing to add to
    assert jit_cache.recorded_load_seconds("epoch-float32") is None
    jit_cache.mark_compiled("epoch-float32", 90.0)
    assert jit_cache.recorded_load_seconds("epoch-float32") is None
    jit_cache.record_load_seconds("epoch-float32", 0.4)
    assert jit_cache.recorded_load_seconds("epoch-float32") == 0.4
    assert jit_cache.is_cached("epoch-float32")


def test_a_fused_fit_never_loads_the_autograd_engines_kernels(monkeypatch):
    """The one-row shape probe before a fit runs the reference ops, so a fit on the fused
    engine never asks for (loads, or starts compiling) the autograd engine's kernels."""
    asked = []
    real_use = jit_cache.use
    monkeypatch.setattr(jit_cache, "_decided", {})
    monkeypatch.setattr(jit_cache, "use", lambda name: asked.append(name) or real_use(name))
    rng = np.random.default_rng(0)
    X = rng.standard_normal((12, 4))
    y = rng.integers(0, 3, 12)
    model = nn.Sequential(nn.Dense(4, 5, "relu"), nn.Dense(5, 3)).to(dtype=np.float64)
    opt = optim.SGD(model.parameters(), lr=0.1)
    trainer = Trainer(model, "cross_entropy", opt, engine="fused", verbose=0, progress=False)
    trainer.fit(X, y, epochs=1, batch_size=4)
    assert trainer.engine_name == "fused" and "ops" not in asked, asked


def test_reference_ops_run_the_numpy_math_in_this_thread_only(monkeypatch):
    from gpunet.backend import get_backend  # noqa: PLC0415

    monkeypatch.setattr(jit_cache, "_decided", {})

    backend = get_backend("cpu")
    with jit_cache.forced_foreground():
        assert backend.kernels_ready()
        with backend.reference_ops():
            assert not backend.kernels_ready()
            seen = []
            import threading  # noqa: PLC0415

            other = threading.Thread(target=lambda: seen.append(backend.kernels_ready()))
            other.start()
            other.join()
            assert seen == [True]
        assert backend.kernels_ready()
