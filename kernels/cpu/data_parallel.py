"""Data-parallel steps of the fused epoch (CPU): steps of ``DATA_PARALLEL_MIN_ROWS`` rows
or more, split by :func:`blas.data_parallel_split`.

The worker thread (:func:`fused_mlp.step_worker`) takes the second half of the rows
through gather, forward, loss and backward (:func:`forward_backward`) while the epoch's
thread does the first, each into its own ``dW`` buffer and float64 bias sums; then each
thread sweeps half of every weight matrix from the two ``dW``s added
(:func:`update_weights_part`). Each half's products run on one BLAS thread, and each
thread packs all of every weight matrix, which only pays from a few hundred rows.
Before the sweeps each thread evicts the half of the weights the other one updates, and
after its sweep the other's ``dW`` half it read (:mod:`evict`). Dropout: each half
draws its rows of the step's masks (``first_row``), in forward and backward.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from gpunet.kernels.cpu.blas import (
    data_parallel_split,
    matmul_nn,
    weight_grad_piece,
)
from gpunet.kernels.cpu.dense import (
    _backward_epilogue_sums,
)
from gpunet.kernels.cpu.dropout import dropout_block
from gpunet.kernels.cpu.evict import evict_span
from gpunet.kernels.cpu.fused_step import (
    carve_layers,
    forward_and_loss,
    gather_batch,
    update_parameter_span,
)
from gpunet.kernels.cpu.threads import (
    FLAG_BATCH_ROWS,
    FLAG_CORRECT,
    FLAG_ROWS,
    FLAG_START,
    FLAG_STEP,
    TASK_FORWARD_BACKWARD,
    TASK_UPDATE,
    hand_over,
    wait_for_worker,
)


def shared_size(layers) -> int:
    """float64 elements the worker reports through: its loss sum, then each layer's
    bias-gradient column sums."""
    return 1 + int(layers[:, 1].sum())


@njit(cache=True, nogil=True, error_model="numpy")
def forward_backward(
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
    step_keys,
    drop_thresholds,
    drop_scales,
    first_row,
):
    """Forward and backward of the rows ``order[start:start + rows]`` (or
    ``X[start:start + rows]`` when ``order`` is empty), part of a step on
    ``batch_rows`` rows, with the step's weights, leaving the update to the caller:
    each layer's ``dW`` of these rows goes to ``Gx`` at the weight's offset, its
    bias-gradient sums are added to the float64 ``col_sums`` (layer ``l`` after the
    widths of the layers before it). ``work``: scratch of at least
    :func:`workspace_size` elements for ``rows``. Dropout: this step's keys, thresholds
    and scales (``forward_and_loss``), these rows being rows ``first_row`` on of the
    step's batch. Returns ``(loss sum, correct)``."""
    n_layers = layers.shape[0]
    n_features = X.shape[1]
    acts, saved, grads, off = carve_layers(work, layers, rows)
    if order.shape[0] != 0:
        xb = work[off : off + rows * n_features].reshape((rows, n_features))
        y_b = np.empty(rows if labels.shape[0] else 0, labels.dtype)
        t_b = np.empty((rows if targets.shape[0] else 0, targets.shape[1]), targets.dtype)
        gather_batch(X, labels, targets, order[start : start + rows], xb, y_b, t_b)
    else:
        xb = X[start : start + rows]
        y_b = labels[start : start + rows]
        t_b = targets[start : start + rows]
    total, correct = forward_and_loss(
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
        step_keys,
        drop_thresholds,
        drop_scales,
        P[:0],  # no DropConnect on two-thread steps
        np.zeros(0, np.int64),
        first_row,
    )
    sums_end = col_sums.shape[0]
    for l in range(n_layers - 1, -1, -1):
        n_in, n_out, wp = layers[l, 0], layers[l, 1], layers[l, 2]
        w_off = params[wp, 0]
        W = P[w_off : w_off + n_out * n_in].reshape((n_out, n_in))
        dz = grads[l]
        if step_keys.shape[0] != 0 and drop_thresholds[l] != 0:  # through the mask
            dropout_block(dz, step_keys[l], drop_thresholds[l], drop_scales[l], first_row, 0, n_out)
        _backward_epilogue_sums(
            dz, saved[l], dz, col_sums[sums_end - n_out : sums_end], layers[l, 4]
        )
        sums_end -= n_out
        if l > 0:
            matmul_nn(dz, W, grads[l - 1])
        a_in = xb if l == 0 else acts[l - 1]
        weight_grad_piece(dz, a_in, Gx[w_off : w_off + n_out * n_in].reshape((n_out, n_in)))
    return total, correct


