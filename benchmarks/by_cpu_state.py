#!/usr/bin/env python
"""Training samples/s by where the host has the VM's two vCPUs, gpunet against PyTorch.

    python benchmarks/by_cpu_state.py                 # SGD and Adam, batches 128 and 512
    python benchmarks/by_cpu_state.py --batch-sizes 128 --rounds 40

On the 2-core EPYC VM the host keeps the two vCPUs on one die (a CPU round trip of
50-120 ns, ``core_latency.py``) or on two (300-650 ns), for minutes at a time, and every
step that two threads share slows in the second state. ``train_throughput.py`` reports
one median per row over 5 rounds, whichever state they fell in. This script runs many
short rounds of every row, interleaved (round k of every row, then round k + 1, so each
row's rounds spread over the whole run), each framework in its own process and after a
pause as there, and probes the round trip before and after each row's turn. A round is
"one die" when both probes read below ``SLOW_ROUND_TRIP_NS``, "two dies" when both read
above it, else "mixed". Per row and state it reports the rounds, each framework's median
samples/s, and the median of the rounds' own ratios against the reference framework
(both measured within seconds of each other).
"""

from __future__ import annotations

import argparse
import datetime
import json
import socket
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import core_latency, isolated, peers  # noqa: E402
from benchmarks.train_throughput import (  # noqa: E402
    PAUSE_BETWEEN_PEERS_S,
    add_workload_arguments,
    choose_slice,
    machine_info,
    make_data,
    time_train,
)

#: a round trip above this reads as the two vCPUs on different dies (see core_latency.py)
SLOW_ROUND_TRIP_NS = 200.0
PROBE_ROUNDS = 5_000  # per probe: 1-6 ms
STATES = ("one die", "two dies", "mixed", "unknown")


def classify(before, after, threshold: float = SLOW_ROUND_TRIP_NS) -> str:
    """The state of a round from the round trips (ns, or None) probed around it."""
    if before is None or after is None:
        return "unknown"
    if before < threshold and after < threshold:
        return "one die"
    if before > threshold and after > threshold:
        return "two dies"
    return "mixed"


def summarize(rounds: list, reference: str) -> dict:
    """Per state found in ``rounds`` (dicts with ``state`` and ``rates``: framework ->
    samples/s): the number of rounds, each framework's median samples/s, and the median,
    min and max of the per-round ratios against ``reference`` (None without it)."""
    out = {}
    for state in STATES:
        chosen = [r for r in rounds if r["state"] == state]
        if not chosen:
            continue
        keys = list(dict.fromkeys(k for r in chosen for k in r["rates"]))
        medians = {k: statistics.median(r["rates"][k] for r in chosen) for k in keys}
        ratios = {}
        for k in keys:
            if k == reference or reference not in keys:
                continue
            per_round = sorted(r["rates"][k] / r["rates"][reference] for r in chosen)
            ratios[k] = {
                "median": statistics.median(per_round),
                "min": per_round[0],
                "max": per_round[-1],
            }
        out[state] = {"rounds": len(chosen), "samples_per_s": medians, "ratios": ratios}
    return out


