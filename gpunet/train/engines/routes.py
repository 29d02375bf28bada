"""The fused CPU engine's route table: which steps of the fused epoch run on the
calling thread, model-parallel or data-parallel on T threads, by their rows
(``gpunet.kernels.cpu.routes``).

A table is a list of ``(min_rows, route name)`` pairs in increasing ``min_rows``
(``ROUTE_NAMES``: "one-thread", "model-parallel", "data-parallel"). It comes, first
found, from :func:`forced_routes` (``gpunet tune`` and tests), from a measurement on
this machine for this T (``gpunet tune`` keeps it in ``gpunet-routes.json`` in the
kernel cache directory, keyed by the CPU target and T), or from :func:`default_routes`.
"""

from __future__ import annotations

import contextlib
import json

import numpy as np

from gpunet.backend import jit_cache
from gpunet.kernels.cpu.routes import ROUTE_NAMES

ROUTES_FILE = "gpunet-routes.json"
#: default: steps of fewer rows run on the calling thread (a barrier per layer and
#: direction costs more than splitting saves)
DEFAULT_MODEL_PARALLEL_MIN_ROWS = 32
#: default: data-parallel steps give every thread at least this many rows (each thread
#: packs all of every weight matrix, which pays only from a few hundred rows)
DEFAULT_DATA_PARALLEL_ROWS_PER_THREAD = 192

_forced: list[list] = []
_measured: dict[int, np.ndarray] = {}  # threads -> the table read from the file


def default_routes(n_threads: int) -> list[tuple[int, str]]:
    """The table where nothing was measured."""
    return [
        (0, "one-thread"),
        (DEFAULT_MODEL_PARALLEL_MIN_ROWS, "model-parallel"),
        (DEFAULT_DATA_PARALLEL_ROWS_PER_THREAD * n_threads, "data-parallel"),
    ]


def pack(table) -> np.ndarray:
    """The kernel's form of a table: flat int64 ``(min_rows, ROUTE_*)`` pairs. Raises
    ValueError for an unknown route or rows out of order."""
    flat = []
    last = -1
    for min_rows, route in table:
        if route not in ROUTE_NAMES:
            raise ValueError(f"unknown route {route!r}; expected one of {ROUTE_NAMES}")
        if int(min_rows) <= last:
            raise ValueError(f"route table rows out of order at {min_rows}")
        last = int(min_rows)
        flat += [last, ROUTE_NAMES.index(route)]
    return np.array(flat, np.int64)


def table_key(n_threads: int) -> str:
    """The key of a measured table: this machine's CPU target and T."""
    return json.dumps([jit_cache.machine_key(), int(n_threads)])


def measured_table(n_threads: int) -> list | None:
    """The table ``gpunet tune`` kept for this machine and ``n_threads``, if any."""
    record = jit_cache.load_records(ROUTES_FILE).get(table_key(n_threads), {})
    table = record.get("routes") if isinstance(record, dict) else None
    try:
        pack(table)
    except (TypeError, ValueError):
        return None
    return [(int(rows), route) for rows, route in table]


def route_table(n_threads: int) -> np.ndarray:
    """The packed route table for ``n_threads`` threads (:func:`pack`)."""
    if _forced:
        return _forced[-1]
    table = _measured.get(n_threads)
    if table is None:
        table = _measured[n_threads] = pack(measured_table(n_threads) or default_routes(n_threads))
    return table


def save_route_table(n_threads: int, table, details: dict) -> None:
    """Keep a measured table for this machine and ``n_threads`` (``details``: what was
    measured, kept beside it)."""
    pack(table)
    record = {"routes": [[int(rows), route] for rows, route in table], **details}
    jit_cache.save_record(ROUTES_FILE, table_key(n_threads), record)
    _measured.pop(n_threads, None)


@contextlib.contextmanager
def forced_routes(table):
    """Inside: every fused epoch uses ``table`` (pairs as in :func:`default_routes`)."""
    _forced.append(pack(table))
    try:
        yield
    finally:
        _forced.pop()


def only(route: str) -> list[tuple[int, str]]:
    """The table that sends every step to ``route`` (within what T allows)."""
    return [(0, route)]
