"""The Markdown report of a ``gpunet bench`` run, read at a glance: headline ratios
first, then one table per part, each with gpunet ÷ peer ratio columns, then how it was
measured and on what.

The JSON report (``SCHEMA``) holds: ``meta`` (settings, machine, devices, notes),
``ceilings`` (one row per device and kind: sgemm GFLOP/s, GPU copy GB/s), ``throughput``
(one row per device, network, optimizer, batch size and implementation; samples/s
median/min/max, GFLOP/s, every repeat's seconds, ``ratios`` on gpunet's fused row) and
``time_to_accuracy`` (``sweeps``: the learning-rate sweeps; ``runs``: one curve per
device, data set, regime and implementation, with ``seconds_to_target`` and, on
gpunet's run, ``ratios`` of the times).
"""

from __future__ import annotations

import statistics

SCHEMA = "gpunet-bench/1"
REFERENCE = "gpunet-fused"  # throughput rows' reference (throughput.REFERENCE)


def fmt(v, digits: int = 3) -> str:
    """A number for a table: thousands separators from 100 up, else 3 significant."""
    if v is None:
        return "—"
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.{digits}g}"


def ratio(v) -> str:
    """``1.23x``; two significant digits below 0.1 (``0.0048x``)."""
    if v is None:
        return "—"
    return f"{v:.2f}x" if v >= 0.1 else f"{v:.2g}x"


def _share(value, ceiling) -> str:
    """`` (12%)``: ``value`` as a share of ``ceiling``; empty when either is missing."""
    return f" ({100 * value / ceiling:.0f}%)" if value and ceiling else ""


def batch_text(row: dict) -> str:
    return f"full ({row['batch_size']})" if row.get("full_batch") else str(row["batch_size"])


def _labels(rows: list) -> dict:
    """framework key -> label, in the order first seen."""
    return {r["framework"]: r["label"] for r in rows}


# ------------------------------------------------------------------------- parts
def headline(rep: dict) -> list:
    """Bullet lines: the median gpunet ÷ PyTorch throughput ratio per device and the
    time-to-target ratios of the mini-batch regime."""
    lines = []
    for device in dict.fromkeys(r["device"] for r in rep["throughput"]):
        for key, name in (("torch", "PyTorch"), ("numpy", "NumPy"), ("sklearn", "scikit-learn")):
            values = [
                r["ratios"][key]
                for r in rep["throughput"]
                if r["device"] == device and key in r.get("ratios", {})
            ]
            if values:
                lines.append(
                    f"- {device}: gpunet ÷ {name} samples/s, median over {len(values)} rows "
                    f"{statistics.median(values):.2f}x (range {min(values):.2f}–{max(values):.2f}x)"
                )
    names = _labels(rep["time_to_accuracy"]["runs"])
    for r in rep["time_to_accuracy"]["runs"]:
        if r["framework"] == "gpunet":
            reach = (
                f"{fmt(r['seconds_to_target'])} s (epoch {r['epochs_to_target']})"
                if r["seconds_to_target"] is not None
                else f"not reached in {r['epochs']} epochs"
            )
            ratios = ", ".join(f"÷ {names[k]} {v:.2f}x" for k, v in r.get("ratios", {}).items())
            lines.append(
                f"- {r['device']} {r['dataset']} {r['regime']}: gpunet to "
                f"{r['target']:.0%} accuracy {reach}" + (f"; time {ratios}" if ratios else "")
            )
    lines += [f"- {d}: {state}" for d, state in rep["meta"]["devices"].items() if state != "ran"]
    return lines


def ceilings_table(rep: dict) -> list:
    out = ["| device | ceiling | median [min–max] | unit | shape |", "|---|---|---|---|---|"]
    for c in rep["ceilings"]:
        out.append(
            f"| {c['device']} | {c['kind']} | {fmt(c['median'])} [{fmt(c['min'])}–"
            f"{fmt(c['max'])}] | {c['unit']} | {c.get('shape', '')} |"
        )
    return out


