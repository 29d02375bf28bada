"""Training throughput: samples/s and GFLOP/s of one epoch, from batch 1 to the full
batch, for every implementation on one device.

A *row* is (device, network, optimizer, batch size). Its implementations (gpunet's
fused and autograd engines, PyTorch, and on the CPU the NumPy MLP and scikit-learn)
take turns, one timed repeat each after a short pause, so a slow spell of a shared
machine hits all of them alike; every repeat trains a slice of the epoch sized so the
slowest needs about ``target_seconds`` (``choose_slice``), the same slice for all.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from gpunet.bench.timing import seconds_of, spread

MIN_STEPS = 5  # a timed slice has at least this many optimizer steps (when the data allows)
# between turns: the previous peer's idle pool threads go to sleep (OpenBLAS's spin for
# a moment; PyTorch ran 4x slower right after a gpunet epoch on the 2-core VM)
PAUSE_S = 0.5
REFERENCE = "gpunet-fused"  # the gpunet row every ratio is taken from


def time_train(peer, X, y, batch_size: int) -> float:
    """Seconds for one ``peer.train`` call (one epoch over X, y), on the peer's device
    (CUDA events there, ``timing.seconds_of``)."""
    return seconds_of(lambda: peer.train(X, y, batch_size), getattr(peer, "device", "cpu"))


def choose_slice(row_peers, X, y, batch_size: int, target_s: float) -> int:
    """Warm every peer up, then pick how many samples one timed repeat uses.

    Full batch: all samples (one step). Otherwise each peer trains on growing probes
    until one takes >= target_s / 8, which gives its rate; the slice is sized so the
    slowest peer needs about ``target_s`` per repeat, or more where that would leave
    the fastest with less than ``target_s / 4`` (but at most ``4 * target_s`` for the
    slowest); a whole number of batches, at least ``MIN_STEPS`` steps, at most the
    whole epoch."""
    n = len(y)
    warm = min(n, 2 * batch_size)
    for peer in row_peers:
        peer.train(X[:warm], y[:warm], batch_size)  # compiles / allocates, untimed
    if batch_size >= n:
        return n
    cap = n // batch_size * batch_size
    rates = []
    for peer in row_peers:
        k = warm
        while True:
            seconds = time_train(peer, X[:k], y[:k], batch_size)
            if seconds >= target_s / 8 or k >= cap:
                break
            k = min(cap, k * 4)
        rates.append(k / seconds)
    slowest, fastest = min(rates), max(rates)
    wanted = int(min(max(slowest * target_s, fastest * target_s / 4), slowest * target_s * 4))
    return min(cap, max(wanted // batch_size * batch_size, MIN_STEPS * batch_size))


@dataclass(frozen=True)
class Row:
    """One row of the sweep: ``batch_size`` None means the full batch (``samples``)."""

    device: str
    network: str
    widths: tuple
    optimizer: str
    batch_size: int | None
    samples: int

    @property
    def batch(self) -> int:
        return self.samples if self.batch_size is None else min(self.batch_size, self.samples)

    @property
    def label(self) -> str:
        b = f"full ({self.samples})" if self.batch_size is None else str(self.batch)
        return f"throughput {self.device} {self.network} {self.optimizer} batch {b}"


def run_row(row: Row, peers, X, y, repeats: int, target_s: float, flops: int) -> list:
    """Time every peer of ``row`` (already built for its device and network) on the
    leading rows of ``X`` (N, in) float32 / ``y`` (N,) int64; one result dict per peer:
    ``samples_per_s`` ``{median, min, max, n}``, ``gflops`` (median, matmul FLOPs of
    ``flops`` per sample), every repeat's ``seconds``, and on the reference gpunet row
    ``ratios`` {peer key: gpunet samples/s / peer samples/s}."""
    batch = row.batch
    peers = [p for p in peers if p.supports(batch, row.samples)]
    for peer in peers:
        peer.setup(row.optimizer, np.float32)
    n_slice = choose_slice(peers, X, y, batch, target_s)
    for peer in peers:  # restart from the same weights: the same updates for all
        peer.setup(row.optimizer, np.float32)
        if batch < row.samples:  # a full-batch step is too costly to repeat untimed
            peer.train(X[: 2 * batch], y[: 2 * batch], batch)
    seconds = {peer.key: [] for peer in peers}
    for _ in range(repeats):
        for peer in peers:
            time.sleep(PAUSE_S)
            seconds[peer.key].append(time_train(peer, X[:n_slice], y[:n_slice], batch))
    results = []
    for peer in peers:
        rate = spread([n_slice / t for t in seconds[peer.key]])
        results.append(
            {
                "device": row.device,
                "network": row.network,
                "widths": list(row.widths),
                "optimizer": row.optimizer,
                "batch_size": batch,
                "full_batch": row.batch_size is None,
                "framework": peer.key,
                "label": peer.label,
                "slice_samples": n_slice,
                "samples_per_s": rate,
                "gflops": rate["median"] * flops / 1e9,
                "seconds": seconds[peer.key],
                "info": peer.info(),
            }
        )
    add_ratios(results)
    return results


def add_ratios(results: list) -> None:
    """On the reference gpunet result of a row: ``ratios[key]`` = its median samples/s
    divided by that of every other implementation ``key`` of the row."""
    ref = next((r for r in results if r["framework"] == REFERENCE), None)
    if ref is None:
        return
    ref["ratios"] = {
        r["framework"]: ref["samples_per_s"]["median"] / r["samples_per_s"]["median"]
        for r in results
        if r is not ref
    }
