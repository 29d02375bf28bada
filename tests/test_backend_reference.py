"""Tier T0: the reference math that the CuPy backend runs, checked on NumPy.

``gpunet.backend.base.Backend`` holds the reference ops (``dense_forward``,
``dense_backward``, ``softmax_cross_entropy``) written once against ``xp``; the base class
instantiated directly has ``xp = numpy``, so these tests run the exact code the GPU runs,
with no subclass override in the way. Also checked: each activation of
``gpunet.activations`` (forward and derivative) and each optimizer reference of
``gpunet.optim.functional``. Everything is compared with the independent float64 oracles
in ``tests/oracles.py``.

``tests/test_optim.py`` runs the optimizer *classes* against ``tests/optim_oracles.py``;
on CPU those classes run the Numba kernels of ``NumpyBackend.fused_update``, so the
``functional`` references reach an oracle there only through one spied configuration per
optimizer (``test_backend_fused_update_is_used``). Here every configuration of each
reference is checked step by step, states included, against the per-step oracles.

Tolerances: float64 rtol 1e-12, float32 rtol 1e-5, each with an absolute term scaled by
the magnitude of what was summed (``|x| @ |W.T|`` etc.), so that cancellation in a sum
cannot fail a correct implementation (the same rule as tests/test_kernels_cpu.py).
"""

from __future__ import annotations

import zlib

import numpy as np
import pytest

from gpunet.activations import ACTIVATIONS, get_activation
from gpunet.backend.base import Backend
from gpunet.optim import functional as F
from tests import oracles
from tests.optim_oracles import FUNCTIONAL_CASES, functional_case_id

ACTS = sorted(ACTIVATIONS)
DTYPES = [np.float32, np.float64]
DTYPE_IDS = ["f32", "f64"]
RTOL = {np.float32: 1e-5, np.float64: 1e-12}
# (N, in, out): one row, width one, one output, odd sizes
DENSE_SHAPES = [(1, 1, 1), (1, 7, 3), (7, 13, 5), (5, 1, 9), (16, 33, 1), (2, 5, 11), (33, 8, 17)]
SHAPE_IDS = ["x".join(map(str, s)) for s in DENSE_SHAPES]
MAX_SLOPE = 1.2  # |f'(z)| <= 1.13 for every activation (GELU's maximum)


@pytest.fixture(scope="module")
def backend():
    b = Backend("cpu")
    assert b.xp is np, "the base Backend must default to NumPy for these tests to run"
    return b


