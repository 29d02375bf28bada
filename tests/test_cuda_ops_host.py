"""Tier T2: the CuPy backend's fused ops (``kernels/cuda/ops.CudaOps``) on the host build,
against the backend's ``xp`` reference and the float64 oracles."""

from __future__ import annotations

import numpy as np
import pytest

from gpunet.activations import ACTIVATIONS
from gpunet.backend.base import Backend
from gpunet.kernels.cuda.ops import CudaOps
from gpunet.optim import functional as F
from tests import oracles

pytestmark = pytest.mark.cudahost


@pytest.fixture(scope="module")
def ops(host_runtime):
    return CudaOps(host_runtime)


@pytest.mark.parametrize("act", sorted(ACTIVATIONS))
@pytest.mark.parametrize("need_dx", [True, False])
def test_dense_forward_and_backward(ops, act, need_dx):
    rng = np.random.default_rng(2)
    x, W, b = rng.standard_normal((9, 13)), rng.standard_normal((7, 13)), rng.standard_normal(7)
    y, saved = ops.dense_forward(x, W, b, act)
    want_y, want_z = oracles.dense_forward(x, W, b, act)
    np.testing.assert_allclose(y, want_y, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(saved, want_z if act == "gelu" else want_y, rtol=1e-12, atol=1e-12)
    dy = rng.standard_normal(y.shape)
    dx, dW, db = ops.dense_backward(dy, x, W, saved, act, need_dx)
    rdx, rdW, rdb = Backend("cpu").dense_backward(dy, x, W, saved, act, need_dx)
    odx, odW, odb = oracles.dense_backward(dy, x, W, want_z, act)
    np.testing.assert_allclose(dW, odW, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(db, odb, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(dW, rdW, rtol=1e-12, atol=1e-12)
    assert (dx is None) == (not need_dx)
    if need_dx:
        np.testing.assert_allclose(dx, odx, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_softmax_cross_entropy(ops, smoothing):
    rng = np.random.default_rng(4)
    logits, target = rng.standard_normal((11, 5)) * 30, rng.integers(0, 5, 11)
    losses, dlogits = ops.softmax_cross_entropy(logits, target, smoothing, 1 / 11)
    want_l, want_d = oracles.softmax_cross_entropy(logits, target, smoothing, 1 / 11)
    np.testing.assert_allclose(losses, want_l, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dlogits, want_d, rtol=1e-12, atol=1e-14)


def test_fused_update_has_the_reference_signature(ops):
    rng = np.random.default_rng(6)
    p, g = rng.standard_normal(10), rng.standard_normal(10)
    m, v = np.zeros(10), np.zeros(10)
    p2, m2, v2 = p.copy(), m.copy(), v.copy()
    kw = dict(lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, decoupled=False,
              amsgrad=False, step=1, maximize=False)  # fmt: skip
    kernel = ops.fused_update("adam")
    assert kernel is not None and ops.fused_update("no-such") is None
    kernel(np, p, g, m, v, None, **kw)
    F.adam_(np, p2, g, m2, v2, None, **kw)
    np.testing.assert_allclose(p, p2, rtol=1e-13)
    np.testing.assert_allclose(v, v2, rtol=1e-13)
