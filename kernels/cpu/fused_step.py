"""The pieces of a fused training step (CPU), shared by the one-thread epoch
(:mod:`fused_mlp`) and its multi-thread steps (:mod:`data_parallel`, :mod:`model_parallel`).

- weight updates by batch size: one row (``dW`` formed inside the sweep, row by row),
  up to ``BLOCKED_DW_MAX_ROWS`` rows (BLAS blocks of ``dW``, each applied in cache), SGD
  with plain momentum on 17 to ``FOLDED_MOMENTUM_MAX_ROWS`` rows (``dW`` added by BLAS
  straight into the momentum buffer, :func:`update_weights_folded`), else one BLAS
  product and one sweep; a DropConnect weight: its masked copy (:func:`mask_weight`)
  in the products and ``dW`` through the mask (:func:`update_weights_masked`);
- the losses: softmax cross-entropy (class indices) and mean squared error, each writing
  its gradient as the autograd path does;
- the workspace: per-layer activations, saved pre-activations and output gradients
  (:func:`carve_layers`), the gathered batch, forward plus loss (:func:`forward_and_loss`).

Layer table ``layers`` (L, 7) int64: ``n_in, n_out, w_param, b_param (-1: none), act,
dropout, dropconnect`` (1: a Dropout follows the layer; 1: the layer is a
DropConnectDense, whose step's masked weight is in :class:`~records.Masks`).
Parameter table ``params`` (K, 2) int64: ``offset, size`` into the flat buffer ``P``.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from gpunet.kernels.cpu.blas import (
    BLOCKED_DW_MAX_ROWS,
    FOLDED_MOMENTUM_MAX_ROWS,
    WEIGHT_GRAD_BLOCK_ROWS,
    accumulate_dx,
    gemm_view,
    matmul_nt,
    weight_grad,
    weight_grad_block,
)
from gpunet.kernels.cpu.dense import (
    GELU,
    _forward_epilogue,
    _like,
)
from gpunet.kernels.cpu.dropout import dropout_block
from gpunet.kernels.cpu.gather import gather_rows
from gpunet.kernels.cpu.softmax_xent import _softmax_xent_rows
from gpunet.kernels.cpu.update_rules import (
    ADAGRAD,
    ADAM,
    ADAM_PLAIN,
    RMSPROP,
    SGD,
    SGD_MOMENTUM,
    coefficients,
    decayed_momentum,
    momentum_weight_step,
    rule_of,
    typed_coefficients,
    update_array,
    update_span,
)

CROSS_ENTROPY, MSE = 0, 1
LOSS_CODES = {"cross_entropy": CROSS_ENTROPY, "mse": MSE}


# ------------------------------------------------------------------ updates
@njit(inline="always", error_model="numpy")
def _update_rowwise(rule, P, S1, S2, S3, off, dz, a, n_out, n_in, c, do_flush, tiny, dx, with_dx):
    """One-row batch: update the weight block ``P[off:off + n_out*n_in]`` (row-major
    (n_out, n_in)) one row at a time with ``dW[i, :] = dz[0, i] * a[0, :]``, formed inside
    the update loop, so ``dW`` never goes to memory. With ``with_dx``, also
    ``dx = dz @ W`` (1, n_in) from each row before its update, as
    :func:`blas.matmul_nn` sums it: each weight is read once per step."""
    for i in range(n_out):
        lo, hi = off + i * n_in, off + (i + 1) * n_in
        if with_dx:
            accumulate_dx(dz, P[lo:hi], i, dx)
        update_span(
            rule, P[lo:hi], a[0], dz[0, i], S1[lo:hi], S2[lo:hi], S3[lo:hi], c, do_flush, tiny
        )


@njit(cache=True, error_model="numpy")
def update_weights_rowwise(
    kind, P, S1, S2, S3, off, dz, a, n_out, n_in, h, step, first, do_flush, tiny, dx, with_dx
):
    c = typed_coefficients(kind, h, step, first, P[0])
    tiny = _like(tiny, P[0])
    # one branch per rule, each a row loop inlining that rule's sweep alone (branching
    # inside the row loop instead was 10-30% slower)
    rule = rule_of(kind, c)
    if rule == SGD_MOMENTUM:
        _update_rowwise(
            SGD_MOMENTUM, P, S1, S2, S3, off, dz, a, n_out, n_in, c, do_flush, tiny, dx, with_dx
        )
    elif rule == SGD:
        _update_rowwise(SGD, P, S1, S2, S3, off, dz, a, n_out, n_in, c, do_flush, tiny, dx, with_dx)
    elif rule == ADAM_PLAIN:
        _update_rowwise(
            ADAM_PLAIN, P, S1, S2, S3, off, dz, a, n_out, n_in, c, do_flush, tiny, dx, with_dx
        )
    elif rule == ADAM:
        _update_rowwise(
            ADAM, P, S1, S2, S3, off, dz, a, n_out, n_in, c, do_flush, tiny, dx, with_dx
        )
    elif rule == RMSPROP:
        _update_rowwise(
            RMSPROP, P, S1, S2, S3, off, dz, a, n_out, n_in, c, do_flush, tiny, dx, with_dx
        )
    else:
        _update_rowwise(
            ADAGRAD, P, S1, S2, S3, off, dz, a, n_out, n_in, c, do_flush, tiny, dx, with_dx
        )


@njit(cache=True, nogil=True, error_model="numpy")
def update_parameter_span(kind, P, G, S1, S2, S3, H, steps, firsts, k, lo, hi, do_flush):
    """The optimizer step of parameter ``k`` (its hyperparameter row ``H[k]``, step count
    and first-step flag) over the flat buffers' elements ``lo:hi`` from ``G[lo:hi]``."""
    update_array(
        kind,
        P[lo:hi],
        G[lo:hi],
        S1[lo:hi],
        S2[lo:hi],
        S3[lo:hi],
        H[k],
        steps[k],
        firsts[k] != 0,
        do_flush,
    )


