"""The fused CPU engine's route table: from how many rows a step of the fused epoch
runs model-parallel, and from how many data-parallel, on T threads
(``gpunet.kernels.cpu.routes``).

The table comes, first found, from :func:`forced_routes` (``gpunet tune`` and tests),
from a measurement on this machine for this T (``gpunet tune`` writes it to
``gpunet-routes.json`` in the kernel cache directory, keyed by the CPU target and T),
or from :func:`default_routes`.
"""

from __future__ import annotations

import contextlib
import json

import numpy as np

from gpunet.backend import jit_cache

ROUTES_FILE = "gpunet-routes.json"
#: default: steps of fewer rows run on the calling thread (a barrier per layer and
#: direction costs more than splitting saves)
DEFAULT_MODEL_PARALLEL_MIN_ROWS = 32
#: default: data-parallel steps give every thread at least this many rows (each thread
#: packs all of every weight matrix, which pays only from a few hundred rows)
DEFAULT_DATA_PARALLEL_ROWS_PER_THREAD = 192

_forced: list[tuple[int, int]] = []
_measured: dict[int, np.ndarray] = {}  # threads -> the table read from the file


def default_routes(n_threads: int) -> tuple[int, int]:
    """``(model_parallel_min_rows, data_parallel_min_rows)`` where nothing was
    measured."""
    return DEFAULT_MODEL_PARALLEL_MIN_ROWS, DEFAULT_DATA_PARALLEL_ROWS_PER_THREAD * n_threads


def table_key(n_threads: int) -> str:
    """The key of a measured table: this machine's CPU target and T."""
    return json.dumps([jit_cache.machine_key(), int(n_threads)])


def route_table(n_threads: int) -> np.ndarray:
    """The route table for ``n_threads`` threads: (2,) int64 ``[model_parallel_min_rows,
    data_parallel_min_rows]``."""
    if _forced:
        return np.array(_forced[-1], np.int64)
    table = _measured.get(n_threads)
    if table is None:
        record = jit_cache.load_records(ROUTES_FILE).get(table_key(n_threads), {})
        try:
            rows = (int(record["model_parallel_min_rows"]), int(record["data_parallel_min_rows"]))
        except (KeyError, TypeError, ValueError):
            rows = default_routes(n_threads)
        table = _measured[n_threads] = np.array(rows, np.int64)
    return table


def save_route_table(n_threads: int, model_min: int, data_min: int, details: dict) -> None:
    """Keep a measured table for this machine and ``n_threads`` (``details``: what was
    measured, kept beside it)."""
    record = {"model_parallel_min_rows": int(model_min), "data_parallel_min_rows": int(data_min)}
    jit_cache.save_record(ROUTES_FILE, table_key(n_threads), {**record, **details})
    _measured.pop(n_threads, None)


@contextlib.contextmanager
def forced_routes(model_min: int, data_min: int):
    """Inside: every fused epoch uses this route table (a huge ``model_min`` keeps every
    step on one thread; ``model_min`` 1 and a huge ``data_min`` makes every step
    model-parallel; both 1, data-parallel)."""
    _forced.append((int(model_min), int(data_min)))
    try:
        yield
    finally:
        _forced.pop()
