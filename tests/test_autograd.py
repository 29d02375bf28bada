"""Every tensor op against float64 central differences, plus graph semantics."""

import numpy as np
import pytest

import gpunet
from gpunet import Tensor
from gpunet import autograd as T
from gpunet import functional as F
from tests.gradcheck import check_gradients

rng = np.random.default_rng(1234)


def rand(*shape, low=-1.0, high=1.0):
    return rng.uniform(low, high, size=shape)


BINARY = [
    ("add", lambda a, b: a + b, (3, 4), (3, 4)),
    ("add_broadcast_row", lambda a, b: a + b, (3, 4), (4,)),
    ("add_broadcast_col", lambda a, b: a + b, (3, 4), (3, 1)),
    ("sub_broadcast", lambda a, b: a - b, (2, 3, 4), (1, 4)),
    ("mul_broadcast", lambda a, b: a * b, (3, 4), (1, 4)),
    ("div", lambda a, b: a / b, (3, 4), (3, 4)),
    ("matmul", lambda a, b: a @ b, (3, 5), (5, 2)),
    ("matmul_vec", lambda a, b: a @ b, (3, 5), (5,)),
    ("vec_matmul", lambda a, b: a @ b, (5,), (5, 2)),
    ("pow_tensor", lambda a, b: a**b, (3, 4), (3, 4)),
]


@pytest.mark.parametrize("name,fn,sa,sb", BINARY, ids=[b[0] for b in BINARY])
def test_binary_op_gradients(name, fn, sa, sb):
    a = rand(*sa)
    b = rand(*sb)
    if name in ("div", "pow_tensor"):
        b = rand(*sb, low=0.5, high=2.0)
    if name == "pow_tensor":
        a = rand(*sa, low=0.5, high=2.0)
    check_gradients(fn, a, b)


UNARY = [
    ("neg", lambda a: -a, {}),
    ("pow_scalar", lambda a: a**3, {}),
    ("pow_fraction", lambda a: a**0.5, {"low": 0.5, "high": 2.0}),
    ("exp", lambda a: a.exp(), {}),
    ("log", lambda a: a.log(), {"low": 0.5, "high": 2.0}),
    ("sqrt", lambda a: a.sqrt(), {"low": 0.5, "high": 2.0}),
    ("sum_all", lambda a: a.sum(), {}),
    ("sum_axis0", lambda a: a.sum(axis=0), {}),
    ("sum_axis1_keep", lambda a: a.sum(axis=1, keepdims=True), {}),
    ("mean_all", lambda a: a.mean(), {}),
    ("mean_axis1", lambda a: a.mean(axis=1), {}),
    ("mean_axes_keep", lambda a: a.mean(axis=(0, 1), keepdims=True), {}),
    ("max_all", lambda a: a.max(), {}),
    ("max_axis0", lambda a: a.max(axis=0), {}),
    ("max_axis1_keep", lambda a: a.max(axis=1, keepdims=True), {}),
    ("reshape", lambda a: a.reshape(4, 3), {}),
    ("transpose", lambda a: a.T, {}),
    ("index_slice", lambda a: a[1:, ::2], {}),
    ("index_fancy", lambda a: a[np.array([0, 2, 0])], {}),
    ("relu", F.relu, {}),
    ("leaky_relu", F.leaky_relu, {}),
    ("leaky_relu_slope", lambda a: F.leaky_relu(a, 0.2), {}),
    ("sigmoid", F.sigmoid, {"low": -4, "high": 4}),
    ("tanh", F.tanh, {}),
    ("gelu", F.gelu, {"low": -3, "high": 3}),
    ("softmax", F.softmax, {}),
    ("softmax_axis0", lambda a: F.softmax(a, axis=0), {}),
    ("log_softmax", F.log_softmax, {}),
    ("abs", T.abs, {"low": 0.1, "high": 1.0}),
    ("clip", lambda a: T.clip(a, -0.5, 0.5), {}),
]


