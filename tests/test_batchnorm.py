"""nn.BatchNorm1d against a float64 NumPy oracle, finite differences and torch.nn."""

import numpy as np
import pytest

from gpunet import Tensor, nn
from gpunet import functional as F
from gpunet.io import load_weights, save_weights
from tests.gradcheck import check_gradients

rng = np.random.default_rng(7)


def oracle_forward(x, gamma, beta, eps=1e-5):
    """Textbook batch norm over axis 0 (and 2): y, batch mean, biased var, count."""
    axes = (0,) if x.ndim == 2 else (0, 2)
    shape = (1, -1) + (1,) * (x.ndim - 2)
    n = x.size // x.shape[1]
    mean = x.sum(axis=axes) / n
    var = ((x - mean.reshape(shape)) ** 2).sum(axis=axes) / n
    y = (x - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + eps)
    return gamma.reshape(shape) * y + beta.reshape(shape), mean, var, n


def oracle_backward(g, x, gamma, eps=1e-5):
    """The three-term gradient of batch norm w.r.t. x, gamma, beta (float64)."""
    axes = (0,) if x.ndim == 2 else (0, 2)
    shape = (1, -1) + (1,) * (x.ndim - 2)
    n = x.size // x.shape[1]
    mu = x.mean(axis=axes).reshape(shape)
    var = ((x - mu) ** 2).mean(axis=axes).reshape(shape)
    xh = (x - mu) / np.sqrt(var + eps)
    dxh = g * gamma.reshape(shape)
    dx = (
        n * dxh - dxh.sum(axis=axes).reshape(shape) - xh * (dxh * xh).sum(axis=axes).reshape(shape)
    ) / (n * np.sqrt(var + eps))
    return dx, (g * xh).sum(axis=axes), g.sum(axis=axes)


