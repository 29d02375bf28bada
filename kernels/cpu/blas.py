"""The matrix products of the dense layer, shared by every CPU path.

Both the autograd path (``dense.dense_forward`` / ``dense_backward``) and the fused epoch
(``fused_mlp``) call these, so they compute bit-identical gradients: the same BLAS (the
one Numba's ``np.dot`` binds to, called on the same blocks) and, for one-row batches,
the same loops.

Shapes: ``a`` (N, in), ``W`` (out, in), ``dz`` (N, out).
"""

from __future__ import annotations

import numpy as np
from numba import njit

#: batches of up to this many rows: ``dW = dz.T @ a`` goes through BLAS in blocks of
#: :data:`WEIGHT_GRAD_BLOCK_ROWS` rows of ``dW`` (:func:`weight_grad_block`), so the
#: fused epoch updates each block while it is still in cache (2-16 rows: 25-35% faster
#: than one product and then one sweep; from 32 rows one product wins)
BLOCKED_DW_MAX_ROWS = 16
WEIGHT_GRAD_BLOCK_ROWS = 32
#: training with batches of up to this many rows runs BLAS on one thread
#: (:func:`one_blas_thread`): such products are too small to split (2-core EPYC VM,
#: batch 8-16: one thread 5-10% faster, and 2x faster while the VM's threads contend)
ONE_BLAS_THREAD_MAX_ROWS = 16

_controller = []


def one_blas_thread():
    """Context manager: the BLAS that Numba's ``np.dot`` calls (SciPy's OpenBLAS) runs on
    one thread inside it; the previous thread counts are restored on exit."""
    if not _controller:
        import scipy.linalg.cython_blas  # noqa: F401, PLC0415 (load it before the scan)
        from threadpoolctl import ThreadpoolController  # noqa: PLC0415

        _controller.append(ThreadpoolController())  # scanning the libraries takes ~1 ms
    return _controller[0].limit(limits=1, user_api="blas")


@njit(inline="always", error_model="numpy")
def accumulate_dx(dz, w_row, i, out):
    """Add term ``i`` of ``dz @ W`` for a one-row ``dz`` (1, out) to ``out`` (1, in):
    ``out[0, :] += dz[0, i] * w_row`` (assigned when ``i == 0``), ``w_row`` (in,) being
    row ``i`` of ``W``."""
    d = dz[0, i]
    if i == 0:
        for j in range(w_row.shape[0]):
            out[0, j] = d * w_row[j]
    else:
        for j in range(w_row.shape[0]):
            out[0, j] += d * w_row[j]


@njit(inline="always", error_model="numpy")
def weight_grad_block(dzT, a, out, r0, r1):
    """Rows ``r0:r1`` of ``dW = dz.T @ a`` by BLAS: ``dzT`` (out, N) is ``dz.T`` made
    contiguous, ``a`` (N, in), ``out`` (out, in)."""
    np.dot(dzT[r0:r1], a, out[r0:r1])


@njit(cache=True, error_model="numpy")
def matmul_nt(a, W, out):
    """``out = a @ W.T``: a (N, in), W (out, in) -> out (N, out)."""
    np.dot(a, W.T, out)


@njit(cache=True, error_model="numpy")
def matmul_nn(dz, W, out):
    """``out = dz @ W``: dz (N, out), W (out, in) -> out (N, in); for one row, one row of
    ``W`` at a time (:func:`accumulate_dx`, the order the fused epoch's weight sweep
    uses), else BLAS."""
    if dz.shape[0] == 1:
        for i in range(W.shape[0]):
            accumulate_dx(dz, W[i], i, out)
    else:
        np.dot(dz, W, out)


@njit(cache=True, error_model="numpy")
def weight_grad(dz, a, out):
    """``out = dz.T @ a``: dz (N, out), a (N, in) -> out (out, in). One row:
    ``out[i] = dz[0, i] * a[0]`` (the fused epoch forms the same products inside its
    update); up to ``BLOCKED_DW_MAX_ROWS`` rows: BLAS in blocks of
    ``WEIGHT_GRAD_BLOCK_ROWS`` rows of ``out``; else one BLAS product."""
    nb, n_out = dz.shape
    if nb == 1:
        for i in range(n_out):
            d = dz[0, i]
            for j in range(a.shape[1]):
                out[i, j] = a[0, j] * d
    elif nb <= BLOCKED_DW_MAX_ROWS:
        dzT = np.ascontiguousarray(dz.T)
        for r0 in range(0, n_out, WEIGHT_GRAD_BLOCK_ROWS):
            weight_grad_block(dzT, a, out, r0, min(n_out, r0 + WEIGHT_GRAD_BLOCK_ROWS))
    else:
        np.dot(dz.T, a, out)
