"""Compiling kernel sets now: ``gpunet compile`` and the background compile process.

:mod:`gpunet.backend.jit_cache` decides whether a set of Numba kernels is ready and
starts ``python -m gpunet.train.warmup --background SET ...`` when it is not. This module
compiles a set by running what a fit runs, on tiny data: every optimizer kind, both
losses, and the batch sizes that take each route, so the type signatures a real fit
needs land in Numba's cache; then it writes the set's marker.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time

import numpy as np

from gpunet.backend import jit_cache


def compile_now(name: str, *, quiet: bool = False) -> float:
    """Compile set ``name`` in this process (a quick load when it is cached), write its
    marker, and count it as used; returns the seconds taken. Unless ``quiet``, says on
    stderr that it compiles and how long it took (when it was not cached)."""
    cached = jit_cache.is_cached(name)
    warm = _WARMERS[name]
    if not (quiet or cached):
        print(
            f"gpunet: compiling the {jit_cache.describe(name)} "
            f"(once; cached in {jit_cache.cache_dir()})",
            file=sys.stderr,
            flush=True,
        )
    start = time.perf_counter()
    with jit_cache.forced_foreground():
        warm()
    seconds = time.perf_counter() - start
    jit_cache.mark_compiled(name, seconds)
    if not (quiet or cached):
        print(f"gpunet: compiled in {seconds:.1f} s", file=sys.stderr, flush=True)
    return seconds


def _tiny_fits(engine: str, dtypes, batch_sizes, n: int) -> None:
    """Fits of one epoch on random data of ``n`` rows through ``engine``, for every
    optimizer kind, both losses, each dtype and each batch size."""
    from gpunet import nn, optim  # noqa: PLC0415
    from gpunet.train.loop import Trainer  # noqa: PLC0415

    rng = np.random.default_rng(0)
    optimizers = (
        lambda ps: optim.SGD(ps, lr=0.01, momentum=0.9),
        lambda ps: optim.Adam(ps, lr=1e-3),
        lambda ps: optim.RMSprop(ps, lr=1e-3),
        lambda ps: optim.Adagrad(ps, lr=1e-2),
    )
    for dtype in dtypes:
        X = rng.standard_normal((n, 6)).astype(dtype)
        labels = rng.integers(0, 3, n)
        targets = rng.standard_normal((n, 3)).astype(dtype)
        for i, make_optimizer in enumerate(optimizers):
            for loss, y in (("cross_entropy", labels), ("mse", targets)):
                model = nn.Sequential(
                    nn.Linear(6, 5, dtype=dtype),
                    nn.GELU() if i % 2 else nn.ReLU(),
                    nn.Linear(5, 3, dtype=dtype),
                )
                trainer = Trainer(
                    model,
                    loss,
                    make_optimizer(model.parameters()),
                    metrics=["accuracy"] if loss == "cross_entropy" else None,
                    engine=engine,
                    verbose=0,
                    progress=False,
                )
                for batch_size in batch_sizes:
                    trainer.fit(X, y, epochs=1, batch_size=batch_size, seed=0)


def _warm_ops() -> None:
    _tiny_fits("autograd", (np.float32, np.float64), (1, 64), n=96)


def _warm_epoch(dtype) -> None:
    from gpunet.train.engines.fused_cpu import FusedCpuEngine  # noqa: PLC0415
    from gpunet.train.engines.routes import forced_routes, only  # noqa: PLC0415

    # one-thread steps (batch 1 and 8: the skinny loops), then model-parallel and
    # data-parallel steps on two threads, whatever this machine's route table says
    _tiny_fits("fused", (dtype,), (1, 8), n=16)
    saved = FusedCpuEngine.threads
    FusedCpuEngine.threads = 2
    try:
        for route in ("model-parallel", "data-parallel"):
            with forced_routes(only(route)):
                _tiny_fits("fused", (dtype,), (32,), n=40)
    finally:
        FusedCpuEngine.threads = saved


_WARMERS = {
    "ops": _warm_ops,
    "epoch-float32": lambda: _warm_epoch(np.float32),
    "epoch-float64": lambda: _warm_epoch(np.float64),
}
assert set(_WARMERS) == set(jit_cache.SETS)


def time_load(name: str) -> float:
    """Seconds this process takes to load the fused-epoch set ``name`` from the cache
    (one tiny fit: what ``engine="auto"`` pays before its first fused step); recorded
    in the set's marker. Run it in a fresh process."""
    from gpunet import nn, optim  # noqa: PLC0415
    from gpunet.train.loop import Trainer  # noqa: PLC0415

    dtype = np.dtype(name.split("-", 1)[1])
    rng = np.random.default_rng(0)
    X = rng.standard_normal((64, 6)).astype(dtype)
    y = rng.integers(0, 3, 64)
    model = nn.Sequential(nn.Dense(6, 5, "relu", dtype=dtype), nn.Dense(5, 3, dtype=dtype))
    opt = optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    for engine in ("autograd", "fused"):  # the autograd kernels load first, untimed
        trainer = Trainer(model, "cross_entropy", opt, engine=engine, verbose=0, progress=False)
        start = time.perf_counter()
        trainer.fit(X, y, epochs=1, batch_size=32, seed=0)
        seconds = time.perf_counter() - start
    jit_cache.record_load_seconds(name, seconds)
    return seconds


def time_load_in_fresh_process(name: str) -> None:
    """Run :func:`time_load` for set ``name`` in a new interpreter (a load, not a reuse)."""
    subprocess.run([sys.executable, "-m", "gpunet.train.warmup", "--time-load", name], check=False)


def main(argv=None) -> int:
    """``python -m gpunet.train.warmup [--background] [SET ...]``: compile the sets (all
    by default) that are not cached, then time a fresh process loading each fused-epoch
    set (``--time-load SET``). With ``--background`` (how ``jit_cache.use`` starts it):
    at low priority, after any other such process on the same cache has finished."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["--time-load"]:
        print(f"loaded {args[1]} in {time_load(args[1]):.2f} s", flush=True)
        return 0
    background = "--background" in args
    names = [a for a in args if a != "--background"] or list(jit_cache.SETS)
    for name in names:
        if name not in jit_cache.SETS:
            print(f"unknown kernel set {name!r}; expected {jit_cache.SETS}", file=sys.stderr)
            return 2
    lock = None
    if background:
        with contextlib.suppress(OSError, AttributeError):
            os.nice(10)
        lock = _exclusive_lock(jit_cache.cache_dir() / "gpunet-compile.lock")
    try:
        for name in names:
            if not jit_cache.is_cached(name):
                seconds = compile_now(name, quiet=True)
                print(f"{time.strftime('%F %T')} compiled {name} in {seconds:.1f} s", flush=True)
                if name != "ops":  # what loading it costs a later process
                    time_load_in_fresh_process(name)
    finally:
        if lock is not None:
            lock.close()
    return 0


def _exclusive_lock(path):
    """An open file holding an exclusive lock on ``path`` (waiting for it), or None where
    file locks are unavailable."""
    try:
        import fcntl  # noqa: PLC0415
    except ImportError:
        return None
    f = open(path, "a")  # noqa: SIM115
    fcntl.flock(f, fcntl.LOCK_EX)
    return f


if __name__ == "__main__":
    sys.exit(main())