def throughput_tables(rep: dict) -> list:
    """Per device and network: rows optimizer x batch, a samples/s column per
    implementation (median [min–max]), GFLOP/s of gpunet, then gpunet ÷ each peer."""
    out = []
    rows = rep["throughput"]
    if not rows:
        return ["Not run.", ""]
    for device, network in dict.fromkeys((r["device"], r["network"]) for r in rows):
        group = [r for r in rows if (r["device"], r["network"]) == (device, network)]
        labels = _labels(group)
        peers = [k for k in labels if k != REFERENCE]
        sgemm = next(
            (c["median"] for c in rep["ceilings"] if (c["device"], c["kind"]) == (device, "sgemm")),
            None,
        )
        widths = "-".join(map(str, group[0]["widths"]))
        out += [
            f"### {device}: {network} ({widths})",
            "",
            "| optimizer | batch | "
            + " | ".join(labels.values())
            + " | gpunet GFLOP/s (% of sgemm) | "
            + " | ".join(f"{labels[REFERENCE]} ÷ {labels[k]}" for k in peers)
            + " |",
            "|---|---|" + "---|" * (len(labels) + 1 + len(peers)),
        ]
        for opt, batch in dict.fromkeys((r["optimizer"], r["batch_size"]) for r in group):
            cells = {
                r["framework"]: r
                for r in group
                if (r["optimizer"], r["batch_size"]) == (opt, batch)
            }
            ref = cells.get(REFERENCE, {})
            first = next(iter(cells.values()))
            values = [
                f"{fmt(c['samples_per_s']['median'])} [{fmt(c['samples_per_s']['min'])}–"
                f"{fmt(c['samples_per_s']['max'])}]"
                if (c := cells.get(k))
                else "—"
                for k in labels
            ]
            ratios = [ratio(ref.get("ratios", {}).get(k)) for k in peers]
            out.append(
                f"| {opt} | {batch_text(first)} | "
                + " | ".join(values)
                + f" | {fmt(ref.get('gflops'))}{_share(ref.get('gflops'), sgemm)} | "
                + " | ".join(ratios)
                + " |"
            )
        out.append("")
    return out