@pytest.mark.parametrize("name,fn,kw", UNARY, ids=[u[0] for u in UNARY])
def test_unary_op_gradients(name, fn, kw):
    a = rand(3, 4, **kw)
    if name in ("relu", "leaky_relu", "leaky_relu_slope", "clip", "abs"):
        # keep away from the kinks so central differences are exact
        a = np.where(np.abs(a) < 0.05, 0.3, a)
        a = np.where(np.abs(np.abs(a) - 0.5) < 0.05, 0.3, a)
    check_gradients(fn, a)


def test_concatenate_gradient():
    check_gradients(lambda a, b: T.concatenate([a, b], axis=1), rand(2, 3), rand(2, 2))


def test_composite_expression_with_reuse():
    # x used several times: gradients from every path must add up
    check_gradients(
        lambda x, y: ((x * y + x).exp() * x).sum(axis=0) / (y * y + 1), rand(3, 4), rand(3, 4)
    )


def test_gradient_accumulates_across_backward_calls():
    x = Tensor(np.array([1.0, 2.0]), requires_grad=True)
    (x * 3).sum().backward()
    (x * x).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), 3 + 2 * np.array([1.0, 2.0]))


def test_no_grad_records_nothing_and_detach_cuts_graph():
    x = Tensor(np.ones(3), requires_grad=True)
    with gpunet.no_grad():
        y = x * 2
    assert not y.requires_grad and y.is_leaf
    z = (x * 2).detach()
    assert not z.requires_grad
    with pytest.raises(RuntimeError, match="does not require grad"):
        z.sum().backward()


def test_backward_needs_gradient_for_non_scalar():
    x = Tensor(np.ones(3), requires_grad=True)
    with pytest.raises(RuntimeError, match="scalar outputs"):
        (x * 2).backward()
    (x * 2).backward(np.array([1.0, 2.0, 3.0]))
    np.testing.assert_allclose(x.grad.numpy(), [2.0, 4.0, 6.0])


def test_numpy_refuses_tensor_requiring_grad():
    x = Tensor(np.ones(2), requires_grad=True)
    with pytest.raises(RuntimeError, match="detach"):
        x.numpy()
    assert x.detach().numpy().shape == (2,)


def test_dtype_policy():
    assert Tensor([1.0, 2.0]).dtype == np.float32
    assert Tensor(np.zeros(2)).dtype == np.float64
    assert Tensor(np.zeros(2, np.float32)).dtype == np.float32
    assert Tensor([1, 2]).dtype == np.int64
    with pytest.raises(TypeError, match="floating"):
        Tensor([1, 2], requires_grad=True)
    with pytest.raises(TypeError, match="float32 or float64"):
        gpunet.set_default_dtype(np.float16)


def test_to_cpu_and_unknown_device():
    x = Tensor(np.ones(2))
    assert x.to("cpu") is x
    assert x.device == "cpu"
    with pytest.raises(ValueError, match="unknown device"):
        x.to("tpu")


def test_cuda_request_without_gpu_raises_clear_error():
    from gpunet.backend import cuda_unavailable_reason

    if cuda_unavailable_reason() is None:
        pytest.skip("a GPU is present")
    with pytest.raises(RuntimeError, match="CUDA is unavailable"):
        Tensor(np.ones(2)).to("cuda")


def test_tensors_on_different_devices_raise():
    # A fake second device: a distinct backend object standing for another device.
    from gpunet.backend.numpy_backend import NumpyBackend

    other = NumpyBackend()
    other.device = "cuda:7"
    a = Tensor(np.ones(2))
    b = Tensor._wrap(np.ones(2), other)
    with pytest.raises(RuntimeError, match="same device, got cpu and cuda:7"):
        a + b


def test_auto_device_falls_back_to_cpu_with_a_notice(capsys):
    from gpunet.backend import cuda_unavailable_reason, normalize_device

    if cuda_unavailable_reason() is None:
        assert normalize_device("auto") == "cuda:0"
        return
    assert normalize_device("auto") == "cpu"
    assert "gpunet: device 'auto' -> cpu (" in capsys.readouterr().err
    assert Tensor(np.ones(2), device="auto").device == "cpu"
