"""``benchmarks/by_cpu_state.py`` sorts rounds by the CPU round trip probed around them
and reports per state (the rates themselves are not tested; they belong in benchmarks/)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import by_cpu_state  # noqa: E402


@pytest.mark.parametrize(
    ("before", "after", "state"),
    [
        (90.0, 110.0, "one die"),
        (350.0, 420.0, "two dies"),
        (95.0, 340.0, "mixed"),
        (340.0, 95.0, "mixed"),
        (None, 90.0, "unknown"),
        (90.0, None, "unknown"),
    ],
)
def test_classify(before, after, state):
    assert by_cpu_state.classify(before, after, threshold=200.0) == state


def test_summarize_pairs_each_round_with_its_reference():
    rounds = [
        {"state": "one die", "rates": {"gpunet": 50.0, "torch": 25.0}},
        {"state": "one die", "rates": {"gpunet": 48.0, "torch": 40.0}},
        {"state": "one die", "rates": {"gpunet": 30.0, "torch": 20.0}},
        {"state": "two dies", "rates": {"gpunet": 36.0, "torch": 30.0}},
    ]
    s = by_cpu_state.summarize(rounds, "torch")
    assert list(s) == ["one die", "two dies"]
    one = s["one die"]
    assert one["rounds"] == 3
    assert one["samples_per_s"] == {"gpunet": 48.0, "torch": 25.0}
    # the rounds' own ratios 2.0, 1.2, 1.5: median 1.5, not 48 / 25
    assert one["ratios"]["gpunet"] == {"median": 1.5, "min": 1.2, "max": 2.0}
    assert s["two dies"]["ratios"]["gpunet"]["median"] == pytest.approx(1.2)
    assert by_cpu_state.summarize(rounds, "numpy")["one die"]["ratios"] == {}


def test_command_writes_its_report(tmp_path, capsys):
    out = tmp_path / "state"
    argv = ["--frameworks", "gpunet", "numpy", "--reference", "numpy"]
    argv += ["--widths", "12", "9", "4", "--samples", "96", "--batch-sizes", "32", "48"]
    argv += ["--optimizers", "adam", "--rounds", "2", "--target-seconds", "0.01"]
    argv += ["--out", str(out)]
    report = by_cpu_state.main(argv)
    assert [(r["optimizer"], r["batch_size"]) for r in report["rows"]] == [
        ("adam", 32),
        ("adam", 48),
    ]
    for row in report["rows"]:
        assert len(row["rounds"]) == 2
        assert sum(s["rounds"] for s in row["states"].values()) == 2
        for r in row["rounds"]:
            assert r["state"] in by_cpu_state.STATES
            assert set(r["rates"]) == {"gpunet", "numpy"}
            assert all(v > 0 for v in r["rates"].values())
    saved = json.loads(Path(f"{out}.json").read_text())
    assert saved["meta"]["reference"] == "numpy"
    text = Path(f"{out}.md").read_text()
    assert capsys.readouterr().out.strip() == text.strip()
    assert "| adam | 48 |" in text and "gpunet / numpy" in text


def test_unavailable_framework_is_refused(monkeypatch):
    monkeypatch.setattr(by_cpu_state.peers.PEERS["torch"], "unavailable", staticmethod(lambda: "x"))
    with pytest.raises(SystemExit):
        by_cpu_state.parse_args(["--frameworks", "gpunet", "torch"])
