"""examples/overfitting.py runs end to end on a few epochs; its committed figure and
table exist and the README shows the figure."""

import importlib.util
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _example():
    spec = importlib.util.spec_from_file_location("overfitting", ROOT / "examples/overfitting.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_example_runs_and_writes_its_figure_and_table(tmp_path):
    pytest.importorskip("matplotlib")
    pytest.importorskip("sklearn")
    example = _example()
    assert example.main(["--epochs", "2", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "overfitting.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = (tmp_path / "overfitting.md").read_text().splitlines()
    for technique in example.TECHNIQUES:
        assert any(row.startswith(f"| {technique} |") for row in rows), technique


def test_committed_figure_is_in_the_readme():
    assert (ROOT / "examples/overfitting.png").read_bytes()[:4] == b"\x89PNG"
    assert (ROOT / "examples/overfitting.md").exists()
    assert "examples/overfitting.png" in (ROOT / "README.md").read_text()
