"""Numba CPU kernels (gpunet.kernels.cpu) against the float64 oracles in tests/oracles.py.

Tolerances: float64 rtol 1e-12, float32 rtol 1e-5; both with an absolute term scaled
by the magnitude of what was summed (``|x| @ |W.T|`` etc.), so cancellation in sums
does not make a correct kernel fail.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import zlib

import numpy as np
import pytest

from gpunet.kernels.cpu import (
    UPDATE_KERNELS,
    adagrad_,
    adam_,
    dense_backward,
    dense_forward,
    flush_denormals,
    fused_update,
    get_flush_denormals,
    get_mxcsr,
    mxcsr_supported,
    rmsprop_,
    set_flush_denormals,
    sgd_,
    softmax_cross_entropy,
)
from tests import oracles

ACTS = ["linear", "relu", "leaky_relu", "sigmoid", "tanh", "gelu"]
DTYPES = [np.float32, np.float64]
RTOL = {np.float32: 1e-5, np.float64: 1e-12}
# (N, in, out): batch 1, width 1, sizes that are multiples of nothing
# (batch, in, out): one row, blocked dW (2-16 rows; out > 32 spans several blocks, the
# last one partial), the skinny forward/dx loops (3-16 rows: blocks of 4 rows, the last
# one partial; odd out; out not a multiple of 4), the transposed forward product (17-48
# rows, out >= 64: odd sizes and both bounds) and one BLAS product (17+ rows)
DENSE_SHAPES = [
    (1, 1, 1),
    (1, 7, 3),
    (7, 13, 5),
    (5, 1, 9),
    (16, 33, 1),
    (3, 64, 17),
    (5, 9, 70),
    (16, 3, 33),
    (17, 4, 40),
    (4, 20, 8),
    (12, 31, 6),
    (2, 5, 11),
    (23, 9, 70),
    (48, 5, 64),
    (385, 7, 5),  # data-parallel rows: the gradient sums run per half, then add
]


def assert_close(actual, expected, rtol, scale=0.0):
    """``|actual - expected| <= rtol * (|expected| + scale)`` elementwise."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape
    bound = rtol * (np.abs(expected) + scale)
    err = np.abs(actual - expected)
    bad = ~(err <= bound)
    assert not bad.any(), (
        f"{bad.sum()} of {bad.size} elements off; worst err {err.max():.3g}, "
        f"bound there {bound.flat[np.argmax(err - bound)]:.3g}"
    )


def _seed(*parts) -> int:
    """A deterministic seed (``hash`` of a str changes between processes)."""
    return zlib.crc32(repr(parts).encode())


def _dense_inputs(shape, dtype, seed):
    n, k, m = shape
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, k)).astype(dtype)
    W = (3.0 * rng.standard_normal((m, k)) / np.sqrt(k)).astype(dtype)
    b = rng.standard_normal(m).astype(dtype)
    dy = rng.standard_normal((n, m)).astype(dtype)
    return x, W, b, dy


