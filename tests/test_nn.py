"""Layers and modules: gradients, initialisation, state dicts, repr."""

import numpy as np
import pytest

import gpunet
from gpunet import Tensor, nn
from gpunet import functional as F
from gpunet.activations import ACTIVATIONS
from tests.gradcheck import check_gradients, numerical_grad, relative_error

rng = np.random.default_rng(7)


@pytest.mark.parametrize("act", sorted(ACTIVATIONS))
@pytest.mark.parametrize("bias", [True, False])
def test_dense_gradients_every_activation(act, bias):
    x = rng.standard_normal((5, 4))
    W = rng.standard_normal((3, 4)) * 0.5
    b = rng.standard_normal(3) * 0.5
    z = x @ W.T + (b if bias else 0)
    if act in ("relu", "leaky_relu") and np.min(np.abs(z)) < 1e-3:
        pytest.skip("kink too close for central differences")
    if bias:
        check_gradients(lambda x, W, b: F.dense(x, W, b, act), x, W, b)
    else:
        check_gradients(lambda x, W: F.dense(x, W, None, act), x, W)


def test_dense_forward_matches_float64_oracle():
    x = rng.standard_normal((6, 5))
    W = rng.standard_normal((4, 5))
    b = rng.standard_normal(4)
    y = F.dense(Tensor(x), Tensor(W), Tensor(b), "tanh").numpy()
    np.testing.assert_allclose(y, np.tanh(x @ W.T + b), rtol=1e-14)


def test_sequential_gradients_through_every_layer():
    gpunet.set_default_dtype(np.float64)
    try:
        gpunet.manual_seed(3)
        model = nn.Sequential(
            nn.Flatten(),
            nn.Dense(6, 5, "tanh"),
            nn.Linear(5, 4),
            nn.GELU(),
            nn.Sigmoid(),
            nn.Linear(4, 3),
            nn.LogSoftmax(),
        )
    finally:
        gpunet.set_default_dtype(np.float32)
    x = rng.standard_normal((4, 2, 3))
    weights = rng.standard_normal((4, 3))

    def value():
        with gpunet.no_grad():
            return float((model(x) * Tensor(weights)).sum().item())

    (model(x) * Tensor(weights)).sum().backward()
    for name, p in model.named_parameters():
        numeric = numerical_grad(lambda _: value(), [p.data], 0)
        err = relative_error(p.grad.numpy(), numeric)
        assert err < 1e-6, f"{name}: relative error {err:.2e}"


def test_activation_modules_match_functional():
    x = Tensor(rng.standard_normal((3, 4)))
    for module, fn in [
        (nn.ReLU(), F.relu),
        (nn.Tanh(), F.tanh),
        (nn.Sigmoid(), F.sigmoid),
        (nn.GELU(), F.gelu),
        (nn.LeakyReLU(0.1), lambda t: F.leaky_relu(t, 0.1)),
        (nn.Softmax(), F.softmax),
        (nn.LogSoftmax(), F.log_softmax),
    ]:
        np.testing.assert_array_equal(module(x).numpy(), fn(x).numpy())


def test_linear_init_is_pytorch_uniform():
    gpunet.manual_seed(0)
    layer = nn.Linear(400, 300)
    bound = 1 / np.sqrt(400)
    w = layer.weight.detach().numpy()
    assert w.dtype == np.float32 and w.shape == (300, 400)
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.99 * bound
    assert abs(w.mean()) < 0.01 * bound
    np.testing.assert_allclose(w.var(), bound**2 / 3, rtol=0.02)
    assert np.abs(layer.bias.detach().numpy()).max() <= bound


def test_same_seed_same_weights():
    gpunet.manual_seed(5)
    a = nn.Dense(3, 2).state_dict()
    gpunet.manual_seed(5)
    b = nn.Dense(3, 2).state_dict()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


def test_parameters_state_dict_round_trip_and_modes():
    model = nn.Sequential(nn.Dense(3, 4, "relu"), nn.Linear(4, 2))
    names = [n for n, _ in model.named_parameters()]
    assert names == ["0.weight", "0.bias", "1.weight", "1.bias"]
    state = model.state_dict()
    for p in model.parameters():
        p.data[...] = 0
    model.load_state_dict(state)
    for (_, p), (_, v) in zip(model.named_parameters(), state.items()):
        np.testing.assert_array_equal(p.detach().numpy(), v)
    assert model.eval() is model and not model[0].training
    model.train()
    assert model[1].training


def test_load_state_dict_rejects_bad_input_without_changing_anything():
    model = nn.Sequential(nn.Linear(3, 2))
    before = model.state_dict()
    bad = dict(before)
    bad["0.weight"] = np.zeros((5, 5))
    with pytest.raises(ValueError, match="shape mismatch for '0.weight'"):
        model.load_state_dict(bad)
    with pytest.raises(KeyError, match="missing keys"):
        model.load_state_dict({"0.weight": before["0.weight"]})
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, before[k])


def test_zero_grad_and_to_dtype():
    model = nn.Sequential(nn.Linear(3, 2))
    model(np.ones((1, 3), np.float32)).sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    model.zero_grad()
    assert all(p.grad is None for p in model.parameters())
    model.double()
    assert model.dtype == np.float64


def test_repr_is_readable():
    text = repr(nn.Sequential(nn.Dense(2, 3, "relu"), nn.Softmax(dim=1)))
    assert "(0): Dense(in_features=2, out_features=3, bias=True, activation='relu')" in text
    assert "(1): Softmax(dim=1)" in text


def test_bad_layer_arguments():
    with pytest.raises(ValueError, match="unknown activation 'swishy'"):
        nn.Dense(2, 3, activation="swishy")
    with pytest.raises(ValueError, match="in_features must be a positive int"):
        nn.Linear(0, 3)
    with pytest.raises(TypeError, match="not a Module"):
        nn.Sequential(nn.Linear(2, 2), "relu")


def test_feature_count_and_dtype_mismatch_errors():
    layer = nn.Linear(4, 2)
    with pytest.raises(ValueError, match="expects 4 input features, got 3"):
        layer(np.ones((2, 3), np.float32))
    with pytest.raises(ValueError, match="2-D input"):
        layer(np.ones(4, np.float32))
    with pytest.raises(TypeError, match="dtype mismatch: input is float64 but weight is float32"):
        layer(np.ones((2, 4)))
