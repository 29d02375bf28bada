"""``gpunet tune``: measure the fused CPU engine's route table on this machine.

For each batch size of a ladder, a fused epoch of a benchmark network is timed on each
route the team of T threads can take (``gpunet.kernels.cpu.routes``): every step on the
calling thread, model-parallel, data-parallel; each route's time is the median of
``repeats`` epochs after a warm-up epoch. That is done twice: on the machine as it is,
and with one busy process beside it (a machine running anything else), where a thread
that waits at a barrier for a descheduled partner can lose a whole time slice. A route
scores the geometric mean of its shares of the fastest route's rate in the two
(:func:`scores`); the best-scoring route at each ladder size is taken from that size up to the next
(:func:`winners`, :func:`breakpoints`). :mod:`gpunet.train.engines.routes` keeps the
table per machine and T.
"""

from __future__ import annotations

import contextlib
import math
import statistics
import subprocess
import sys
import time

import numpy as np

LADDER = (1, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)
QUICK_LADDER = (1, 8, 32, 128, 512)
DEFAULT_WIDTHS = (784, 512, 512, 10)
#: each timed epoch has at least this many rows (and 4 steps)
MIN_EPOCH_ROWS = 2048
#: seconds of rest before each route's block (OpenBLAS threads spin ~0.1 s after a call)
PAUSE_S = 0.3


#: a route within this share of the fastest ties with it: the smaller size's winner
#: stays (a table does not flip on noise)
TIE = 0.03


STATES = ("idle", "busy")


def scores(rates: dict[str, dict[str, float]]) -> dict[str, float]:
    """Each route's share of the fastest route's rate in each machine state (``rates``:
    ``{state: {route: samples/s}}``), combined as a geometric mean: a route fast on an
    idle machine that collapses beside a busy process (or the reverse) scores below one
    close to the best in both."""
    routes = set.intersection(*(set(cells) for cells in rates.values()))
    return {
        route: math.prod(cells[route] / max(cells.values()) for cells in rates.values())
        ** (1.0 / len(rates))
        for route in sorted(routes)
    }


def winners(rates: dict[int, dict[str, float]], tie: float = TIE) -> dict[int, str]:
    """The route taken at each size (``rates``: ``{size: {route: score}}``, a score being
    samples/s or :func:`scores`): the best, unless the previous size's winner ties with
    it."""
    chosen = {}
    previous = None
    for size in sorted(rates):
        cells = rates[size]
        best = max(cells, key=cells.get)
        if previous in cells and cells[previous] >= (1.0 - tie) * cells[best]:
            best = previous
        chosen[size] = previous = best
    return chosen


def breakpoints(chosen: dict[int, str]) -> list[tuple[int, str]]:
    """The route table from the route taken per ladder size (``{batch size: route
    name}``): each size's route from that size up to the next, equal neighbours merged;
    the smallest size's route also below it."""
    table = []
    for size in sorted(chosen):
        if not table:
            table.append((0, chosen[size]))
        elif chosen[size] != table[-1][1]:
            table.append((size, chosen[size]))
    return table


