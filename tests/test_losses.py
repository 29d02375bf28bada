"""Losses: gradients by central differences, values by float64 reference formulas."""

import numpy as np
import pytest

from gpunet import Tensor, nn
from gpunet import functional as F
from tests.gradcheck import check_gradients

rng = np.random.default_rng(11)
N, C = 6, 4
TARGET = np.array([0, 3, 1, 2, 3, 0])


def reference_cross_entropy(logits, target, smoothing, reduction):
    logp = logits - logits.max(1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(1, keepdims=True))
    q = np.full_like(logits, smoothing / logits.shape[1])
    q[np.arange(len(target)), target] += 1 - smoothing
    losses = -(q * logp).sum(1)
    return {"mean": losses.mean(), "sum": losses.sum(), "none": losses}[reduction]


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_cross_entropy_value_and_gradient(reduction, smoothing):
    logits = rng.standard_normal((N, C)) * 3
    loss = nn.CrossEntropyLoss(reduction=reduction, label_smoothing=smoothing)
    got = loss(Tensor(logits), TARGET).numpy()
    np.testing.assert_allclose(
        got, reference_cross_entropy(logits, TARGET, smoothing, reduction), rtol=1e-12
    )
    check_gradients(lambda z: loss(z, TARGET), logits)


def test_cross_entropy_is_stable_for_huge_logits():
    logits = np.array([[1000.0, 0.0, -1000.0]], np.float32)
    value = nn.CrossEntropyLoss()(Tensor(logits), np.array([1])).item()
    assert np.isfinite(value) and abs(value - 1000.0) < 1e-3


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_nll_matches_cross_entropy_of_log_softmax(reduction):
    logits = rng.standard_normal((N, C))
    a = nn.NLLLoss(reduction=reduction)(F.log_softmax(Tensor(logits)), TARGET).numpy()
    b = nn.CrossEntropyLoss(reduction=reduction)(Tensor(logits), TARGET).numpy()
    np.testing.assert_allclose(a, b, rtol=1e-12)
    check_gradients(lambda z: nn.NLLLoss(reduction=reduction)(z, TARGET), logits)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_mse(reduction):
    a, b = rng.standard_normal((N, 3)), rng.standard_normal((N, 3))
    ref = (a - b) ** 2
    ref = {"mean": ref.mean(), "sum": ref.sum(), "none": ref}[reduction]
    np.testing.assert_allclose(nn.MSELoss(reduction)(Tensor(a), b).numpy(), ref, rtol=1e-12)
    check_gradients(lambda x, y: nn.MSELoss(reduction)(x, y), a, b)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_bce_with_logits_and_bce(reduction):
    x = rng.standard_normal((N, 2)) * 2
    t = rng.uniform(0, 1, (N, 2))
    p = 1 / (1 + np.exp(-x))
    ref = -(t * np.log(p) + (1 - t) * np.log(1 - p))
    ref = {"mean": ref.mean(), "sum": ref.sum(), "none": ref}[reduction]
    got = nn.BCEWithLogitsLoss(reduction)(Tensor(x), t).numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-10)
    np.testing.assert_allclose(nn.BCELoss(reduction)(Tensor(p), t).numpy(), ref, rtol=1e-10)
    check_gradients(lambda z: nn.BCEWithLogitsLoss(reduction)(z, t), x)
    check_gradients(lambda z: nn.BCELoss(reduction)(z, t), p)


def test_bce_with_logits_is_stable():
    value = nn.BCEWithLogitsLoss()(Tensor(np.array([[800.0, -800.0]])), np.array([[0.0, 1.0]]))
    np.testing.assert_allclose(value.item(), 800.0)


def test_label_out_of_range_and_bad_targets():
    logits = Tensor(rng.standard_normal((3, 4)))
    with pytest.raises(ValueError, match="label 4 out of range for 4 classes"):
        nn.CrossEntropyLoss()(logits, np.array([0, 4, 1]))
    with pytest.raises(ValueError, match="label -1 out of range"):
        nn.NLLLoss()(logits, np.array([0, -1, 1]))
    with pytest.raises(TypeError, match="integer class-index targets"):
        nn.CrossEntropyLoss()(logits, np.array([0.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match="does not match batch size 3"):
        nn.CrossEntropyLoss()(logits, np.array([0, 1]))
    with pytest.raises(ValueError, match="input shape .* and target shape .* differ"):
        nn.MSELoss()(logits, np.zeros((3, 3)))
    with pytest.raises(ValueError, match="reduction must be one of"):
        nn.MSELoss(reduction="avg")
    with pytest.raises(ValueError, match="probabilities must lie in"):
        nn.BCELoss()(Tensor(np.array([1.5])), np.array([1.0]))


def test_against_torch_when_installed():
    torch = pytest.importorskip("torch")
    logits = rng.standard_normal((N, C))
    for smoothing in (0.0, 0.2):
        ours = nn.CrossEntropyLoss(label_smoothing=smoothing)(Tensor(logits), TARGET).item()
        theirs = torch.nn.functional.cross_entropy(
            torch.tensor(logits), torch.tensor(TARGET), label_smoothing=smoothing
        ).item()
        assert abs(ours - theirs) < 1e-12
