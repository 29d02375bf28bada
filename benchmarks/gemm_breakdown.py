#!/usr/bin/env python
"""Where a large-batch epoch's time goes against the sgemm rate, in one process.

    python benchmarks/gemm_breakdown.py                       # batches 512 and 4096, SGD
    python benchmarks/gemm_breakdown.py --batch-sizes 4096 --optimizer adam --rounds 7

``train_throughput.py`` reports an epoch's GFLOP/s against an ``np.matmul`` rate measured
at the start and end of a run that takes minutes, while this VM's BLAS rate swings by 2x
within minutes. This script separates the two terms, round by round, in one process:

- **reference**: the sgemm of the first two layers' shapes, 4096 x in @ in x out;
- **GEMMs**: each matrix product of a training step, at the step's shapes, timed alone
  through the functions both CPU paths call (``kernels.cpu.blas``): per layer the
  forward ``a @ W.T``, ``dx = dz @ W`` (not for the first layer) and ``dW = dz.T @ a``;
  their FLOP-weighted rate is what the step would reach if nothing else ran and no
  product slowed the next one down;
- **epoch**: gpunet's ``fit`` over a slice of the data (the fused engine, as the
  benchmark runs it), in matmul GFLOP/s.

Every term calls the same BLAS: the one Numba's ``np.dot`` binds to (SciPy's OpenBLAS).
NumPy's ``np.matmul`` is a second OpenBLAS with its own worker thread; timed right after
gpunet trained, it runs at about half speed while the other library's idle worker
spin-waits (see benchmarks/README.md), so it would understate the reference here.

From 257 rows a fused step makes exactly these products (below that, SGD adds ``dW``
into its momentum buffer, and batches of up to 16 rows take other routes: see
``kernels/cpu/blas.py``). Each line is the median over the rounds.
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
from functools import partial
from pathlib import Path

import numba
import numpy as np
from numba import njit

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `benchmarks` as a package
import gpunet  # noqa: E402
from benchmarks import peers  # noqa: E402
from benchmarks.train_throughput import (  # noqa: E402
    DEFAULT_WIDTHS,
    cpu_name,
    flops_per_sample,
    make_data,
    median_seconds,
    sgemm_operands,
    time_train,
)
from gpunet.kernels.cpu import blas  # noqa: E402

REFERENCE_ROWS = 4096


@njit(cache=True)
def _sgemm(a, b, out):
    """``out = a @ b`` by the BLAS the kernels call."""
    np.dot(a, b, out)


def step_products(widths, batch_size: int, seed: int = 0) -> dict:
    """``{name: (call, flop)}``: each matrix product of one training step at
    ``batch_size`` rows, on random operands of the step's shapes."""
    rng = np.random.default_rng(seed)
    weights = [rng.standard_normal((o, i)).astype(np.float32) for i, o in zip(widths, widths[1:])]
    acts = [rng.random((batch_size, w), dtype=np.float32) for w in widths]
    grads = [rng.standard_normal((batch_size, w)).astype(np.float32) for w in widths]
    weight_grads = [np.empty_like(W) for W in weights]
    products = {}
    for l, W in enumerate(weights):
        flop = 2 * batch_size * W.size
        # the next layer's activations and gradients give outputs of the right shape
        a, a_next, dz, dz_prev = acts[l], acts[l + 1], grads[l + 1], grads[l]
        products[f"forward {l + 1}"] = (partial(blas.matmul_nt, a, W, a_next), flop)
        if l > 0:
            products[f"dx {l + 1}"] = (partial(blas.matmul_nn, dz, W, dz_prev), flop)
        products[f"dW {l + 1}"] = (partial(blas.weight_grad, dz, a, weight_grads[l]), flop)
    return products


def reference_products(widths) -> dict:
    """``{name: (call, flop)}``: the sgemm of the first two layers' shapes (the operands
    ``train_throughput`` times with ``np.matmul``)."""
    products = {}
    for a, b, out in sgemm_operands(tuple(widths), REFERENCE_ROWS):
        k_in, n_out = b.shape
        flop = 2 * REFERENCE_ROWS * k_in * n_out
        products[f"{REFERENCE_ROWS}x{k_in} @ {k_in}x{n_out}"] = (partial(_sgemm, a, b, out), flop)
    return products


