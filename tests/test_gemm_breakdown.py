"""``benchmarks/gemm_breakdown.py`` times every product of a step and writes its report
(the rates themselves are not tested; they belong in benchmarks/)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import gemm_breakdown, train_throughput  # noqa: E402

WIDTHS = [12, 9, 4]


def test_gemm_breakdown_times_every_product_of_a_step():
    batch = 24
    products = gemm_breakdown.step_products(WIDTHS, batch)
    assert sorted(products) == ["dW 1", "dW 2", "dx 2", "forward 1", "forward 2"]
    step_flop = batch * train_throughput.flops_per_sample(WIDTHS)["total"]
    assert sum(flop for _, flop in products.values()) == step_flop
    X, y = train_throughput.make_data(2 * batch, WIDTHS[0], WIDTHS[-1], "uniform")
    result = gemm_breakdown.breakdown(WIDTHS, batch, "sgd", rounds=2, repeats=1, X=X, y=y)
    rates = [result["reference"], result["gemms"], result["epoch"], *result["products"].values()]
    assert all(np.isfinite(rate) and rate > 0 for rate in rates)
    assert len(result["epoch_per_round"]) == 2
    assert "| epoch |" in gemm_breakdown.markdown([result])


def test_gemm_breakdown_command_writes_its_report(tmp_path, capsys):
    out = tmp_path / "breakdown.md"
    argv = ["--batch-sizes", "16", "48", "--widths", *map(str, WIDTHS), "--samples", "32"]
    argv += ["--rounds", "1", "--repeats", "1", "--optimizer", "adam", "--out", str(out)]
    results = gemm_breakdown.main(argv)
    assert [r["batch_size"] for r in results] == [16, 48]
    text = out.read_text()
    assert capsys.readouterr().out.strip() == text.strip()
    assert "### adam, batch 16" in text and "### adam, batch 48" in text
    assert "gemm_breakdown.py --batch-sizes 16 48" in text
