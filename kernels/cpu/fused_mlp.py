"""A whole training epoch of a dense network in one Numba call (CPU).

The network is a chain of dense layers ``a_l = act_l(a_{l-1} @ W_l.T + b_l)``; the loss
is softmax cross-entropy (class indices) or mean squared error; the optimizer is one of
the rules in :mod:`update_rules`. All parameters live in one flat buffer ``P`` (and the
optimizer state in ``S1``..``S3``, laid out like ``P``) so every step runs with no
Python in between.

Per step:
- input: the batch's rows of the epoch's permutation, gathered into the workspace
  (:func:`gather.gather_rows`, which prefetches the rows ahead; or a
  slice of ``X`` when training in order);
- forward: ``a_prev @ W.T`` into a workspace (:func:`blas.matmul_nt`: BLAS, or the
  skinny loops for 3-16 rows), then the fused bias + activation epilogue
  (:func:`dense._forward_epilogue`);
- loss: one pass per row computing the loss, its gradient and the accuracy count;
- backward, last layer first: fused activation-derivative + bias-gradient pass
  (:func:`dense._backward_epilogue`), ``da_prev = dz @ W`` with the old weights, then the
  weight update. One-row batches: each ``dW[i, :] = dz[0, i] a[0, :]`` is formed inside
  the sweep that updates ``W``, ``S1``..``S3`` row by row, and the same sweep sums
  ``da_prev`` from each row before updating it, so ``W`` is read once and ``dW`` never
  goes to memory. Up to ``BLOCKED_DW_MAX_ROWS`` rows: ``dW`` by BLAS in blocks of rows,
  each applied while in cache. Larger batches: ``da_prev`` and ``dW = dz.T @ a`` by
  BLAS, then one sweep updates the layer; but SGD with plain momentum on 17 to
  ``FOLDED_MOMENTUM_MAX_ROWS`` rows has BLAS add ``dW`` straight into the momentum
  buffer, which the previous step's sweep left scaled by the momentum
  (:func:`_update_weights_folded`), so no gradient array is written and read back.

Data-parallel steps (``DATA_PARALLEL_MIN_ROWS`` rows or more, when the caller runs a
:func:`data_parallel_worker` beside the epoch): the worker takes the second half of the
rows through gather, forward, loss and backward (:func:`_forward_backward`) while this
thread does the first, each into its own ``dW`` buffer and float64 bias sums; then each
thread sweeps half of every weight matrix from the two ``dW``s added
(:func:`_update_weights_part`). Each half's products run on one BLAS thread.

Layer table ``layers`` (L, 5) int64: ``n_in, n_out, w_param, b_param (-1: none), act``.
Parameter table ``params`` (K, 2) int64: ``offset, size`` into ``P``.
"""

from __future__ import annotations

import contextlib
import threading

import numpy as np
from numba import njit

