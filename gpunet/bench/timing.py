"""Timing: medians with their spread, and timers for host and CUDA work.

Host work is timed with ``time.perf_counter``. Work on a CUDA device is timed with CuPy
events recorded on the null stream around the call (``cupy.cuda.get_elapsed_time``),
after which the host waits for the end event, so a call that only queues kernels is
still charged for them. Seconds everywhere.
"""

from __future__ import annotations

import statistics
import time


def spread(values) -> dict:
    """``{"median", "min", "max", "n"}`` of a non-empty sequence of numbers."""
    values = sorted(values)
    return {
        "median": statistics.median(values),
        "min": values[0],
        "max": values[-1],
        "n": len(values),
    }


def seconds_of(fn, device: str = "cpu") -> float:
    """Seconds ``fn()`` takes on ``device`` (``"cpu"``: wall clock; ``"cuda..."``: CUDA
    events around it on the null stream, then a wait for the end event)."""
    if not device.startswith("cuda"):
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0
    import cupy  # noqa: PLC0415

    start, end = cupy.cuda.Event(), cupy.cuda.Event()
    start.record()
    fn()
    end.record()
    end.synchronize()
    return cupy.cuda.get_elapsed_time(start, end) / 1e3


def repeat_seconds(fn, repeats: int, device: str = "cpu", warmup: int = 1) -> list:
    """Seconds of ``repeats`` calls of ``fn()`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    return [seconds_of(fn, device) for _ in range(repeats)]
