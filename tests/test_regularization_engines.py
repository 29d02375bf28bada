"""Which engine trains the regularization layers: the fused engines refuse the ones they
do not run with a reason, ``engine="auto"`` falls back to autograd; the fused CPU engine
runs Dropout after a layer's activation and gives the autograd engine's weights."""

import numpy as np
import pytest

import gpunet
from gpunet import nn, optim
from gpunet.regularizers import L2
from gpunet.train import Trainer

rng = np.random.default_rng(3)
X = rng.standard_normal((40, 6))
Y = rng.integers(0, 3, 40)

MODELS = {
    "batchnorm": (
        lambda: nn.Sequential(nn.Dense(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dense(8, 3)),
        "BatchNorm1d",
    ),
    "input_dropout": (
        lambda: nn.Sequential(nn.Dropout(0.5), nn.Dense(6, 8, "relu"), nn.Dense(8, 3)),
        "Dropout on the input",
    ),
    "dropout_before_activation": (
        lambda: nn.Sequential(nn.Dense(6, 8), nn.Dropout(0.5), nn.ReLU(), nn.Dense(8, 3)),
        "does not directly follow a linear layer",
    ),
    "penalty": (
        lambda: nn.Sequential(nn.Dense(6, 8, "relu", kernel_regularizer=L2(0.01)), nn.Dense(8, 3)),
        "penalty",
    ),
}


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_fused_refuses_and_auto_picks_autograd(kind):
    build, reason = MODELS[kind]
    gpunet.manual_seed(0)
    model = build().double()
    opt = optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match=f"engine='fused' cannot train this model: .*{reason}"):
        Trainer(model, "cross_entropy", opt, engine="fused", verbose=0, progress=False).fit(
            X, Y, epochs=1
        )
    trainer = Trainer(model, "cross_entropy", opt, engine="auto", verbose=0, progress=False)
    trainer.fit(X, Y, epochs=1, batch_size=8)
    assert trainer.engine_name == "autograd"


def test_dropout_is_fusable_on_engines_that_run_it():
    """Both fused engines run Dropout (the GPU engine's step: tests/test_cuda_engine_host.py);
    the reason is given to one that does not."""
    from gpunet.train.engines.fused_gpu import FusedGpuEngine
    from gpunet.train.engines.qualify import fused_model_reason

    assert FusedGpuEngine.runs_dropout
    model = nn.Sequential(nn.Dense(6, 8, "relu"), nn.Dropout(0.5), nn.Dense(8, 3))
    opt = optim.SGD(model.parameters(), lr=0.1)
    reason = fused_model_reason(model, nn.CrossEntropyLoss(), opt, [], dropout=False)
    assert "Dropout" in reason
    assert fused_model_reason(model, nn.CrossEntropyLoss(), opt, [], dropout=True) is None


DROPOUT_NETS = {
    "relu": lambda: nn.Sequential(
        nn.Dense(6, 16, "relu"), nn.Dropout(0.5), nn.Dense(16, 12, "tanh"), nn.Dense(12, 3)
    ),
    "gelu_tanh": lambda: nn.Sequential(
        nn.Dense(6, 16, "gelu"),
        nn.Dropout(0.3),
        nn.Dense(16, 12),
        nn.Tanh(),
        nn.Dropout(0.2),
        nn.Dense(12, 3),
    ),
    "after_output": lambda: nn.Sequential(
        nn.Dense(6, 16, "sigmoid"), nn.Dropout(0.1), nn.Dense(16, 3), nn.Dropout(0.25)
    ),
}


MASKED = (nn.Dropout, nn.DropConnectDense)


@pytest.mark.parametrize("loss_name", ["cross_entropy", "mse"])
@pytest.mark.parametrize("batch_size", [1, 7, 40])  # stochastic, partial last batch, full
@pytest.mark.parametrize("net", sorted(DROPOUT_NETS))
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_fused_dropout_gives_the_autograd_weights(net, batch_size, loss_name, dtype):
    """The fused CPU epoch draws each step's masks from the layers' (seed, counter), as
    the autograd Dropout does: same weights (1e-10 float64, 1e-5 float32), same
    counters, and the masks matter (p = 0 trains otherwise)."""
    _check_fused_masks(DROPOUT_NETS[net], batch_size, loss_name, dtype)


DROPCONNECT_NET = lambda: nn.Sequential(  # noqa: E731
    nn.DropConnectDense(6, 16, "relu", p=0.5),  # the first layer: no dx
    nn.Dropout(0.2),
    nn.DropConnectDense(16, 12, "tanh", p=0.0),  # p = 0: no mask, no count
    nn.Dense(12, 12, "gelu"),
    nn.DropConnectDense(12, 3, p=0.3, bias=False),
)


@pytest.mark.parametrize("batch_size", [1, 7, 40])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_fused_dropconnect_gives_the_autograd_weights(batch_size, dtype):
    """DropConnectDense in the fused CPU epoch: each step's weight masks drawn in the
    kernel from the layers' (seed, counter), the products through the masked weights and
    dW through the mask, as the autograd layer computes them."""
    _check_fused_masks(DROPCONNECT_NET, batch_size, "cross_entropy", dtype)


def test_dropconnect_is_fusable_on_engines_that_run_it():
    """Both fused engines run DropConnectDense (the GPU engine's step:
    tests/test_cuda_engine_host.py); an engine that does not is given the reason."""
    from gpunet.train.engines.fused_cpu import FusedCpuEngine
    from gpunet.train.engines.fused_gpu import FusedGpuEngine
    from gpunet.train.engines.qualify import fused_model_reason

    assert FusedCpuEngine.runs_dropconnect and FusedGpuEngine.runs_dropconnect
    gpunet.manual_seed(0)
    model = DROPCONNECT_NET()
    loss, opt = nn.CrossEntropyLoss(), optim.SGD(model.parameters(), lr=0.1)
    reason = fused_model_reason(model, loss, opt, [], dropout=True, dropconnect=False)
    assert "DropConnectDense is not run by this engine" in reason
    assert fused_model_reason(model, loss, opt, [], dropout=True, dropconnect=True) is None


def _check_fused_masks(build, batch_size, loss_name, dtype):
    targets = Y if loss_name == "cross_entropy" else rng.standard_normal((40, 3)).astype(dtype)
    results = {}
    for engine in ("autograd", "fused", "no_mask"):
        gpunet.manual_seed(0)
        model = build().to(dtype=dtype)
        if engine == "no_mask":
            for m in model:
                if isinstance(m, MASKED):
                    object.__setattr__(m, "p", 0.0)
        opt = optim.Adam(model.parameters(), lr=0.01)
        trainer = Trainer(
            model,
            loss_name,
            opt,
            engine="autograd" if engine == "autograd" else "fused",
            verbose=0,
            progress=False,
        )
        trainer.fit(X.astype(dtype), targets, epochs=3, batch_size=batch_size, seed=1)
        counters = [m.counter for m in model if isinstance(m, MASKED)]
        results[engine] = ([p.data.copy() for p in model.parameters()], counters)
    tol = 1e-10 if dtype == np.float64 else 1e-5
    (want, want_counts), (got, got_counts) = results["autograd"], results["fused"]
    steps = 3 * -(-40 // batch_size)
    expected = [steps if m.p else 0 for m in build() if isinstance(m, MASKED)]
    assert got_counts == want_counts == expected
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol)
    plain = results["no_mask"][0]
    assert max(float(np.abs(a - b).max()) for a, b in zip(plain, want)) > 1e-3
