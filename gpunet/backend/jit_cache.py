"""Which sets of compiled kernels are ready, and compiling the missing ones in the background.

Numba compiles a kernel on its first call and caches the machine code on disk. On a
2-core machine that costs about 20 s for the autograd engine's kernels and 1-2 minutes
for the fused epoch, which made a user's first ``gpunet train`` sit silent for two
minutes. Instead, code that would use a kernel set asks :func:`use` first:

- A set is *ready* when this process compiled it, or a marker file in Numba's cache
  directory says a process compiled it for the current kernel sources, Numba, Python and
  CPU (:func:`marker_path`). Loading a ready set from the cache takes well under a second.
- When it is not ready, ``use`` returns False (the caller takes the NumPy reference ops,
  or the autograd engine instead of the fused one) and starts
  ``python -m gpunet.train.warmup --background SET ...`` as a low-priority background
  process that compiles the set into the cache (by running tiny fits) and writes the
  marker. A later fit or run finds
  it ready. One notice says so, once per process.
- A process decides once per set: its answer never changes mid-run, so one process never
  mixes the reference ops with the kernels.

``GPUNET_COMPILE=foreground`` (or :func:`set_compile_mode`) restores Numba's own
behaviour: every set counts as ready and compiles on first use. ``gpunet compile``
(:mod:`gpunet.train.warmup`) compiles sets now, in the foreground (Docker images, CI).

Sets: ``ops`` (the dense, loss and optimizer-update kernels of the autograd engine, float32
and float64) and ``epoch-float32`` / ``epoch-float64`` (the fused epoch, :mod:`.fused_mlp`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

MODES = ("background", "foreground")
SETS = ("ops", "epoch-float32", "epoch-float64")
MARKER_FORMAT = 1

_mode: str | None = None
_decided: dict[str, bool] = {}  # set -> the answer use() gave this process
_compiled_here: set[str] = set()
_background: subprocess.Popen | None = None
_background_started = 0.0
_requested: list[str] = []  # sets handed to background processes
_lock = threading.Lock()


# ---------------------------------------------------------------------- mode
def compile_mode() -> str:
    """ "background" (default) or "foreground", from :func:`set_compile_mode` or
    ``GPUNET_COMPILE``."""
    if _mode is not None:
        return _mode
    mode = os.environ.get("GPUNET_COMPILE", "background").strip().lower() or "background"
    if mode not in MODES:
        raise ValueError(f"GPUNET_COMPILE={mode!r}; expected one of {MODES}")
    return mode


def set_compile_mode(mode: str | None) -> None:
    """Set the mode for this process (None: back to ``GPUNET_COMPILE``). Answers already
    given by :func:`use` stay."""
    global _mode
    if mode is not None and mode not in MODES:
        raise ValueError(f"unknown compile mode {mode!r}; expected one of {MODES}")
    _mode = mode


def epoch_set(dtype) -> str:
    """The name of the fused-epoch set for a float dtype."""
    import numpy as np  # noqa: PLC0415

    return f"epoch-{np.dtype(dtype).name}"


# -------------------------------------------------------------------- markers
def cache_dir() -> Path:
    """Where Numba caches this package's kernels (``NUMBA_CACHE_DIR`` or ``__pycache__``
    next to the sources, or a user-wide directory when that is not writable)."""
    from gpunet.kernels.cpu import threads  # noqa: PLC0415

    return Path(threads.wait_for._cache._cache_path)


def stamp() -> str:
    """Kernel sources, Numba, Python and the CPU target the cached machine code is for."""
    import numba  # noqa: PLC0415

    from gpunet.kernels.cpu import package_stamp  # noqa: PLC0415

    h = hashlib.sha256(package_stamp())
    h.update(repr((numba.__version__, sys.version, _cpu_magic(), MARKER_FORMAT)).encode())
    return h.hexdigest()[:32]


def marker_path(name: str) -> Path:
    """The marker file saying set ``name`` is in the cache for the current stamp."""
    _check_name(name)
    return cache_dir() / f"gpunet-ready-{name}-{stamp()}.json"


def is_cached(name: str) -> bool:
    """Whether a process compiled set ``name`` into the cache for the current stamp."""
    try:
        return marker_path(name).is_file()
    except (OSError, AttributeError):
        return False


def is_ready(name: str) -> bool:
    """Compiled in this process, or cached."""
    return name in _compiled_here or is_cached(name)


def _check_name(name: str) -> None:
    if name not in SETS:
        raise ValueError(f"unknown kernel set {name!r}; expected one of {SETS}")


# ------------------------------------------------------------------------ use
def use(name: str) -> bool:
    """Whether this process uses the compiled kernels of set ``name``; the first answer
    for a set is kept for the process's life. In background mode, a set that is not ready
    is False and starts compiling in a background process."""
    answer = _decided.get(name)
    if answer is not None:  # the hot path: every op of an autograd step asks
        return answer
    _check_name(name)
    with _lock:
        answer = _decided.get(name)
        if answer is None:
            answer = compile_mode() == "foreground" or is_ready(name)
            if not answer:
                _start_background(name)
            _decided[name] = answer
        return answer


def describe(name: str) -> str:
    """A set's name for messages."""
    if name == "ops":
        return "CPU kernels of the autograd engine"
    return f"fused CPU epoch kernels for {name.split('-', 1)[1]}"


