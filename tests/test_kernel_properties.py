"""Property-based tests of the CPU kernels (hypothesis) against float64 NumPy oracles.

Shapes: 1, primes and the boundaries of the kernels' routes (the skinny loops' 3-16 rows,
the transposed product's 17-48 rows and 64 outputs, the data-parallel split of the
weight gradient at 384 rows, the 8-wide row max of the softmax, the vector widths 8/16).
Values: zeros, unit normals, large magnitudes, subnormals, and arrays mixing them.
Hypothesis draws the shapes, the kind of values and a seed; NumPy draws the arrays from
the seed (fast, and each failure shrinks to a shape, a kind and a seed).

Every bound is the textbook one for the operation: a sum of ``k`` products is within
about ``k * eps`` of the float64 result relative to the sum of the absolute products,
plus an absolute term for the underflow of products of subnormals.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpunet.kernels.cpu import blas, optim_updates
from gpunet.kernels.cpu.dense import dense_backward, dense_forward
from gpunet.kernels.cpu.softmax_xent import softmax_cross_entropy
from tests import oracles

SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
DTYPES = (np.float32, np.float64)
ROWS = (1, 2, 3, 4, 5, 7, 13, 15, 16, 17, 31, 32, 33, 47, 48, 49)
WIDTHS = (1, 2, 3, 5, 7, 8, 9, 15, 16, 17, 31, 63, 64, 65)
KINDS = ("zeros", "normal", "large", "subnormal", "mixed")
ACTIVATIONS = ("linear", "relu", "leaky_relu", "sigmoid", "tanh", "gelu")
#: a "large" value: 10**(0.5..1 * this), so that sums of products stay finite
LARGE_EXPONENT = {np.float32: 15, np.float64: 120}


def values(rng, shape, dtype, kind):
    """An array of ``shape`` and ``dtype`` of the given kind of values."""
    dtype = np.dtype(dtype).type
    normal = rng.standard_normal(shape)
    if kind == "zeros":
        a = np.zeros(shape)
    elif kind == "normal":
        a = normal
    elif kind == "large":
        a = normal * 10.0 ** (LARGE_EXPONENT[dtype] * rng.uniform(0.5, 1.0, shape))
    elif kind == "subnormal":
        a = normal * float(np.finfo(dtype).tiny) * 2.0 ** -rng.integers(1, 20, shape)
    else:  # each element of one of the other kinds
        parts = [values(rng, shape, dtype, k) for k in KINDS[:-1]]
        a = np.choose(rng.integers(0, len(parts), shape), parts)
    return np.ascontiguousarray(a, dtype=dtype)


def eps(dtype):
    return float(np.finfo(dtype).eps)


def tiny(dtype):
    return float(np.finfo(dtype).tiny)


def subnormal(dtype):
    return float(np.finfo(dtype).smallest_subnormal)


def assert_within(got, want, bound, what):
    """|got - want| <= bound elementwise (float64), with a readable message."""
    got64 = np.asarray(got, dtype=np.float64)
    assert np.all(np.isfinite(got64)), f"{what}: non-finite result"
    err = np.abs(got64 - want)
    bad = err > bound
    assert not bad.any(), (
        f"{what}: {int(bad.sum())} of {err.size} elements off; worst error "
        f"{err[bad].max():.3g} against bound {bound[bad][np.argmax(err[bad])]:.3g}"
    )


def product_bound(k, dtype, absolute_products, extra=0.0):
    """Error bound of a float sum of ``k`` products (``absolute_products``: the float64
    sum of their magnitudes)."""
    return 2.0 * (k + 2) * eps(dtype) * (absolute_products + extra) + 4.0 * (k + 2) * subnormal(
        dtype
    )


shapes_nt = st.tuples(st.sampled_from(ROWS), st.sampled_from(WIDTHS), st.sampled_from(WIDTHS))


# ------------------------------------------------------------------------------ BLAS
@settings(max_examples=60, **SETTINGS)
@given(
    shape=shapes_nt,
    dtype=st.sampled_from(DTYPES),
    kinds=st.tuples(st.sampled_from(KINDS), st.sampled_from(KINDS)),
    seed=st.integers(0, 2**32 - 1),
)
def test_blas_products(shape, dtype, kinds, seed):
    """``matmul_nt`` (a @ W.T), ``matmul_nn`` (dz @ W) and ``weight_grad`` (dz.T @ a)."""
    n, n_in, n_out = shape
    rng = np.random.default_rng(seed)
    a = values(rng, (n, n_in), dtype, kinds[0])
    W = values(rng, (n_out, n_in), dtype, kinds[1])
    dz = values(rng, (n, n_out), dtype, kinds[0])
    a64, W64, dz64 = (x.astype(np.float64) for x in (a, W, dz))

    out = np.empty((n, n_out), dtype)
    blas.matmul_nt(a, W, out)
    assert_within(out, a64 @ W64.T, product_bound(n_in, dtype, abs(a64) @ abs(W64.T)), "a @ W.T")

    dx = np.empty((n, n_in), dtype)
    blas.matmul_nn(dz, W, dx)
    assert_within(dx, dz64 @ W64, product_bound(n_out, dtype, abs(dz64) @ abs(W64)), "dz @ W")

    dW = np.empty((n_out, n_in), dtype)
    blas.weight_grad(dz, a, dW)
    want = dz64.T @ a64
    assert_within(dW, want, product_bound(n, dtype, abs(dz64.T) @ abs(a64)), "dz.T @ a")


@settings(max_examples=6, **SETTINGS)
@given(
    n=st.sampled_from((383, 384, 385)),
    widths=st.tuples(st.sampled_from((1, 3, 17)), st.sampled_from((1, 5, 16))),
    dtype=st.sampled_from(DTYPES),
    kind=st.sampled_from(KINDS),
    seed=st.integers(0, 2**32 - 1),
)
def test_weight_grad_of_a_few_hundred_rows(n, widths, dtype, kind, seed):
    """Products of a few hundred rows (one BLAS call) against the float64 oracle."""
    n_in, n_out = widths
    rng = np.random.default_rng(seed)
    a, dz = values(rng, (n, n_in), dtype, kind), values(rng, (n, n_out), dtype, "mixed")
    dW = np.empty((n_out, n_in), dtype)
    blas.weight_grad(dz, a, dW)
    a64, dz64 = a.astype(np.float64), dz.astype(np.float64)
    bound = product_bound(n, dtype, abs(dz64.T) @ abs(a64))
    assert_within(dW, dz64.T @ a64, bound, "dz.T @ a")


@settings(max_examples=40, **SETTINGS)
@given(
    shape=shapes_nt,
    block=st.tuples(st.floats(0, 1), st.floats(0, 1)),
    transposed=st.booleans(),
    beta=st.sampled_from((0.0, 1.0)),
    dtype=st.sampled_from(DTYPES),
    kind=st.sampled_from(KINDS),
    seed=st.integers(0, 2**32 - 1),
)
def test_gemm_view_on_column_blocks(shape, block, transposed, beta, dtype, kind, seed):
    """``gemm_view(a, b, out, beta)``: ``out = a @ b + beta * out`` on a block of
    columns of ``out`` (or its transpose), ``a``/``b`` blocks of rows of a weight or
    transposed views; the rest of ``out`` is untouched; ``beta`` 0 ignores what ``out``
    held (even NaN)."""
    n, n_in, n_out = shape
    lo = int(block[0] * (n_out - 1))
    hi = lo + 1 + int(block[1] * (n_out - 1 - lo))
    rng = np.random.default_rng(seed)
    A = values(rng, (n, n_in), dtype, kind)
    W = values(rng, (n_out, n_in), dtype, "mixed")
    Z = values(rng, (n, n_out), dtype, "normal")
    if beta == 0.0:
        Z[...] = np.nan
    start = Z.copy()
    if transposed:  # z[:, lo:hi].T = W[lo:hi] @ a.T: out's unit stride is along its columns
        a, b, out = W[lo:hi], A.T, Z[:, lo:hi].T
    else:  # z[:, lo:hi] = a @ W[lo:hi].T
        a, b, out = A, W[lo:hi].T, Z[:, lo:hi]
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    want, extra = a64 @ b64, 0.0
    if beta:
        want = want + out.astype(np.float64)
        extra = abs(out.astype(np.float64))
    bound = product_bound(n_in, dtype, abs(a64) @ abs(b64), extra)
    blas.gemm_view(a, b, out, dtype(beta))
    assert_within(out, want, bound, "gemm_view block")
    np.testing.assert_array_equal(Z[:, :lo], start[:, :lo])
    np.testing.assert_array_equal(Z[:, hi:], start[:, hi:])


# ------------------------------------------------------------------------ dense layer
@settings(max_examples=60, **SETTINGS)
@given(
    shape=shapes_nt,
    act=st.sampled_from(ACTIVATIONS),
    bias=st.booleans(),
    dtype=st.sampled_from(DTYPES),
    kinds=st.tuples(st.sampled_from(KINDS), st.sampled_from(KINDS)),
    seed=st.integers(0, 2**32 - 1),
)
def test_dense_forward_epilogue(shape, act, bias, dtype, kinds, seed):
    """``y = act(x @ W.T + b)``: the product's error, through an activation of slope at
    most 1.13 (GELU), plus the activation's own few ulps."""
    n, n_in, n_out = shape
    rng = np.random.default_rng(seed)
    x = values(rng, (n, n_in), dtype, kinds[0])
    W = values(rng, (n_out, n_in), dtype, kinds[1])
    b = values(rng, (n_out,), dtype, kinds[0]) if bias else None
    y, _ = dense_forward(x, W, b, act)
    assert y.dtype == dtype and y.shape == (n, n_out)
    y_ref, _ = oracles.dense_forward(x, W, b, act)
    x64, W64 = x.astype(np.float64), W.astype(np.float64)
    S = abs(x64) @ abs(W64.T) + (0.0 if b is None else abs(b.astype(np.float64)))
    # + the smallest normal: exp results below it may be flushed (sigmoid, GELU tails)
    bound = 1.2 * product_bound(n_in + 1, dtype, S) + 8 * eps(dtype) * abs(y_ref) + tiny(dtype)
    assert_within(y, y_ref, bound, f"{act} forward")