def breakdown(widths, batch_size: int, optimizer: str, rounds: int, repeats: int, X, y) -> dict:
    """Per round: the reference, each product alone, then one epoch over ``X``;
    returns GFLOP/s medians over the rounds: ``reference`` (the better shape),
    ``products`` {name: rate}, ``gemms`` (all products, FLOP-weighted) and ``epoch``."""
    peer = peers.GpunetPeer(list(widths))
    peer.setup(optimizer, np.float32)
    peer.train(X[: 2 * batch_size], y[: 2 * batch_size], batch_size)  # compile, allocate
    products = step_products(widths, batch_size)
    references = reference_products(widths)
    epoch_flop = len(y) * flops_per_sample(widths)["total"]
    seen = {"reference": [], "gemms": [], "epoch": [], **{name: [] for name in products}}
    for _ in range(rounds):
        seen["reference"].append(
            max(flop / median_seconds(call, repeats) / 1e9 for call, flop in references.values())
        )
        total_s = total_flop = 0.0
        for name, (call, flop) in products.items():
            seconds = median_seconds(call, repeats)
            seen[name].append(flop / seconds / 1e9)
            total_s, total_flop = total_s + seconds, total_flop + flop
        seen["gemms"].append(total_flop / total_s / 1e9)
        seen["epoch"].append(epoch_flop / time_train(peer, X, y, batch_size) / 1e9)
    med = {name: statistics.median(rates) for name, rates in seen.items()}
    return {
        "batch_size": batch_size,
        "optimizer": optimizer,
        "reference": med["reference"],
        "products": {name: med[name] for name in products},
        "gemms": med["gemms"],
        "epoch": med["epoch"],
        "epoch_per_round": seen["epoch"],
        "reference_per_round": seen["reference"],
        "gemms_per_round": seen["gemms"],
    }


def markdown(results) -> str:
    """One table per result: GFLOP/s and share of the reference."""
    lines = []
    for r in results:
        ref = r["reference"]
        lines += [
            f"### {r['optimizer']}, batch {r['batch_size']}",
            "",
            "| term | GFLOP/s | % of reference |",
            "|---|---|---|",
            f"| reference sgemm | {ref:.1f} | 100.0% |",
            *(f"| {name} | {v:.1f} | {100 * v / ref:.1f}% |" for name, v in r["products"].items()),
            f"| all products, alone | {r['gemms']:.1f} | {100 * r['gemms'] / ref:.1f}% |",
            f"| epoch | {r['epoch']:.1f} | {100 * r['epoch'] / ref:.1f}% |",
            "",
            f"Epoch ÷ products alone: {100 * r['epoch'] / r['gemms']:.1f}%; epoch per round: "
            + ", ".join(f"{v:.0f}" for v in r["epoch_per_round"])
            + " GFLOP/s.",
            "",
        ]
    return "\n".join(lines)


def main(argv=None) -> list:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[512, 4096])
    parser.add_argument("--optimizer", choices=sorted(peers.OPTIMIZERS), default="sgd")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=7, help="calls per product per round")
    parser.add_argument(
        "--samples", type=int, default=32768, help="epoch slice (rounded to batches)"
    )
    parser.add_argument("--widths", type=int, nargs="+", default=list(DEFAULT_WIDTHS))
    parser.add_argument("--out", type=Path, help="also write the Markdown here")
    args = parser.parse_args(argv)
    n_data = max(args.samples, *args.batch_sizes)
    X, y = make_data(n_data, args.widths[0], args.widths[-1], "mnist-like")
    results = []
    for batch_size in args.batch_sizes:
        n = max(batch_size, args.samples // batch_size * batch_size)
        results.append(
            breakdown(
                args.widths, batch_size, args.optimizer, args.rounds, args.repeats, X[:n], y[:n]
            )
        )
    command = " ".join(sys.argv[1:] if argv is None else argv)
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    header = (
        f"# A large-batch epoch against its matrix products: {cpu_name()}"
        f" ({os.cpu_count()} cores), {started}\n\n"
        f"`python benchmarks/gemm_breakdown.py {command}`"
        f" (gpunet {gpunet.__version__}, numba {numba.__version__}); widths"
        f" {'-'.join(map(str, args.widths))}; {args.rounds} rounds, medians; see"
        " benchmarks/README.md.\n\n"
    )
    text = header + markdown(results)
    print(text)
    if args.out:
        args.out.write_text(text)
    return results


if __name__ == "__main__":
    main()
