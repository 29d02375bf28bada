"""``gpunet bench --compare a.json b.json``: what changed between two result files.

Every measurement is keyed by what it measured (device, network, optimizer, batch,
implementation; device and ceiling; device, data set, regime, implementation) and the
two files' values are divided: ``ratio = b / a``. For samples/s and ceilings above 1
means b is faster; for seconds to the target accuracy below 1 means b got there sooner.
"""

from __future__ import annotations

import json
from pathlib import Path

from gpunet.bench.report import batch_text, fmt


def measurements(rep: dict) -> dict:
    """``{(section, key): (value, unit)}`` of a report (value None: target not reached)."""
    out = {}
    for c in rep.get("ceilings", []):
        out["ceiling", f"{c['device']} {c['kind']}"] = (c["median"], c["unit"])
    for r in rep.get("throughput", []):
        key = (
            f"{r['device']} {r['network']} {r['optimizer']} batch {batch_text(r)} {r['framework']}"
        )
        out["throughput", key] = (r["samples_per_s"]["median"], "samples/s")
    for r in rep.get("time_to_accuracy", {}).get("runs", []):
        key = f"{r['device']} {r['dataset']} {r['regime']} {r['framework']}"
        out["time to accuracy", key] = (r["seconds_to_target"], "s to target")
    return out


def compare(a: dict, b: dict) -> list:
    """One dict per measurement in either report: ``section``, ``key``, ``unit``, ``a``,
    ``b`` (None where missing or not reached) and ``ratio`` = b / a (None unless both)."""
    ma, mb = measurements(a), measurements(b)
    rows = []
    for section, key in dict.fromkeys([*ma, *mb]):
        va, unit = ma.get((section, key), (None, None))
        vb, unit_b = mb.get((section, key), (None, None))
        rows.append(
            {
                "section": section,
                "key": key,
                "unit": unit or unit_b,
                "a": va,
                "b": vb,
                "ratio": vb / va if va and vb is not None else None,
            }
        )
    return rows


def compare_text(rows: list, name_a: str = "a", name_b: str = "b") -> str:
    """The comparison as a Markdown table, one section after another."""
    out = [
        f"# {name_b} ÷ {name_a}",
        "",
        "| section | measurement | unit | a | b | b ÷ a |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        missing = "only in b" if r["a"] is None and r["b"] is not None else "—"
        cell = f"{r['ratio']:.2f}x" if r["ratio"] is not None else missing
        values = f"{fmt(r['a'])} | {fmt(r['b'])} | {cell}"
        out.append(f"| {r['section']} | {r['key']} | {r['unit']} | {values} |")
    return "\n".join(out) + "\n"


def compare_files(path_a, path_b) -> str:
    """Read two JSON reports and return ``compare_text`` of them."""
    a = json.loads(Path(path_a).read_text())
    b = json.loads(Path(path_b).read_text())
    return compare_text(compare(a, b), Path(path_a).name, Path(path_b).name)
