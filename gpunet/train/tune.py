"""``gpunet tune``: measure the fused CPU engine's route table on this machine.

For each batch size of a ladder, a fused epoch of a benchmark network is timed on each
route the team of T threads can take (``gpunet.kernels.cpu.routes``): every step on the
calling thread, model-parallel, data-parallel. Each route's time is the median of
``repeats`` epochs after a warm-up epoch, the routes taking turns. The table kept is
the smallest ladder step from which a multi-thread route wins at that and every larger
size (model-parallel from there), and the same for data-parallel; where one never wins
for good, it is never taken. :func:`thresholds` turns the per-size winners into the two
thresholds; :mod:`gpunet.train.engines.routes` keeps them per machine and T.
"""

from __future__ import annotations

import statistics
import sys
import time

import numpy as np

from gpunet.kernels.cpu.routes import ROUTE_DATA, ROUTE_MODEL, ROUTE_NAMES, ROUTE_ONE

#: a row count no step reaches: the threshold of a route that never wins
NEVER = 1 << 62
LADDER = (8, 16, 32, 64, 128, 256, 384, 512, 1024, 2048, 4096)
QUICK_LADDER = (8, 32, 128, 512)
DEFAULT_WIDTHS = (784, 512, 512, 10)
#: each timed epoch has at least this many rows (and 4 steps)
MIN_EPOCH_ROWS = 4096


def forced_table(route: int) -> tuple[int, int]:
    """The route table that sends every step of at least one row per thread to
    ``route``."""
    return {ROUTE_ONE: (NEVER, NEVER), ROUTE_MODEL: (1, NEVER), ROUTE_DATA: (1, 1)}[route]


def thresholds(winners: dict[int, int]) -> tuple[int, int]:
    """``(model_parallel_min_rows, data_parallel_min_rows)`` from the fastest route per
    batch size (``{batch size: ROUTE_*}``): multi-thread steps from the smallest size
    from which no larger size's winner is the calling thread alone, data-parallel from
    the smallest from which every winner is data-parallel (``NEVER`` where none)."""
    model_min = data_min = NEVER
    for size in sorted(winners, reverse=True):
        if winners[size] == ROUTE_ONE:
            break
        model_min = size
    for size in sorted(winners, reverse=True):
        if winners[size] != ROUTE_DATA:
            break
        data_min = size
    return model_min, max(data_min, model_min)


def _epoch_seconds(route, n_threads, widths, batch_size, dtype, repeats, seed=0):
    """Median seconds of a fused epoch on ``route`` (after one warm-up epoch)."""
    from gpunet import nn, optim  # noqa: PLC0415
    from gpunet.train.engines.fused_cpu import FusedCpuEngine  # noqa: PLC0415
    from gpunet.train.engines.routes import forced_routes  # noqa: PLC0415
    from gpunet.train.loop import Trainer  # noqa: PLC0415

    rng = np.random.default_rng(seed)
    steps = max(4, -(-MIN_EPOCH_ROWS // batch_size))
    X = rng.standard_normal((steps * batch_size, widths[0])).astype(dtype)
    y = rng.integers(0, widths[-1], len(X))
    layers = []
    for i, (n_in, n_out) in enumerate(zip(widths, widths[1:])):
        last = i == len(widths) - 2
        layers.append(nn.Dense(n_in, n_out, None if last else "relu", dtype=dtype))
    model = nn.Sequential(*layers)
    trainer = Trainer(
        model,
        "cross_entropy",
        optim.SGD(model.parameters(), lr=1e-3, momentum=0.9),
        engine="fused",
        progress=False,
        verbose=0,
    )
    saved = FusedCpuEngine.threads
    FusedCpuEngine.threads = n_threads
    times = []
    try:
        with forced_routes(*forced_table(route)):
            for i in range(repeats + 1):
                start = time.perf_counter()
                trainer.fit(X, y, epochs=1, batch_size=batch_size, seed=i)
                if i:
                    times.append(time.perf_counter() - start)
    finally:
        FusedCpuEngine.threads = saved
    return statistics.median(times) / len(X)


def measure(n_threads, widths, ladder, dtype, repeats, log=None) -> dict:
    """``{batch size: {route name: samples/s}}`` of every route the team can take."""
    results = {}
    for batch_size in ladder:
        routes = [ROUTE_ONE]
        if n_threads > 1:
            routes.append(ROUTE_MODEL)
            if batch_size >= n_threads:
                routes.append(ROUTE_DATA)
        per_row = {
            r: _epoch_seconds(r, n_threads, widths, batch_size, dtype, repeats) for r in routes
        }
        results[batch_size] = {ROUTE_NAMES[r]: 1.0 / s for r, s in per_row.items()}
        if log is not None:
            cells = ", ".join(f"{name} {rate:,.0f}" for name, rate in results[batch_size].items())
            log(f"  batch {batch_size}: samples/s {cells}")
    return results


def tune(
    n_threads: int | None = None,
    widths=DEFAULT_WIDTHS,
    ladder=LADDER,
    dtype=np.float32,
    repeats: int = 3,
    save: bool = True,
    log=None,
) -> dict:
    """Measure the route table for ``n_threads`` (None: ``gpunet.get_num_threads()``)
    and keep it for this machine (``save``). Returns the record kept."""
    from gpunet.parallel import get_num_threads  # noqa: PLC0415
    from gpunet.train.engines.routes import save_route_table  # noqa: PLC0415

    n_threads = get_num_threads() if n_threads is None else int(n_threads)
    if log is not None:
        log(f"gpunet tune: {n_threads} threads, network {'-'.join(map(str, widths))}")
    rates = measure(n_threads, tuple(widths), tuple(ladder), dtype, repeats, log)
    winners = {size: ROUTE_NAMES.index(max(cells, key=cells.get)) for size, cells in rates.items()}
    model_min, data_min = thresholds(winners)
    details = {
        "threads": n_threads,
        "widths": list(widths),
        "dtype": np.dtype(dtype).name,
        "samples_per_s": {str(k): v for k, v in rates.items()},
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if save:
        save_route_table(n_threads, model_min, data_min, details)
    record = {"model_parallel_min_rows": model_min, "data_parallel_min_rows": data_min}
    if log is not None:
        log(
            "gpunet tune: model-parallel from "
            + (f"{model_min} rows" if model_min < NEVER else "never")
            + ", data-parallel from "
            + (f"{data_min} rows" if data_min < NEVER else "never")
            + (" (kept for this machine)" if save else "")
        )
    return {**record, **details}


def main_log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
