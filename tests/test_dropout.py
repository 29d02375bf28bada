"""nn.Dropout and nn.DropConnectDense: masks, forward, backward, modes, torch."""

import math

import numpy as np
import pytest

import gpunet
from gpunet import Tensor, counter_rng, nn
from gpunet import functional as F
from gpunet.train import Trainer
from tests import oracles
from tests.gradcheck import check_gradients

rng = np.random.default_rng(21)


def keep(shape, p, seed, counter):
    return counter_rng.keep_mask(np, shape, p, seed, counter)


def test_dropout_forward_and_backward_against_the_oracle():
    p = 0.4
    layer = nn.Dropout(p, seed=11)
    x = Tensor(rng.standard_normal((6, 9)), requires_grad=True)
    g = rng.standard_normal((6, 9))
    for counter in range(3):  # each training forward draws the next counter's mask
        x.grad = None
        y = layer(x)
        mask = keep((6, 9), p, 11, counter)
        np.testing.assert_array_equal(y.data, np.where(mask, x.data / (1 - p), 0.0))
        y.backward(Tensor(g))
        np.testing.assert_array_equal(x.grad.numpy(), np.where(mask, g / (1 - p), 0.0))
    assert layer.counter == 3


def test_dropout_gradient_by_finite_differences():
    check_gradients(lambda x: F.dropout(x, 0.3, seed=5, counter=2), rng.standard_normal((4, 5)))


def test_dropout_eval_mode_and_p_zero_are_the_identity():
    x = Tensor(rng.standard_normal((3, 4)))
    layer = nn.Dropout(0.5, seed=1)
    layer.eval()
    assert layer(x) is x and layer.counter == 0
    layer.train()
    assert nn.Dropout(0.0)(x) is x
    assert not np.array_equal(layer(x).data, x.data)


def test_dropout_masks_are_reproducible_under_manual_seed():
    outs = []
    for _ in range(2):
        gpunet.manual_seed(123)
        layer = nn.Dropout(0.5)
        x = Tensor(np.ones((8, 8)))
        outs.append([layer(x).data.copy() for _ in range(2)])
    np.testing.assert_array_equal(outs[0][0], outs[1][0])
    np.testing.assert_array_equal(outs[0][1], outs[1][1])
    assert not np.array_equal(outs[0][0], outs[0][1])


@pytest.mark.parametrize("p", [1.0, -0.2, float("nan")])
def test_dropout_refuses_p_outside_range(p):
    with pytest.raises(ValueError, match=r"p must be in \[0, 1\)"):
        nn.Dropout(p)
    with pytest.raises(ValueError, match=r"p must be in \[0, 1\)"):
        nn.DropConnectDense(3, 2, p=p)


def test_train_and_eval_propagate_to_children():
    model = nn.Sequential(nn.Dense(4, 4), nn.Sequential(nn.Dropout(0.5), nn.BatchNorm1d(4)))
    model.eval()
    assert not any(m.training for m in model.modules())
    model.train()
    assert all(m.training for m in model.modules())


def test_trainer_evaluate_and_predict_use_eval_mode_and_restore_it():
    gpunet.manual_seed(0)
    model = nn.Sequential(nn.Dense(4, 16, "relu"), nn.Dropout(0.5), nn.Dense(16, 3))
    model.double()
    x = rng.standard_normal((20, 4))
    y = rng.integers(0, 3, 20)
    trainer = Trainer(
        model,
        "cross_entropy",
        gpunet.optim.SGD(model.parameters(), lr=0.1),
        progress=False,
        verbose=0,
    )
    dropout = model[1]
    for mode in (True, False):
        model.train(mode)
        first = trainer.evaluate(x, y)
        assert trainer.evaluate(x, y) == first  # no mask drawn: eval mode
        np.testing.assert_array_equal(trainer.predict(x), trainer.predict(x))
        assert model.training is mode and dropout.counter == 0
    trainer.fit(x, y, epochs=2, batch_size=5)
    assert dropout.counter == 8  # 4 steps per epoch, none for the validation probe


