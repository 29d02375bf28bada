"""``gpunet bench`` (gpunet/bench/): a tiny run end to end, the report's files, the
time-to-target reading, ``--compare``'s ratios, and the Dockerfiles that run it."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from gpunet.bench import accuracy, compare, peers, plots, report, runner, throughput
from gpunet.cli import build_parser
from gpunet.cli import main as gpunet_main

ROOT = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------ a tiny run
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One run with tiny sizes (no pauses): ``(report, written files, settings)``."""
    patch = pytest.MonkeyPatch()
    patch.setattr(throughput, "PAUSE_S", 0.0)
    patch.setattr(accuracy, "PAUSE_S", 0.0)
    settings = runner.Settings.preset_of(
        "quick",
        out_dir=str(tmp_path_factory.mktemp("bench")),
        networks={"mnist1d-mlp": 64},
        batch_sizes=(8, None),
        optimizers=("sgd",),
        peers=("torch", "numpy", "sklearn"),
        repeats=1,
        target_seconds=0.002,
        datasets=("digits",),
        regimes=("batch", "minibatch"),
        epochs=2,
        max_train=128,
        targets={"digits": 0.0},  # reached after the first epoch by everyone
        progress=False,
    )
    try:
        rep = runner.run(settings)
        written = runner.write(rep, settings)
    finally:
        patch.undo()
    return rep, written, settings


def test_json_schema(tiny_run):
    rep, written, _ = tiny_run
    saved = json.loads(Path(written["json"]).read_text())
    assert set(saved) == {"meta", "ceilings", "throughput", "time_to_accuracy"}
    meta = saved["meta"]
    assert meta["schema"] == "gpunet-bench/1"
    for key in ("machine", "devices", "settings", "notes", "wall_seconds", "optimizers"):
        assert key in meta
    assert meta["devices"]["cpu"] == "ran"
    for key in ("versions", "threads", "denormals", "loadavg_start", "loadavg_end"):
        assert key in meta["machine"]
    assert [c["kind"] for c in saved["ceilings"]] == ["sgemm", "sgemm, end of run"]
    assert all(c["median"] > 0 and c["unit"] == "GFLOP/s" for c in saved["ceilings"])
    frameworks = {r["framework"] for r in saved["throughput"]}
    assert {"gpunet-fused", "gpunet-autograd", "numpy"} <= frameworks
    for r in saved["throughput"]:
        assert set(r["samples_per_s"]) == {"median", "min", "max", "n"}
        assert (
            r["samples_per_s"]["min"] <= r["samples_per_s"]["median"] <= r["samples_per_s"]["max"]
        )
    ref = next(r for r in saved["throughput"] if r["framework"] == "gpunet-fused")
    numpy_row = next(
        r
        for r in saved["throughput"]
        if r["framework"] == "numpy" and r["batch_size"] == ref["batch_size"]
    )
    assert ref["ratios"]["numpy"] == pytest.approx(
        ref["samples_per_s"]["median"] / numpy_row["samples_per_s"]["median"]
    )
    # scikit-learn trains mini-batches only: no full-batch row
    assert all(not r["full_batch"] for r in saved["throughput"] if r["framework"] == "sklearn")
    acc = saved["time_to_accuracy"]
    assert {(s["dataset"], s["regime"]) for s in acc["sweeps"]} == {
        ("digits", "batch"),
        ("digits", "minibatch"),
    }
    for run in acc["runs"]:
        assert set(run["curve"]) == {"epoch", "seconds", "val_loss", "val_accuracy"}
        assert run["curve"]["epoch"] == [1, 2]
        assert run["seconds_to_target"] == run["curve"]["seconds"][0]  # target 0
        assert run["samples_per_s"] == pytest.approx(128 * 2 / run["curve"]["seconds"][-1])
    gpunet = next(r for r in acc["runs"] if r["framework"] == "gpunet")
    assert set(gpunet["ratios"]) >= {"numpy"}


def test_markdown_tables_have_ratio_columns(tiny_run):
    _, written, _ = tiny_run
    text = Path(written["markdown"]).read_text()
    for heading in ("## Headline", "## Ceilings", "## Training throughput", "## Time to accuracy"):
        assert heading in text
    assert "| gpunet (fused) ÷ NumPy |" in text or "gpunet (fused) ÷ NumPy |" in text
    assert "| gpunet ÷ it, samples/s | gpunet ÷ it, time to target |" in text
    numpy_runs = [
        line for line in text.splitlines() if re.match(r"\| \w+ \| \d+ \| .* \| NumPy \|", line)
    ]
    assert len(numpy_runs) == 2  # batch and minibatch
    assert all(len(re.findall(r"\d+\.\d+x", line)) == 2 for line in numpy_runs)
    assert "cuda" in text  # the CUDA part says why it did not run, or ran
    rows = [line for line in text.splitlines() if line.startswith("| sgd | 8 |")]
    assert rows and re.search(r"\d+\.\d\dx", rows[0])


