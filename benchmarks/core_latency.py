"""Round-trip latency between two CPUs: one thread stores a flag, the other answers.

On the 2-core EPYC VM this tells where the host has put the two vCPUs: 50-120 ns
while they share a die, 300-650 ns for minutes at a time while they do not. In the
second state every two-thread step that hands data between its threads slows (the
128-row fused epoch by about a third), so the throughput benchmark records it with
each round of a row.

Run alone: ``python benchmarks/core_latency.py [rounds]``.
"""

from __future__ import annotations

import os
import statistics
import sys
import threading
import time

import numpy as np
from numba import njit

from gpunet.kernels.cpu.threads import atomic_load, atomic_store

WARM_UP_ROUNDS = 100  # untimed: the answering thread starting and pinning itself


@njit(nogil=True, cache=True)
def _ping(flags, first, stop):
    for i in range(first, stop):
        atomic_store(flags, 0, 2 * i + 1)
        while atomic_load(flags, 0) != 2 * i + 2:
            pass


@njit(nogil=True, cache=True)
def _pong(flags, stop):
    for i in range(stop):
        while atomic_load(flags, 0) != 2 * i + 1:
            pass
        atomic_store(flags, 0, 2 * i + 2)


def round_trip_ns(rounds: int = 20_000) -> float | None:
    """Median nanoseconds per round trip between the first two CPUs this process may
    use (over 5 batches of ``rounds // 5``), each thread pinned to its CPU; None where
    fewer than 2 CPUs are usable or threads cannot be pinned."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None
    batch = max(1, rounds // 5)
    saved = os.sched_getaffinity(0)
    times = []
    try:
        os.sched_setaffinity(0, {cpus[0]})  # this thread only (Linux: per thread)
        for _ in range(5):
            flags = np.zeros(16, np.int64)  # the flag alone on its cache line

            def answer(flags=flags):
                os.sched_setaffinity(0, {cpus[1]})
                _pong(flags, WARM_UP_ROUNDS + batch)

            thread = threading.Thread(target=answer)
            thread.start()
            _ping(flags, 0, WARM_UP_ROUNDS)
            t0 = time.perf_counter()
            _ping(flags, WARM_UP_ROUNDS, WARM_UP_ROUNDS + batch)
            times.append((time.perf_counter() - t0) / batch * 1e9)
            thread.join()
    finally:
        os.sched_setaffinity(0, saved)
    return statistics.median(times)


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    for _ in range(n):
        print(f"{round_trip_ns():.0f} ns")
        time.sleep(1)
