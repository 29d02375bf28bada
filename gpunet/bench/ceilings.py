"""What the hardware allows, measured in the same run: the sgemm rate (float32
``A (m, in) @ B (in, out)`` at a network's first two layer shapes, on the CPU with
NumPy and on a GPU with CuPy) and, on a GPU, copy bandwidth (device to device, host to
device). Each is a median of ``repeats`` timed calls after a warm-up, with the spread."""

from __future__ import annotations

import functools

import numpy as np

from gpunet.bench.timing import repeat_seconds, spread


@functools.lru_cache(maxsize=2)
def sgemm_operands(widths: tuple, m: int) -> list:
    """``[(A (m, in), B (in, out), C (m, out))]`` float32 for the first two layers."""
    rng = np.random.default_rng(1)
    operands = []
    for k_in, n_out in list(zip(widths[:-1], widths[1:]))[:2]:
        A = rng.random((m, k_in), dtype=np.float32)
        B = rng.random((k_in, n_out), dtype=np.float32)
        operands.append((A, B, np.empty((m, n_out), np.float32)))
    return operands


def median_seconds(fn, repeats: int) -> float:
    """Median seconds of ``fn()`` over ``repeats`` calls, after one untimed call."""
    return spread(repeat_seconds(fn, repeats))["median"]


def matmul_rate(widths, repeats: int, m: int = 4096) -> dict:
    """GFLOP/s of float32 ``np.matmul`` (m x in) @ (in x out) for the first two layers'
    shapes, median of ``repeats`` after one warm-up; ``peak`` is the better of the two."""
    rates = {}
    for A, B, C in sgemm_operands(tuple(widths), m):
        k_in, n_out = B.shape
        seconds = median_seconds(lambda A=A, B=B, C=C: np.matmul(A, B, out=C), repeats)
        rates[f"{m}x{k_in} @ {k_in}x{n_out}"] = 2 * m * k_in * n_out / seconds / 1e9
    return {"gflops": rates, "peak": max(rates.values())}


def sgemm(device: str, widths, repeats: int, m: int = 4096) -> dict:
    """The sgemm ceiling on ``device``: GFLOP/s of the better of the first two layer
    shapes at ``m`` rows, ``{"median", "min", "max", "n"}`` over the repeats."""
    best = None
    for A, B, C in sgemm_operands(tuple(widths), m):
        if device.startswith("cuda"):
            import cupy  # noqa: PLC0415

            A, B, C = cupy.asarray(A), cupy.asarray(B), cupy.asarray(C)
            xp = cupy
        else:
            xp = np
        times = repeat_seconds(lambda A=A, B=B, C=C, xp=xp: xp.matmul(A, B, out=C), repeats, device)
        flop = 2 * A.shape[0] * A.shape[1] * B.shape[1]
        rates = spread([flop / t / 1e9 for t in times])
        rates["shape"] = f"{A.shape[0]}x{A.shape[1]} @ {B.shape[0]}x{B.shape[1]}"
        if best is None or rates["median"] > best["median"]:
            best = rates
    return {"device": device, "kind": "sgemm", "unit": "GFLOP/s", **best}


def copy_bandwidth(device: str, repeats: int, mbytes: int = 256) -> list:
    """GB/s of a ``mbytes`` MB copy on a CUDA device: device to device (read + write
    counted once each) and host (pinned) to device."""
    import cupy  # noqa: PLC0415

    n = mbytes * 2**20
    src, dst = cupy.empty(n, np.uint8), cupy.empty(n, np.uint8)
    d2d = repeat_seconds(lambda: dst.__setitem__(Ellipsis, src), repeats, device)
    host = cupy.cuda.alloc_pinned_memory(n)
    host_array = np.frombuffer(host, np.uint8, n)
    h2d = repeat_seconds(lambda: dst.set(host_array), repeats, device)
    return [
        {
            "device": device,
            "kind": "copy d2d",
            "unit": "GB/s",
            **spread([2 * n / t / 1e9 for t in d2d]),
        },
        {
            "device": device,
            "kind": "copy h2d",
            "unit": "GB/s",
            **spread([n / t / 1e9 for t in h2d]),
        },
    ]


def measure(device: str, widths, repeats: int, m: int = 4096) -> list:
    """Every ceiling of ``device``: the sgemm, and on a GPU the copy bandwidths."""
    rows = [sgemm(device, widths, repeats, m)]
    if device.startswith("cuda"):
        rows += copy_bandwidth(device, repeats)
    return rows