@njit(inline="always", error_model="numpy")
def _weight_half(params, wp, second):
    """The flat-buffer span ``(lo, hi)`` of the first or ``second`` half of weight
    ``wp``'s elements: the part one thread sweeps."""
    off, size = params[wp, 0], params[wp, 1]
    return (off + size // 2, off + size) if second else (off, off + size // 2)


@njit(cache=True, nogil=True, error_model="numpy")
def update_weights_part(
    kind, P, G, G_b, S1, S2, S3, H, steps, firsts, layers, params, do_flush, second
):
    """The update of every weight matrix from ``G + G_b`` (the two threads' ``dW``, added
    as :func:`blas.weight_grad` adds its halves), over the first or ``second`` half of
    its elements: each thread sweeps one half. The sum goes to the buffer the sweeping
    thread wrote (``G`` for the first half, ``G_b`` for the second): a thread storing
    into lines the other thread wrote would pull them over from its core."""
    own, other = (G_b, G) if second else (G, G_b)
    for l in range(layers.shape[0]):
        wp = layers[l, 2]
        lo, hi = _weight_half(params, wp, second)
        for k in range(lo, hi):
            own[k] = G[k] + G_b[k]
        update_parameter_span(kind, P, own, S1, S2, S3, H, steps, firsts, wp, lo, hi, do_flush)
        evict_span(other[lo:hi])  # the other thread writes its next dW there


@njit(cache=True, nogil=True, error_model="numpy")
def evict_weights_half(P, layers, params, second):
    """Drop this thread's cached copies of the first or ``second`` half of every weight
    matrix (the half the other thread updates next: :mod:`evict`)."""
    for l in range(layers.shape[0]):
        lo, hi = _weight_half(params, layers[l, 2], second)
        evict_span(P[lo:hi])


@njit(cache=True, nogil=True, error_model="numpy")
def data_parallel_step(
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
    step,
    step_keys,
    drop_thresholds,
    drop_scales,
):
    """One step on ``nb`` rows from ``start``, split by :func:`blas.data_parallel_split`:
    this thread takes the first half, the worker the rest; then each sweeps half of
    every weight matrix, this thread the biases. ``step``: the step's index (the worker
    reads its dropout keys, ``step_keys``, from its own copy of the table). Returns
    ``(loss sum, correct, generation)``."""
    half = data_parallel_split(nb)
    flags[FLAG_START] = start + half
    flags[FLAG_ROWS] = nb - half
    flags[FLAG_BATCH_ROWS] = nb
    flags[FLAG_STEP] = step
    generation += 1
    hand_over(flags, generation, TASK_FORWARD_BACKWARD)
    col_sums[:] = 0.0
    loss, correct = forward_backward(
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
        step_keys,
        drop_thresholds,
        drop_scales,
        0,
    )
    wait_for_worker(flags, generation)
    evict_weights_half(P, layers, params, True)
    loss += shared[0]
    correct += flags[FLAG_CORRECT]
    for k in range(params.shape[0]):
        steps[k] += 1
    generation += 1
    hand_over(flags, generation, TASK_UPDATE)
    update_weights_part(
        opt_kind, P, G, G_b, S1, S2, S3, H, steps, firsts, layers, params, do_flush, False
    )
    sums_off = 0
    for l in range(layers.shape[0]):
        n_out, bp = layers[l, 1], layers[l, 3]
        if bp >= 0:
            lo, hi = params[bp, 0], params[bp, 0] + n_out
            for j in range(n_out):  # the halves' float64 sums, as dense._backward_epilogue
                G[lo + j] = col_sums[sums_off + j] + shared[1 + sums_off + j]
            update_parameter_span(
                opt_kind, P, G, S1, S2, S3, H, steps, firsts, bp, lo, hi, do_flush
            )
        sums_off += n_out
    wait_for_worker(flags, generation)
    for k in range(params.shape[0]):
        firsts[k] = 0
    return loss, correct, generation
