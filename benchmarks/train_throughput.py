#!/usr/bin/env python
"""Training throughput on the CPU: gpunet vs PyTorch vs plain NumPy (vs scikit-learn).

    python benchmarks/train_throughput.py              # the full benchmark (~10-20 min)
    python benchmarks/train_throughput.py --quick      # smoke test (about a minute)
    python benchmarks/train_throughput.py --threads 1 2 4   # each row at 1, 2, 4 threads

Measures samples/s of one training epoch of the 784-512-512-10 ReLU network with softmax
cross-entropy on MNIST-shaped float32 data, for each optimizer (SGD with momentum, Adam),
batch size, thread count (``--threads``: ``gpunet.set_num_threads``,
``torch.set_num_threads``, the BLAS of NumPy and scikit-learn) and framework, all in the
same run (each framework in its own process, taking turns: ``benchmarks/isolated.py``;
``--same-process`` to share one); plus gpunet with ``flush_denormals=False`` vs ``True`` at
small batch sizes. Reports GFLOP/s against an sgemm (``np.matmul``) rate measured in the
same run, and writes ``<out>.json`` and ``<out>.md``. See benchmarks/README.md for how to
read the table.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import socket
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `benchmarks` as a package
import gpunet  # noqa: E402
from benchmarks import isolated, peers  # noqa: E402
from gpunet.bench.ceilings import matmul_rate, median_seconds, sgemm_operands  # noqa: E402, F401
from gpunet.bench.cli import positive_int  # noqa: E402
from gpunet.bench.machine import cpu_name, machine_info, subnormals_work  # noqa: E402, F401
from gpunet.bench.throughput import MIN_STEPS, choose_slice, time_train  # noqa: E402, F401
from gpunet.bench.workloads import flops_per_sample, make_data  # noqa: E402, F401

DEFAULT_WIDTHS = (784, 512, 512, 10)
BATCH_SIZES = ("1", "8", "32", "128", "512", "4096", "full")


PAUSE_BETWEEN_PEERS_S = 1.0  # lets the previous peer's worker threads go to sleep
ROW_SGEMM_REPEATS = 3  # calls per shape in a row's sgemm turn
# A row's sgemm turn also times the two shapes at this many rows: on the 2-core VM the
# 512-row product drops from ~195 to 140-155 GFLOP/s for minutes at a time while the
# 4096-row one holds ~195, and gpunet's 512-row epochs drop with it
SMALL_SGEMM_ROWS, SMALL_SGEMM_REPEATS = 512, 10


def summarize(times, n_samples: int) -> dict:
    """samples/s median, min and max over the repeats' seconds (kept too)."""
    rates = sorted(n_samples / t for t in times)
    return {
        "samples_per_s": statistics.median(rates),
        "min": rates[0],
        "max": rates[-1],
        "seconds": times,
    }