@settings(max_examples=60, **SETTINGS)
@given(
    shape=shapes_nt,
    act=st.sampled_from(ACTIVATIONS),
    dtype=st.sampled_from(DTYPES),
    kinds=st.tuples(st.sampled_from(KINDS), st.sampled_from(KINDS), st.sampled_from(KINDS)),
    seed=st.integers(0, 2**32 - 1),
)
def test_dense_backward_epilogue(shape, act, dtype, kinds, seed):
    """``dz = dy * act'(z)``, ``db = dz.sum(0)``, ``dW = dz.T @ x``, ``dx = dz @ W``, given
    the forward's saved value (``act(z)`` rounded to the dtype; ``z`` for GELU)."""
    n, n_in, n_out = shape
    rng = np.random.default_rng(seed)
    x = values(rng, (n, n_in), dtype, kinds[0])
    W = values(rng, (n_out, n_in), dtype, "normal")
    z = values(rng, (n, n_out), dtype, kinds[1] if kinds[1] != "large" else "normal")
    dy = values(rng, (n, n_out), dtype, kinds[2])
    saved = z if act == "gelu" else oracles.activation(z, act).astype(dtype)
    dx, dW, db = dense_backward(dy, x, W, saved, act)
    dx_ref, dW_ref, db_ref = oracles.dense_backward(dy, x, W, z, act)
    x64, W64, dy64 = (a.astype(np.float64) for a in (x, W, dy))
    # act' is at most 1.13 and the kernel's act' (from the rounded saved value) is within
    # a few eps of the oracle's: bound each product by |dy| times the operand
    ady = 1.2 * abs(dy64)
    # (+ the rounding of a subnormal dz, absolute)
    err_dz = (8 * eps(dtype) + tiny(dtype)) * ady + 2 * subnormal(dtype)
    assert_within(db, db_ref, product_bound(n, dtype, ady.sum(axis=0)), f"{act} db")
    bound = product_bound(n, dtype, ady.T @ abs(x64)) + err_dz.T @ abs(x64)
    assert_within(dW, dW_ref, bound, f"{act} dW")
    bound = product_bound(n_out, dtype, ady @ abs(W64)) + err_dz @ abs(W64)
    assert_within(dx, dx_ref, bound, f"{act} dx")


