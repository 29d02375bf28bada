"""Which threads run a step of the fused epoch, by its rows (CPU).

A step on ``nb`` rows takes one of three routes, from the route table ``routes`` and the
team's T threads:

- ``ROUTE_ONE``: the calling thread alone (BLAS with its own threads);
- ``ROUTE_MODEL``: each of the T threads takes its share of every layer's output
  columns (:mod:`model_parallel`);
- ``ROUTE_DATA``: each thread takes its share of the rows through forward and backward,
  then its share of every update sweep (:mod:`data_parallel`).

The table is a flat int64 array of ``(min_rows, route)`` pairs in increasing
``min_rows``: a step takes the route of the last pair whose ``min_rows`` it reaches
(``ROUTE_ONE`` below the first). It is filled by ``gpunet.train.engines.routes``:
defaults, or the winners ``gpunet tune`` measured on the machine. With one thread every
step is ``ROUTE_ONE``; a data-parallel step needs a row per thread (model-parallel
below that).
"""

from __future__ import annotations

from numba import njit

ROUTE_ONE, ROUTE_MODEL, ROUTE_DATA = 0, 1, 2
ROUTE_NAMES = ("one-thread", "model-parallel", "data-parallel")


@njit(cache=True, nogil=True, error_model="numpy")
def step_route(nb, n_threads, routes):
    """The route of a step on ``nb`` rows with ``n_threads`` threads (``ROUTE_*``)."""
    if n_threads < 2:
        return ROUTE_ONE
    route = ROUTE_ONE
    for i in range(0, routes.shape[0], 2):
        if nb >= routes[i]:
            route = routes[i + 1]
    if route == ROUTE_DATA and nb < n_threads:
        return ROUTE_MODEL
    return route


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
