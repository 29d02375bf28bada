"""The matrix products of the dense layer, shared by every CPU path.

Both the autograd path (``dense.dense_forward`` / ``dense_backward``) and the fused epoch
(``fused_mlp``) call these, so they compute bit-identical gradients: the same BLAS (the
one Numba's ``np.dot`` binds to) and, for small batches, the same weight-gradient loop.

Shapes: ``a`` (N, in), ``W`` (out, in), ``dz`` (N, out).
"""

from __future__ import annotations

import numpy as np
from numba import njit

#: up to this many rows, ``dW = dz.T @ a`` is formed row by row (BLAS loses there)
OUTER_PRODUCT_MAX_ROWS = 4
#: up to this many rows, ``dx = dz @ W`` is summed one row of ``W`` at a time
#: (:func:`accumulate_dx`), so the fused epoch can form it in the sweep that updates
#: ``W`` and read ``W`` once instead of twice
DX_ROWWISE_MAX_ROWS = 1


@njit(inline="always", error_model="numpy")
def accumulate_dx(dz, w_row, nb, i, out):
    """Add term ``i`` of ``dz[:nb] @ W`` to ``out``: ``out[b, :] += dz[b, i] * w_row``
    (assigned when ``i == 0``), ``w_row`` (in,) being row ``i`` of ``W``."""
    for b in range(nb):
        d = dz[b, i]
        if i == 0:
            for j in range(w_row.shape[0]):
                out[b, j] = d * w_row[j]
        else:
            for j in range(w_row.shape[0]):
                out[b, j] += d * w_row[j]


@njit(inline="always", error_model="numpy")
def outer_row(dz, a, nb, i, out):
    """``out[:] = sum_b dz[b, i] * a[b, :]`` over ``b < nb``, in that order: row ``i`` of
    ``dz[:nb].T @ a[:nb]``."""
    d0 = dz[0, i]
    for j in range(out.shape[0]):
        out[j] = d0 * a[0, j]
    for b in range(1, nb):
        db = dz[b, i]
        for j in range(out.shape[0]):
            out[j] += db * a[b, j]


@njit(cache=True, error_model="numpy")
def matmul_nt(a, W, out):
    """``out = a @ W.T``: a (N, in), W (out, in) -> out (N, out)."""
    np.dot(a, W.T, out)


@njit(cache=True, error_model="numpy")
def matmul_nn(dz, W, out):
    """``out = dz @ W``: dz (N, out), W (out, in) -> out (N, in); one row of ``W`` at a
    time (:func:`accumulate_dx`) for ``N <= DX_ROWWISE_MAX_ROWS``, else BLAS."""
    nb = dz.shape[0]
    if nb <= DX_ROWWISE_MAX_ROWS:
        for i in range(W.shape[0]):
            accumulate_dx(dz, W[i], nb, i, out)
    else:
        np.dot(dz, W, out)


@njit(cache=True, error_model="numpy")
def weight_grad(dz, a, out):
    """``out = dz.T @ a``: dz (N, out), a (N, in) -> out (out, in); row by row with
    :func:`outer_row` for ``N <= OUTER_PRODUCT_MAX_ROWS``, else BLAS."""
    nb = dz.shape[0]
    if nb <= OUTER_PRODUCT_MAX_ROWS:
        for i in range(dz.shape[1]):
            outer_row(dz, a, nb, i, out[i])
    else:
        np.dot(dz.T, a, out)
