"""Tier T2: the dense layer's CUDA C kernels (gemm.cu, dense_epilogue.cu), compiled for
the host CPU, against the float64 oracles on ragged shapes."""

from __future__ import annotations

import numpy as np
import pytest

from gpunet.activations import ACTIVATIONS
from gpunet.kernels.cuda import dense
from tests import oracles

pytestmark = pytest.mark.cudahost

TOL = {np.float32: 2e-5, np.float64: 1e-12}
# (M, K, N): one row, widths off the 32/64 tiles and 16/8 k-steps, more tiles than rows
SHAPES = [(1, 1, 1), (1, 7, 5), (3, 17, 33), (33, 64, 65), (70, 130, 3), (65, 9, 129)]


def _close(got, want, scale, dtype):
    """|got - want| <= tol * (|want| + scale), scale the magnitude of the summed terms."""
    err = np.abs(np.asarray(got, np.float64) - want)
    bound = TOL[dtype] * (np.abs(want) + scale + 1e-30)
    assert np.all(err <= bound), f"max err {err.max()} (bound {bound.flat[np.argmax(err - bound)]})"


@pytest.mark.parametrize("tile", ["s", "l"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES)
def test_gemm_store_every_transpose(host_runtime, shape, dtype, tile):
    m, k, n = shape
    rng = np.random.default_rng(m * 1000 + k * 10 + n)
    a = rng.standard_normal((m, k)).astype(dtype)
    bt = rng.standard_normal((n, k)).astype(dtype)
    want = a.astype(np.float64) @ bt.T.astype(np.float64)
    scale = np.abs(a).astype(np.float64) @ np.abs(bt).T.astype(np.float64)
    for lhs, rhs in [(a, bt.T), (np.asfortranarray(a), np.ascontiguousarray(bt.T))]:
        out = np.full((m, n), np.nan, dtype)
        dense.gemm(host_runtime, lhs, rhs, out, tile=tile)
        _close(out, want, scale, dtype)


@pytest.mark.parametrize("act", sorted(ACTIVATIONS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(1, 7, 5), (33, 17, 65)])
def test_gemm_forward_epilogue(host_runtime, act, dtype, shape):
    """y = act(x @ W.T + b), z saved for GELU; without bias too."""
    m, k, n = shape
    rng = np.random.default_rng(7)
    x = rng.standard_normal((m, k)).astype(dtype)
    W = (rng.standard_normal((n, k)) / np.sqrt(k)).astype(dtype)
    b = rng.standard_normal(n).astype(dtype)
    scale = np.abs(x).astype(np.float64) @ np.abs(W).T.astype(np.float64) + np.abs(b)
    for bias in (b, None):
        want_y, want_z = oracles.dense_forward(x, W, bias, act)
        y = np.full((m, n), np.nan, dtype)
        z = np.full((m, n), np.nan, dtype)
        dense.gemm(
            host_runtime, x, W.T, y, epilogue=dense.EPI_BIAS_ACT, act=act, bias=bias, z_out=z
        )
        _close(z, want_z, scale, dtype)
        deriv = np.abs(oracles.activation_derivative(want_z, act)) + 1
        _close(y, want_y, scale * deriv, dtype)


@pytest.mark.parametrize("act", sorted(ACTIVATIONS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gemm_backward_epilogue_and_rowsum(host_runtime, act, dtype):
    """dx of layer l turned into dz of layer l-1, and dW with db folded in."""
    rng = np.random.default_rng(3)
    n_rows, n_out, n_in = 37, 19, 45
    dz = rng.standard_normal((n_rows, n_out)).astype(dtype)
    W = rng.standard_normal((n_out, n_in)).astype(dtype)
    x = rng.standard_normal((n_rows, n_in)).astype(dtype)
    z_prev = rng.standard_normal((n_rows, n_in))
    saved = z_prev if act == "gelu" else oracles.activation(z_prev, act)
    saved = saved.astype(dtype)
    dx = dz.astype(np.float64) @ W.astype(np.float64)
    scale = np.abs(dz).astype(np.float64) @ np.abs(W).astype(np.float64)
    out = np.full((n_rows, n_in), np.nan, dtype)
    dense.gemm(host_runtime, dz, W, out, epilogue=dense.EPI_ACT_BACKWARD, act=act, saved=saved)
    deriv = oracles.activation_derivative(z_prev.astype(dtype), act)
    if act == "gelu":
        _close(out, dx * deriv, scale * (np.abs(deriv) + 1), dtype)
    else:  # derivative from the saved output, in the saved output's precision
        want = {
            "linear": dx,
            "relu": dx * (saved > 0),
            "leaky_relu": np.where(saved > 0, dx, dx * oracles.LEAKY_SLOPE),
            "sigmoid": dx * saved * (1.0 - saved.astype(np.float64)),
            "tanh": dx * (1.0 - saved.astype(np.float64) ** 2),
        }[act]
        _close(out, want, scale * 2, dtype)

    dW = np.full((n_out, n_in), np.nan, dtype)
    db = np.full(n_out, np.nan, dtype)
    dense.gemm(host_runtime, dz.T, x, dW, rowsum=db)
    _close(dW, dz.T.astype(np.float64) @ x, np.abs(dz.T).astype(np.float64) @ np.abs(x), dtype)
    _close(db, dz.astype(np.float64).sum(0), np.abs(dz).astype(np.float64).sum(0), dtype)


def test_gemm_rejects_mismatched_shapes(host_runtime):
    a = np.zeros((3, 4))
    with pytest.raises(ValueError, match="do not match"):
        dense.gemm(host_runtime, a, np.zeros((5, 2)), np.zeros((3, 2)))
    with pytest.raises(TypeError, match="float32 or float64"):
        dense.gemm(host_runtime, a.astype(np.int64), a.T.astype(np.int64), np.zeros((3, 3), int))


def test_gemm_writes_nothing_outside_its_output(host_runtime):
    """Ragged tiles never store past M x N (a guard region around a view stays intact)."""
    rng = np.random.default_rng(1)
    a = rng.standard_normal((33, 20))
    b = rng.standard_normal((20, 65))
    big = np.full((40, 70), 123.0)
    out = np.full((33, 65), np.nan)
    dense.gemm(host_runtime, a, b, out, tile="l")
    big[:33, :65] = out
    assert np.all(big[33:] == 123.0) and np.all(big[:, 65:] == 123.0)
    np.testing.assert_allclose(out, a @ b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("act", sorted(ACTIVATIONS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [1, 5, 300, 513])
def test_bias_act_epilogues(host_runtime, act, dtype, n):
    m = 37
    rng = np.random.default_rng(n)
    xw = rng.standard_normal((n, m)).astype(dtype)
    b = rng.standard_normal(m).astype(dtype)
    z = xw.astype(np.float64) + b
    y = np.full((n, m), np.nan, dtype)
    z_out = np.full((n, m), np.nan, dtype)
    dense.bias_act_forward(host_runtime, xw, b, act, y, z_out)
    _close(z_out, z, np.abs(xw) + np.abs(b), dtype)
    _close(y, oracles.activation(z_out, act), np.abs(z), dtype)
    in_place = xw.copy()
    dense.bias_act_forward(host_runtime, in_place, None, act, in_place)
    _close(in_place, oracles.activation(xw, act), np.abs(xw), dtype)

    dy = rng.standard_normal((n, m)).astype(dtype)
    saved = z_out if act == "gelu" else y
    dz = np.full((n, m), np.nan, dtype)
    db = np.full(m, np.nan, dtype)
    partial = np.full((dense.backward_scratch_rows(n), m), np.nan, dtype)
    dense.bias_act_backward(host_runtime, dy, saved, act, dz, db, partial)
    want = dy * oracles.activation_derivative(z_out, act)
    if act in ("sigmoid", "tanh"):  # derivative through the saved float y
        s = y.astype(np.float64)
        want = dy * (s * (1 - s) if act == "sigmoid" else 1 - s * s)
    _close(dz, want, np.abs(dy) * 2, dtype)
    _close(db, dz.astype(np.float64).sum(0), np.abs(dz).astype(np.float64).sum(0), dtype)