# ------------------------------------------------------------------------------- loss
@settings(max_examples=60, **SETTINGS)
@given(
    n=st.sampled_from((1, 2, 3, 7, 16, 17)),
    classes=st.sampled_from((1, 2, 3, 7, 8, 9, 15, 16, 17, 31, 65)),
    smoothing=st.sampled_from((0.0, 0.1, 1.0)),
    grad_scale=st.sampled_from((1.0, 0.125, 3.0)),
    dtype=st.sampled_from(DTYPES),
    kind=st.sampled_from(KINDS),
    seed=st.integers(0, 2**32 - 1),
)
def test_softmax_cross_entropy(n, classes, smoothing, grad_scale, dtype, kind, seed):
    """Loss within a few ulps of the float64 loss's terms (the log-sum-exp and the
    shifted logits), gradient ``grad_scale * (p - q)`` within a few ulps of 1."""
    rng = np.random.default_rng(seed)
    logits = values(rng, (n, classes), dtype, kind)
    target = rng.integers(0, classes, n)
    losses, dlogits = softmax_cross_entropy(logits, target, smoothing, grad_scale)
    assert losses.dtype == dtype and dlogits.dtype == dtype
    losses_ref, dlogits_ref = oracles.softmax_cross_entropy(logits, target, smoothing, grad_scale)
    z = logits.astype(np.float64)
    spread = (z.max(axis=1) - z.min(axis=1)) + np.log(classes) + 1.0
    assert_within(losses, losses_ref, 8 * (classes + 2) * eps(dtype) * spread, "loss")
    assert_within(
        dlogits, dlogits_ref, np.full(dlogits.shape, 8 * (classes + 2) * eps(dtype) * grad_scale),
        "dlogits",
    )  # fmt: skip