@pytest.mark.parametrize("shape", [(2, 3), (7, 4), (5, 3, 6)])
def test_training_forward_backward_and_running_stats_match_the_oracle(shape):
    bn = nn.BatchNorm1d(shape[1], dtype=np.float64)
    bn.weight.data[...] = rng.uniform(0.5, 2, shape[1])
    bn.bias.data[...] = rng.standard_normal(shape[1])
    rm, rv = np.zeros(shape[1]), np.ones(shape[1])
    for step in range(3):
        x = Tensor(rng.standard_normal(shape) * 3 + 1, requires_grad=True)
        g = rng.standard_normal(shape)
        bn.zero_grad()
        y = bn(x)
        expected, mean, var, n = oracle_forward(x.data, bn.weight.data, bn.bias.data)
        np.testing.assert_allclose(y.data, expected, rtol=1e-12, atol=1e-12)
        rm = 0.9 * rm + 0.1 * mean
        rv = 0.9 * rv + 0.1 * var * n / (n - 1)
        np.testing.assert_allclose(bn.running_mean.data, rm, rtol=1e-12)
        np.testing.assert_allclose(bn.running_var.data, rv, rtol=1e-12)
        assert int(bn.num_batches_tracked.data) == step + 1
        y.backward(Tensor(g))
        dx, dgamma, dbeta = oracle_backward(g, x.data, bn.weight.data)
        np.testing.assert_allclose(x.grad.data, dx, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(bn.weight.grad.data, dgamma, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(bn.bias.grad.data, dbeta, rtol=1e-12, atol=1e-12)


def test_eval_uses_the_running_statistics():
    bn = nn.BatchNorm1d(3, dtype=np.float64)
    bn.running_mean.data[...] = [1.0, -2.0, 0.5]
    bn.running_var.data[...] = [4.0, 0.25, 1.0]
    bn.weight.data[...] = [2.0, 1.0, -1.0]
    bn.bias.data[...] = [0.0, 1.0, 3.0]
    bn.eval()
    x = rng.standard_normal((1, 3))  # one row is fine in eval
    xt = Tensor(x, requires_grad=True)
    y = bn(xt)
    expected = (x - [1.0, -2.0, 0.5]) / np.sqrt(np.array([4.0, 0.25, 1.0]) + 1e-5) * [
        2.0,
        1.0,
        -1.0,
    ] + [0.0, 1.0, 3.0]
    np.testing.assert_allclose(y.data, expected, rtol=1e-13)
    y.backward(Tensor(np.ones((1, 3))))
    np.testing.assert_allclose(
        xt.grad.data[0], [2.0, 1.0, -1.0] / np.sqrt(np.array([4.0, 0.25, 1.0]) + 1e-5)
    )
    assert int(bn.num_batches_tracked.data) == 0


@pytest.mark.parametrize("shape", [(5, 3), (4, 2, 3)])
def test_gradients_by_finite_differences(shape):
    def fn(x, w, b):
        return F.batch_norm(x, weight=w, bias=b, training=True)

    check_gradients(
        fn, rng.standard_normal(shape), rng.uniform(0.5, 2, shape[1]), rng.standard_normal(shape[1])
    )


def test_batch_of_one_in_training_raises_before_changing_state():
    bn = nn.BatchNorm1d(4, dtype=np.float64)
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training"):
        bn(Tensor(rng.standard_normal((1, 4))))
    assert int(bn.num_batches_tracked.data) == 0
    np.testing.assert_array_equal(bn.running_mean.data, np.zeros(4))


def test_wrong_feature_count_and_dtype_are_refused():
    bn = nn.BatchNorm1d(4, dtype=np.float64)
    with pytest.raises(ValueError, match="batch_norm expects 4 features"):
        bn(Tensor(rng.standard_normal((3, 5))))
    with pytest.raises(ValueError, match="2-D .* or 3-D"):
        bn(Tensor(rng.standard_normal(4)))
    with pytest.raises(TypeError, match="dtype mismatch"):
        bn(Tensor(rng.standard_normal((3, 4)).astype(np.float32)))
    with pytest.raises(ValueError, match="num_features must be a positive int"):
        nn.BatchNorm1d(0)


def test_running_statistics_are_saved_and_loaded(tmp_path):
    model = nn.Sequential(nn.Dense(3, 4), nn.BatchNorm1d(4)).double()
    model(Tensor(rng.standard_normal((6, 3))))
    assert list(model.state_dict()) == [
        "0.weight",
        "0.bias",
        "1.weight",
        "1.bias",
        "1.running_mean",
        "1.running_var",
        "1.num_batches_tracked",
    ]
    path = tmp_path / "bn.safetensors"
    save_weights(model, str(path))
    fresh = nn.Sequential(nn.Dense(3, 4), nn.BatchNorm1d(4)).double()
    load_weights(fresh, str(path))
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(fresh.state_dict()[name], value)
    assert fresh[1].num_batches_tracked.dtype == np.int64
    fresh.float()
    assert fresh[1].running_var.dtype == np.float32
    assert fresh[1].num_batches_tracked.dtype == np.int64


# -------------------------------------------------------------------- torch
CONFIGS = [
    dict(),
    dict(momentum=None),
    dict(affine=False),
    dict(track_running_stats=False),
    dict(eps=1e-3, momentum=0.3),
]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("shape", [(2, 5), (9, 5), (4, 5, 3)])
@pytest.mark.parametrize("config", CONFIGS, ids=[str(c) for c in CONFIGS])
def test_matches_torch_in_train_and_eval(shape, config):
    torch = pytest.importorskip("torch")
    C = shape[1]
    ours = nn.BatchNorm1d(C, dtype=np.float64, **config)
    theirs = torch.nn.BatchNorm1d(C, dtype=torch.float64, **config)
    if ours.affine:
        w, b = rng.uniform(0.5, 2, C), rng.standard_normal(C)
        ours.weight.data[...], ours.bias.data[...] = w, b
        with torch.no_grad():
            theirs.weight.copy_(torch.tensor(w))
            theirs.bias.copy_(torch.tensor(b))
    for step in range(4):
        training = step < 3
        ours.train(training)
        theirs.train(training)
        x = rng.standard_normal(shape) * 2 + 0.5
        g = rng.standard_normal(shape)
        ours.zero_grad()
        theirs.zero_grad()
        xo, xt = Tensor(x, requires_grad=True), torch.tensor(x, requires_grad=True)
        yo, yt = ours(xo), theirs(xt)
        yo.backward(Tensor(g))
        yt.backward(torch.tensor(g))
        close = dict(rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(yo.data, yt.detach().numpy(), **close)
        np.testing.assert_allclose(xo.grad.data, xt.grad.numpy(), **close)
        if ours.affine:
            np.testing.assert_allclose(ours.weight.grad.data, theirs.weight.grad.numpy(), **close)
            np.testing.assert_allclose(ours.bias.grad.data, theirs.bias.grad.numpy(), **close)
        state = ours.state_dict()
        for name, value in theirs.state_dict().items():
            np.testing.assert_allclose(state[name], value.numpy(), **close)
        assert set(state) == set(theirs.state_dict())
