"""A whole training epoch of a dense network in one Numba call (CPU).

The network is a chain of dense layers ``a_l = act_l(a_{l-1} @ W_l.T + b_l)``; the loss
is softmax cross-entropy (class indices) or mean squared error; the optimizer is one of
the rules in :mod:`update_rules`. All parameters live in one flat buffer ``P`` (and the
optimizer state in ``S1``..``S3``, laid out like ``P``) so every step runs with no
Python in between.

Per step:
- forward: BLAS ``a_prev @ W.T`` into a workspace, then the fused bias + activation
  epilogue (:func:`dense._forward_epilogue`);
- loss: one pass per row computing the loss, its gradient and the accuracy count;
- backward, last layer first: fused activation-derivative + bias-gradient pass
  (:func:`dense._backward_epilogue`), ``da_prev = dz @ W`` by BLAS with the old weights,
  then the weight update. For small batches (``nb <= outer_max``) the weight gradient
  is never materialised: each ``dW[i, j] = sum_b dz[b, i] a[b, j]`` is formed and applied
  in the same pass that updates ``W``, ``S1``..``S3`` (one sweep over the weights); for
  larger batches ``dW = dz.T @ a`` goes through BLAS and one sweep updates the layer.

Layer table ``layers`` (L, 5) int64: ``n_in, n_out, w_param, b_param (-1: none), act``.
Parameter table ``params`` (K, 2) int64: ``offset, size`` into ``P``.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from gpunet.kernels.cpu.dense import GELU, LINEAR, _backward_epilogue, _forward_epilogue, _like
from gpunet.kernels.cpu.update_rules import (
    ADAGRAD,
    ADAM,
    RMSPROP,
    SGD,
    apply_rule,
    coefficients,
    flush,
    uses_slots_2_3,
)

CROSS_ENTROPY, MSE = 0, 1
LOSS_CODES = {"cross_entropy": CROSS_ENTROPY, "mse": MSE}


# ------------------------------------------------------------------ updates
@njit(inline="always", error_model="numpy")
def _store_state(kind, S1, S2, S3, k, s1, s2, s3, do_flush, tiny):
    if do_flush:
        S1[k] = flush(s1, tiny)
        if uses_slots_2_3(kind):
            S2[k] = flush(s2, tiny)
            S3[k] = flush(s3, tiny)
    else:
        S1[k] = s1
        if uses_slots_2_3(kind):
            S2[k] = s2
            S3[k] = s3


@njit(inline="always", error_model="numpy")
def _typed_coefficients(kind, h, step, first, like):
    """:func:`coefficients` cast to the scalar type of ``like`` (the parameter dtype)."""
    c = coefficients(kind, h, step, first)
    return (_like(c[0], like), _like(c[1], like), _like(c[2], like), _like(c[3], like),
            _like(c[4], like), _like(c[5], like), _like(c[6], like), _like(c[7], like),
            _like(c[8], like), _like(c[9], like))


@njit(inline="always", error_model="numpy")
def _update_span(kind, p_, g_, s1_, s2_, s3_, c, do_flush, tiny):
    """Apply the rule to every element of the equally long 1-D views ``p_``, ``g_``,
    ``s1_``..``s3_`` with typed coefficients ``c``. The loop index comes from
    ``range(n)`` (provably >= 0: no wraparound checks), so the loop vectorizes."""
    c0, c1, c2, c3, c4, c5, c6, c7, c8, c9 = c
    for k in range(p_.shape[0]):
        p, s1, s2, s3 = apply_rule(kind, p_[k], g_[k], s1_[k], s2_[k], s3_[k],
                                   c0, c1, c2, c3, c4, c5, c6, c7, c8, c9)
        p_[k] = p
        _store_state(kind, s1_, s2_, s3_, k, s1, s2, s3, do_flush, tiny)


@njit(inline="always", error_model="numpy")
def _update_flat(kind, P, G, S1, S2, S3, off, size, h, step, first, do_flush, tiny):
    """Update ``P[off:off+size]`` from the gradient ``G[off:off+size]``."""
    c = _typed_coefficients(kind, h, step, first, P[0])
    end = off + size
    _update_span(kind, P[off:end], G[off:end], S1[off:end], S2[off:end], S3[off:end], c,
                 do_flush, _like(tiny, P[0]))


@njit(inline="always", error_model="numpy")
def _update_outer(kind, P, S1, S2, S3, off, dz, a, nb, n_out, n_in, h, step, first,
                  do_flush, tiny):
    """Update the weight block ``P[off:off + n_out*n_in]`` (row-major (n_out, n_in)) with
    ``dW = dz[:nb].T @ a[:nb]``, one row at a time: the row's gradient is formed in a
    scratch vector that stays in L1 cache and is applied at once, so ``dW`` never goes
    to memory."""
    c = _typed_coefficients(kind, h, step, first, P[0])
    tiny = _like(tiny, P[0])
    grow = np.empty(n_in, P.dtype)
    for i in range(n_out):
        d0 = dz[0, i]
        for j in range(n_in):
            grow[j] = d0 * a[0, j]
        for b in range(1, nb):
            db = dz[b, i]
            for j in range(n_in):
                grow[j] += db * a[b, j]
        lo, hi = off + i * n_in, off + (i + 1) * n_in
        _update_span(kind, P[lo:hi], grow, S1[lo:hi], S2[lo:hi], S3[lo:hi], c, do_flush, tiny)


@njit(cache=True, error_model="numpy")
def _update_param(kind, P, G, S1, S2, S3, off, size, h, step, first, do_flush, tiny):
    if kind == SGD:
        _update_flat(SGD, P, G, S1, S2, S3, off, size, h, step, first, do_flush, tiny)
    elif kind == ADAM:
        _update_flat(ADAM, P, G, S1, S2, S3, off, size, h, step, first, do_flush, tiny)
    elif kind == RMSPROP:
        _update_flat(RMSPROP, P, G, S1, S2, S3, off, size, h, step, first, do_flush, tiny)
    else:
        _update_flat(ADAGRAD, P, G, S1, S2, S3, off, size, h, step, first, do_flush, tiny)


@njit(cache=True, error_model="numpy")
def _update_weights_outer(kind, P, S1, S2, S3, off, dz, a, nb, n_out, n_in, h, step, first,
                          do_flush, tiny):
    if kind == SGD:
        _update_outer(SGD, P, S1, S2, S3, off, dz, a, nb, n_out, n_in, h, step, first,
                      do_flush, tiny)
    elif kind == ADAM:
        _update_outer(ADAM, P, S1, S2, S3, off, dz, a, nb, n_out, n_in, h, step, first,
                      do_flush, tiny)
    elif kind == RMSPROP:
        _update_outer(RMSPROP, P, S1, S2, S3, off, dz, a, nb, n_out, n_in, h, step, first,
                      do_flush, tiny)
    else:
        _update_outer(ADAGRAD, P, S1, S2, S3, off, dz, a, nb, n_out, n_in, h, step, first,
                      do_flush, tiny)


# ------------------------------------------------------------------- losses
@njit(cache=True, error_model="numpy")
def _cross_entropy_rows(logits, target, dlogits, smoothing, scale):
    """Rows of ``logits`` (nb, C): returns (sum of losses, correct count) and writes
    ``dlogits = scale * (softmax - q)``, q the (smoothed) one-hot target."""
    nb, c = logits.shape
    total = 0.0
    correct = 0
    for r in range(nb):
        m = logits[r, 0]
        arg = 0
        for k in range(1, c):
            if logits[r, k] > m:
                m = logits[r, k]
                arg = k
        s = 0.0
        for k in range(c):
            s += math.exp(logits[r, k] - m)
        lse = m + math.log(s)
        t = target[r]
        if arg == t:
            correct += 1
        loss = lse - logits[r, t]
        if smoothing != 0.0:
            mean_neg_logp = 0.0
            for k in range(c):
                mean_neg_logp += lse - logits[r, k]
            loss = (1.0 - smoothing) * loss + smoothing * mean_neg_logp / c
        total += loss
        off = smoothing / c
        for k in range(c):
            prob = math.exp(logits[r, k] - lse)
            q = off + (1.0 - smoothing if k == t else 0.0)
            dlogits[r, k] = scale * (prob - q)
    return total, correct


@njit(cache=True, error_model="numpy")
def _mse_rows(out, target, dout, scale):
    """Sum of squared errors of ``out`` vs ``target`` (nb, K); ``dout = 2*scale*(out-t)``."""
    total = 0.0
    nb, k = out.shape
    for r in range(nb):
        for j in range(k):
            d = out[r, j] - target[r, j]
            total += d * d
            dout[r, j] = 2.0 * scale * d
    return total


# -------------------------------------------------------------------- epoch
@njit(cache=True, error_model="numpy")
def train_epoch(X, labels, targets, batch_size, layers, params, P, G, S1, S2, S3, H, steps, firsts,
                opt_kind, loss_kind, smoothing, mean_reduction, outer_max, do_flush):
    """Train over ``X`` (N, F) in order, in batches of ``batch_size``; the targets are
    ``labels`` (N,) int64 for cross-entropy or ``targets`` (N, K) float for MSE (the
    other one is ignored and may be empty).

    ``H`` (K, 8) float64 hyperparameter rows, ``steps`` (K,) int64 optimizer step counts
    (incremented here), ``firsts`` (K,) int64 1 while a momentum buffer does not exist.
    Returns ``(loss_sum, correct)``: batch-mean losses times batch sizes, summed, and the
    number of correct arg-max predictions (cross-entropy only).
    """
    n = X.shape[0]
    n_layers = layers.shape[0]
    dtype_tiny = np.finfo(P.dtype).tiny
    zero_bias = np.zeros(1, P.dtype)
    acts = []
    saved = []
    grads = []
    deltas = []
    zero_biases = []  # forward bias of layers without one
    db_scratch = []  # bias-gradient output of layers without a bias
    for l in range(n_layers):
        width = layers[l, 1]
        a = np.empty((batch_size, width), P.dtype)
        acts.append(a)
        saved.append(np.empty((batch_size, width), P.dtype) if layers[l, 4] == GELU else a)
        grads.append(np.empty((batch_size, width), P.dtype))
        deltas.append(np.empty((batch_size, width), P.dtype))
        if layers[l, 3] < 0:
            zero_biases.append(np.zeros(width, P.dtype))
            db_scratch.append(np.zeros(width, P.dtype))
        else:
            zero_biases.append(zero_bias)
            db_scratch.append(zero_bias)
    loss_sum = 0.0
    correct = 0
    for start in range(0, n, batch_size):
        nb = min(batch_size, n - start)
        xb = X[start:start + nb]
        # ---------------------------------------------------------- forward
        a_prev = xb
        for l in range(n_layers):
            n_in, n_out, wp, bp, act = layers[l, 0], layers[l, 1], layers[l, 2], layers[l, 3], layers[l, 4]
            W = P[params[wp, 0]:params[wp, 0] + n_out * n_in].reshape((n_out, n_in))
            z = acts[l][:nb]
            np.dot(a_prev, W.T, z)
            if bp >= 0:
                b = P[params[bp, 0]:params[bp, 0] + n_out]
            else:
                b = zero_biases[l]
            _forward_epilogue(z, b, saved[l][:nb], act)
            a_prev = z
        # ------------------------------------------------------------- loss
        out = acts[n_layers - 1][:nb]
        dout = grads[n_layers - 1][:nb]
        scale = 1.0
        if loss_kind == CROSS_ENTROPY:
            if mean_reduction:
                scale = 1.0 / nb
            total, right = _cross_entropy_rows(out, labels[start:start + nb], dout, smoothing, scale)
            correct += right
            loss_sum += total if mean_reduction else total * nb
        else:
            k = out.shape[1]
            if mean_reduction:
                scale = 1.0 / (nb * k)
            total = _mse_rows(out, targets[start:start + nb], dout, scale)
            loss_sum += total / k if mean_reduction else total * nb
        # --------------------------------------------------------- backward
        for l in range(n_layers - 1, -1, -1):
            n_in, n_out, wp, bp, act = layers[l, 0], layers[l, 1], layers[l, 2], layers[l, 3], layers[l, 4]
            w_off = params[wp, 0]
            W = P[w_off:w_off + n_out * n_in].reshape((n_out, n_in))
            dy = grads[l][:nb]
            dz = deltas[l][:nb]
            b_off = params[bp, 0] if bp >= 0 else 0
            db = G[b_off:b_off + n_out] if bp >= 0 else db_scratch[l]
            _backward_epilogue(dy, saved[l][:nb], dz, db, act)
            if act == LINEAR:
                dz = dy
            a_in = xb if l == 0 else acts[l - 1][:nb]
            if l > 0:
                np.dot(dz, W, grads[l - 1][:nb])
            steps[wp] += 1
            if nb <= outer_max:
                _update_weights_outer(opt_kind, P, S1, S2, S3, w_off, dz, a_in, nb, n_out, n_in,
                                      H[wp], steps[wp], firsts[wp] != 0, do_flush, dtype_tiny)
            else:
                Gw = G[w_off:w_off + n_out * n_in].reshape((n_out, n_in))
                np.dot(dz.T, a_in, Gw)
                _update_param(opt_kind, P, G, S1, S2, S3, w_off, n_out * n_in, H[wp],
                              steps[wp], firsts[wp] != 0, do_flush, dtype_tiny)
            firsts[wp] = 0
            if bp >= 0:
                steps[bp] += 1
                _update_param(opt_kind, P, G, S1, S2, S3, b_off, n_out, H[bp], steps[bp],
                              firsts[bp] != 0, do_flush, dtype_tiny)
                firsts[bp] = 0
    return loss_sum, correct