def test_markdown_without_a_gpunet_run(tiny_run):
    """A run that failed (noted in meta) leaves its peers' rows without ratios."""
    rep = json.loads(json.dumps(tiny_run[0]))
    runs = rep["time_to_accuracy"]["runs"]
    rep["time_to_accuracy"]["runs"] = [r for r in runs if r["framework"] != "gpunet"]
    text = report.markdown(rep)
    numpy_runs = [
        line for line in text.splitlines() if line.startswith("| ") and "| NumPy |" in line[:40]
    ]
    assert len(numpy_runs) == 2 and all(line.endswith("| — | — |") for line in numpy_runs)


def test_plots_written(tiny_run):
    if plots.unavailable():
        pytest.skip(plots.unavailable())
    rep, written, _ = tiny_run
    names = {Path(p).name for p in written["plots"]}
    stem = Path(written["json"]).stem
    assert names == {
        f"{stem}-throughput-mnist1d-mlp.png",
        f"{stem}-accuracy-digits.png",
        f"{stem}-time-to-target.png",
    }
    for path in written["plots"]:
        data = Path(path).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 10_000
    saved = json.loads(Path(written["json"]).read_text())
    assert sorted(saved["meta"]["plots"]) == sorted(names)
    assert saved["meta"]["plots_skipped"] is None