from gpunet.kernels.cpu.blas import (
    BLOCKED_DW_MAX_ROWS,
    FOLDED_MOMENTUM_MAX_ROWS,
    WEIGHT_GRAD_BLOCK_ROWS,
    accumulate_dx,
    accumulate_weight_grad,
    data_parallel_split,
    matmul_nn,
    matmul_nt,
    one_blas_thread,
    weight_grad,
    weight_grad_block,
    weight_grad_piece,
)
from gpunet.kernels.cpu.denormals import flush_denormals, hardware_flush_active
from gpunet.kernels.cpu.dense import (
    GELU,
    _backward_epilogue,
    _backward_epilogue_sums,
    _forward_epilogue,
    _like,
)
from gpunet.kernels.cpu.gather import gather_rows
from gpunet.kernels.cpu.softmax_xent import _softmax_xent_rows
from gpunet.kernels.cpu.threads import atomic_store, wait_for, wait_for_change
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
def _update_weights_rowwise(
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


@njit(cache=True, error_model="numpy")
def _update_weights_blas(kind, P, G, S1, S2, S3, off, dz, a, dz_t, h, step, first, do_flush):
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


@njit(cache=True, error_model="numpy")
def folds_momentum(kind, h, step, first, nb, W, do_flush):
    """Whether a step of ``nb`` rows on the weight ``W`` (out, in) runs
    :func:`_update_weights_folded`: SGD whose rule is plain momentum
    (:data:`SGD_MOMENTUM`), ``BLOCKED_DW_MAX_ROWS`` < ``nb`` <=
    ``FOLDED_MOMENTUM_MAX_ROWS``, no software denormal flush (the momentum buffer is
    written by BLAS), and ``W`` at least 2 x 2 (for a single row or column Numba's
    ``np.dot`` calls a matrix-vector BLAS, which sums in another order)."""
    if kind != SGD or do_flush or not BLOCKED_DW_MAX_ROWS < nb <= FOLDED_MOMENTUM_MAX_ROWS:
        return False
    if W.shape[0] < 2 or W.shape[1] < 2:
        return False
    return rule_of(SGD, coefficients(SGD, h, step, first)) == SGD_MOMENTUM


@njit(cache=True, error_model="numpy")
def _update_weights_folded(P, S1, off, dz, a, h, step, first, scaled, scale_after):
    """SGD with plain momentum on the weight block ``P[off:off + n_out*n_in]`` with
    ``dW = dz.T @ a`` accumulated by BLAS straight into the momentum buffer, so no
    gradient array is written: ``buf = momentum * buf + dW; p -= lr * buf``, the rule's
    own operations in its order. ``scaled``: ``S1`` already holds ``momentum * buf``
    (this epoch's previous step left it so), else it is scaled here first.
    ``scale_after``: leave ``momentum * buf`` for the next step, which is also folded,
    in the same sweep as the weight update (the epoch's last step leaves ``buf`` as
    the optimizer stores it)."""
    n_out, n_in = dz.shape[1], a.shape[1]
    c = typed_coefficients(SGD, h, step, first, P[0])
    momentum, lr = c[2], c[6]  # momentum is 0 on the first step: buf = dW
    p = P[off : off + n_out * n_in]
    buf = S1[off : off + n_out * n_in]
    if not scaled:
        for k in range(buf.shape[0]):
            buf[k] = decayed_momentum(buf[k], momentum)
    accumulate_weight_grad(dz, a, buf.reshape((n_out, n_in)))
    if scale_after:
        momentum_next = typed_coefficients(SGD, h, step + 1, False, P[0])[2]
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
    """Rows whose arg-max (first maximum, like ``np.argmax``) equals the target."""
    correct = 0
    for r in range(logits.shape[0]):
        arg = 0
        for k in range(1, logits.shape[1]):
            if logits[r, k] > logits[r, arg]:
                arg = k
        correct += arg == target[r]
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


# -------------------------------------------------------------------- epoch
@njit(cache=True, error_model="numpy")
def _gather_batch(X, labels, targets, rows, xb, label_rows, target_rows):
    """``xb[r] = X[rows[r]]`` and the matching labels (cross-entropy) or target rows
    (MSE; whichever of ``labels`` / ``targets`` is not empty)."""
    gather_rows(X, rows, xb)
    if labels.shape[0]:
        for r in range(rows.shape[0]):
            label_rows[r] = labels[rows[r]]
    if targets.shape[0]:
        gather_rows(targets, rows, target_rows)


@njit(cache=True, nogil=True, error_model="numpy")
def _carve_layers(work, layers, rows):
    """Per-layer activations, saved pre-activations (GELU; else the activations) and
    output gradients, each (rows, width), carved out of ``work`` one after another;
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
        if layers[l, 4] == GELU:
            saved.append(work[off : off + size].reshape(shape))
            off += size
        else:
            saved.append(acts[l])
        grads.append(work[off : off + size].reshape(shape))
        off += size
    return acts, saved, grads, off


@njit(cache=True, nogil=True, error_model="numpy")
def _forward_loss(
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
):
    """Forward of the rows ``xb`` (rows, F) into ``acts`` / ``saved`` (their first rows),
    then the loss against ``y_b`` (labels) or ``t_b`` (targets), part of a batch of
    ``batch_rows``, with its gradient in the last layer's ``grads``. ``zero_bias``:
    zeros at least as wide as any layer (the bias of layers without one); ``loss_rows``
    at least (rows,). Returns ``(loss sum, correct)``."""
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
        W = P[params[wp, 0] : params[wp, 0] + n_out * n_in].reshape((n_out, n_in))
        z = acts[l][:rows]
        matmul_nt(a_prev, W, z)
        if bp >= 0:
            b = P[params[bp, 0] : params[bp, 0] + n_out]
        else:
            b = zero_bias[:n_out]
        _forward_epilogue(z, b, saved[l][:rows], act)
        a_prev = z
    out = acts[n_layers - 1][:rows]
    dout = grads[n_layers - 1][:rows]
    if loss_kind == CROSS_ENTROPY:
        total = _cross_entropy(
            out, y_b, smoothing, mean_reduction, batch_rows, loss_rows[:rows], dout
        )
        return total, _correct_count(out, y_b)
    return _mse(out, t_b, mean_reduction, batch_rows, dout), 0


@njit(cache=True, nogil=True, error_model="numpy")
def _batch_loss(loss_kind, total, nb, n_outputs, mean_reduction):
    """A batch's term of the epoch's loss sum from the sum of its per-row (cross-entropy)
    or per-element (MSE) losses: the batch loss times ``nb``."""
    if not mean_reduction:
        return total * nb
    return total if loss_kind == CROSS_ENTROPY else total / n_outputs


# --------------------------------------------------- data-parallel steps
# int64 flags shared with the worker thread (see threads.py)
FLAG_GENERATION = 0  # raised by the epoch to hand the worker a task; -1: exit
FLAG_TASK = 1  # TASK_FORWARD_BACKWARD or TASK_UPDATE
FLAG_START = 2  # the worker's rows: order[start:start + rows] (or X's)
FLAG_ROWS = 3
FLAG_BATCH_ROWS = 4  # rows of the whole step
FLAG_DONE = 5  # the generation the worker finished last; WORKER_FAILED: it raised
FLAG_CORRECT = 6  # the worker's correct predictions
N_FLAGS = 7
TASK_FORWARD_BACKWARD, TASK_UPDATE = 0, 1
WORKER_FAILED = -2


def shared_size(layers) -> int:
    """float64 elements the worker reports through: its loss sum, then each layer's
    bias-gradient column sums."""
    return 1 + int(layers[:, 1].sum())


@njit(cache=True, nogil=True, error_model="numpy")
def _forward_backward(
    X,
    labels,
    targets,
    order,
    start,
    rows,
    batch_rows,
    layers,
    params,
    P,
    Gx,
    work,
    col_sums,
    loss_kind,
    smoothing,
    mean_reduction,
):
    """Forward and backward of the rows ``order[start:start + rows]`` (or
    ``X[start:start + rows]`` when ``order`` is empty), part of a step on
    ``batch_rows`` rows, with the step's weights, leaving the update to the caller:
    each layer's ``dW`` of these rows goes to ``Gx`` at the weight's offset, its
    bias-gradient sums are added to the float64 ``col_sums`` (layer ``l`` after the
    widths of the layers before it). ``work``: scratch of at least
    :func:`workspace_size` elements for ``rows``. Returns ``(loss sum, correct)``."""
    n_layers = layers.shape[0]
    n_features = X.shape[1]
    acts, saved, grads, off = _carve_layers(work, layers, rows)
    if order.shape[0] != 0:
        xb = work[off : off + rows * n_features].reshape((rows, n_features))
        y_b = np.empty(rows if labels.shape[0] else 0, labels.dtype)
        t_b = np.empty((rows if targets.shape[0] else 0, targets.shape[1]), targets.dtype)
        _gather_batch(X, labels, targets, order[start : start + rows], xb, y_b, t_b)
    else:
        xb = X[start : start + rows]
        y_b = labels[start : start + rows]
        t_b = targets[start : start + rows]
    total, correct = _forward_loss(
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
        np.zeros(layers[:, 1].max(), P.dtype),
        loss_kind,
        smoothing,
        mean_reduction,
        np.empty(rows, P.dtype),
    )
    sums_end = col_sums.shape[0]
    for l in range(n_layers - 1, -1, -1):
        n_in, n_out, wp = layers[l, 0], layers[l, 1], layers[l, 2]
        w_off = params[wp, 0]
        W = P[w_off : w_off + n_out * n_in].reshape((n_out, n_in))
        dz = grads[l]
        _backward_epilogue_sums(
            dz, saved[l], dz, col_sums[sums_end - n_out : sums_end], layers[l, 4]
        )
        sums_end -= n_out
        if l > 0:
            matmul_nn(dz, W, grads[l - 1])
        a_in = xb if l == 0 else acts[l - 1]
        weight_grad_piece(dz, a_in, Gx[w_off : w_off + n_out * n_in].reshape((n_out, n_in)))
    return total, correct


@njit(cache=True, nogil=True, error_model="numpy")
def _update_weights_part(
    kind, P, G, G_b, S1, S2, S3, H, steps, firsts, layers, params, do_flush, second
):
    """The update of every weight matrix from ``G + G_b`` (the two threads' ``dW``, added
    as :func:`blas.weight_grad` adds its halves), over the first or ``second`` half of
    its elements: each thread sweeps one half."""
    for l in range(layers.shape[0]):
        wp = layers[l, 2]
        off, size = params[wp, 0], params[wp, 1]
        lo, hi = (off + size // 2, off + size) if second else (off, off + size // 2)
        for k in range(lo, hi):
            G[k] = G[k] + G_b[k]
        update_array(
            kind,
            P[lo:hi],
            G[lo:hi],
            S1[lo:hi],
            S2[lo:hi],
            S3[lo:hi],
            H[wp],
            steps[wp],
            firsts[wp] != 0,
            do_flush,
        )


@njit(cache=True, nogil=True, error_model="numpy")
def data_parallel_worker(
    flags,
    shared,
    X,
    labels,
    targets,
    order,
    layers,
    params,
    P,
    G,
    G_b,
    S1,
    S2,
    S3,
    H,
    steps,
    firsts,
    work,
    opt_kind,
    loss_kind,
    smoothing,
    mean_reduction,
    do_flush,
):
    """The worker thread of :func:`train_epoch`'s data-parallel steps: waits for a task
    in ``flags`` (see ``FLAG_*``), runs it, reports it done, until the generation is -1.
    A forward-backward task writes its ``dW`` to ``G_b`` and its loss sum and
    bias-gradient sums to ``shared``; an update task sweeps the second half of every
    weight matrix."""
    generation = 0
    while True:
        generation = wait_for_change(flags, FLAG_GENERATION, generation)
        if generation < 0:
            return
        if flags[FLAG_TASK] == TASK_FORWARD_BACKWARD:
            sums = shared[1:]
            sums[:] = 0.0
            loss, correct = _forward_backward(
                X,
                labels,
                targets,
                order,
                flags[FLAG_START],
                flags[FLAG_ROWS],
                flags[FLAG_BATCH_ROWS],
                layers,
                params,
                P,
                G_b,
                work,
                sums,
                loss_kind,
                smoothing,
                mean_reduction,
            )
            shared[0] = loss
            flags[FLAG_CORRECT] = correct
        else:
            _update_weights_part(
                opt_kind,
                P,
                G,
                G_b,
                S1,
                S2,
                S3,
                H,
                steps,
                firsts,
                layers,
                params,
                do_flush,
                True,
            )
        atomic_store(flags, FLAG_DONE, generation)


@njit(cache=True, nogil=True, error_model="numpy")
def _wait_for_worker(flags, generation):
    """Wait until the worker has finished task ``generation``; raises if it failed."""
    if wait_for(flags, FLAG_DONE, generation, WORKER_FAILED) != generation:
        raise RuntimeError("the data-parallel worker thread failed")


@njit(cache=True, nogil=True, error_model="numpy")
def _hand_over(flags, generation, task):
    """Give the worker ``task`` as ``generation`` (the task's other flags already set)."""
    flags[FLAG_TASK] = task
    atomic_store(flags, FLAG_GENERATION, generation)


@njit(cache=True, nogil=True, error_model="numpy")
def _data_parallel_step(
    X,
    labels,
    targets,
    order,
    start,
    nb,
    layers,
    params,
    P,
    G,
    G_b,
    S1,
    S2,
    S3,
    H,
    steps,
    firsts,
    work,
    col_sums,
    flags,
    shared,
    generation,
    opt_kind,
    loss_kind,
    smoothing,
    mean_reduction,
    do_flush,
):
    """One step on ``nb`` rows from ``start``, split by :func:`blas.data_parallel_split`:
    this thread takes the first half, the worker the rest; then each sweeps half of
    every weight matrix, this thread the biases. Returns ``(loss sum, correct,
    generation)``."""
    half = data_parallel_split(nb)
    flags[FLAG_START] = start + half
    flags[FLAG_ROWS] = nb - half
    flags[FLAG_BATCH_ROWS] = nb
    generation += 1
    _hand_over(flags, generation, TASK_FORWARD_BACKWARD)
    col_sums[:] = 0.0
    loss, correct = _forward_backward(
        X,
        labels,
        targets,
        order,
        start,
        half,
        nb,
        layers,
        params,
        P,
        G,
        work,
        col_sums,
        loss_kind,
        smoothing,
        mean_reduction,
    )
    _wait_for_worker(flags, generation)
    loss += shared[0]
    correct += flags[FLAG_CORRECT]
    for k in range(params.shape[0]):
        steps[k] += 1
    generation += 1
    _hand_over(flags, generation, TASK_UPDATE)
    _update_weights_part(
        opt_kind, P, G, G_b, S1, S2, S3, H, steps, firsts, layers, params, do_flush, False
    )
    sums_off = 0
    for l in range(layers.shape[0]):
        n_out, bp = layers[l, 1], layers[l, 3]
        if bp >= 0:
            lo, hi = params[bp, 0], params[bp, 0] + n_out
            for j in range(n_out):  # the halves' float64 sums, as dense._backward_epilogue
                G[lo + j] = col_sums[sums_off + j] + shared[1 + sums_off + j]
            update_array(
                opt_kind,
                P[lo:hi],
                G[lo:hi],
                S1[lo:hi],
                S2[lo:hi],
                S3[lo:hi],
                H[bp],
                steps[bp],
                firsts[bp] != 0,
                do_flush,
            )
        sums_off += n_out
    _wait_for_worker(flags, generation)
    for k in range(params.shape[0]):
        firsts[k] = 0
    return loss, correct, generation


@contextlib.contextmanager
def data_parallel_worker_thread(*args):
    """Context manager: a :func:`data_parallel_worker` on its own thread, with BLAS on
    one thread per caller, for one call of :func:`train_epoch`. ``args``: the worker's
    arguments after ``flags`` and ``shared``; yields ``(flags, shared)`` for
    :func:`train_epoch`. The worker flushes denormals as the calling thread does; on
    exit it is told to stop and joined."""
    layers = args[4]
    flags = np.zeros(N_FLAGS, np.int64)
    shared = np.zeros(shared_size(layers), np.float64)
    flags[FLAG_GENERATION] = -1
    data_parallel_worker(flags, shared, *args)  # compiles here, returns at once
    flags[FLAG_GENERATION] = 0
    flush = hardware_flush_active()

    errors = []

    def run():
        try:
            with flush_denormals(flush):
                data_parallel_worker(flags, shared, *args)
        except BaseException as error:  # the epoch must not wait for it forever
            errors.append(error)
            flags[FLAG_DONE] = WORKER_FAILED

    thread = threading.Thread(target=run, name="gpunet-data-parallel", daemon=True)
    with one_blas_thread():
        thread.start()
        try:
            yield flags, shared
        finally:
            flags[FLAG_GENERATION] = -1
            thread.join()
            if errors:
                raise RuntimeError("the data-parallel worker thread failed") from errors[0]


@njit(cache=True, error_model="numpy")
def _step_scratch_rows(nb, two_threads):
    """Rows of scratch a step on ``nb`` rows needs (this thread's, the worker's)."""
    half = data_parallel_split(nb) if two_threads else 0
    return (half, nb - half) if half else (nb, 0)


@njit(cache=True, error_model="numpy")
def scratch_rows(n, batch_size, two_threads):
    """Rows of scratch :func:`train_epoch` needs on this thread and on the worker
    thread, for an epoch of ``n`` rows in batches of ``batch_size`` (a data-parallel
    step takes half on each thread)."""
    full = _step_scratch_rows(min(batch_size, n), two_threads)
    last = _step_scratch_rows(n % batch_size, two_threads)
    return max(full[0], last[0]), max(full[1], last[1])


def workspace_size(layers, rows: int, gather: bool = False) -> int:
    """Elements of scratch for steps of ``rows`` rows (:func:`scratch_rows`): per layer,
    activations and output gradients (rows, width), plus saved pre-activations for GELU
    layers; with ``gather`` (a shuffled epoch), the step's input rows (rows, features)
    too."""
    widths = layers[:, 1]
    per_row = 2 * int(widths.sum()) + int(widths[layers[:, 4] == GELU].sum())
    if gather:
        per_row += int(layers[0, 0])
    return rows * per_row


@njit(cache=True, nogil=True, error_model="numpy")
def train_epoch(
    X,
    labels,
    targets,
    order,
    batch_size,
    layers,
    params,
    P,
    G,
    S1,
    S2,
    S3,
    H,
    steps,
    firsts,
    work,
    opt_kind,
    loss_kind,
    smoothing,
    mean_reduction,
    do_flush,
    flags,
    shared,
    G_b,
):
    """Train over ``X`` (N, F) in batches of ``batch_size``; the targets are ``labels``
    (N,) int64 for cross-entropy or ``targets`` (N, K) float for MSE (the other one is
    ignored and may be empty). Batch ``k`` is the rows ``order[k*batch_size :
    (k+1)*batch_size]`` (``order`` (N,) int64), gathered into the workspace step by
    step; an empty ``order`` takes the rows in order, without copying.

    ``H`` (K, 8) float64 hyperparameter rows, ``steps`` (K,) int64 optimizer step counts
    (incremented here), ``firsts`` (K,) int64 1 while a momentum buffer does not exist.
    ``work`` is a scratch buffer of at least :func:`workspace_size` elements.

    Steps that :func:`blas.data_parallel_split` splits run on two threads when a
    :func:`data_parallel_worker` runs on the same ``flags`` (int64, ``N_FLAGS``),
    ``shared`` (float64, :func:`shared_size`) and ``G_b`` (like ``G``); an empty
    ``flags`` runs every step here (with the same sums). On return the worker has
    finished its last task; stopping it is the caller's.
    Returns ``(loss_sum, correct)``: batch-mean losses times batch sizes, summed, and the
    number of correct arg-max predictions (cross-entropy only).
    """
    n = X.shape[0]
    n_layers = layers.shape[0]
    two_threads = flags.shape[0] != 0
    rows = scratch_rows(n, batch_size, two_threads)[0]  # of the steps run here alone
    dtype_tiny = np.finfo(P.dtype).tiny
    # the per-layer activations, saved pre-activations (GELU) and output gradients live
    # in the caller's workspace (see workspace_size): reusing it across epochs avoids
    # page-faulting fresh memory, which dominated full-batch epochs
    acts, saved, grads, off = _carve_layers(work, layers, rows)
    zero_bias = np.zeros(layers[:, 1].max(), P.dtype)  # forward bias of layers without one
    no_bias_grad = np.zeros(layers[:, 1].max(), P.dtype)  # bias-gradient output of those
    gather = order.shape[0] != 0
    n_features = X.shape[1]
    x_rows = work[off : off + (rows * n_features if gather else 0)]
    label_rows = np.empty(rows if gather else 0, labels.dtype)
    target_rows = np.empty((rows if gather else 0, targets.shape[1]), targets.dtype)
    # dz.T of one layer, for the blocked weight gradient of small batches
    dz_t = np.empty(layers[:, 1].max() * min(rows, BLOCKED_DW_MAX_ROWS), P.dtype)
    loss_rows = np.empty(rows, P.dtype)
    # per parameter: its momentum buffer holds momentum * buf (see _update_weights_folded)
    scaled = np.zeros(params.shape[0], np.bool_)
    loss_sum = 0.0
    correct = 0
    generation = flags[FLAG_GENERATION] if two_threads else 0
    col_sums = np.zeros(int(layers[:, 1].sum()), np.float64)
    for start in range(0, n, batch_size):
        nb = min(batch_size, n - start)
        if two_threads and data_parallel_split(nb):
            total, step_correct, generation = _data_parallel_step(
                X,
                labels,
                targets,
                order,
                start,
                nb,
                layers,
                params,
                P,
                G,
                G_b,
                S1,
                S2,
                S3,
                H,
                steps,
                firsts,
                work,
                col_sums,
                flags,
                shared,
                generation,
                opt_kind,
                loss_kind,
                smoothing,
                mean_reduction,
                do_flush,
            )
            correct += step_correct
            loss_sum += _batch_loss(loss_kind, total, nb, layers[n_layers - 1, 1], mean_reduction)
            continue
        if gather:
            xb = x_rows[: nb * n_features].reshape((nb, n_features))
            _gather_batch(
                X, labels, targets, order[start : start + nb], xb, label_rows, target_rows
            )
            y_b = label_rows[:nb]
            t_b = target_rows[:nb]
        else:
            xb = X[start : start + nb]
            y_b = labels[start : start + nb]  # the unused one of the two is empty
            t_b = targets[start : start + nb]
        # ------------------------------------------------------ forward, loss
        total, batch_correct = _forward_loss(
            xb,
            y_b,
            t_b,
            nb,
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
        )
        correct += batch_correct
        loss_sum += _batch_loss(loss_kind, total, nb, layers[n_layers - 1, 1], mean_reduction)
        # --------------------------------------------------------- backward
        for l in range(n_layers - 1, -1, -1):
            n_in, n_out, wp, bp, act = (
                layers[l, 0],
                layers[l, 1],
                layers[l, 2],
                layers[l, 3],
                layers[l, 4],
            )
            w_off = params[wp, 0]
            W = P[w_off : w_off + n_out * n_in].reshape((n_out, n_in))
            dz = grads[l][:nb]  # dy on entry; the epilogue turns it into dz in place
            b_off = params[bp, 0] if bp >= 0 else 0
            db = G[b_off : b_off + n_out] if bp >= 0 else no_bias_grad[:n_out]
            _backward_epilogue(dz, saved[l][:nb], dz, db, act)
            a_in = xb if l == 0 else acts[l - 1][:nb]
            # dx with the old weights (one-row batches: inside the weight sweep)
            dx = grads[l - 1][:nb] if l > 0 else dz
            if l > 0 and nb > 1:
                matmul_nn(dz, W, dx)
            steps[wp] += 1
            first = firsts[wp] != 0
            if folds_momentum(opt_kind, H[wp], steps[wp], first, nb, W, do_flush):
                # the next step folds too (same hyperparameters, its own batch size)
                nb_next = min(batch_size, n - start - nb)
                scale_after = nb_next > 0 and folds_momentum(
                    opt_kind, H[wp], steps[wp] + 1, False, nb_next, W, do_flush
                )
                _update_weights_folded(
                    P, S1, w_off, dz, a_in, H[wp], steps[wp], first, scaled[wp], scale_after
                )
                scaled[wp] = scale_after
            elif nb == 1:
                _update_weights_rowwise(
                    opt_kind,
                    P,
                    S1,
                    S2,
                    S3,
                    w_off,
                    dz,
                    a_in,
                    n_out,
                    n_in,
                    H[wp],
                    steps[wp],
                    first,
                    do_flush,
                    dtype_tiny,
                    dx,
                    l > 0,
                )
            else:
                _update_weights_blas(
                    opt_kind,
                    P,
                    G,
                    S1,
                    S2,
                    S3,
                    w_off,
                    dz,
                    a_in,
                    dz_t,
                    H[wp],
                    steps[wp],
                    first,
                    do_flush,
                )
            firsts[wp] = 0
            if bp >= 0:
                steps[bp] += 1
                update_array(
                    opt_kind,
                    P[b_off : b_off + n_out],
                    G[b_off : b_off + n_out],
                    S1[b_off : b_off + n_out],
                    S2[b_off : b_off + n_out],
                    S3[b_off : b_off + n_out],
                    H[bp],
                    steps[bp],
                    firsts[bp] != 0,
                    do_flush,
                )
                firsts[bp] = 0
    return loss_sum, correct
