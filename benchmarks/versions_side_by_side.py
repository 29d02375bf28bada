#!/usr/bin/env python
"""Two versions of gpunet and PyTorch, side by side in one run (CPU training throughput).

    python benchmarks/versions_side_by_side.py --old /path/to/old/checkout --out OUT

Each implementation runs in a process of its own (``--old``'s gpunet imported from that
checkout, the current one from this one, PyTorch with the same thread count), all
training the same 784-512-512-10 ReLU network with softmax cross-entropy on the same
MNIST-shaped float32 data (``gpunet.bench.workloads.make_data``), one epoch per call
through each version's own ``gpunet.bench.peers`` adapter. Per optimizer and batch size
every implementation is warmed up, the epoch's length is chosen so the slowest takes
about ``--target`` seconds, then ``--repeats`` timed epochs per implementation take
turns, so a slow spell of the machine hits all of them alike. Reports median samples/s,
each version ÷ PyTorch and new ÷ old, as ``OUT.json`` and ``OUT.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BATCH_SIZES = ("1", "8", "32", "128", "512", "4096", "full")
WIDTHS = (784, 512, 512, 10)

WORKER = r"""
import json, sys, time
import numpy as np
from gpunet.bench import peers
from gpunet.bench.workloads import make_data
key, threads, n_samples = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
X, y = make_data(n_samples, 784, 10, seed=0)
peer = peers.PEERS[key]((784, 512, 512, 10), seed=0, threads=threads)
print(json.dumps({"ready": peer.info()}), flush=True)
for line in sys.stdin:
    command = json.loads(line)
    if command["do"] == "setup":
        peer.setup(command["optimizer"], np.float32)
        print(json.dumps({"ok": True}), flush=True)
    else:
        n, b = command["n"], command["batch"]
        start = time.perf_counter()
        peer.train(X[:n], y[:n], b)
        print(json.dumps({"seconds": time.perf_counter() - start}), flush=True)
"""


class Worker:
    """One implementation in its own process, driven by JSON lines."""

    def __init__(self, name, key, source, threads, n_samples):
        env = {**os.environ, "PYTHONPATH": str(source), "GPUNET_COMPILE": "foreground"}
        self.name = name
        self.process = subprocess.Popen(
            [sys.executable, "-c", WORKER, key, str(threads), str(n_samples)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            cwd=str(source),
        )
        self.info = self._read()["ready"]

    def _read(self):
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.name}: worker ended (exit code {self.process.poll()})")
        return json.loads(line)

    def call(self, **command):
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()
        return self._read()

    def train(self, n, batch):
        return self.call(do="train", n=n, batch=batch)["seconds"]

    def close(self):
        self.process.stdin.close()
        self.process.wait(timeout=60)


def epoch_rows(workers, batch, n_total, target_s):
    """Warm every worker up; rows per timed epoch so the slowest takes ~target_s."""
    if batch >= n_total:
        for w in workers:
            w.train(n_total, batch)
        return n_total
    warm = min(n_total, max(2 * batch, 64))
    rates = []
    for w in workers:
        w.train(warm, batch)
        k = warm
        while True:
            seconds = w.train(k, batch)
            if seconds >= target_s / 8 or k >= n_total:
                break
            k = min(n_total, k * 4)
        rates.append(k / seconds)
    rows = int(target_s * min(rates))
    rows = max(4 * batch, rows // batch * batch)
    return min(rows, n_total // batch * batch)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--old", required=True, type=Path, help="a checkout of the old version")
    p.add_argument("--new", type=Path, default=ROOT, help="default: this checkout")
    p.add_argument("--threads", type=int, default=None, help="default: the CPUs available")
    p.add_argument("--optimizers", nargs="+", default=["sgd", "adam"])
    p.add_argument("--batch-sizes", nargs="+", default=list(BATCH_SIZES))
    p.add_argument("--samples", type=int, default=60000)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--target", type=float, default=1.5, help="seconds per timed epoch")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    threads = args.threads or len(os.sched_getaffinity(0))
    names = ("gpunet old", "gpunet new", "torch")
    specs = (("gpunet", args.old), ("gpunet", args.new), ("torch", args.new))
    workers = [
        Worker(name, key, source, threads, args.samples)
        for name, (key, source) in zip(names, specs)
    ]
    rows = []
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    load_start = os.getloadavg()
    try:
        for optimizer in args.optimizers:
            for w in workers:
                w.call(do="setup", optimizer=optimizer)
            for size in args.batch_sizes:
                batch = args.samples if size == "full" else int(size)
                n = epoch_rows(workers, batch, args.samples, args.target)
                times = {w.name: [] for w in workers}
                for r in range(args.repeats):
                    order = workers[r % 3 :] + workers[: r % 3]
                    for w in order:
                        times[w.name].append(w.train(n, batch))
                rates = {k: statistics.median(n / t for t in v) for k, v in times.items()}
                row = {
                    "optimizer": optimizer,
                    "batch": size,
                    "samples": n,
                    "samples_per_s": rates,
                    "all_samples_per_s": {k: [n / t for t in v] for k, v in times.items()},
                    "old_vs_torch": rates["gpunet old"] / rates["torch"],
                    "new_vs_torch": rates["gpunet new"] / rates["torch"],
                    "new_vs_old": rates["gpunet new"] / rates["gpunet old"],
                }
                rows.append(row)
                print(
                    f"{optimizer} batch {size}: old {rates['gpunet old']:,.0f} new "
                    f"{rates['gpunet new']:,.0f} torch {rates['torch']:,.0f} samples/s; "
                    f"new/old {row['new_vs_old']:.2f}",
                    file=sys.stderr,
                    flush=True,
                )
    finally:
        for w in workers:
            w.close()
    meta = {
        "started": started,
        "machine": platform.processor() or platform.machine(),
        "cpus": len(os.sched_getaffinity(0)),
        "threads": threads,
        "load_average_at_start": load_start,
        "load_average_at_end": os.getloadavg(),
        "old": str(args.old),
        "new": str(args.new),
        "workers": {w.name: w.info for w in workers},
        "repeats": args.repeats,
    }
    args.out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    lines = [
        f"# gpunet old vs new vs PyTorch, {threads} threads ({started})",
        "",
        f"`python benchmarks/versions_side_by_side.py --old {args.old} --repeats {args.repeats}`;"
        f" load average at start {load_start[0]:.2f}, at end {os.getloadavg()[0]:.2f}.",
        "Median samples/s of the timed epochs, implementations taking turns.",
        "",
        "| optimizer | batch | old | new | PyTorch | old ÷ PyTorch | new ÷ PyTorch | new ÷ old |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        r = row["samples_per_s"]
        lines.append(
            f"| {row['optimizer']} | {row['batch']} | {r['gpunet old']:,.0f} | "
            f"{r['gpunet new']:,.0f} | {r['torch']:,.0f} | {row['old_vs_torch']:.2f} | "
            f"{row['new_vs_torch']:.2f} | {row['new_vs_old']:.2f} |"
        )
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