@njit(cache=True, error_model="numpy")
def update_weights_blas(kind, P, G, S1, S2, S3, off, dz, a, dz_t, h, step, first, do_flush):
    """Update the weight block ``P[off:off + n_out*n_in]`` with ``dW = dz.T @ a`` by BLAS
    (dz (nb, n_out), a (nb, n_in), nb > 1), written to ``G`` at the same offset. Up to
    ``BLOCKED_DW_MAX_ROWS`` rows, block by block (``dz_t``: scratch of at least
    n_out * nb elements for ``dz.T``): each block of ``dW`` is applied while in cache."""
    nb, n_out = dz.shape
    n_in = a.shape[1]
    Gw = G[off : off + n_out * n_in].reshape((n_out, n_in))
    if nb <= BLOCKED_DW_MAX_ROWS:
        dzT = dz_t[: n_out * nb].reshape((n_out, nb))
        for r in range(nb):
            for i in range(n_out):
                dzT[i, r] = dz[r, i]
        for r0 in range(0, n_out, WEIGHT_GRAD_BLOCK_ROWS):
            r1 = min(n_out, r0 + WEIGHT_GRAD_BLOCK_ROWS)
            weight_grad_block(dzT, a, Gw, r0, r1)
            lo, hi = off + r0 * n_in, off + r1 * n_in
            update_array(
                kind, P[lo:hi], G[lo:hi], S1[lo:hi], S2[lo:hi], S3[lo:hi], h, step, first, do_flush
            )
    else:
        weight_grad(dz, a, Gw)
        lo, hi = off, off + n_out * n_in
        update_array(
            kind, P[lo:hi], G[lo:hi], S1[lo:hi], S2[lo:hi], S3[lo:hi], h, step, first, do_flush
        )


@njit(cache=True, nogil=True, error_model="numpy")
def mask_weight(P, off, Wm, key, threshold, scale):
    """DropConnect: ``Wm`` (out, in) = the weight ``P[off:off + out*in]`` times its
    step's mask ``keep / (1 - p)`` (stream ``key``, element ``o * in + i``)."""
    n_out, n_in = Wm.shape
    Wm[...] = P[off : off + n_out * n_in].reshape((n_out, n_in))
    dropout_block(Wm, key, threshold, scale, 0, 0, n_in)


@njit(cache=True, nogil=True, error_model="numpy")
def is_dropconnect(masks, l):
    """Whether layer ``l`` is a DropConnect layer (:class:`~records.Masks` ``offsets``)."""
    return masks.offsets.shape[0] != 0 and masks.offsets[l] >= 0


@njit(cache=True, nogil=True, error_model="numpy")
def dropconnect_weight(masks, l, n_out, n_in):
    """DropConnect layer ``l``'s masked weight (out, in) for this step, in
    ``masks.weights``."""
    off = masks.offsets[l]
    return masks.weights[off : off + n_out * n_in].reshape((n_out, n_in))


