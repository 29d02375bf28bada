"""Softmax cross-entropy with its gradient, one pass per row (Numba, CPU).

Same contract as :meth:`gpunet.backend.base.Backend.softmax_cross_entropy`:
``logits`` (N, C) float32/float64, ``target`` (N,) integer class indices in [0, C)
(validated by the caller). Returns ``losses`` (N,) and
``dlogits = grad_scale * (softmax(logits) - q)`` (N, C), ``q = (1 - s) * onehot + s / C``
for label smoothing ``s``; ``loss = (1 - s) * nll + s * mean_j(-log p_j)``.

Numerically stable: the row max is subtracted before ``exp``; row sums (of ``exp`` and of
the shifted logits) accumulate in float64; ``exp`` runs in the input precision, with the
vectorizable ``exp`` of :mod:`gpunet.kernels.cpu.dense` (<= ~1.2 ulp).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from gpunet.kernels.cpu.dense import _vexp

__all__ = ["softmax_cross_entropy"]


@njit(cache=True, error_model="numpy")
def _row_max(row):
    """max(row) with 8 independent accumulators (3x faster than one chain; LLVM does not
    vectorize a strict float max). A NaN in the row still reaches the loss through the
    ``exp`` pass, which yields NaN for it."""
    n = row.shape[0]
    a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = row[0]
    j = 0
    while j + 8 <= n:
        a0 = max(a0, row[j])
        a1 = max(a1, row[j + 1])
        a2 = max(a2, row[j + 2])
        a3 = max(a3, row[j + 3])
        a4 = max(a4, row[j + 4])
        a5 = max(a5, row[j + 5])
        a6 = max(a6, row[j + 6])
        a7 = max(a7, row[j + 7])
        j += 8
    while j < n:
        a0 = max(a0, row[j])
        j += 1
    return max(max(max(a0, a1), max(a2, a3)), max(max(a4, a5), max(a6, a7)))


@njit(cache=True, error_model="numpy")
def _exp_shifted(row, mx, out):
    """out[j] = exp(row[j] - mx) (vectorized; arguments are <= 0)."""
    for j in range(row.shape[0]):
        out[j] = _vexp(row[j] - mx)


@njit(cache=True, error_model="numpy", fastmath={"reassoc"})
def _row_sums(row, mx, e):
    """(sum_j e[j], sum_j (row[j] - mx)) accumulated in float64, reassociated so that
    LLVM vectorizes the reduction (float64 sums of at most a few thousand terms)."""
    sumexp = 0.0
    sumshift = 0.0
    for j in range(row.shape[0]):
        sumexp += e[j]
        sumshift += row[j] - mx
    return sumexp, sumshift


@njit(cache=True, error_model="numpy")
def _softmax_xent_rows(logits, target, smoothing, grad_scale, losses, dlogits):
    """Fill ``losses`` (N,) and ``dlogits`` (N, C); ``smoothing``/``grad_scale`` float64."""
    n, c = logits.shape
    off = smoothing / c  # q_j = off + (1 - smoothing) * [j == t]
    on = 1.0 - smoothing
    for i in range(n):
        row = logits[i]
        out = dlogits[i]
        mx = _row_max(row)
        _exp_shifted(row, mx, out)
        sumexp, sumshift = _row_sums(row, mx, out)
        lse = math.log(sumexp)
        t = target[i]
        nll = lse - (row[t] - mx)
        # -sum_j log p_j / C = lse - sumshift / C
        losses[i] = on * nll + smoothing * (lse - sumshift / c)
        scale = grad_scale / sumexp
        shift = grad_scale * off
        for j in range(c):
            out[j] = out[j] * scale - shift
        out[t] = out[t] - grad_scale * on


def softmax_cross_entropy(logits, target, label_smoothing=0.0, grad_scale=1.0):
    """Per-sample cross-entropy and its gradient in one pass per row.

    ``logits`` (N, C) float32/float64, ``target`` (N,) int -> ``(losses (N,),
    dlogits (N, C))`` in the dtype of ``logits``. Nothing is validated.
    """
    logits = np.ascontiguousarray(logits)
    n = logits.shape[0]
    losses = np.empty(n, dtype=logits.dtype)
    dlogits = np.empty_like(logits)
    _softmax_xent_rows(logits, target, float(label_smoothing), float(grad_scale), losses, dlogits)
    return losses, dlogits