# -------------------------------------------------------------------- torch
torch_tests = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@torch_tests
@pytest.mark.parametrize("p", [0.2, 0.5, 0.8])
def test_dropout_matches_torch(p):
    torch = pytest.importorskip("torch")
    x = rng.standard_normal((7, 13))
    g = rng.standard_normal((7, 13))
    # train: torch's output given its mask, and ours given the same mask
    tx = torch.tensor(x, requires_grad=True)
    tdrop = torch.nn.Dropout(p)
    ty = tdrop(tx)
    ty.backward(torch.tensor(g))
    torch_mask = ty.detach().numpy() != 0
    gx = Tensor(x, requires_grad=True)
    ours = F.dropout_with_mask(gx, torch_mask / (1 - p))
    ours.backward(Tensor(g))
    np.testing.assert_allclose(ours.data, ty.detach().numpy(), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(gx.grad.numpy(), tx.grad.numpy(), rtol=1e-10, atol=1e-10)
    # our module's own output takes the same two values per element as torch's
    layer = nn.Dropout(p, seed=3)
    y = layer(Tensor(x)).data
    mask = y != 0
    np.testing.assert_allclose(y[mask], x[mask] / (1 - p), rtol=1e-15)
    np.testing.assert_allclose(ty.detach().numpy()[torch_mask], x[torch_mask] / (1 - p), rtol=1e-15)
    # eval: both the identity
    tdrop.eval()
    layer.eval()
    np.testing.assert_array_equal(layer(Tensor(x)).data, tdrop(torch.tensor(x)).numpy())


# ------------------------------------------------------------------ DropConnect
def test_dropconnect_masks_weights_per_step_with_inverted_scaling():
    p = 0.3
    layer = nn.DropConnectDense(5, 4, "tanh", p=p, seed=8, dtype=np.float64)
    x = Tensor(rng.standard_normal((6, 5)), requires_grad=True)
    dy = rng.standard_normal((6, 4))
    W, b = layer.weight.data.copy(), layer.bias.data.copy()
    for counter in range(2):
        layer.zero_grad()
        x.grad = None
        y = layer(x)
        m = keep((4, 5), p, 8, counter) / (1 - p)
        W_eff = W * m
        expected, z = oracles.dense_forward(x.data, W_eff, b, "tanh")
        np.testing.assert_allclose(y.data, expected, rtol=1e-12, atol=1e-14)
        y.backward(Tensor(dy))
        dx, dW, db = oracles.dense_backward(dy, x.data, W_eff, z, "tanh")
        np.testing.assert_allclose(x.grad.numpy(), dx, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(layer.weight.grad.numpy(), dW * m, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(layer.bias.grad.numpy(), db, rtol=1e-12, atol=1e-14)


def test_dropconnect_eval_uses_the_expected_weights():
    layer = nn.DropConnectDense(5, 4, "relu", p=0.5, seed=1, dtype=np.float64)
    x = rng.standard_normal((3, 5))
    layer.eval()
    expected, _ = oracles.dense_forward(x, layer.weight.data, layer.bias.data, "relu")
    np.testing.assert_allclose(layer(Tensor(x)).data, expected, rtol=1e-12)
    assert layer.counter == 0


@pytest.mark.parametrize("p", [0.25, 0.5])
def test_dropconnect_mask_statistics(p):
    """Keep rate of each step's weight mask within a 5-sigma binomial bound; the masks
    of different steps are independent; the mean masked weight tends to W."""
    out_f, in_f, steps = 60, 50, 40
    layer = nn.DropConnectDense(in_f, out_f, p=p, seed=2, dtype=np.float64)
    n = out_f * in_f
    bound = 5 * math.sqrt(p * (1 - p) / n)
    eye = Tensor(np.eye(in_f))  # y = W_eff.T + b: the effective weight, column by column
    b = layer.bias.data
    total = np.zeros((out_f, in_f))
    previous = None
    for _ in range(steps):
        W_eff = (layer(eye).data - b).T
        kept = W_eff != 0
        assert abs(kept.mean() - (1 - p)) < bound
        if previous is not None:
            assert abs((kept == previous).mean() - (p * p + (1 - p) ** 2)) < 2 * bound
        previous = kept
        total += W_eff
    W = layer.weight.data
    # per element the mean of `steps` draws of W * Bernoulli(1-p) / (1-p)
    spread = np.abs(W) * math.sqrt(p / ((1 - p) * steps))
    assert np.all(np.abs(total / steps - W) <= 5 * spread + 1e-12)
