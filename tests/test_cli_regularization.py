"""`gpunet train --dropout/--dropconnect/--batchnorm/--l1/--l2`, run in-process."""

import json

import numpy as np
import pytest

from gpunet import nn
from gpunet.cli import build_model, main


def test_flags_build_the_layers():
    model = build_model(
        4, [8, 6], 3, "tanh", np.float64, "cpu", dropout=0.2, batchnorm=True, l1=0.1, l2=0.3
    )
    kinds = [type(m).__name__ for m in model]
    assert kinds == ["Dense", "BatchNorm1d", "Tanh", "Dropout"] * 2 + ["Dense"]
    assert model[0].activation == "linear"
    dense = [m for m in model if isinstance(m, nn.Dense)]
    assert all((m.kernel_regularizer.l1, m.kernel_regularizer.l2) == (0.1, 0.3) for m in dense)
    model = build_model(4, [8], 3, "relu", np.float64, "cpu", dropconnect=0.4)
    assert isinstance(model[0], nn.DropConnectDense) and model[0].p == 0.4
    assert model[0].activation == "relu" and type(model[1]) is nn.Dense


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--dropout", "1.0"], r"--dropout must be in [0, 1), got 1.0"),
        (["--dropconnect", "-0.1"], r"--dropconnect must be in [0, 1), got -0.1"),
        (["--l1", "-1"], "--l1 must be a finite number >= 0, got -1.0"),
        (["--l2", "nan"], "--l2 must be a finite number >= 0, got nan"),
    ],
)
def test_bad_values_fail_before_any_data_is_loaded(extra, message, capsys, monkeypatch):
    import gpunet.data  # noqa: PLC0415

    def no_loading(*args, **kwargs):
        raise AssertionError("data was loaded before the flags were checked")

    monkeypatch.setattr(gpunet.data, "load_dataset", no_loading)
    assert main(["train", "--no-progress", "--epochs", "1", *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err


def test_train_with_every_technique(tmp_path):
    out = tmp_path / "history.json"
    argv = ["train", "--no-progress", "--epochs", "5", "--hidden", "32", "--output", str(out)]
    argv += ["--dropout", "0.2", "--dropconnect", "0.2", "--batchnorm", "--l1", "1e-5"]
    assert main([*argv, "--l2", "1e-4"]) == 0
    summary = json.loads(out.read_text())["summary"]
    assert summary["engine"] == "autograd"
    assert summary["test_accuracy"] > 0.8