# ------------------------------------------------------------------------- optimizers
OPTIMIZER_HYPER = {
    "sgd": st.fixed_dictionaries(
        dict(
            lr=st.sampled_from((0.1, 1.0)),
            momentum=st.sampled_from((0.0, 0.9)),
            dampening=st.sampled_from((0.0, 0.3)),
            nesterov=st.booleans(),
            weight_decay=st.sampled_from((0.0, 0.05)),
            maximize=st.booleans(),
        )
    ),
    "adam": st.fixed_dictionaries(
        dict(
            lr=st.sampled_from((0.02, 1.0)),
            beta1=st.sampled_from((0.9, 0.3, 0.0)),
            beta2=st.sampled_from((0.999, 0.6)),
            eps=st.sampled_from((1e-8, 1e-3)),
            weight_decay=st.sampled_from((0.0, 0.1)),
            decoupled=st.booleans(),
            amsgrad=st.booleans(),
            maximize=st.booleans(),
        )
    ),
    "rmsprop": st.fixed_dictionaries(
        dict(
            lr=st.sampled_from((0.01, 1.0)),
            alpha=st.sampled_from((0.99, 0.3)),
            eps=st.sampled_from((1e-8, 1e-3)),
            weight_decay=st.sampled_from((0.0, 0.1)),
            momentum=st.sampled_from((0.0, 0.8)),
            centered=st.booleans(),
            maximize=st.booleans(),
        )
    ),
    "adagrad": st.fixed_dictionaries(
        dict(
            lr=st.sampled_from((0.1, 1.0)),
            lr_decay=st.sampled_from((0.0, 0.05)),
            weight_decay=st.sampled_from((0.0, 0.1)),
            eps=st.sampled_from((1e-10, 1e-3)),
            maximize=st.booleans(),
        )
    ),
}
STATES = {
    "sgd": ("buf",),
    "adagrad": ("state_sum",),
    "rmsprop": ("square_avg", "grad_avg", "momentum_buffer"),
    "adam": ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"),
}
#: gradient and weight magnitudes whose squares stay finite
OPTIMIZER_KINDS = ("zeros", "normal", "large", "subnormal", "mixed")
OPTIMIZER_LARGE = {np.float32: 15, np.float64: 120}


def oracle_step(name, p, g, states, hyper, step):
    """One step of ``tests/oracles.py``'s update; returns (p, states) in float64."""
    if name == "sgd":
        p, buf = oracles.sgd(p, g, states[0], first_step=step == 1, **hyper)
        return p, [buf]
    if name == "adagrad":
        p, total = oracles.adagrad(p, g, states[0], step=step, **hyper)
        return p, [total]
    if name == "rmsprop":
        p, *rest = oracles.rmsprop(p, g, *states, **hyper)
        return p, rest
    p, *rest = oracles.adam(p, g, *states, step=step, **hyper)
    return p, rest


@st.composite
def optimizer_cases(draw):
    name = draw(st.sampled_from(sorted(OPTIMIZER_HYPER)))
    return name, draw(OPTIMIZER_HYPER[name])


