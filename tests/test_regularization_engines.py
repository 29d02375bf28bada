"""Which engine trains the regularization layers: the fused engines refuse them with a
reason, ``engine="auto"`` falls back to autograd, and the autograd engine applies them."""

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
    "dropout": (
        lambda: nn.Sequential(nn.Dense(6, 8, "relu"), nn.Dropout(0.5), nn.Dense(8, 3)),
        "Dropout",
    ),
    "dropconnect": (
        lambda: nn.Sequential(nn.DropConnectDense(6, 8, "relu", p=0.5), nn.Dense(8, 3)),
        "DropConnectDense",
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
