"""Which threads run a step of the fused epoch, by its rows (CPU).

A step on ``nb`` rows takes one of three routes, from the route table ``routes`` (2,)
int64 ``[model_parallel_min_rows, data_parallel_min_rows]`` (filled by
``gpunet.train.engines.routes``: defaults, or measured on the machine by ``gpunet
tune``) and the team's T threads:

- ``ROUTE_ONE``: the calling thread alone (T = 1, or fewer than
  ``model_parallel_min_rows`` rows);
- ``ROUTE_MODEL``: each of the T threads takes its share of every layer's output
  columns (:mod:`model_parallel`);
- ``ROUTE_DATA``: from ``data_parallel_min_rows`` rows, each thread takes its share of
  the rows through forward and backward, then its share of every update sweep
  (:mod:`data_parallel`).
"""

from __future__ import annotations

from numba import njit

ROUTE_ONE, ROUTE_MODEL, ROUTE_DATA = 0, 1, 2
ROUTE_NAMES = ("one-thread", "model-parallel", "data-parallel")


@njit(cache=True, nogil=True, error_model="numpy")
def step_route(nb, n_threads, routes):
    """The route of a step on ``nb`` rows with ``n_threads`` threads (``ROUTE_*``)."""
    if n_threads < 2 or nb < routes[0]:
        return ROUTE_ONE
    if nb >= routes[1] and nb >= n_threads:
        return ROUTE_DATA
    return ROUTE_MODEL


@njit(cache=True, nogil=True, error_model="numpy")
def _step_scratch_rows(nb, n_threads, routes):
    """Rows of scratch a step on ``nb`` rows needs (the calling thread's, each
    worker's) and whether it runs on several threads. A data-parallel step gives thread
    0 ``nb // T`` rows and no thread more than ``ceil(nb / T)``; a model-parallel one
    carves the calling thread's scratch for all."""
    route = step_route(nb, n_threads, routes)
    if route == ROUTE_DATA:
        return nb // n_threads, -(-nb // n_threads), True
    return nb, 0, route == ROUTE_MODEL


@njit(cache=True, nogil=True, error_model="numpy")
def scratch_rows(n, batch_size, n_threads, routes):
    """Rows of scratch an epoch of ``n`` rows in batches of ``batch_size`` needs on the
    calling thread and on each worker, and whether any step runs on several threads."""
    full = _step_scratch_rows(min(batch_size, n), n_threads, routes)
    last = _step_scratch_rows(n % batch_size, n_threads, routes)
    return max(full[0], last[0]), max(full[1], last[1]), full[2] or last[2]