def test_without_matplotlib_json_and_markdown_still_written(tiny_run, tmp_path, monkeypatch):
    rep, _, settings = tiny_run
    monkeypatch.setattr(plots, "unavailable", lambda: "matplotlib is not installed")
    settings = runner.Settings(**{**settings.__dict__, "out_dir": str(tmp_path), "name": "x"})
    written = runner.write(json.loads(json.dumps(rep)), settings)
    assert written["plots"] == [] and "matplotlib" in written["plots_skipped"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.json", "x.md"]
    assert "plots skipped: matplotlib is not installed" in (tmp_path / "x.md").read_text()


def test_cuda_reported_not_available(monkeypatch):
    import gpunet.backend as backend  # noqa: PLC0415

    monkeypatch.setattr(backend, "cuda_unavailable_reason", lambda: "no GPU here")
    devices, skipped = runner.usable_devices(("cpu", "cuda"))
    assert devices == ["cpu"]
    assert skipped == {"cuda": "not available: no GPU here"}


def test_device_cache_copies_a_data_set_once():
    """The GPU peers' data cache, with a stand-in for the copy to the device."""
    copies = []
    cache = peers.DeviceCache("cuda", lambda A: copies.append(A.shape) or A.copy())
    X = np.arange(20.0).reshape(10, 2)
    assert np.array_equal(cache(X[:5]), X[:5]) and copies == [(5, 2)]
    assert np.array_equal(cache(X), X) and copies == [(5, 2), (10, 2)]  # longer: copied again
    assert np.array_equal(cache(X[:7]), X[:7]) and len(copies) == 2  # a leading slice: reused
    assert np.array_equal(cache(X[3:]), X[3:]) and len(copies) == 3  # another address
    for k in range(1, 7):
        cache(np.zeros((2, k)))
    assert len(cache.copies) == peers.DeviceCache.KEEP
    assert peers.DeviceCache("cpu", None)(X) is X


# ------------------------------------------------------------ time to target
def test_time_to_target_first_crossing():
    seconds = [0.5, 1.25, 2.0, 3.0, 4.5]
    acc = [0.40, 0.70, 0.89, 0.90, 0.95]
    assert accuracy.time_to_target(seconds, acc, 0.9) == (3.0, 4)
    assert accuracy.time_to_target(seconds, acc, 0.7) == (1.25, 2)
    assert accuracy.time_to_target(seconds, acc, 0.3) == (0.5, 1)


def test_time_to_target_never_reached():
    assert accuracy.time_to_target([1.0, 2.0], [0.5, float("nan")], 0.6) == (None, None)
    assert accuracy.time_to_target([], [], 0.1) == (None, None)


# --------------------------------------------------------------------- compare
def _report(rate, sgemm, seconds):
    return {
        "meta": {},
        "ceilings": [{"device": "cpu", "kind": "sgemm", "median": sgemm, "unit": "GFLOP/s"}],
        "throughput": [
            {
                "device": "cpu",
                "network": "mnist-mlp",
                "optimizer": "sgd",
                "batch_size": 32,
                "full_batch": False,
                "framework": "gpunet-fused",
                "samples_per_s": {"median": rate},
            }
        ],
        "time_to_accuracy": {
            "runs": [
                {
                    "device": "cpu",
                    "dataset": "digits",
                    "regime": "minibatch",
                    "framework": "gpunet",
                    "seconds_to_target": seconds,
                }
            ]
        },
    }


def test_compare_ratios(tmp_path, capsys):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(_report(rate=1000.0, sgemm=50.0, seconds=2.0)))
    b.write_text(json.dumps(_report(rate=1500.0, sgemm=40.0, seconds=None)))
    rows = compare.compare(json.loads(a.read_text()), json.loads(b.read_text()))
    by_section = {r["section"]: r for r in rows}
    assert by_section["throughput"]["ratio"] == 1.5
    assert by_section["ceiling"]["ratio"] == 0.8
    assert by_section["time to accuracy"]["ratio"] is None  # b never reached the target
    assert by_section["throughput"]["key"] == "cpu mnist-mlp sgd batch 32 gpunet-fused"
    assert gpunet_main(["bench", "--compare", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert "| 1.50x |" in out and "| 0.80x |" in out


def test_compare_only_in_one_file():
    a = _report(rate=1000.0, sgemm=50.0, seconds=2.0)
    b = _report(rate=250.0, sgemm=50.0, seconds=0.5)
    b["ceilings"][0]["kind"] = "copy d2d"
    rows = {(r["section"], r["key"]): r for r in compare.compare(a, b)}
    assert rows["throughput", "cpu mnist-mlp sgd batch 32 gpunet-fused"]["ratio"] == 0.25
    assert rows["time to accuracy", "cpu digits minibatch gpunet"]["ratio"] == 0.25
    assert rows["ceiling", "cpu sgemm"]["b"] is None
    assert rows["ceiling", "cpu copy d2d"]["a"] is None
    assert "only in b" in compare.compare_text(list(rows.values()))


# ------------------------------------------------------------------ the CLI
def test_bench_help_parses(capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["bench", "--help"])
    assert exit_info.value.code == 0
    assert "--compare" in capsys.readouterr().out


# -------------------------------------------------------------- Dockerfiles
DOCKERFILES = sorted((ROOT / "docker").glob("Dockerfile.*"))


def _extras():
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return set(project["optional-dependencies"])


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_extras_exist(dockerfile):
    installs = re.findall(r'pip install "\.\[([^\]]*)\]"', dockerfile.read_text())
    assert installs, f"{dockerfile.name} installs no extras of the package"
    for group in installs:
        missing = set(group.split(",")) - _extras()
        assert not missing, f"{dockerfile.name} installs unknown extras {missing}"
    assert "bench" in installs[0].split(",")


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_commands_exist(dockerfile):
    """Every ``docker run ... <image> <args>`` the file documents parses as a gpunet
    command line (the image's entry point is ``gpunet``), and one of them is bench."""
    text = dockerfile.read_text()
    assert re.search(r'^ENTRYPOINT \["gpunet"\]', text, re.M)
    commands = []
    for line in re.findall(r"^#\s+docker run (.*)$", text, re.M):
        words = shlex.split(line)
        image = next(i for i, w in enumerate(words) if w.startswith("gpunet:"))
        commands.append(words[image + 1 :])
    assert ["bench"] in commands
    for argv in commands:
        if argv == ["--help"]:
            continue
        build_parser().parse_args(argv)


def _docker_unusable() -> str | None:
    if shutil.which("docker") is None:
        return "docker is not on PATH"
    info = subprocess.run(["docker", "info"], capture_output=True, timeout=30)
    return None if info.returncode == 0 else "the docker daemon is not reachable"


@pytest.mark.docker
def test_cpu_image_builds():
    reason = _docker_unusable()
    if reason:
        pytest.skip(reason)
    subprocess.run(
        ["docker", "build", "-f", "docker/Dockerfile.cpu", "-t", "gpunet:cpu-test", "."],
        cwd=ROOT,
        check=True,
    )