@njit(cache=True, nogil=True, error_model="numpy")
def mask_weight_span(span, masks, column, k0, size):
    """DropConnect, in place: ``span`` (n,) holds elements ``k0 .. k0 + n`` of a flat
    (out, in) weight of ``size`` elements, or of its gradient; each is multiplied by
    its element of the step's mask in column ``column`` of ``masks`` (``keep / (1 -
    p)``, the very elements :func:`mask_weight` draws), so threads can mask their
    shares of one weight."""
    dropout_block(
        span.reshape((1, span.shape[0])),
        masks.keys[column],
        masks.thresholds[column],
        masks.scales[column],
        0,
        k0,
        size,
    )


@njit(cache=True, nogil=True, error_model="numpy")
def update_weights_masked(
    kind, P, G, S1, S2, S3, off, dz, a, key, threshold, scale, h, step, first, do_flush
):
    """DropConnect: update the weight block ``P[off:off + n_out*n_in]`` with
    ``dW = (dz.T @ a) * keep / (1 - p)`` (the gradient reaching the weight through its
    mask, as autograd's product with the mask gives it), written to ``G``; dz (nb,
    n_out), a (nb, n_in), any nb."""
    n_out = dz.shape[1]
    n_in = a.shape[1]
    Gw = G[off : off + n_out * n_in].reshape((n_out, n_in))
    weight_grad(dz, a, Gw)
    dropout_block(Gw, key, threshold, scale, 0, 0, n_in)
    lo, hi = off, off + n_out * n_in
    update_array(
        kind, P[lo:hi], G[lo:hi], S1[lo:hi], S2[lo:hi], S3[lo:hi], h, step, first, do_flush
    )


@njit(cache=True, error_model="numpy")
def folds_momentum(kind, h, step, first, nb, W, do_flush):
    """Whether a step of ``nb`` rows on the weight ``W`` (out, in) runs
    :func:`update_weights_folded`: SGD whose rule is plain momentum
    (:data:`SGD_MOMENTUM`), ``BLOCKED_DW_MAX_ROWS`` < ``nb`` <=
    ``FOLDED_MOMENTUM_MAX_ROWS``, no software denormal flush (the momentum buffer is
    written by BLAS), and ``W`` at least 2 x 2 (for a single row or column Numba's
    ``np.dot`` calls a matrix-vector BLAS, which sums in another order)."""
    if kind != SGD or do_flush or not BLOCKED_DW_MAX_ROWS < nb <= FOLDED_MOMENTUM_MAX_ROWS:
        return False
    if W.shape[0] < 2 or W.shape[1] < 2:
        return False
    return rule_of(SGD, coefficients(SGD, h, step, first)) == SGD_MOMENTUM


@njit(cache=True, nogil=True, error_model="numpy")
def update_weights_folded(P, S1, off, dz, a, h, step, first, scaled, scale_after):
    """SGD with plain momentum on the weight block ``P[off:off + n_out*n_in]`` with
    ``dW = dz.T @ a`` accumulated by BLAS straight into the momentum buffer, so no
    gradient array is written: ``buf = momentum * buf + dW; p -= lr * buf``, the rule's
    own operations in its order. ``scaled``: ``S1`` already holds ``momentum * buf``
    (this epoch's previous step left it so), else it is scaled here first.
    ``scale_after``: leave ``momentum * buf`` for the next step, which is also folded,
    in the same sweep as the weight update (the epoch's last step leaves ``buf`` as
    the optimizer stores it). ``dz`` may be a block of columns (then ``P`` / ``S1`` from
    ``off`` are the matching rows of the weight)."""
    n_out, n_in = dz.shape[1], a.shape[1]
    p = P[off : off + n_out * n_in]
    buf = S1[off : off + n_out * n_in]
    if not scaled:
        scale_momentum(buf, h, step, first)
    gemm_view(dz.T, a, buf.reshape((n_out, n_in)), 1.0)
    folded_sweep(p, buf, h, step, first, scale_after)


@njit(inline="always", error_model="numpy")
def scale_momentum(buf, h, step, first):
    """``buf *= momentum`` as the rule decays it (0 on the first step: ``buf = dW``)."""
    momentum = typed_coefficients(SGD, h, step, first, buf[0] if buf.shape[0] else 0.0)[2]
    for k in range(buf.shape[0]):
        buf[k] = decayed_momentum(buf[k], momentum)