def accuracy_tables(rep: dict) -> list:
    """Per device and data set, one row per regime and implementation: training
    samples/s of the regime, seconds to the target ("not reached" within the budget),
    final accuracy, and gpunet ÷ that implementation for both (samples/s: above 1
    gpunet faster; time: below 1 gpunet sooner)."""
    out = []
    acc = rep["time_to_accuracy"]
    runs = acc["runs"]
    if not runs:
        return ["Not run.", ""]
    for device, dataset in dict.fromkeys((r["device"], r["dataset"]) for r in runs):
        group = [r for r in runs if (r["device"], r["dataset"]) == (device, dataset)]
        first = group[0]
        out += [
            f"### {device}: {dataset}, target {first['target']:.0%} validation accuracy, "
            f"{first['epochs']} epochs, SGD momentum 0.9",
            "",
            "| regime | batch | lr | implementation | samples/s | s to target (epoch) | "
            "final accuracy | gpunet ÷ it, samples/s | gpunet ÷ it, time to target |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in group:
            ref = next(
                (q for q in group if q["regime"] == r["regime"] and q["framework"] == "gpunet"),
                None,
            )
            reach = (
                f"{fmt(r['seconds_to_target'])} ({r['epochs_to_target']})"
                if r["seconds_to_target"] is not None
                else "not reached"
            )
            mine = r["framework"] == "gpunet"
            speed = ref["samples_per_s"] / r["samples_per_s"] if ref else None
            time_ratio = (ref or {}).get("ratios", {}).get(r["framework"])
            out.append(
                f"| {r['regime']} | {r['batch_size']} | {r['lr']:g} | {r['label']} | "
                f"{fmt(r['samples_per_s'])} | {reach} | {fmt(r['final_val_accuracy'])} | "
                f"{'' if mine else ratio(speed)} | {'' if mine else ratio(time_ratio)} |"
            )
        out.append("")
    out += [
        "Learning rates: per regime, gpunet trained "
        f"{rep['meta']['settings']['sweep_epochs']} epochs at each rate of a 4-rate grid; "
        "the best validation accuracy chose the rate every implementation then used:",
        "",
        "| device | data set | regime | rate: validation accuracy | chosen |",
        "|---|---|---|---|---|",
    ]
    for s in acc["sweeps"]:
        grid = ", ".join(f"{lr}: {fmt(a)}" for lr, a in s["grid"].items())
        out.append(f"| {s['device']} | {s['dataset']} | {s['regime']} | {grid} | {s['lr']:g} |")
    return out + [""]


def machine_lines(rep: dict) -> list:
    meta = rep["meta"]
    m = meta["machine"]
    load = lambda v: "n/a" if v is None else " ".join(f"{x:.2f}" for x in v)  # noqa: E731
    blas = ", ".join(
        f"{b.get('internal_api')} {b.get('version') or ''} ({b.get('num_threads')} threads)"
        for b in m.get("blas") or []
        if isinstance(b, dict)
    )
    shared = (m.get("loadavg_start") or [0])[0] > 0.5 * (m.get("cpus_usable") or 1)
    lines = [
        f"- CPU: {m['cpu']}; {m['cpu_count']} cores, {m['cpus_usable']} usable; "
        f"{m['hostname']}, {m['platform']}",
        "- devices: " + "; ".join(f"{d}: {s}" for d, s in meta["devices"].items()),
        *(
            f"- {d}: {g['name']}, compute capability {g['compute_capability']}, "
            f"{g['memory_gib']:.0f} GiB, driver {g['driver']}, runtime {g['runtime']}"
            for d, g in meta.get("gpus", {}).items()
        ),
        "- versions: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v),
        f"- BLAS / OpenMP: {blas or m.get('blas')}",
        "- threads: " + ", ".join(f"{k} {v}" for k, v in m["threads"].items()),
        "- denormals: " + ", ".join(f"{k} {v}" for k, v in m["denormals"].items()),
        f"- load average (1, 5, 15 min) at start {load(m.get('loadavg_start'))}, at end "
        f"{load(m.get('loadavg_end'))}"
        + (" — the machine was shared with other work during the run" if shared else ""),
        f"- wall time {meta.get('wall_seconds', 0):.0f} s, preset `{meta['preset']}`",
    ]
    lines += [f"- {n}" for n in meta["notes"]]
    if meta.get("plots_skipped"):
        lines.append(f"- plots skipped: {meta['plots_skipped']}")
    return lines


def markdown(rep: dict) -> str:
    """The whole Markdown report."""
    meta = rep["meta"]
    s = meta["settings"]
    out = [
        f"# gpunet bench — {meta['machine']['cpu']}, {meta['machine']['date']}",
        "",
        "## Headline",
        "",
        *headline(rep),
        "",
        "## Ceilings",
        "",
        *ceilings_table(rep),
        "",
        "## Training throughput (samples/s, median [min–max])",
        "",
        f"One epoch's samples/s on a slice of synthetic MNIST-shaped data, ReLU layers, "
        f"softmax cross-entropy, float32; median of {s['repeats']} repeats after a warm-up, "
        "implementations taking turns. SGD: lr 0.01, momentum 0.9; Adam: lr 1e-3. "
        "gpunet (fused) is the reference of the ratio columns (above 1: gpunet faster).",
        "",
        *throughput_tables(rep),
        "## Time to accuracy",
        "",
        "Validation accuracy after each epoch; seconds count training only (no "
        "evaluation), after a warm-up; samples/s = training samples x epochs / those "
        "seconds. Ratio columns divide gpunet's samples/s by the implementation's (above "
        "1: gpunet faster) and gpunet's seconds to the target by its (below 1: gpunet "
        "sooner).",
        "",
        *accuracy_tables(rep),
    ]
    if meta.get("plots"):
        out += ["## Plots", ""] + [f"![{p}]({p})" for p in meta["plots"]] + [""]
    out += ["## Method and machine", "", *machine_lines(rep)]
    return "\n".join(out) + "\n"