def assert_close(actual, expected, rtol, scale=0.0):
    """``|actual - expected| <= rtol * (|expected| + scale)`` elementwise."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape
    bound = rtol * (np.abs(expected) + scale)
    err = np.abs(actual - expected)
    bad = ~(err <= bound)  # NaN in actual counts as bad
    assert not bad.any(), (
        f"{bad.sum()} of {bad.size} elements off; worst err {np.nanmax(err):.3g}, "
        f"bound there {bound.flat[np.nanargmax(err - bound)]:.3g}"
    )


def _seed(*parts) -> int:
    """A deterministic seed (``hash`` of a str changes between processes)."""
    return zlib.crc32(repr(parts).encode())


def _f64(a):
    return np.asarray(a, dtype=np.float64)


def _dense_inputs(shape, dtype, seed):
    n, k, m = shape
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, k)).astype(dtype)
    W = (3.0 * rng.standard_normal((m, k)) / np.sqrt(k)).astype(dtype)  # z spans ~[-6, 6]
    b = rng.standard_normal(m).astype(dtype)
    dy = rng.standard_normal((n, m)).astype(dtype)
    return x, W, b, dy


# ------------------------------------------------------------------- activations
def test_activation_lookup():
    for alias in (None, "identity", "none", "LINEAR"):
        assert get_activation(alias) is ACTIVATIONS["linear"]
    assert get_activation("GeLU") is ACTIVATIONS["gelu"]
    assert [a for a in ACTS if ACTIVATIONS[a].saves_input] == ["gelu"]
    with pytest.raises(ValueError, match="unknown activation"):
        get_activation("swish")


_Z_EXTREMES = [-1e4, -700, -100, -88, -20, -1e-5, -1e-30, -0.0, 0.0, 1e-30, 1e-5, 20, 88, 100]
_Z_EXTREMES += [700, 1e4]


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("act", ACTS)
def test_activation_forward_and_derivative(act, dtype):
    """f(z) and dy * f'(z) elementwise over [-40, 40] and extremes; the derivative is
    taken from what the dense layer saves (y, or z for GELU), rounded to ``dtype``."""
    activation = ACTIVATIONS[act]
    z = np.concatenate([np.linspace(-40, 40, 801), _Z_EXTREMES]).astype(dtype)
    rtol = RTOL[dtype]
    eps = np.finfo(dtype).eps
    tiny = np.finfo(dtype).tiny
    y = activation.forward(np, z)
    assert y.dtype == dtype and y.shape == z.shape
    # GELU's reference computes z * (1 + erf(z / sqrt 2)) / 2: the sum cancels in the
    # left tail, so it is accurate only to ~eps * |z| there (absolute)
    abs_term = np.abs(_f64(z)) if act == "gelu" else 16 * tiny / rtol
    assert_close(y, oracles.activation(z, act), rtol, abs_term)

    saved = z if activation.saves_input else oracles.activation(z, act).astype(dtype)
    dy = np.random.default_rng(_seed(act)).standard_normal(z.shape).astype(dtype)
    dz = activation.backward(np, dy, saved)
    assert dz.dtype == dtype and dz.shape == z.shape
    # f' from a rounded y (sigmoid, tanh) or 1 + erf (GELU) is only absolutely accurate
    expected = _f64(dy) * oracles.activation_derivative(z, act)
    assert_close(dz, expected, rtol, 4 * eps / rtol * np.abs(_f64(dy)))
    ones = activation.backward(np, np.ones_like(z), saved)
    assert_close(ones, oracles.activation_derivative(z, act), rtol, 4 * eps / rtol)


# ------------------------------------------------------------------- dense layer
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("shape", DENSE_SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_dense_forward(backend, shape, act, dtype, bias):
    x, W, b, _ = _dense_inputs(shape, dtype, seed=_seed(shape, act, bias))
    b = b if bias else None
    x0, W0, b0 = x.copy(), W.copy(), None if b is None else b.copy()
    y, saved = backend.dense_forward(x, W, b, act)
    y_ref, z_ref = oracles.dense_forward(x, W, b, act)
    assert y.dtype == dtype and saved.dtype == dtype
    assert y.shape == y_ref.shape == (shape[0], shape[2])
    scale = np.abs(_f64(x)) @ np.abs(_f64(W)).T
    if b is not None:
        scale = scale + np.abs(_f64(b))
    rtol = RTOL[dtype]
    assert_close(y, y_ref, rtol, MAX_SLOPE * scale)
    if act == "gelu":
        assert saved is not y
        assert_close(saved, z_ref, rtol, scale)
    else:
        assert saved is y
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(W, W0)
    if b is not None:
        np.testing.assert_array_equal(b, b0)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("shape", DENSE_SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("need_dx", [True, False], ids=["dx", "nodx"])
def test_dense_backward(backend, shape, act, dtype, need_dx):
    x, W, b, dy = _dense_inputs(shape, dtype, seed=_seed(shape, act, "bwd"))
    y_ref, z_ref = oracles.dense_forward(x, W, b, act)
    saved = (z_ref if ACTIVATIONS[act].saves_input else y_ref).astype(dtype)
    x0, W0, dy0, saved0 = x.copy(), W.copy(), dy.copy(), saved.copy()
    dx, dW, db = backend.dense_backward(dy, x, W, saved, act, need_dx=need_dx)
    dx_ref, dW_ref, db_ref = oracles.dense_backward(dy, x, W, z_ref, act)
    n, k, m = shape
    assert dW.dtype == dtype and dW.shape == (m, k)
    assert db.dtype == dtype and db.shape == (m,)
    ady = MAX_SLOPE * np.abs(_f64(dy))
    rtol = RTOL[dtype]
    assert_close(db, db_ref, rtol, ady.sum(axis=0))
    assert_close(dW, dW_ref, rtol, ady.T @ np.abs(_f64(x)))
    if need_dx:
        assert dx.dtype == dtype and dx.shape == (n, k)
        assert_close(dx, dx_ref, rtol, ady @ np.abs(_f64(W)))
    else:
        assert dx is None
    for a, a0 in ((x, x0), (W, W0), (dy, dy0), (saved, saved0)):
        np.testing.assert_array_equal(a, a0)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("act", ACTS)
def test_dense_round_trip(backend, act, dtype):
    """The ``saved`` of the reference forward is what the reference backward needs."""
    x, W, b, dy = _dense_inputs((9, 11, 6), dtype, seed=_seed(act, "trip"))
    _, saved = backend.dense_forward(x, W, b, act)
    dx, dW, db = backend.dense_backward(dy, x, W, saved, act)
    _, z_ref = oracles.dense_forward(x, W, b, act)
    dx_ref, dW_ref, db_ref = oracles.dense_backward(dy, x, W, z_ref, act)
    ady = MAX_SLOPE * np.abs(_f64(dy))
    zmax = (np.abs(_f64(x)) @ np.abs(_f64(W)).T + np.abs(_f64(b))).max()
    rtol = 10 * RTOL[dtype]  # saved was rounded to dtype: its error passes through f''
    assert_close(db, db_ref, rtol, ady.sum(axis=0) * zmax)
    assert_close(dW, dW_ref, rtol, (ady.T @ np.abs(_f64(x))) * zmax)
    assert_close(dx, dx_ref, rtol, (ady @ np.abs(_f64(W))) * zmax)


# ---------------------------------------------------------- softmax cross-entropy
SOFTMAX_SHAPES = [(1, 1), (1, 5), (7, 3), (64, 10)]


def _logits(kind, shape, rng):
    if kind == "normal":
        return 3.0 * rng.standard_normal(shape)
    if kind == "spread1e4":  # exp of the raw logits would overflow either way
        return 1e4 * rng.standard_normal(shape)
    if kind == "offset1e4":  # huge, but close together: the softmax is not one-hot
        return 1e4 + 2.0 * rng.standard_normal(shape)
    raise ValueError(kind)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape", SOFTMAX_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("kind", ["normal", "spread1e4", "offset1e4"])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("mean", [False, True], ids=["scale1", "scale1/N"])
def test_softmax_cross_entropy(backend, shape, kind, dtype, smoothing, mean):
    n, c = shape
    rng = np.random.default_rng(_seed(shape, kind, smoothing, mean))
    logits = _logits(kind, shape, rng).astype(dtype)
    target = rng.integers(0, c, size=n)
    grad_scale = 1.0 / n if mean else 1.0
    logits0, target0 = logits.copy(), target.copy()
    losses, dlogits = backend.softmax_cross_entropy(logits, target, smoothing, grad_scale)
    l_ref, d_ref = oracles.softmax_cross_entropy(logits, target, smoothing, grad_scale)
    assert losses.dtype == dtype and dlogits.dtype == dtype
    assert losses.shape == (n,) and dlogits.shape == (n, c)
    assert np.isfinite(losses).all() and np.isfinite(dlogits).all()
    rtol = RTOL[dtype]
    # the loss is a sum of non-negative terms q_j * -log p_j; log-sum-exp adds ~eps
    assert_close(losses, l_ref, rtol, 1.0)
    # p_j's error is ~eps * |z_j - max| * p_j <= eps / e; q is exact
    assert_close(dlogits, d_ref, rtol, grad_scale)
    np.testing.assert_array_equal(logits, logits0)
    np.testing.assert_array_equal(target, target0)


def test_softmax_cross_entropy_int32_targets_and_extremes(backend):
    logits = np.array([[0.0, 1e4, -1e4], [-50.0, -50.0, -50.0]], dtype=np.float32)
    target = np.array([2, 1], dtype=np.int32)
    for smoothing in (0.0, 0.1):
        losses, dlogits = backend.softmax_cross_entropy(logits, target, smoothing)
        l_ref, d_ref = oracles.softmax_cross_entropy(logits, target, smoothing)
        assert np.isfinite(losses).all() and np.isfinite(dlogits).all()
        assert_close(losses, l_ref, 1e-6, 1.0)
        assert_close(dlogits, d_ref, 1e-6, 1.0)
    # the target's gradient is p_t - (1 - s) - s / C: exactly -1 here without smoothing
    _, dlogits = backend.softmax_cross_entropy(logits, target)
    assert dlogits[0, 2] == -1.0 and dlogits[0, 1] == 1.0


# -------------------------------------------------------------------- optimizers
# FUNCTIONAL_CASES plus a large-eps adagrad
OPTIM_CASES = FUNCTIONAL_CASES + [
    ("adagrad", dict(lr=0.1, eps=0.1, lr_decay=0.0, weight_decay=0.0, maximize=False))
]
OPTIM_STEPS = 6
OPTIM_SHAPES = [(3, 4), ()]


def _initial_state(name, kw, shape, dtype):
    """The update's state arrays, as the optimizer classes create them (torch's layout);
    SGD's buffer starts as garbage, which the first step must ignore."""
    zeros = np.zeros(shape, dtype)
    if name == "sgd":
        return [np.full(shape, 7.0, dtype) if kw["momentum"] else None]
    if name == "adagrad":
        return [np.full(shape, kw.pop("initial_accumulator_value", 0.0), dtype)]
    if name == "rmsprop":
        return [
            zeros.copy(),
            zeros.copy() if kw["centered"] else None,
            zeros.copy() if kw["momentum"] > 0 else None,
        ]
    if name == "adam":
        return [zeros.copy(), zeros.copy(), zeros.copy() if kw["amsgrad"] else None]
    raise ValueError(name)