@njit(cache=True, nogil=True, error_model="numpy")
def folded_sweep(p, buf, h, step, first, scale_after):
    """The weight step ``p -= lr * buf`` of a folded update (``buf`` already holds
    ``momentum * buf + dW``), leaving ``momentum * buf`` when ``scale_after``."""
    if p.shape[0] == 0:
        return
    lr = typed_coefficients(SGD, h, step, first, p[0])[6]
    if scale_after:
        momentum_next = typed_coefficients(SGD, h, step + 1, False, p[0])[2]
        for k in range(p.shape[0]):
            b = buf[k]
            p[k] = momentum_weight_step(p[k], b, lr)
            buf[k] = decayed_momentum(b, momentum_next)
    else:
        for k in range(p.shape[0]):
            p[k] = momentum_weight_step(p[k], buf[k], lr)


# ------------------------------------------------------------------- losses
@njit(cache=True, error_model="numpy")
def _correct_count(logits, target):
    """Rows whose arg-max (first maximum, like ``np.argmax``) equals the target; a row
    holding NaN or an infinity is never correct."""
    correct = 0
    for r in range(logits.shape[0]):
        arg = 0
        finite = np.isfinite(logits[r, 0])
        for k in range(1, logits.shape[1]):
            finite = finite and np.isfinite(logits[r, k])
            if logits[r, k] > logits[r, arg]:
                arg = k
        correct += finite and arg == target[r]
    return correct


@njit(inline="always", error_model="numpy")
def _scale_rows(grad, s):
    """``grad *= s`` (s already in grad's dtype): the mean reduction's ``1 / n``."""
    for r in range(grad.shape[0]):
        for k in range(grad.shape[1]):
            grad[r, k] = grad[r, k] * s


@njit(cache=True, error_model="numpy")
def _cross_entropy(out, target, smoothing, mean, batch_rows, losses, dout):
    """Softmax cross-entropy of ``out`` (rows, C), rows of a batch of ``batch_rows``;
    writes ``dout`` as the autograd path does (per-row gradient, then times
    ``1 / batch_rows`` rounded to the dtype for the mean). Returns the sum of the
    per-row losses."""
    _softmax_xent_rows(out, target, smoothing, 1.0, losses, dout)
    if mean:
        _scale_rows(dout, _like(1.0 / batch_rows, dout[0, 0]))
    total = 0.0
    for r in range(out.shape[0]):
        total += losses[r]
    return total


@njit(cache=True, error_model="numpy")
def _mse(out, target, mean, batch_rows, dout):
    """Squared error of ``out`` vs ``target`` (rows, K), rows of a batch of
    ``batch_rows``; ``dout = s*d + s*d`` with ``s = 1/(batch_rows*K)`` (mean) or 1
    (sum), the autograd path's order. Returns the sum."""
    total = 0.0
    s = _like(1.0 / (batch_rows * out.shape[1]) if mean else 1.0, dout[0, 0])
    for r in range(out.shape[0]):
        for j in range(out.shape[1]):
            d = out[r, j] - target[r, j]
            total += d * d
            half = s * d
            dout[r, j] = half + half
    return total


# ---------------------------------------------------------------- workspace
@njit(cache=True, nogil=True, error_model="numpy")
def gather_targets(labels, targets, rows, label_rows, target_rows):
    """The labels (cross-entropy) or target rows (MSE) of the data set's ``rows``."""
    if labels.shape[0]:
        for r in range(rows.shape[0]):
            label_rows[r] = labels[rows[r]]
    if targets.shape[0]:
        gather_rows(targets, rows, target_rows)


@njit(cache=True, error_model="numpy")
def gather_batch(X, labels, targets, rows, xb, label_rows, target_rows):
    """``xb[r] = X[rows[r]]`` and the matching labels (cross-entropy) or target rows
    (MSE; whichever of ``labels`` / ``targets`` is not empty)."""
    gather_rows(X, rows, xb)
    if labels.shape[0]:
        for r in range(rows.shape[0]):
            label_rows[r] = labels[rows[r]]
    if targets.shape[0]:
        gather_rows(targets, rows, target_rows)


@njit(cache=True, nogil=True, error_model="numpy")
def carve_layers(work, layers, rows):
    """Per-layer activations, saved pre-activations (GELU) or activations before dropout
    (layers a Dropout follows; else the activations themselves) and output gradients,
    each (rows, width), carved out of ``work`` one after another;
    returns ``(acts, saved, grads, end)``, ``end`` the first element left over."""
    acts = []
    saved = []
    grads = []
    off = 0
    for l in range(layers.shape[0]):
        size = rows * layers[l, 1]
        shape = (rows, layers[l, 1])
        acts.append(work[off : off + size].reshape(shape))
        off += size
        if layers[l, 4] == GELU or layers[l, 5] != 0:  # dropout changes acts in place
            saved.append(work[off : off + size].reshape(shape))
            off += size
        else:
            saved.append(acts[l])
        grads.append(work[off : off + size].reshape(shape))
        off += size
    return acts, saved, grads, off