@settings(max_examples=80, **SETTINGS)
@given(
    case=optimizer_cases(),
    size=st.sampled_from((1, 2, 3, 5, 7, 8, 15, 16, 17, 31, 33, 64, 65)),
    dtype=st.sampled_from(DTYPES),
    kinds=st.tuples(st.sampled_from(OPTIMIZER_KINDS), st.sampled_from(OPTIMIZER_KINDS)),
    seed=st.integers(0, 2**32 - 1),
)
def test_optimizer_updates_follow_the_oracle(case, size, dtype, kinds, seed):
    """Three steps of each per-parameter kernel (``optim_updates``, on ``update_rules``)
    against the float64 oracle stepped from the same rounded inputs, no denormal flush:
    each step's new weights and state within a few ulps of the terms that form them."""
    name, hyper = case
    rng = np.random.default_rng(seed)
    kernel = optim_updates.UPDATE_KERNELS[name]
    p = values(rng, (size,), dtype, kinds[0])
    states = [np.zeros(size, dtype) for _ in STATES[name]]
    ref_states = [s.astype(np.float64) for s in states]
    tol = 64 * eps(dtype)
    for step in (1, 2, 3):
        g = values(rng, (size,), dtype, kinds[1])
        p_start = p.astype(np.float64)
        before = [st_.astype(np.float64) for st_ in states]
        ref_p, ref_states = oracle_step(name, p_start, g, before, hyper, step)
        keywords = dict(hyper, step=step) if name in ("adam", "adagrad") else dict(hyper)
        if name == "sgd":
            keywords["first_step"] = step == 1
        kernel(np, p, g, *states, flush_denormals=False, **keywords)
        delta = abs(ref_p - p_start)
        bound = tol * (abs(p_start) + abs(ref_p) + 4 * delta) + 16 * subnormal(dtype)
        if name != "sgd":  # an update divided by sqrt(v) + eps, v ~ 0: a subnormal
            # numerator's rounding (in the kernel or the oracle) grows by lr / eps
            bound = (
                bound + tol * hyper["lr"] * 4 + 4 * subnormal(dtype) * hyper["lr"] / hyper["eps"]
            )
        assert_within(p, ref_p, bound, f"{name} {hyper} step {step} weights")
        scale = abs(g.astype(np.float64)) + abs(p_start)
        for key, got, want, prev in zip(STATES[name], states, ref_states, before):
            squared = key in ("exp_avg_sq", "max_exp_avg_sq", "square_avg", "state_sum")
            sb = tol * (
                4 * (abs(want) + abs(prev) + abs(want - prev)) + scale ** (2 if squared else 1)
            )
            if name == "rmsprop" and key == "momentum_buffer":  # holds g / (sqrt(v) + eps):
                # the subnormal rounding of g + weight_decay * p grows by 1 / eps there
                sb = sb + 4 * subnormal(dtype) / hyper["eps"]
            assert_within(
                got, want, sb + 16 * subnormal(dtype), f"{name} {hyper} step {step} {key}"
            )


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@settings(max_examples=20, **SETTINGS)
@given(
    case=optimizer_cases(),
    size=st.sampled_from((1, 7, 16, 17)),
    seed=st.integers(0, 2**32 - 1),
)
def test_optimizer_state_flush_zeroes_only_subnormals(dtype, case, size, seed):
    """With ``flush_denormals`` the state is the unflushed state with the magnitudes
    below the smallest normal set to exactly 0; the weights are the same either way."""
    name, hyper = case
    rng = np.random.default_rng(seed)
    p = values(rng, (size,), dtype, "mixed")
    g = values(rng, (size,), dtype, "subnormal")
    keywords = dict(hyper, step=1) if name in ("adam", "adagrad") else dict(hyper)
    if name == "sgd":
        keywords["first_step"] = True
    results = []
    for flush in (False, True):
        params, states = p.copy(), [np.zeros(size, dtype) for _ in STATES[name]]
        optim_updates.UPDATE_KERNELS[name](np, params, g, *states, flush_denormals=flush,
                                           **keywords)  # fmt: skip
        results.append((params, states))
    (p0, s0), (p1, s1) = results
    np.testing.assert_array_equal(p1, p0)
    tiny = np.finfo(dtype).tiny
    for plain, flushed in zip(s0, s1):
        np.testing.assert_array_equal(flushed, np.where(abs(plain) < tiny, 0, plain))