@contextlib.contextmanager
def forced_foreground():
    """Within: every set counts as ready (compiles on first use), in this thread's view
    of the mode."""
    global _mode
    saved = _mode
    _mode = "foreground"
    try:
        yield
    finally:
        _mode = saved


def mark_compiled(name: str, seconds: float) -> None:
    """Record that this process compiled set ``name`` (in ``seconds``): it counts as used
    here, and its marker is written for later processes (atomically; an unwritable cache
    directory only means it compiles again next time)."""
    _check_name(name)
    with _lock:
        _compiled_here.add(name)
        _decided[name] = True
    record = {"set": name, "seconds": round(seconds, 3), "format": MARKER_FORMAT}
    _write_json(marker_path(name), record)


def recorded_load_seconds(name: str) -> float | None:
    """How long loading set ``name`` from the cache took when last measured on this
    machine (its marker's ``load_seconds``), or None."""
    try:
        value = json.loads(marker_path(name).read_text()).get("load_seconds")
    except (OSError, ValueError, AttributeError):
        return None
    return float(value) if isinstance(value, (int, float)) and value >= 0 else None


def record_load_seconds(name: str, seconds: float) -> None:
    """Store a measured load time of set ``name`` in its marker (if it has one)."""
    path = marker_path(name)
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    record["load_seconds"] = round(seconds, 4)
    _write_json(path, record)


def _write_json(path: Path, record: dict) -> None:
    """Write ``record`` to ``path`` atomically; an unwritable cache directory only means
    the set compiles (or is measured) again next time."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(record))
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()


def load_records(filename: str) -> dict:
    """The JSON object in ``filename`` of the cache directory (measurements kept on this
    machine: ``engine="auto"``'s choices, the route tables of ``gpunet tune``), or {}."""
    try:
        records = json.loads((cache_dir() / filename).read_text())
    except (OSError, ValueError, AttributeError):
        return {}
    return records if isinstance(records, dict) else {}


def save_record(filename: str, key: str, record: dict) -> None:
    """Add or replace one entry of ``filename`` (atomically; lost updates between
    processes only cost a measurement)."""
    records = load_records(filename)
    records[key] = record
    with contextlib.suppress(OSError, AttributeError):
        _write_json(cache_dir() / filename, records)


CHOICES_FILE = "gpunet-auto-choices.json"


def load_choices() -> dict:
    """``engine="auto"``'s measured choices on this machine (keys carry :func:`stamp`),
    or {}."""
    return load_records(CHOICES_FILE)


def save_choice(key: str, record: dict) -> None:
    """Add or replace one ``engine="auto"`` choice."""
    save_record(CHOICES_FILE, key, record)


def _cpu_magic() -> tuple:
    """The CPU target Numba compiles for: (triple, CPU name, features)."""
    from numba.core.registry import cpu_target  # noqa: PLC0415

    return cpu_target.target_context.codegen().magic_tuple()


def machine_key() -> str:
    """The CPU target Numba compiles for, hashed: what a measurement of this machine's
    kernels is keyed by, across kernel versions."""
    return hashlib.sha256(repr(_cpu_magic()).encode()).hexdigest()[:16]


# ----------------------------------------------------------------- background
def _start_background(name: str) -> None:
    """Start a low-priority process compiling set ``name`` (and ``ops`` first, if it is
    missing too); ``_lock`` is held. Sets already handed to one are not handed again. Such
    processes take turns through a lock file and skip what an earlier one cached."""
    global _background
    names = [n for n in dict.fromkeys(("ops", name)) if n not in _requested and not is_ready(n)]
    if not names:
        return
    _requested.extend(names)
    try:
        log = open(cache_dir() / "gpunet-compile.log", "ab")  # noqa: SIM115
    except OSError:
        log = subprocess.DEVNULL
    env = dict(os.environ, GPUNET_COMPILE="foreground")
    try:
        _background = subprocess.Popen(
            [sys.executable, "-m", "gpunet.train.warmup", "--background", *names],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            env=env,
            start_new_session=True,  # outlives this process, untouched by its Ctrl-C
        )
    except OSError as err:
        print(f"gpunet: could not start the background compile: {err}", file=sys.stderr)
        return
    else:
        global _background_started
        _background_started = time.monotonic()
    finally:
        if log is not subprocess.DEVNULL:
            log.close()
    what = " and ".join(describe(n) for n in names)
    if _requested[: len(names)] == names:  # the process's first notice
        message = (
            f"gpunet: compiling the {what} in the background (pid {_background.pid}, cached "
            f"in {cache_dir()}); until they are ready, runs use NumPy's ops and the "
            "autograd engine ('gpunet compile' compiles them now)"
        )
    else:
        message = f"gpunet: also compiling the {what} in the background (pid {_background.pid})"
    print(message, file=sys.stderr, flush=True)


def background_process() -> subprocess.Popen | None:
    """The background compile this process started, if any."""
    return _background


def background_status() -> str | None:
    """One line on the background compile this process started (None if none): done
    and how long it took, or still running and where its log is."""
    if _background is None:
        return None
    log = cache_dir() / "gpunet-compile.log"
    if _background.poll() is None:
        return (
            f"gpunet: kernels still compiling in the background (pid {_background.pid}; "
            f"log {log}); later runs use them once compiled"
        )
    seconds = time.monotonic() - _background_started
    if _background.returncode != 0:
        return f"gpunet: the background compile failed (exit {_background.returncode}); see {log}"
    return f"gpunet: kernels compiled in the background within {seconds:.0f} s; later runs use them"