def bench_row(row_peers, optimizer, X, y, batch_size, args, flops, X_eval, y_eval, threads):
    """Set up, warm up and time every peer (all on ``threads`` threads) for one
    (optimizer, batch size)."""
    for peer in row_peers:
        peer.setup(optimizer, np.float32)
    n_slice = choose_slice(row_peers, X, y, batch_size, args.target_seconds)
    for peer in row_peers:  # restart from the same weights: the same updates for all
        peer.setup(optimizer, np.float32)
        if batch_size < len(y):  # a full-batch step is too costly to repeat untimed
            peer.train(X[: 2 * batch_size], y[: 2 * batch_size], batch_size)
    # Peers take turns, one repeat each, every turn after a pause. Turns: a slow spell of
    # this kind of shared VM (its 2-thread BLAS rate can halve for minutes) then hits
    # every framework alike instead of whichever happened to run in it. The pause: the
    # previous peer's idle worker threads (PyTorch's OpenMP pool spin-waits after each op
    # by default, OpenBLAS's for a moment) go to sleep before the next peer runs;
    # back to back on 2 cores they stole the cores of its BLAS threads (up to 4x slower).
    # The sgemm takes a turn of its own in each round, so each row's GFLOP/s can also be
    # read against the BLAS rate of the minutes the row ran in.
    times = {peer.key: [] for peer in row_peers}
    row_sgemm, row_sgemm_small = [], []
    for _ in range(args.repeats):
        for peer in row_peers:
            time.sleep(PAUSE_BETWEEN_PEERS_S)
            times[peer.key].append(time_train(peer, X[:n_slice], y[:n_slice], batch_size))
        time.sleep(PAUSE_BETWEEN_PEERS_S)
        row_sgemm.append(matmul_rate(args.widths, ROW_SGEMM_REPEATS)["peak"])
        small = matmul_rate(args.widths, SMALL_SGEMM_REPEATS, m=SMALL_SGEMM_ROWS)
        row_sgemm_small.append(small["peak"])
    row_sgemm_median = statistics.median(row_sgemm)
    results = []
    for peer in row_peers:
        r = summarize(times[peer.key], n_slice)
        r.update(
            framework=peer.key,
            label=peer.label,
            optimizer=optimizer,
            batch_size=batch_size,
            threads=threads,
            full_batch=batch_size >= len(y),
            slice_samples=n_slice,
            steps=-(-n_slice // batch_size),
            gflops=r["samples_per_s"] * flops / 1e9,
            row_sgemm_gflops=row_sgemm_median,
            row_sgemm_rounds=row_sgemm,
            pct_row_sgemm=100 * r["samples_per_s"] * flops / 1e9 / row_sgemm_median,
            row_sgemm_small_gflops=statistics.median(row_sgemm_small),
            row_sgemm_small_rounds=row_sgemm_small,
            loss_after=peer.loss(X_eval, y_eval),
            **peer.info(),
        )
        results.append(r)
        print(
            f"  {optimizer:4s} batch {batch_label(r):>12s} {threads:3d} threads  {peer.label:31s}"
            f"{r['samples_per_s']:12,.0f} samples/s  ({n_slice} samples x {args.repeats})",
            file=sys.stderr,
            flush=True,
        )
    torch_rate = next((r["samples_per_s"] for r in results if r["framework"] == "torch"), None)
    for r in results:
        r["ratio_vs_torch"] = r["samples_per_s"] / torch_rate if torch_rate else None
    return results


# --------------------------------------------------------------------------- reports
def batch_label(r) -> str:
    return f"full ({r['batch_size']})" if r["full_batch"] else str(r["batch_size"])


def fmt_load(load) -> str:
    return "n/a" if load is None else " ".join(f"{v:.2f}" for v in load)


def fmt_rate(v: float) -> str:
    return f"{v:,.0f}" if v >= 100 else f"{v:.3g}"


def markdown(report: dict) -> str:
    """The Markdown report: summary, details, denormal rows, machine."""
    meta, rows = report["meta"], report["results"]
    main = [r for r in rows if r["framework"] != "gpunet-noflush"]
    labels = list(dict.fromkeys(r["label"] for r in main))
    keys = list(dict.fromkeys((r["optimizer"], r["batch_size"], r["threads"]) for r in main))
    fl = meta["flops_per_sample"]
    out = [
        f"# Training throughput, CPU — {meta['machine']['cpu']} "
        f"({meta['machine']['cpu_count']} cores), {meta['machine']['date']}",
        "",
        f"Network {'-'.join(map(str, meta['widths']))} ReLU, softmax cross-entropy, float32, "
        f"{meta['samples']:,} {meta['data']} samples. SGD: lr 0.01, momentum 0.9; "
        "Adam: lr 1e-3.",
        f"Matmul FLOPs per sample per step: {fl['total'] / 1e6:.3f} M (forward "
        f"{fl['forward'] / 1e6:.3f} M, dW {fl['grad_w'] / 1e6:.3f} M, dX "
        f"{fl['grad_x'] / 1e6:.3f} M); one epoch = {meta['epoch_gflop']:.1f} GFLOP.",
        f"Parameters: {meta['params']:,} ({meta['params'] * 4 / 1e6:.2f} MB); every step "
        "reads and writes them, their gradients and the optimizer state (momentum: 1, "
        "Adam: 2 buffers), which bounds small-batch rates more than FLOPs do.",
        f"Measured sgemm (np.matmul float32, median of {meta['matmul']['repeats']}): "
        + ", ".join(f"{k}: {v:.1f}" for k, v in meta["matmul"]["gflops"].items())
        + f" GFLOP/s; end of run: {meta['matmul_end']['peak']:.1f} GFLOP/s. "
        f"Peak reference: {meta['peak_gflops']:.1f} GFLOP/s. Row sgemm: the same "
        "matmuls, taking one turn per round of the row after the same pause as the "
        "frameworks (median of the rounds' better shape), and the same shapes with "
        f"{SMALL_SGEMM_ROWS} rows.",
        "",
        f"samples/s = samples of a slice of the epoch / seconds (median of "
        f"{meta['repeats']} repeats after warm-up), an estimate of one full epoch's "
        "throughput; slices are the same for all frameworks of a row.",
        "",
        "## Summary (samples/s, median)",
        "",
        "| optimizer | batch | threads | slice | " + " | ".join(labels) + " | gpunet / PyTorch |",
        "|---|---|---|---|" + "---|" * len(labels) + "---|",
    ]
    for key in keys:
        group = {
            r["label"]: r for r in main if (r["optimizer"], r["batch_size"], r["threads"]) == key
        }
        first = next(iter(group.values()))
        cells = [fmt_rate(group[k]["samples_per_s"]) if k in group else "—" for k in labels]
        ratio = group.get("gpunet", {}).get("ratio_vs_torch")
        out.append(
            f"| {key[0]} | {batch_label(first)} | {key[2]} | {first['slice_samples']:,} | "
            + " | ".join(cells)
            + f" | {f'{ratio:.2f}x' if ratio else '—'} |"
        )
    out += [
        "",
        "## Details",
        "",
        "| optimizer | batch | threads | framework | samples/s median [min–max] | GFLOP/s | "
        "% of matmul peak | row sgemm (% of it) | row sgemm, "
        f"{SMALL_SGEMM_ROWS} rows | ÷ PyTorch | s/repeat | loss after |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        name = r["label"] + (f" [{r['engine']}]" if r.get("engine") else "")
        ratio = f"{r['ratio_vs_torch']:.2f}x" if r["ratio_vs_torch"] else "—"
        out.append(
            f"| {r['optimizer']} | {batch_label(r)} | {r['threads']} | {name} | "
            f"{fmt_rate(r['samples_per_s'])} "
            f"[{fmt_rate(r['min'])}–{fmt_rate(r['max'])}] | {r['gflops']:.1f} | "
            f"{r['pct_peak']:.1f}% | {r['row_sgemm_gflops']:.0f} ({r['pct_row_sgemm']:.1f}%) | "
            f"{r['row_sgemm_small_gflops']:.0f} | {ratio} | "
            f"{statistics.median(r['seconds']):.2f} | {r['loss_after']:.4f} |"
        )
    denormal = [r for r in rows if r["framework"] == "gpunet-noflush"]
    if denormal:
        out += [
            "",
            "## Denormal flushing (gpunet)",
            "",
            "| optimizer | batch | threads | flush_denormals=True | flush_denormals=False "
            "| True / False |",
            "|---|---|---|---|---|---|",
        ]
        for r in denormal:
            on = next(
                (
                    q
                    for q in rows
                    if q["framework"] == "gpunet"
                    and (q["optimizer"], q["batch_size"], q["threads"])
                    == (r["optimizer"], r["batch_size"], r["threads"])
                ),
                None,
            )
            if on:
                out.append(
                    f"| {r['optimizer']} | {batch_label(r)} | {r['threads']} | "
                    f"{fmt_rate(on['samples_per_s'])} | {fmt_rate(r['samples_per_s'])} | "
                    f"{on['samples_per_s'] / r['samples_per_s']:.2f}x |"
                )
    m = meta["machine"]
    blas = ", ".join(
        f"{b.get('internal_api')} {b.get('version') or b.get('prefix')} ({b.get('num_threads')} "
        f"threads, {b.get('architecture')})"
        for b in m["blas"] or []
        if isinstance(b, dict) and b.get("internal_api")
    )
    out += [
        "",
        "## Machine",
        "",
        f"- CPU: {m['cpu']}; os.cpu_count() = {m['cpu_count']}, usable {m['cpus_usable']}",
        f"- host {m['hostname']}, {m['platform']}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v),
        f"- BLAS / OpenMP: {blas or m['blas']}",
        "- threads, per --threads value: "
        + "; ".join(f"{t}: {counts}" for t, counts in meta["threads"].items()),
        f"- load average (1, 5, 15 min) at start {fmt_load(m['loadavg_start'])}, "
        f"at end {fmt_load(m.get('loadavg_end'))}",
        f"- subnormal floats still work on the main thread after the run: "
        f"{meta['subnormals_work_after_run']}",
    ]
    if meta["skipped"]:
        out.append("- skipped: " + "; ".join(meta["skipped"]))
    return "\n".join(out) + "\n"


# ------------------------------------------------------------------------------- CLI
def add_workload_arguments(p, target_seconds: float) -> None:
    """The workload's options: optimizers, the timed slice's length, the data's size, the
    network, the thread counts."""
    p.add_argument(
        "--optimizers", nargs="+", default=list(peers.OPTIMIZERS), choices=list(peers.OPTIMIZERS)
    )
    p.add_argument(
        "--target-seconds",
        type=float,
        default=target_seconds,
        help="about how long one timed repeat of the slowest framework takes",
    )
    p.add_argument("--samples", type=int, default=60000)
    p.add_argument("--widths", nargs="+", type=int, default=list(DEFAULT_WIDTHS))
    p.add_argument(
        "--threads",
        "--torch-threads",
        dest="threads",
        nargs="+",
        type=positive_int,
        default=None,
        help="thread counts T: every row runs at each, gpunet with gpunet.set_num_threads(T), "
        "PyTorch with torch.set_num_threads(T), NumPy and scikit-learn with their BLAS on T "
        "threads [gpunet.get_num_threads()]",
    )


def parse_args(argv=None):
    host = socket.gethostname().split(".")[0]
    today = datetime.date.today().isoformat()
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument(
        "--batch-sizes",
        nargs="+",
        default=list(BATCH_SIZES),
        help="positive ints or 'full' (the whole epoch in one batch)",
    )
    p.add_argument(
        "--frameworks",
        nargs="+",
        default=list(peers.PEERS),
        choices=list(peers.PEERS),
        help="missing optional ones are skipped",
    )
    p.add_argument(
        "--denormal-batch-sizes",
        nargs="*",
        type=int,
        default=[1, 8],
        help="SGD batch sizes where gpunet also runs with flush_denormals=False",
    )
    p.add_argument("--repeats", type=int, default=5)
    add_workload_arguments(p, target_seconds=2.0)
    p.add_argument("--data", choices=("mnist-like", "uniform"), default="mnist-like")
    p.add_argument(
        "--same-process",
        action="store_true",
        help="run every framework in this process (default: each in its own process, "
        "taking turns as before; see benchmarks/isolated.py)",
    )
    p.add_argument("--matmul-repeats", type=int, default=10)
    p.add_argument(
        "--out",
        default=None,
        help=f"output path without suffix [benchmarks/results/cpu-{host}-{today}]",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke test: 512 samples, batch 1, 32, full, 2 repeats, short slices",
    )
    args = p.parse_args(argv)
    if args.threads is None:
        args.threads = [gpunet.get_num_threads()]
    if args.quick:
        args.samples, args.batch_sizes, args.repeats = 512, ["1", "32", "full"], 2
        args.target_seconds, args.matmul_repeats, args.denormal_batch_sizes = 0.05, 3, [1]
    for b in args.batch_sizes:
        if b != "full" and not (b.isdigit() and int(b) > 0):
            p.error(f"--batch-sizes: {b!r} is neither a positive int nor 'full'")
    if args.out is None:
        args.out = f"benchmarks/results/{'quick-' if args.quick else ''}cpu-{host}-{today}"
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    widths = args.widths
    started = time.perf_counter()
    meta = {
        "machine": machine_info(),
        "widths": widths,
        "samples": args.samples,
        "data": args.data,
        "repeats": args.repeats,
        "target_seconds": args.target_seconds,
        "optimizers": {k: peers.OPTIMIZERS[k] for k in args.optimizers},
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "skipped": [],
    }
    fl = flops_per_sample(widths)
    meta["flops_per_sample"] = fl
    meta["epoch_gflop"] = fl["total"] * args.samples / 1e9
    meta["params"] = sum((i + 1) * o for i, o in zip(widths[:-1], widths[1:]))
    print(
        f"FLOPs per sample per step: {fl['total']:,} (forward {fl['forward']:,} + dW "
        f"{fl['grad_w']:,} + dX {fl['grad_x']:,}); one epoch of {args.samples:,} samples = "
        f"{meta['epoch_gflop']:.1f} GFLOP",
        file=sys.stderr,
    )

    X, y = make_data(args.samples, widths[0], widths[-1], args.data)
    X_eval, y_eval = make_data(1000, widths[0], widths[-1], args.data, seed=1)
    meta["isolated"] = not args.same_process
    shared = None if args.same_process else isolated.SharedArrays(X=X, y=y)
    if shared:
        X, y = shared.arrays["X"], shared.arrays["y"]

    try:  # shared memory is released however the run ends
        return _run(args, meta, shared, X, y, X_eval, y_eval, started)
    finally:
        if shared:
            shared.close()


def make_peers(args, meta, shared, threads) -> tuple[list, object]:
    """The frameworks' peers on ``threads`` threads (each in its own process unless
    ``--same-process``), and gpunet with ``flush_denormals=False`` (None without gpunet);
    a framework that cannot run here is noted in ``meta["skipped"]`` once."""

    def make_peer(key, **kwargs):
        if shared:
            return isolated.IsolatedPeer(key, args.widths, shared, threads=threads, **kwargs)
        return peers.PEERS[key](args.widths, seed=0, threads=threads, **kwargs)

    peer_list, noflush = [], None
    try:
        for key in args.frameworks:
            reason = peers.PEERS[key].unavailable()
            if reason:
                note = f"{key}: {reason}"
                if note not in meta["skipped"]:
                    meta["skipped"].append(note)
                continue
            peer_list.append(make_peer(key))
        if "gpunet" in args.frameworks:
            noflush = make_peer("gpunet", flush_denormals=False)
    except BaseException:
        close_peers([*peer_list, noflush])
        raise
    return peer_list, noflush


def close_peers(peer_list) -> None:
    for q in peer_list:
        if q is not None and hasattr(q, "close"):
            q.close()


def _run(args, meta, shared, X, y, X_eval, y_eval, started) -> dict:
    widths = args.widths
    fl = meta["flops_per_sample"]
    meta["matmul"] = {**matmul_rate(widths, args.matmul_repeats), "repeats": args.matmul_repeats}
    print(f"sgemm: {meta['matmul']['peak']:.1f} GFLOP/s", file=sys.stderr)

    rows, meta["threads"] = [], {}
    for threads in args.threads:
        peer_list, noflush = make_peers(args, meta, shared, threads)
        try:  # this thread count's workers are released however the run ends
            for opt in args.optimizers:
                for b in args.batch_sizes:
                    bs = args.samples if b == "full" else min(int(b), args.samples)
                    row_peers = [q for q in peer_list if q.supports(bs, args.samples)]
                    if noflush and opt == "sgd" and bs in args.denormal_batch_sizes:
                        row_peers.append(noflush)
                    rows += bench_row(
                        row_peers, opt, X, y, bs, args, fl["total"], X_eval, y_eval, threads
                    )
            meta["threads"][threads] = {
                k: v
                for q in [*peer_list, noflush]
                if q
                for k, v in q.info().items()
                if k.endswith("threads")
            }
        finally:
            close_peers([*peer_list, noflush])

    meta["matmul_end"] = matmul_rate(widths, args.matmul_repeats)
    meta["peak_gflops"] = max(meta["matmul"]["peak"], meta["matmul_end"]["peak"])
    for r in rows:  # against the better of the start and end measurements
        r["pct_peak"] = 100 * r["gflops"] / meta["peak_gflops"]
    meta["machine"]["loadavg_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    meta["subnormals_work_after_run"] = subnormals_work()
    meta["wall_seconds"] = time.perf_counter() - started
    report = {"meta": meta, "results": rows}

    json_path, md_path = Path(args.out + ".json"), Path(args.out + ".md")
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    text = markdown(report)
    md_path.write_text(text)
    print(text)
    print(f"wrote {json_path} and {md_path} ({meta['wall_seconds']:.0f} s)", file=sys.stderr)
    return report


if __name__ == "__main__":
    main()