def _fit_data(widths, batch_size, dtype, seed=0):
    """Random data of at least ``MIN_EPOCH_ROWS`` rows (and 4 steps) for the network."""
    rng = np.random.default_rng(seed)
    steps = max(4, -(-MIN_EPOCH_ROWS // batch_size))
    X = rng.standard_normal((steps * batch_size, widths[0])).astype(dtype)
    return X, rng.integers(0, widths[-1], len(X))


def _trainer(widths, dtype):
    """A fused-engine Trainer of the benchmark network (ReLU, softmax cross-entropy,
    SGD with momentum)."""
    from gpunet import nn, optim  # noqa: PLC0415
    from gpunet.train.loop import Trainer  # noqa: PLC0415

    layers = []
    for i, (n_in, n_out) in enumerate(zip(widths, widths[1:])):
        last = i == len(widths) - 2
        layers.append(nn.Dense(n_in, n_out, None if last else "relu", dtype=dtype))
    model = nn.Sequential(*layers)
    optimizer = optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    return Trainer(model, "cross_entropy", optimizer, engine="fused", progress=False, verbose=0)


def routes_for(n_threads: int, batch_size: int) -> list[str]:
    """The routes a team of ``n_threads`` can take for steps of ``batch_size`` rows."""
    if n_threads < 2:
        return ["one-thread"]
    return ["one-thread", "model-parallel"] + (["data-parallel"] if batch_size >= n_threads else [])


def measure(n_threads, widths, ladder, dtype, repeats, log=None) -> dict:
    """``{batch size: {route name: samples/s}}`` of every route the team can take: per
    size and route, after a pause, one warm-up epoch, then the median of ``repeats``
    epochs. Each route runs as a block, as a fit runs one route: BLAS threads left
    spinning by the previous route's products would take the cores a barrier waits
    for, and the pause lets them sleep."""
    from gpunet.train.engines.fused_cpu import FusedCpuEngine  # noqa: PLC0415
    from gpunet.train.engines.routes import forced_routes, only  # noqa: PLC0415

    trainer = _trainer(widths, dtype)
    saved = FusedCpuEngine.threads
    FusedCpuEngine.threads = n_threads
    results = {}
    try:
        for batch_size in ladder:
            X, y = _fit_data(widths, batch_size, dtype)
            rates = {}
            for name in routes_for(n_threads, batch_size):
                time.sleep(PAUSE_S)
                seconds = []
                with forced_routes(only(name)):
                    for i in range(repeats + 1):
                        start = time.perf_counter()
                        trainer.fit(X, y, epochs=1, batch_size=batch_size, seed=i)
                        if i:  # the first epoch warms up
                            seconds.append(time.perf_counter() - start)
                rates[name] = len(X) / statistics.median(seconds)
            results[batch_size] = rates
            if log is not None:
                cells = ", ".join(f"{k} {v:,.0f}" for k, v in rates.items())
                log(f"  batch {batch_size}: samples/s {cells}")
    finally:
        FusedCpuEngine.threads = saved
    return results


@contextlib.contextmanager
def machine_state(state: str):
    """Inside: the machine ``state``: "idle" (as it is) or "busy" (one process spinning
    beside this one)."""
    if state == "idle":
        yield
        return
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        yield
    finally:
        spinner.kill()
        spinner.wait()


def describe(table) -> str:
    """One line: each route and the rows from which it is taken."""
    return ", ".join(f"{route} from {rows} rows" for rows, route in table)


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
    and keep it for this machine (``save``). Returns the record: ``routes`` (the table)
    and what was measured."""
    from gpunet.parallel import get_num_threads  # noqa: PLC0415
    from gpunet.train.engines.routes import save_route_table  # noqa: PLC0415

    n_threads = get_num_threads() if n_threads is None else int(n_threads)
    if log is not None:
        log(f"gpunet tune: {n_threads} threads, network {'-'.join(map(str, widths))}")
    rates = {}  # state -> size -> route -> samples/s
    for state in STATES if n_threads > 1 else STATES[:1]:
        if log is not None:
            log(f" {state}:")
        with machine_state(state):
            rates[state] = measure(n_threads, tuple(widths), tuple(ladder), dtype, repeats, log)
    by_size = {size: scores({st: rates[st][size] for st in rates}) for size in ladder}
    table = breakpoints(winners(by_size))
    details = {
        "threads": n_threads,
        "widths": list(widths),
        "dtype": np.dtype(dtype).name,
        "samples_per_s": {
            state: {str(k): v for k, v in cells.items()} for state, cells in rates.items()
        },
        "scores": {str(k): v for k, v in by_size.items()},
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if save:
        save_route_table(n_threads, table, details)
    if log is not None:
        kept = " (kept for this machine)" if save else ""
        log(f"gpunet tune: {describe(table)}{kept}")
    return {"routes": table, **details}


def main_log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