def markdown(report: dict) -> str:
    """The report: per row and state, rounds, medians and ratios."""
    meta = report["meta"]
    ref = meta["reference"]
    out = [
        f"# Training throughput by CPU placement — {meta['machine']['cpu']} "
        f"({meta['machine']['cpu_count']} cores), {meta['machine']['date']}",
        "",
        f"Network {'-'.join(map(str, meta['widths']))}, float32, {meta['samples']:,} samples; "
        f"{meta['rounds']} rounds per row, rows interleaved; a round is 'one die' when "
        f"the CPU round trip read below {SLOW_ROUND_TRIP_NS:.0f} ns before and after it, "
        "'two dies' when above both times. Ratios: the median of each round's own ratio.",
        f"Command: `{meta['command']}`; {meta['wall_seconds']:.0f} s.",
        "",
        "| optimizer | batch | slice | state | rounds | "
        + " | ".join(f"{k} samples/s" for k in meta["frameworks"])
        + " | "
        + " | ".join(f"{k} / {ref} [min–max]" for k in meta["frameworks"] if k != ref)
        + " |",
        "|---" * (5 + 2 * len(meta["frameworks"]) - (ref in meta["frameworks"])) + "|",
    ]
    for row in report["rows"]:
        for state, s in row["states"].items():
            cells = [
                row["optimizer"],
                str(row["batch_size"]),
                f"{row['slice_samples']:,}",
                state,
                str(s["rounds"]),
            ]
            cells += [f"{s['samples_per_s'].get(k, float('nan')):,.0f}" for k in meta["frameworks"]]
            for k in meta["frameworks"]:
                if k == ref:
                    continue
                q = s["ratios"].get(k)
                cells.append(f"{q['median']:.2f}x [{q['min']:.2f}–{q['max']:.2f}]" if q else "—")
            out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def parse_args(argv=None):
    host = socket.gethostname().split(".")[0]
    today = datetime.date.today().isoformat()
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[128, 512])
    p.add_argument(
        "--frameworks", nargs="+", default=["gpunet", "torch"], choices=list(peers.PEERS)
    )
    p.add_argument("--reference", default="torch", choices=list(peers.PEERS))
    p.add_argument("--rounds", type=int, default=24)
    add_workload_arguments(p, target_seconds=0.5)
    p.add_argument(
        "--out",
        default=f"benchmarks/results/cpu-state-{host}-{today}",
        help="output path without suffix (.json and .md)",
    )
    args = p.parse_args(argv)
    for b in args.batch_sizes:
        if b <= 0:
            p.error(f"--batch-sizes: {b} is not positive")
    missing = [k for k in args.frameworks if peers.PEERS[k].unavailable()]
    if missing:
        p.error(f"--frameworks: not available here: {', '.join(missing)}")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    started = time.perf_counter()
    X, y = make_data(args.samples, args.widths[0], args.widths[-1], "mnist-like")
    shared = isolated.SharedArrays(X=X, y=y)
    X, y = shared.arrays["X"], shared.arrays["y"]
    row_keys = [(opt, b) for opt in args.optimizers for b in args.batch_sizes]
    row_peers = {}
    try:  # worker processes and shared memory are released however the run ends
        for key in row_keys:  # one process per framework and row: no row resizes another's scratch
            row_peers[key] = [
                isolated.IsolatedPeer(
                    k,
                    args.widths,
                    shared,
                    **({"threads": args.torch_threads} if k == "torch" else {}),
                )
                for k in args.frameworks
            ]
        slices = {}
        for (opt, b), group in row_peers.items():
            for peer in group:
                peer.setup(opt, np.float32)
            slices[opt, b] = choose_slice(group, X, y, min(b, len(y)), args.target_seconds)
            print(f"  {opt} batch {b}: slice {slices[opt, b]:,} samples", file=sys.stderr)
        rounds = {key: [] for key in row_keys}
        for k in range(args.rounds):
            for (opt, b), group in row_peers.items():
                n = slices[opt, b]
                before = core_latency.round_trip_ns(PROBE_ROUNDS)
                rates = {}
                for peer in group:
                    time.sleep(PAUSE_BETWEEN_PEERS_S)
                    rates[peer.key] = n / time_train(peer, X[:n], y[:n], min(b, len(y)))
                after = core_latency.round_trip_ns(PROBE_ROUNDS)
                state = classify(before, after)
                rounds[opt, b].append(
                    {"state": state, "round_trip_ns": [before, after], "rates": rates}
                )
            print(f"  round {k + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    finally:
        for group in row_peers.values():
            for peer in group:
                peer.close()
        shared.close()
    frameworks = [g.key for g in next(iter(row_peers.values()))]
    report = {
        "meta": {
            "machine": machine_info(),
            "widths": args.widths,
            "samples": args.samples,
            "rounds": args.rounds,
            "frameworks": frameworks,
            "reference": args.reference,
            "slow_round_trip_ns": SLOW_ROUND_TRIP_NS,
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])
            if argv is None
            else " ".join(["by_cpu_state.py", *argv]),
            "wall_seconds": time.perf_counter() - started,
        },
        "rows": [
            {
                "optimizer": opt,
                "batch_size": b,
                "slice_samples": slices[opt, b],
                "states": summarize(rounds[opt, b], args.reference),
                "rounds": rounds[opt, b],
            }
            for opt, b in row_keys
        ],
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out + ".json").write_text(json.dumps(report, indent=2) + "\n")
    text = markdown(report)
    Path(args.out + ".md").write_text(text)
    print(text)
    return report


if __name__ == "__main__":
    main()
