#!/usr/bin/env python
"""The fused engine against the autograd engine in one process, on an idle machine and
with one busy process beside it (CPU training throughput).

    python benchmarks/fused_vs_autograd.py --out OUT              # idle, then busy

784-512-512-10 ReLU, softmax cross-entropy, SGD with momentum (or ``--optimizer
adam``), MNIST-shaped float32 data; per batch size each engine trains one warm-up epoch,
then ``--repeats`` rounds in which the two take turns, each epoch after a short pause
(so BLAS threads left spinning by one do not take the other's cores). The busy
neighbour is a process spinning on one core for the whole measurement. The fused
engine runs with this machine's route table (``gpunet tune``, else the defaults).
Reports median samples/s and fused ÷ autograd as ``OUT.json`` and ``OUT.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gpunet  # noqa: E402
from gpunet import nn, optim  # noqa: E402
from gpunet.backend import jit_cache  # noqa: E402
from gpunet.bench.workloads import make_data  # noqa: E402
from gpunet.train import Trainer  # noqa: E402
from gpunet.train.engines import routes  # noqa: E402

BATCH_SIZES = (1, 8, 32, 128, 512, 4096)
PAUSE_S = 0.3


def trainer(engine: str, optimizer: str) -> Trainer:
    gpunet.manual_seed(0)
    model = nn.Sequential(nn.Dense(784, 512, "relu"), nn.Dense(512, 512, "relu"), nn.Dense(512, 10))
    opt = (
        optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        if optimizer == "sgd"
        else optim.Adam(model.parameters(), lr=1e-3)
    )
    return Trainer(model, "cross_entropy", opt, engine=engine, progress=False, verbose=0)


def epoch_rows(batch_size: int, samples: int) -> int:
    """Rows per timed epoch: fewer at batch 1 and 8, where an epoch is slow."""
    rows = {1: samples // 10, 8: samples // 4}.get(batch_size, samples)
    return max(batch_size, rows // batch_size * batch_size)


def measure(args, X, y) -> list:
    rows = []
    engines = {name: trainer(name, args.optimizer) for name in ("fused", "autograd")}
    for batch_size in args.batch_sizes:
        n = epoch_rows(batch_size, len(X))
        times = {name: [] for name in engines}
        for i in range(args.repeats + 1):
            for name, t in engines.items():
                time.sleep(PAUSE_S)
                start = time.perf_counter()
                t.fit(X[:n], y[:n], epochs=1, batch_size=batch_size, seed=i)
                if i:
                    times[name].append(time.perf_counter() - start)
        rates = {name: statistics.median(n / s for s in v) for name, v in times.items()}
        rows.append(
            {
                "batch": batch_size,
                "samples": n,
                "samples_per_s": rates,
                "all_samples_per_s": {k: [n / s for s in v] for k, v in times.items()},
                "fused_vs_autograd": rates["fused"] / rates["autograd"],
            }
        )
        print(
            f"  batch {batch_size}: fused {rates['fused']:,.0f}, autograd "
            f"{rates['autograd']:,.0f} samples/s, {rows[-1]['fused_vs_autograd']:.2f}x",
            file=sys.stderr,
            flush=True,
        )
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--optimizer", choices=("sgd", "adam"), default="sgd")
    p.add_argument("--batch-sizes", nargs="+", type=int, default=list(BATCH_SIZES))
    p.add_argument("--samples", type=int, default=20000)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--states", nargs="+", choices=("idle", "busy"), default=["idle", "busy"])
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    jit_cache.set_compile_mode("foreground")
    X, y = make_data(args.samples, 784, 10, seed=0)
    table = routes.route_table(gpunet.get_num_threads()).tolist()
    results = {}
    for state in args.states:
        print(f"{state}:", file=sys.stderr, flush=True)
        spinner = None
        if state == "busy":
            spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        try:
            load = os.getloadavg()[0]
            results[state] = {"load_average_at_start": load, "rows": measure(args, X, y)}
        finally:
            if spinner is not None:
                spinner.kill()
                spinner.wait()
    meta = {
        "threads": gpunet.get_num_threads(),
        "route_table": table,
        "optimizer": args.optimizer,
        "repeats": args.repeats,
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    args.out.with_suffix(".json").write_text(
        json.dumps({"meta": meta, "results": results}, indent=1)
    )
    lines = [
        f"# fused vs autograd, {args.optimizer}, {meta['threads']} threads ({meta['date']})",
        "",
        f"`python benchmarks/fused_vs_autograd.py --optimizer {args.optimizer}`; route table "
        f"(min rows, route code) {table}. Median samples/s, engines taking turns.",
        "",
        "| state | batch | fused | autograd | fused ÷ autograd |",
        "|---|---|---|---|---|",
    ]
    for state, result in results.items():
        for row in result["rows"]:
            r = row["samples_per_s"]
            lines.append(
                f"| {state} | {row['batch']} | {r['fused']:,.0f} | {r['autograd']:,.0f} | "
                f"{row['fused_vs_autograd']:.2f} |"
            )
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
