"""The command line, run in-process as a user would run it."""

import json
import os

import numpy as np
import pytest

import gpunet
from gpunet import nn
from gpunet.cli import build_model, main
from gpunet.io import load_weights


def test_train_digits_with_defaults_reaches_97_percent(tmp_path, capsys):
    out = tmp_path / "history.json"
    weights = tmp_path / "weights.safetensors"
    assert main(["train", "--no-progress", "--output", str(out), "--save", str(weights)]) == 0
    printed = capsys.readouterr().out
    assert "test accuracy" in printed and "training time" in printed
    report = json.loads(out.read_text())
    assert report["summary"]["test_accuracy"] >= 0.97
    assert report["summary"]["engine"] in ("autograd", "fused")  # auto: the faster here
    assert len(report["history"]["history"]["loss"]) == report["summary"]["epochs_run"]
    model = build_model(64, [128, 64], 10, "relu", np.float32, "cpu")
    load_weights(model, str(weights))
    assert model[0].weight.shape == (128, 64)


def test_train_every_regime_scheduler_and_early_stopping(tmp_path):
    for extra in (
        [
            "--mode",
            "batch",
            "--optimizer",
            "sgd",
            "--lr",
            "0.5",
            "--momentum",
            "0.9",
            "--scheduler",
            "cosine",
        ],
        [
            "--mode",
            "stochastic",
            "--optimizer",
            "rmsprop",
            "--lr",
            "1e-3",
            "--scheduler",
            "plateau",
            "--epochs",
            "2",
        ],
        [
            "--batch-size",
            "64",
            "--optimizer",
            "adamw",
            "--scheduler",
            "step",
            "--early-stopping",
            "2",
            "--activation",
            "gelu",
            "--engine",
            "autograd",
        ],
    ):
        out = tmp_path / "h.json"
        args = ["train", "--no-progress", "--epochs", "5", "--output", str(out), *extra]
        assert main(args) == 0, extra
        summary = json.loads(out.read_text())["summary"]
        assert summary["test_accuracy"] > 0.5, extra


def test_train_regression_and_mnist1d(tmp_path):
    out = tmp_path / "h.json"
    assert (
        main(
            [
                "train",
                "--no-progress",
                "--dataset",
                "synthetic-regression",
                "--epochs",
                "5",
                "--output",
                str(out),
            ]
        )
        == 0
    )
    assert "test_loss" in json.loads(out.read_text())["summary"]
    assert (
        main(
            [
                "train",
                "--no-progress",
                "--dataset",
                "mnist1d",
                "--epochs",
                "2",
                "--hidden",
                "64",
                "--output",
                str(out),
            ]
        )
        == 0
    )
    assert json.loads(out.read_text())["summary"]["dataset"] == "mnist1d"


def test_bad_arguments_exit_with_a_message(capsys):
    assert main(["train", "--activation", "swish", "--no-progress", "--epochs", "1"]) == 2
    assert "unknown activation 'swish'" in capsys.readouterr().err
    assert main(["train", "--batch-size", "0", "--no-progress", "--epochs", "1"]) == 2
    assert "batch_size must be >= 1" in capsys.readouterr().err


def test_info_reports_backends(capsys):
    assert main(["info"]) == 0
    text = capsys.readouterr().out
    assert "numpy (cpu) available" in text
    assert "cuda" in text


def test_saved_weights_are_never_half_written(tmp_path, monkeypatch):
    import safetensors.numpy  # noqa: PLC0415

    from gpunet.io import save_weights  # noqa: PLC0415

    gpunet.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 2))
    path = tmp_path / "w.safetensors"
    save_weights(model, path)
    before = path.read_bytes()

    class CrashDuringWrite(Exception):
        pass

    real_save_file = safetensors.numpy.save_file
    written = []

    def crash_half_way(tensors, filename, metadata=None):
        # the whole file reaches the disk, then is cut in half, then the "process" dies
        real_save_file(tensors, filename, metadata=metadata)
        size = os.path.getsize(filename)
        with open(filename, "r+b") as f:
            f.truncate(size // 2)
        written.append((os.fspath(filename), size // 2))
        raise CrashDuringWrite

    monkeypatch.setattr(safetensors.numpy, "save_file", crash_half_way)
    gpunet.manual_seed(1)
    other = nn.Sequential(nn.Linear(3, 2))
    with pytest.raises(CrashDuringWrite):
        save_weights(other, path)
    monkeypatch.undo()
    ((target, size),) = written
    assert path.read_bytes() == before, "the previous file was changed"
    assert size > 0 and os.path.abspath(target) != os.path.abspath(path)
    assert [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]
    gpunet.manual_seed(2)
    fresh = nn.Sequential(nn.Linear(3, 2))
    load_weights(fresh, path)
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(fresh.state_dict()[key], value)


def test_unwritable_output_paths_fail_before_any_data_is_loaded(tmp_path, capsys, monkeypatch):
    import gpunet.data  # noqa: PLC0415

    def no_loading(*args, **kwargs):
        raise AssertionError("data was loaded before the output paths were checked")

    monkeypatch.setattr(gpunet.data, "load_dataset", no_loading)
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    cases = [
        (["--output", str(tmp_path)], "--output", "is a directory"),
        (["--save", str(a_file / "w.safetensors")], "--save", "is not a directory"),
    ]
    for extra, what, message in cases:
        assert main(["train", "--no-progress", "--epochs", "1", *extra]) == 2
        err = capsys.readouterr().err
        assert what in err and message in err, err
        assert len(err.strip().splitlines()) == 1


def test_piped_output_has_no_carriage_returns_and_no_repeated_notice(tmp_path):
    """As `gpunet train ... 2>&1 | cat` shows it: one line per epoch, no bars."""
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415

    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "gpunet.cli",
            "train",
            "--epochs",
            "3",
            "--hidden",
            "16",
            "--engine",
            "autograd",
        ],  # fmt: skip
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout
    assert "\r" not in proc.stdout
    lines = proc.stdout.splitlines()
    assert sum(line.startswith("epoch ") for line in lines) == 3, proc.stdout
    assert len(lines) == len(set(lines)), proc.stdout  # no notice printed twice