@njit(cache=True, nogil=True, error_model="numpy")
def forward_and_loss(
    xb,
    y_b,
    t_b,
    batch_rows,
    layers,
    params,
    P,
    acts,
    saved,
    grads,
    zero_bias,
    loss_kind,
    smoothing,
    mean_reduction,
    loss_rows,
    step_keys,
    drop_thresholds,
    drop_scales,
    masked_w,
    masked_off,
    first_row,
):
    """Forward of the rows ``xb`` (rows, F) into ``acts`` / ``saved`` (their first rows),
    then the loss against ``y_b`` (labels) or ``t_b`` (targets), part of a batch of
    ``batch_rows``, with its gradient in the last layer's ``grads``. ``zero_bias``:
    zeros at least as wide as any layer (the bias of layers without one); ``loss_rows``
    at least (rows,). Dropout: ``step_keys`` (L,) uint64 this step's mask key per layer
    (empty: no dropout), ``drop_thresholds`` (L,) uint64 (0: none after that layer),
    ``drop_scales`` (L,) ``1 / (1 - p)``, ``first_row`` the place of ``xb``'s first row
    in the batch (a data-parallel half's rows draw their rows of the batch's mask); the
    activations before the mask go to ``saved``. DropConnect: ``masked_off`` (L,) int64, where
    ``>= 0`` layer ``l`` multiplies by the masked weight ``masked_w[masked_off[l]:]``
    (out, in) (:func:`mask_weight`) instead of its own; empty: no DropConnect.
    Returns ``(loss sum, correct)``."""
    rows = xb.shape[0]
    n_layers = layers.shape[0]
    a_prev = xb
    for l in range(n_layers):
        n_in, n_out, wp, bp, act = (
            layers[l, 0],
            layers[l, 1],
            layers[l, 2],
            layers[l, 3],
            layers[l, 4],
        )
        if masked_off.shape[0] != 0 and masked_off[l] >= 0:
            W = masked_w[masked_off[l] : masked_off[l] + n_out * n_in].reshape((n_out, n_in))
        else:
            W = P[params[wp, 0] : params[wp, 0] + n_out * n_in].reshape((n_out, n_in))
        z = acts[l][:rows]
        matmul_nt(a_prev, W, z)
        if bp >= 0:
            b = P[params[bp, 0] : params[bp, 0] + n_out]
        else:
            b = zero_bias[:n_out]
        _forward_epilogue(z, b, saved[l][:rows], act)
        if layers[l, 5] != 0 and act != GELU:  # a separate buffer (carve_layers): the
            saved[l][:rows, :] = z  # derivative reads the activations before the mask
        if step_keys.shape[0] != 0 and drop_thresholds[l] != 0:
            dropout_block(z, step_keys[l], drop_thresholds[l], drop_scales[l], first_row, 0, n_out)
        a_prev = z
    return loss_and_gradient(
        acts[n_layers - 1][:rows],
        grads[n_layers - 1][:rows],
        y_b,
        t_b,
        batch_rows,
        loss_kind,
        smoothing,
        mean_reduction,
        loss_rows,
    )


@njit(cache=True, nogil=True, error_model="numpy")
def loss_and_gradient(
    out, dout, y_b, t_b, batch_rows, loss_kind, smoothing, mean_reduction, loss_rows
):
    """The loss of the network's output ``out`` (rows, C) against ``y_b`` (labels) or
    ``t_b`` (targets), rows of a batch of ``batch_rows``, its gradient into ``dout``;
    returns ``(loss sum, correct)``."""
    rows = out.shape[0]
    if loss_kind == CROSS_ENTROPY:
        total = _cross_entropy(
            out, y_b, smoothing, mean_reduction, batch_rows, loss_rows[:rows], dout
        )
        return total, _correct_count(out, y_b)
    return _mse(out, t_b, mean_reduction, batch_rows, dout), 0


@njit(cache=True, nogil=True, error_model="numpy")
def batch_loss(loss_kind, total, nb, n_outputs, mean_reduction):
    """A batch's term of the epoch's loss sum from the sum of its per-row (cross-entropy)
    or per-element (MSE) losses: the batch loss times ``nb``."""
    if not mean_reduction:
        return total * nb
    return total if loss_kind == CROSS_ENTROPY else total / n_outputs
