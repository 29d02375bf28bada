"""Keras-style weight penalties and PyTorch-style gradient clipping."""

import math

import numpy as np
import pytest

import gpunet
from gpunet import Tensor, nn, optim, regularizers
from gpunet.regularizers import L1, L1L2, L2
from gpunet.train import Trainer
from tests.gradcheck import check_gradients

rng = np.random.default_rng(5)


@pytest.mark.parametrize(
    "reg,l1,l2", [(L1(0.3), 0.3, 0.0), (L2(0.2), 0.0, 0.2), (L1L2(0.1, 0.05), 0.1, 0.05)]
)
def test_penalty_value_and_gradient(reg, l1, l2):
    w = rng.standard_normal((4, 3))
    w[0, 0] = 0.0  # subgradient 0 at 0, as Keras/TensorFlow
    t = Tensor(w, requires_grad=True)
    value = reg(t)
    assert value.item() == pytest.approx(l1 * np.abs(w).sum() + l2 * (w**2).sum(), rel=1e-14)
    value.backward()
    np.testing.assert_allclose(t.grad.data, l1 * np.sign(w) + 2 * l2 * w, rtol=1e-14)
    w[0, 0] = 0.5
    check_gradients(lambda x: reg(x), w)


def test_bad_coefficients_and_names_are_refused():
    with pytest.raises(ValueError, match="l2 must be a finite number >= 0"):
        L2(-1.0)
    with pytest.raises(ValueError, match="l1 must be a finite number >= 0"):
        L1(float("nan"))
    with pytest.raises(ValueError, match="unknown regularizer 'l3'"):
        nn.Dense(2, 2, kernel_regularizer="l3")
    assert regularizers.get("l2").l2 == 0.01


def _model(reg):
    gpunet.manual_seed(4)
    return nn.Sequential(
        nn.Dense(5, 7, "tanh", kernel_regularizer=reg, bias_regularizer=L1(0.02)),
        nn.Dense(7, 3, kernel_regularizer=reg),
    ).double()


def test_trainer_adds_the_penalty_to_the_loss_and_its_gradient_to_dW():
    """One full-batch SGD step with penalties equals one step on the data loss with
    the penalty's gradient (``2 * l2 * W``, ``l1 * sign(b)``) added by hand."""
    x, y = rng.standard_normal((12, 5)), rng.integers(0, 3, 12)
    lr, l2 = 0.5, 0.03
    model = _model(L2(l2))
    plain = _model(None)
    plain[0].bias_regularizer = None
    history = Trainer(
        model,
        "cross_entropy",
        optim.SGD(model.parameters(), lr=lr),
        engine="autograd",
        verbose=0,
        progress=False,
    ).fit(x, y, batch_size=12)
    loss = gpunet.losses.CrossEntropyLoss()(plain(Tensor(x)), Tensor(y))
    expected_penalty = (
        sum(l2 * (m.weight.data**2).sum() for m in plain) + 0.02 * np.abs(plain[0].bias.data).sum()
    )
    assert history.history["loss"][0] == pytest.approx(loss.item() + expected_penalty, rel=1e-12)
    loss.backward()
    for ours, ref in zip(model, plain):
        dW = ref.weight.grad.data + 2 * l2 * ref.weight.data
        np.testing.assert_allclose(ours.weight.data, ref.weight.data - lr * dW, rtol=1e-12)
    db = plain[0].bias.grad.data + 0.02 * np.sign(plain[0].bias.data)
    np.testing.assert_allclose(model[0].bias.data, plain[0].bias.data - lr * db, rtol=1e-12)


def test_evaluate_reports_the_penalty_too():
    x, y = rng.standard_normal((10, 5)), rng.integers(0, 3, 10)
    model = _model(L2(0.1))
    trainer = Trainer(
        model, "cross_entropy", optim.SGD(model.parameters(), lr=0.1), verbose=0, progress=False
    )
    data_loss = gpunet.losses.CrossEntropyLoss()(model(Tensor(x)), Tensor(y)).item()
    penalty = regularizers.penalty(model).item()
    assert penalty > 0
    assert trainer.evaluate(x, y)["loss"] == pytest.approx(data_loss + penalty, rel=1e-12)


# ------------------------------------------------------------------ clipping
def _params_with_grads(scale=1.0):
    params = []
    for shape in ((3, 4), (5,), (2, 2)):
        p = nn.Parameter(rng.standard_normal(shape))
        p.grad = Tensor(rng.standard_normal(shape) * scale)
        params.append(p)
    return params


@pytest.mark.parametrize("norm_type", [2.0, 1.0, 3.0, math.inf])
@pytest.mark.parametrize("max_norm", [0.5, 100.0])
def test_clip_grad_norm_formula(norm_type, max_norm):
    params = _params_with_grads()
    grads = [p.grad.data.copy() for p in params]
    flat = np.concatenate([g.ravel() for g in grads])
    total = (
        np.abs(flat).max()
        if norm_type == math.inf
        else (np.abs(flat) ** norm_type).sum() ** (1 / norm_type)
    )
    got = nn.utils.clip_grad_norm_(params, max_norm, norm_type)
    assert got.item() == pytest.approx(total, rel=1e-12)
    coef = min(1.0, max_norm / (total + 1e-6))
    for p, g in zip(params, grads):
        np.testing.assert_allclose(p.grad.data, g * coef, rtol=1e-14)


def test_clip_grad_value_and_errors():
    params = _params_with_grads(scale=3.0)
    grads = [p.grad.data.copy() for p in params]
    assert nn.utils.clip_grad_value_(params, 1.5) is None
    for p, g in zip(params, grads):
        np.testing.assert_array_equal(p.grad.data, np.clip(g, -1.5, 1.5))
    with pytest.raises(ValueError, match="clip_value must be >= 0"):
        nn.utils.clip_grad_value_(params, -1)
    params[0].grad.data[0, 0] = np.inf
    before = [p.grad.data.copy() for p in params]
    with pytest.raises(RuntimeError, match="non-finite"):
        nn.utils.clip_grad_norm_(params, 1.0, error_if_nonfinite=True)
    for p, g in zip(params, before):
        np.testing.assert_array_equal(p.grad.data, g)
    assert nn.utils.clip_grad_norm_([nn.Parameter(np.ones(2))], 1.0).item() == 0.0


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("norm_type", [2.0, 1.0, math.inf])
def test_clipping_matches_torch(norm_type):
    torch = pytest.importorskip("torch")
    params = _params_with_grads(scale=2.0)
    tparams = []
    for p in params:
        t = torch.tensor(p.data.copy(), requires_grad=True)
        t.grad = torch.tensor(p.grad.data.copy())
        tparams.append(t)
    ours = nn.utils.clip_grad_norm_(params, 1.0, norm_type)
    theirs = torch.nn.utils.clip_grad_norm_(tparams, 1.0, norm_type)
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-12)
    for p, t in zip(params, tparams):
        np.testing.assert_allclose(p.grad.data, t.grad.numpy(), rtol=1e-12, atol=1e-15)
    nn.utils.clip_grad_value_(params, 0.05)
    torch.nn.utils.clip_grad_value_(tparams, 0.05)
    for p, t in zip(params, tparams):
        np.testing.assert_array_equal(p.grad.data, t.grad.numpy())