def _step_kwargs(name, step):
    if name == "sgd":
        return dict(first_step=step == 1)
    if name in ("adagrad", "adam"):
        return dict(step=step)
    return {}


def _slack(expected, dtype):
    return 0.01 if dtype == np.float64 else np.abs(expected).max()


def _run_optimizer(case, shape, dtype, rtol):
    """``OPTIM_STEPS`` updates of the reference next to the oracle, compared after each.
    The absolute slack is 0.01 * rtol in float64 (entries crossing zero); in float32 it is
    rtol times the array's largest entry, for the rounding of sums that cancel."""
    name, kw = case
    kw = dict(kw)
    reference, oracle = getattr(F, name + "_"), getattr(oracles, name)
    rng = np.random.default_rng(_seed(functional_case_id(case), shape))
    p = np.array(rng.standard_normal(shape), dtype=dtype)
    state = _initial_state(name, kw, shape, dtype)
    p_ref = _f64(p).copy()
    state_ref = [None if s is None else _f64(s).copy() for s in state]
    if name == "sgd":
        state_ref = [None]  # the oracle takes the first step's buffer from d
    amsgrad_bit = False
    for step in range(1, OPTIM_STEPS + 1):
        g = np.array(rng.standard_normal(shape), dtype=dtype)
        g.flags.writeable = False  # the update only reads g
        step_kw = _step_kwargs(name, step)
        reference(np, p, g, *state, **kw, **step_kw)
        p_ref, *state_ref = oracle(p_ref, g, *state_ref, **kw, **step_kw)
        assert p.dtype == dtype and p.shape == shape
        assert_close(p, p_ref, rtol, _slack(p_ref, dtype))
        for i, (s, s_ref) in enumerate(zip(state, state_ref)):
            assert (s is None) == (s_ref is None), f"state {i}"
            if s is not None:
                assert s.dtype == dtype and s.shape == shape
                assert_close(s, s_ref, rtol, _slack(s_ref, dtype))
        if name == "adam" and kw["amsgrad"]:
            amsgrad_bit |= bool((state[2] != state[1]).any())
    if name == "adam" and kw["amsgrad"] and kw["beta2"] == 0.6:
        assert amsgrad_bit, "test data never made the AMSGrad maximum differ from v"


@pytest.mark.parametrize("shape", OPTIM_SHAPES, ids=["3x4", "0d"])
@pytest.mark.parametrize("case", OPTIM_CASES, ids=[functional_case_id(c) for c in OPTIM_CASES])
def test_optimizer_reference_float64(case, shape):
    _run_optimizer(case, shape, np.float64, RTOL[np.float64])


@pytest.mark.parametrize("case", OPTIM_CASES, ids=[functional_case_id(c) for c in OPTIM_CASES])
def test_optimizer_reference_float32(case):
    """float32 stays float32 (hyperparameters never upcast) and tracks the oracle."""
    _run_optimizer(case, (3, 4), np.float32, RTOL[np.float32])