# ------------------------------------------------------------------- dense
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("shape", DENSE_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_dense_forward(shape, act, dtype, bias):
    x, W, b, _ = _dense_inputs(shape, dtype, seed=_seed(shape, act, bias))
    b = b if bias else None
    x0, W0 = x.copy(), W.copy()
    y, saved = dense_forward(x, W, b, act)
    y_ref, z_ref = oracles.dense_forward(x, W, b, act)
    assert y.dtype == dtype and saved.dtype == dtype and y.shape == y_ref.shape
    scale = np.abs(x.astype(np.float64)) @ np.abs(W.astype(np.float64)).T
    if b is not None:
        scale = scale + np.abs(b.astype(np.float64))
    rtol = RTOL[dtype]
    assert_close(y, y_ref, rtol, 1.2 * scale)
    if act == "gelu":
        assert saved is not y
        assert_close(saved, z_ref, rtol, scale)
    else:
        assert saved is y
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(W, W0)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("shape", DENSE_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_dense_backward(shape, act, dtype):
    x, W, b, dy = _dense_inputs(shape, dtype, seed=_seed(shape, act, 1))
    y_ref, z_ref = oracles.dense_forward(x, W, b, act)
    saved = (z_ref if act == "gelu" else y_ref).astype(dtype)
    dy0 = dy.copy()
    dx, dW, db = dense_backward(dy, x, W, saved, act)
    dx_ref, dW_ref, db_ref = oracles.dense_backward(dy, x, W, z_ref, act)
    for got in (dx, dW, db):
        assert got.dtype == dtype
    ady = 1.2 * np.abs(dy.astype(np.float64))  # |f'| <= 1.13 for every activation
    rtol = RTOL[dtype]
    assert_close(db, db_ref, rtol, ady.sum(axis=0))
    assert_close(dW, dW_ref, rtol, ady.T @ np.abs(x.astype(np.float64)))
    assert_close(dx, dx_ref, rtol, ady @ np.abs(W.astype(np.float64)))
    np.testing.assert_array_equal(dy, dy0)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("act", ACTS)
def test_backward_epilogue_in_place_matches_out_of_place(act, dtype):
    """The fused epoch turns dy into dz in place; that path must give the same bits."""
    from gpunet.kernels.cpu.dense import _backward_epilogue, activation_code

    rng = np.random.default_rng(11)
    dy = rng.standard_normal((37, 19)).astype(dtype)
    saved = rng.standard_normal((37, 19)).astype(dtype)
    dz, db = np.empty_like(dy), np.empty(19, dtype)
    _backward_epilogue(dy, saved, dz, db, activation_code(act))
    in_place, db_in_place = dy.copy(), np.empty(19, dtype)
    _backward_epilogue(in_place, saved, in_place, db_in_place, activation_code(act))
    np.testing.assert_array_equal(db_in_place, db)
    np.testing.assert_array_equal(in_place, dy if act == "linear" else dz)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("cols", [(0, 10), (10, 21), (5, 6), (0, 21), (7, 7)], ids=str)
def test_epilogues_on_a_column_block(cols, act, dtype):
    """The model-parallel step's epilogues on columns ``c0:c1`` of whole-width arrays give
    the bits of the whole-array epilogues on that block, and leave the other columns."""
    from gpunet.kernels.cpu.dense import (
        _backward_epilogue,
        _backward_epilogue_columns,
        _forward_epilogue,
        _forward_epilogue_columns,
        activation_code,
    )

    c0, c1 = cols
    code = activation_code(act)
    rng = np.random.default_rng(c0 * 31 + c1)
    z = rng.standard_normal((13, 21)).astype(dtype)
    b = rng.standard_normal(21).astype(dtype)
    y, saved = z.copy(), np.full_like(z, 5.0)
    _forward_epilogue_columns(y, b[c0:c1], saved, code, c0, c1)
    y_ref, saved_ref = np.ascontiguousarray(z[:, c0:c1]), np.full((13, c1 - c0), 5.0, dtype)
    _forward_epilogue(y_ref, b[c0:c1], saved_ref, code)
    np.testing.assert_array_equal(y[:, c0:c1], y_ref)
    np.testing.assert_array_equal(
        np.delete(y, np.s_[c0:c1], axis=1), np.delete(z, np.s_[c0:c1], axis=1)
    )
    if act == "gelu":
        np.testing.assert_array_equal(saved[:, c0:c1], saved_ref)

    dy = rng.standard_normal((13, 21)).astype(dtype)
    block = np.ascontiguousarray(dy[:, c0:c1])
    dz_ref, db_ref = np.empty_like(block), np.empty(c1 - c0, dtype)
    _backward_epilogue(block, np.ascontiguousarray(saved[:, c0:c1]), dz_ref, db_ref, code)
    if act == "linear":
        dz_ref = block
    for in_place in (False, True):
        dz = dy.copy() if in_place else np.full_like(dy, 9.0)
        db = np.empty(c1 - c0, dtype)
        _backward_epilogue_columns(dy.copy() if not in_place else dz, saved, dz, db, code, c0, c1)
        np.testing.assert_array_equal(db, db_ref)
        if in_place or act != "linear":
            np.testing.assert_array_equal(dz[:, c0:c1], dz_ref)
        rest = np.delete(dz, np.s_[c0:c1], axis=1)
        np.testing.assert_array_equal(
            rest, np.delete(dy if in_place else np.full_like(dy, 9.0), np.s_[c0:c1], axis=1)
        )


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_dense_backward_no_dx_and_roundtrip(dtype):
    """need_dx=False gives dx None; saved from the kernel's own forward works (GELU)."""
    x, W, b, dy = _dense_inputs((9, 11, 6), dtype, seed=7)
    for act in ACTS:
        y, saved = dense_forward(x, W, b, act)
        dx, dW, db = dense_backward(dy, x, W, saved, act, need_dx=False)
        assert dx is None
        _, z_ref = oracles.dense_forward(x, W, b, act)
        _, dW_ref, db_ref = oracles.dense_backward(dy, x, W, z_ref, act)
        ady = 1.2 * np.abs(dy.astype(np.float64))
        scale = np.abs(x.astype(np.float64)) @ np.abs(W.astype(np.float64)).T + 1.0
        # saved was rounded to dtype: allow its error through f'' <= 1
        rtol = 10 * RTOL[dtype]
        assert_close(db, db_ref, rtol, ady.sum(axis=0) * scale.max())
        assert_close(dW, dW_ref, rtol, (ady.T @ np.abs(x.astype(np.float64))) * scale.max())


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("act", ACTS)
def test_activation_accuracy_wide_range(act, dtype):
    """y = f(z) elementwise over [-40, 40] and extremes (W = [[1]], so z = x exactly),
    relative to the oracle; and f' recovered from ``saved`` through dx (dy = 1)."""
    z = np.concatenate(
        [
            np.linspace(-40, 40, 4001),
            [
                -1e30,
                -700,
                -100,
                -88,
                -87.5,
                -20,
                -1e-5,
                -1e-30,
                -0.0,
                0.0,
                1e-30,
                1e-5,
                20,
                87.5,
                88,
                100,
                700,
                1e30,
            ],
        ]
    ).astype(dtype)[:, None]
    one = np.ones((1, 1), dtype)
    y, saved = dense_forward(z, one, None, act)
    tiny = np.finfo(dtype).tiny
    rtol = {np.float32: 5e-5, np.float64: 1e-12}[dtype]  # float32 tails: (z/sqrt2)**2 rounds
    assert_close(y, oracles.activation(z, act), rtol, 16 * tiny / rtol)
    dx, _, _ = dense_backward(np.ones_like(y), z, one, saved, act)
    eps = np.finfo(dtype).eps  # f' from a rounded y (sigmoid, tanh) is only abs-accurate
    assert_close(dx, oracles.activation_derivative(z, act), rtol, 4 * eps / rtol)
    nan = np.full((1, 1), np.nan, dtype)
    assert np.isnan(dense_forward(nan, one, None, act)[0]).all()


GEMM_VIEWS = {
    # name: (a, b, out) views of C-contiguous parents, as the two-thread steps take them
    "forward-columns": lambda A, W, Z, c: (A, W[c].T, Z[:, c]),  # z[:, c] = a @ W[c].T
    "dx-columns": lambda A, W, Z, c: (Z, W[:, c], A[:, c]),  # dx[:, c] = dz @ W[:, c]
    "dW-rows": lambda A, W, Z, c: (Z[:, c].T, A, W[c]),  # dW[c] = dz[:, c].T @ a
    "transposed-out": lambda A, W, Z, c: (W[c], A.T, Z[:, c].T),  # z[:, c].T = W[c] @ a.T
}


@pytest.mark.parametrize("impl", ["blas", "via-copies"])
@pytest.mark.parametrize("beta", [0.0, 1.0])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("view", list(GEMM_VIEWS))
@pytest.mark.parametrize(
    ("n", "n_in", "n_out", "cols"),
    [(1, 1, 1, (0, 1)), (5, 1, 3, (1, 3)), (17, 9, 7, (3, 7)), (33, 65, 40, (0, 20))],
)
def test_gemm_view(n, n_in, n_out, cols, view, dtype, beta, impl):
    """``out = a @ b + beta * out`` on column and row blocks and their transposes (no
    copies) against float64; an empty block leaves ``out`` alone, an empty sum zeroes
    it."""
    from gpunet.kernels.cpu.blas import _gemm_view_blas, gemm_view_via_copies  # noqa: PLC0415

    gemm = _gemm_view_blas if impl == "blas" else gemm_view_via_copies
    rng = np.random.default_rng(_seed("gemm", (n, n_in, n_out, view), dtype))
    A = rng.standard_normal((n, n_in)).astype(dtype)
    W = rng.standard_normal((n_out, n_in)).astype(dtype)
    Z = rng.standard_normal((n, n_out)).astype(dtype)
    if view == "dx-columns":  # dz (n, out) @ W[:, c] -> dx (n, in): columns of n_in
        cols = (0, n_in) if n_in == 1 else (n_in // 3, n_in)
    a, b, out = GEMM_VIEWS[view](A, W, Z, slice(*cols))
    start = out.copy()
    expected = a.astype(np.float64) @ b.astype(np.float64) + beta * start
    gemm(a, b, out, dtype(beta))
    scale = np.abs(a).astype(np.float64) @ np.abs(b) + np.abs(start)
    assert_close(out, expected, RTOL[dtype], scale)
    before = out.copy()
    gemm(a, b[:, :0], out[:, :0], dtype(beta))
    gemm(a[:0], b, out[:0], dtype(beta))
    np.testing.assert_array_equal(out, before)
    gemm(a[:, :0], b[:0], out, dtype(0.0))  # an empty sum: zeros
    np.testing.assert_array_equal(out, np.zeros_like(out))


def test_dense_noncontiguous_inputs():
    x, W, b, dy = _dense_inputs((6, 8, 5), np.float64, seed=3)
    xt = np.asfortranarray(x)
    dyt = np.asfortranarray(dy)
    y, saved = dense_forward(xt, W, b, "tanh")
    y_ref, z_ref = oracles.dense_forward(x, W, b, "tanh")
    assert_close(y, y_ref, 1e-12, 10.0)
    dx, dW, db = dense_backward(dyt, xt, W, saved, "tanh")
    dx_ref, dW_ref, db_ref = oracles.dense_backward(dy, x, W, z_ref, "tanh")
    for got, ref in ((dx, dx_ref), (dW, dW_ref), (db, db_ref)):
        assert_close(got, ref, 1e-12, 100.0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64], ids=["f32", "f64", "i64"])
@pytest.mark.parametrize(
    "n_rows, n_cols, batch",
    # one row; fewer rows than the prefetch look-ahead; width 1; rows of several pages
    [(1, 5, 1), (9, 3, 3), (50, 1, 17), (40, 2500, 13), (300, 784, 128)],
)
def test_gather_rows(n_rows, n_cols, batch, dtype):
    """The shuffled batch copy is NumPy's ``X[rows]``, for repeated rows, the last row,
    and a strided view of ``X``; an empty batch writes nothing."""
    from gpunet.kernels.cpu.gather import gather_rows

    rng = np.random.default_rng(n_rows * n_cols + batch)
    X = (rng.standard_normal((n_rows, 2 * n_cols)) * 1000).astype(dtype)
    rows = rng.integers(0, n_rows, batch)
    rows[-1] = n_rows - 1
    for source in (np.ascontiguousarray(X[:, :n_cols]), X[:, ::2]):
        out = np.full((batch + 2, n_cols), -7, dtype)  # rows past the batch stay as they are
        gather_rows(source, rows, out)
        np.testing.assert_array_equal(out[:batch], source[rows])
        assert (out[batch:] == -7).all()
    untouched = np.full((2, n_cols), -7, dtype)
    gather_rows(X, rows[:0], untouched)
    assert (untouched == -7).all()


# ---------------------------------------------------------- softmax cross-entropy
SOFTMAX_SHAPES = [(1, 1), (1, 10), (7, 13), (33, 5), (4, 1000)]


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("shape", SOFTMAX_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("grad_scale", [1.0, 0.25])
def test_softmax_cross_entropy(shape, dtype, smoothing, grad_scale):
    n, c = shape
    rng = np.random.default_rng(n * 1000 + c)
    logits = 3.0 * rng.standard_normal((n, c))
    logits[0] += 1000.0  # stability: a row with huge logits
    logits = logits.astype(dtype)
    target = rng.integers(0, c, size=n)
    logits0 = logits.copy()
    losses, dlogits = softmax_cross_entropy(logits, target, smoothing, grad_scale)
    l_ref, d_ref = oracles.softmax_cross_entropy(logits, target, smoothing, grad_scale)
    assert losses.dtype == dtype and dlogits.dtype == dtype
    assert losses.shape == (n,) and dlogits.shape == (n, c)
    rtol = RTOL[dtype]
    spread = np.ptp(logits.astype(np.float64), axis=1) + 1.0
    assert_close(losses, l_ref, rtol, spread)
    assert_close(dlogits, d_ref, rtol, 0.1 * grad_scale)
    np.testing.assert_array_equal(logits, logits0)


def test_softmax_cross_entropy_int32_targets_and_extremes():
    logits = np.array([[0.0, 1e4, -1e4], [-50.0, -50.0, -50.0]], dtype=np.float32)
    target = np.array([2, 1], dtype=np.int32)
    losses, dlogits = softmax_cross_entropy(logits, target)
    l_ref, d_ref = oracles.softmax_cross_entropy(logits, target)
    assert np.all(np.isfinite(losses)) and np.all(np.isfinite(dlogits))
    assert_close(losses, l_ref, 1e-6, 1.0)
    assert_close(dlogits, d_ref, 1e-6, 1.0)


# -------------------------------------------------------------------- optimizers
def _combos(**options):
    keys = list(options)
    return [dict(zip(keys, vals)) for vals in itertools.product(*options.values())]


SGD_CASES = [
    c
    for c in _combos(
        momentum=[0.0, 0.9],
        dampening=[0.0, 0.3],
        nesterov=[False, True],
        weight_decay=[0.0, 0.01],
        maximize=[False, True],
    )
    if not (c["momentum"] == 0 and (c["dampening"] or c["nesterov"]))
    and not (c["nesterov"] and c["dampening"])
]
ADAGRAD_CASES = _combos(lr_decay=[0.0, 0.01], weight_decay=[0.0, 0.1], maximize=[False, True])
RMSPROP_CASES = _combos(
    centered=[False, True], momentum=[0.0, 0.9], weight_decay=[0.0, 0.05], maximize=[False, True]
)
ADAM_CASES = _combos(
    amsgrad=[False, True], decoupled=[False, True], weight_decay=[0.0, 0.01], maximize=[False, True]
)


def _case_id(case):
    return "-".join(f"{k[:4]}{int(v) if isinstance(v, bool) else v}" for k, v in case.items())


class _Run:
    """Drives one optimizer kernel and its oracle; states are arrays or None."""

    def __init__(self, name, case, shape, dtype):
        self.name = name
        self.case = case
        self.dtype = dtype
        z = lambda: np.zeros(shape, dtype)  # noqa: E731
        if name == "sgd":
            self.state = [z() if case["momentum"] else None]
            self.hyper = {"lr": 0.05, "dampening": 0.0, "nesterov": False, **case}
        elif name == "adagrad":
            self.state = [z()]
            self.hyper = {"lr": 0.1, "eps": 1e-10, **case}
        elif name == "rmsprop":
            self.state = [z(), z() if case["centered"] else None, z() if case["momentum"] else None]
            self.hyper = {"lr": 0.01, "alpha": 0.99, "eps": 1e-8, **case}
        else:
            self.state = [z(), z(), z() if case["amsgrad"] else None]
            self.hyper = {"lr": 0.01, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, **case}

    def step_kwargs(self, step):
        kw = dict(self.hyper)
        if self.name == "sgd":
            kw["first_step"] = step == 1
        elif self.name in ("adagrad", "adam"):
            kw["step"] = step
        return kw

    def kernel(self, p, g, step, **extra):
        UPDATE_KERNELS[self.name](np, p, g, *self.state, **self.step_kwargs(step), **extra)

    def oracle(self, p, g, state, step):
        fn = getattr(oracles, self.name)
        out = fn(p, g, *state, **self.step_kwargs(step))
        return out[0], list(out[1:])


def _grads(shape, steps, seed):
    rng = np.random.default_rng(seed)
    gs = rng.standard_normal((steps, *shape))
    gs[rng.random(gs.shape) < 0.1] = 0.0  # some exact zeros (dead units)
    return gs


def _optim_trajectory(name, case, dtype, shape=(7, 13), steps=60):
    run = _Run(name, case, shape, dtype)
    rng = np.random.default_rng(_seed(name, _case_id(case)))
    p = rng.standard_normal(shape).astype(dtype)
    p_ref = p.astype(np.float64)
    state_ref = [None if s is None else s.astype(np.float64) for s in run.state]
    for step, g64 in enumerate(_grads(shape, steps, seed=len(name)), start=1):
        g = np.asarray(g64, dtype=dtype)
        g0 = g.copy()
        if dtype == np.float64:
            # float64: whole trajectories agree to 1e-12
            p_ref, state_ref = run.oracle(p_ref, g, state_ref, step)
        else:
            # float32: each step from the kernel's own state, vs the float64 oracle
            p_ref, state_ref = run.oracle(p, g, run.state, step)
        run.kernel(p, g, step)
        np.testing.assert_array_equal(g, g0)  # g is never modified
        rtol = RTOL[dtype]
        assert_close(p, p_ref, rtol, np.abs(p_ref).max())
        for s, s_ref in zip(run.state, state_ref):
            assert (s is None) == (s_ref is None)
            if s is not None:
                assert_close(s, s_ref, rtol, np.abs(s_ref).max() + 1e-30)
    return p


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("case", SGD_CASES, ids=_case_id)
def test_sgd(case, dtype):
    _optim_trajectory("sgd", case, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("case", ADAGRAD_CASES, ids=_case_id)
def test_adagrad(case, dtype):
    _optim_trajectory("adagrad", case, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("case", RMSPROP_CASES, ids=_case_id)
def test_rmsprop(case, dtype):
    _optim_trajectory("rmsprop", case, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("case", ADAM_CASES, ids=_case_id)
def test_adam(case, dtype):
    _optim_trajectory("adam", case, dtype)


@pytest.mark.parametrize("shape", [(), (1,), (3, 4, 5)], ids=str)
@pytest.mark.parametrize("name", list(UPDATE_KERNELS))
def test_optim_any_shape(name, shape):
    first = {
        "sgd": SGD_CASES[-1],
        "adagrad": ADAGRAD_CASES[-1],
        "rmsprop": RMSPROP_CASES[-1],
        "adam": ADAM_CASES[-1],
    }[name]
    _optim_trajectory(name, first, np.float64, shape=shape, steps=5)


def test_fused_update_lookup():
    assert fused_update("adam") is adam_ and fused_update("sgd") is sgd_
    assert fused_update("rmsprop") is rmsprop_ and fused_update("adagrad") is adagrad_
    assert fused_update("lbfgs") is None


def test_optim_rejects_noncontiguous():
    p = np.zeros((4, 6))[:, ::2]
    with pytest.raises(ValueError):
        sgd_(
            np,
            p,
            np.zeros_like(p),
            None,
            lr=0.1,
            momentum=0.0,
            dampening=0.0,
            nesterov=False,
            weight_decay=0.0,
            maximize=False,
            first_step=True,
        )


def test_optim_matches_reference_bitwise():
    """Same order of operations as gpunet.optim.functional: identical results (every
    SGD and Adam case, so the general rules and the plain ones are covered)."""
    functional = pytest.importorskip("gpunet.optim.functional")
    rng = np.random.default_rng(5)
    for name, case in [
        *(("sgd", c) for c in SGD_CASES),
        ("adagrad", ADAGRAD_CASES[-1]),
        ("rmsprop", RMSPROP_CASES[-1]),
        *(("adam", c) for c in ADAM_CASES),
    ]:
        for dtype in DTYPES:
            run = _Run(name, case, (5, 6), dtype)
            p = rng.standard_normal((5, 6)).astype(dtype)
            p_ref = p.copy()
            state_ref = [None if s is None else s.copy() for s in run.state]
            ref_fn = getattr(functional, name + "_")
            for step in range(1, 6):
                g = rng.standard_normal((5, 6)).astype(dtype)
                run.kernel(p, g, step)
                ref_fn(np, p_ref, g, *state_ref, **run.step_kwargs(step))
                np.testing.assert_array_equal(p, p_ref, err_msg=f"{name} {dtype}")
                for s, s_ref in zip(run.state, state_ref):
                    if s is not None:
                        np.testing.assert_array_equal(s, s_ref)


def test_plain_rules_are_chosen_only_when_exact():
    from gpunet.kernels.cpu.update_rules import (
        ADAM,
        ADAM_PLAIN,
        SGD,
        SGD_MOMENTUM,
        hyper_row,
        rule_of,
        typed_coefficients,
    )

    def rule(first=False, **options):
        group = dict(
            lr=0.1, momentum=0.9, dampening=0.0, nesterov=False, weight_decay=0.0, maximize=False
        )
        group.update(options)
        c = typed_coefficients(SGD, hyper_row("sgd", group), 3, first, np.float32(0))
        return rule_of(SGD, c)

    assert rule() == SGD_MOMENTUM
    assert rule(first=True) == SGD_MOMENTUM  # buf = 0 * buf + g: still exact
    assert rule(first=True, dampening=0.3) == SGD_MOMENTUM  # dampening skips step 1
    for options in [
        dict(momentum=0.0),
        dict(dampening=0.3),
        dict(nesterov=True),
        dict(weight_decay=0.01),
        dict(maximize=True),
    ]:
        assert rule(**options) == SGD, options

    def adam_rule(**options):
        group = dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False)
        group.update(options)
        c = typed_coefficients(ADAM, hyper_row("adam", group), 3, False, np.float32(0))
        return rule_of(ADAM, c)

    assert adam_rule() == ADAM_PLAIN
    assert adam_rule(decoupled_weight_decay=True) == ADAM_PLAIN  # decay 1 - lr * 0 = 1
    for options in [
        dict(weight_decay=0.01),
        dict(weight_decay=0.01, decoupled_weight_decay=True),
        dict(amsgrad=True),
        dict(maximize=True),
    ]:
        assert adam_rule(**options) == ADAM, options


# -------------------------------------------------------------------- denormals
SUBNORMAL = {np.float32: np.float32(1e-39), np.float64: np.float64(1e-310)}


def _subnormal_step(name, dtype, **extra):
    # g = 0 and no weight decay: every state value just decays (or stays) subnormal
    case = {
        "sgd": dict(momentum=0.9, weight_decay=0.0, maximize=False),
        "adagrad": ADAGRAD_CASES[0],
        "rmsprop": dict(RMSPROP_CASES[-1], weight_decay=0.0),
        "adam": dict(ADAM_CASES[-1], weight_decay=0.0),
    }[name]
    run = _Run(name, case, (4, 3), dtype)
    for s in run.state:
        if s is not None:
            s[...] = SUBNORMAL[dtype]
    p = np.ones((4, 3), dtype)
    run.kernel(p, np.zeros((4, 3), dtype), 2, **extra)
    return [s for s in run.state if s is not None]


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("name", list(UPDATE_KERNELS))
def test_denormal_flush(name, dtype):
    tiny = np.finfo(dtype).tiny
    assert get_flush_denormals() is True  # the default
    for s in _subnormal_step(name, dtype):  # module default: on
        assert np.all(s == 0)
    for s in _subnormal_step(name, dtype, flush_denormals=True):
        assert np.all(s == 0)
    kept = _subnormal_step(name, dtype, flush_denormals=False)
    assert any(np.all((np.abs(s) > 0) & (np.abs(s) < tiny)) for s in kept)
    previous = set_flush_denormals(False)
    try:
        kept = _subnormal_step(name, dtype)
        assert any(np.all((np.abs(s) > 0) & (np.abs(s) < tiny)) for s in kept)
    finally:
        set_flush_denormals(previous)


@pytest.mark.parametrize("name", list(UPDATE_KERNELS))
def test_denormal_flush_leaves_normal_values(name):
    """With no subnormal values around, flushing on or off gives identical results."""
    case = {
        "sgd": SGD_CASES[-1],
        "adagrad": ADAGRAD_CASES[-1],
        "rmsprop": RMSPROP_CASES[-1],
        "adam": ADAM_CASES[-1],
    }[name]
    finals = []
    for flush in (True, False):
        run = _Run(name, case, (5, 5), np.float32)
        p = np.linspace(-1, 1, 25, dtype=np.float32).reshape(5, 5)
        for step, g in enumerate(_grads((5, 5), 10, seed=1), start=1):
            run.kernel(p, g.astype(np.float32), step, flush_denormals=flush)
        finals.append(p)
    np.testing.assert_array_equal(*finals)


_needs_x86 = pytest.mark.skipif(not mxcsr_supported(), reason="MXCSR exists only on x86-64")


@_needs_x86
def test_mxcsr_flush_context():
    from numba import njit

    @njit(cache=False)
    def mul(a, b):
        return a * b

    one32, one64 = np.float32(1.0), np.float64(1.0)
    tiny32, tiny64 = SUBNORMAL[np.float32], SUBNORMAL[np.float64]
    control = ~0x3F  # compare the control bits, not the sticky exception flags
    before = get_mxcsr() & control
    assert mul(tiny32, one32) != 0 and mul(tiny64, one64) != 0
    with flush_denormals() as active:
        assert active is True
        assert get_mxcsr() & 0x8040 == 0x8040
        assert mul(tiny32, one32) == 0  # DAZ/FTZ in Numba code
        assert mul(tiny64, one64) == 0
        assert np.multiply(tiny32, one32) == 0  # and in NumPy on this thread
        with flush_denormals():
            pass
        assert get_mxcsr() & 0x8040 == 0x8040  # the inner exit restored the outer state
    assert get_mxcsr() & control == before
    assert mul(tiny32, one32) != 0 and mul(tiny64, one64) != 0
    with pytest.raises(RuntimeError), flush_denormals():
        raise RuntimeError("boom")
    assert get_mxcsr() & control == before
    with flush_denormals(enabled=False) as active:
        assert active is False and get_mxcsr() & control == before


@_needs_x86
def test_hardware_flush_active_follows_both_bits():
    from gpunet.kernels.cpu.denormals import DAZ_BIT, FTZ_BIT, hardware_flush_active, set_mxcsr

    saved = get_mxcsr()
    try:
        assert not hardware_flush_active()
        with flush_denormals():
            assert hardware_flush_active()
        set_mxcsr(saved | FTZ_BIT)  # FTZ alone lets subnormal inputs through
        assert not hardware_flush_active()
        set_mxcsr(saved | DAZ_BIT)
        assert not hardware_flush_active()
    finally:
        set_mxcsr(saved)


# ---------------------------------------------------------------- import is lazy
def test_nothing_compiles_at_import():
    code = (
        "import gpunet.kernels.cpu as k\n"
        "from gpunet.kernels.cpu import dense, softmax_xent, denormals, update_rules, blas\n"
        "from gpunet.kernels.cpu import fused_mlp\n"
        "ds = [dense._forward_epilogue, dense._backward_epilogue,\n"
        "      softmax_xent._softmax_xent_rows, update_rules.update_array,\n"
        "      update_rules.coefficients, blas.matmul_nt, blas.weight_grad,\n"
        "      fused_mlp.train_epoch, denormals._read_mxcsr, denormals._write_mxcsr]\n"
        "assert all(not d.signatures for d in ds), [d.signatures for d in ds]\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env=dict(os.environ))


def test_cache_stamp_covers_the_package():
    """Cached kernels are stamped with all of kernels/cpu (they inline sibling modules)."""
    from gpunet.kernels import cpu
    from gpunet.kernels.cpu import softmax_xent

    assert cpu._install_package_cache_stamp() is True  # installed at import, idempotent
    softmax_cross_entropy(np.zeros((1, 2)), np.zeros(1, np.int64))
    locator = softmax_xent._softmax_xent_rows._cache._impl._locator
    assert type(locator).__name__ == "PackageStampLocator"


@pytest.mark.parametrize("name", ["sgd", "adagrad", "rmsprop", "adam"])
def test_per_parameter_kernels_take_the_reference_signature(name):
    """The CPU kernels are the functional references' signature plus flush_denormals,
    and a call that does not fit it is refused."""
    import inspect  # noqa: PLC0415

    from gpunet.kernels.cpu import optim_updates  # noqa: PLC0415
    from gpunet.optim import functional  # noqa: PLC0415

    kernel = optim_updates.fused_update(name)
    reference = inspect.signature(getattr(functional, name + "_"))
    params = list(inspect.signature(kernel).parameters.values())
    assert params[-1].name == "flush_denormals" and params[-1].default is None
    assert inspect.Signature(params[:-1], return_annotation="None") == reference
    p = np.zeros(3)
    with pytest.raises(TypeError, match=name):
        kernel(np, p, p.copy(), p.copy(), lr=0.1)
