"""Data-parallel steps of the fused epoch (CPU): the ``ROUTE_DATA`` steps of
:mod:`routes`, on the team's T threads.

Thread ``t`` takes its share (:func:`threads.share`) of the rows through gather,
forward, loss and backward (:func:`forward_backward`), thread 0 into ``G`` and worker
``t`` into ``G_parts[t - 1]``, with float64 bias-gradient sums in its row of
``shared``; then each thread sweeps its share of every weight matrix from the T
``dW``s added (:func:`update_weights_part`), and thread 0 updates the
biases. Each share's products run on one BLAS thread, and each thread packs all of
every weight matrix, which only pays from a few hundred rows. Dropout: each share
draws its rows of the step's masks (``first_row``), in forward and backward.
DropConnect: first each thread masks its share of every DropConnect weight into the
step's masked weights (:func:`mask_weights_part`, a task of its own, since every share
of rows reads all of them); the shares' products use those, and each thread's update
sweep multiplies its share of the summed ``dW`` by the mask.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from gpunet.kernels.cpu.blas import matmul_nn, weight_grad_piece
from gpunet.kernels.cpu.dense import _backward_epilogue_sums
from gpunet.kernels.cpu.dropout import dropout_block
from gpunet.kernels.cpu.fused_step import (
    carve_layers,
    dropconnect_weight,
    forward_and_loss,
    gather_batch,
    is_dropconnect,
    mask_weight_span,
    update_parameter_span,
)
from gpunet.kernels.cpu.threads import (
    CORRECT,
    FLAG_ROWS,
    FLAG_START,
    FLAG_STEP,
    FLAG_THREADS,
    TASK_FORWARD_BACKWARD,
    TASK_MASK_WEIGHTS,
    TASK_UPDATE,
    hand_over,
    share,
    slot,
    wait_for_workers,
)


def shared_columns(layers) -> int:
    """float64 columns of each thread's row of ``shared``: its loss sum, then each
    layer's bias-gradient column sums."""
    return 1 + int(layers[:, 1].sum())


@njit(cache=True, nogil=True, error_model="numpy")
def forward_backward(
    data, start, rows, batch_rows, net, P, Gx, work, col_sums, rule, masks, first_row
):
    """Forward and backward of the rows ``order[start:start + rows]`` (or
    ``X[start:start + rows]`` when ``order`` is empty), part of a step on
    ``batch_rows`` rows, with the step's weights, leaving the update to the caller:
    each layer's ``dW`` of these rows goes to ``Gx`` at the weight's offset, its
    bias-gradient sums are added to the float64 ``col_sums`` (layer ``l`` after the
    widths of the layers before it). ``work``: scratch of at least
    ``fused_mlp.workspace_size`` elements for ``rows``. ``masks``: the step's
    :class:`~records.Masks`, these rows being rows ``first_row`` on of the step's
    batch. Returns ``(loss sum, correct)``."""
    layers, params = net
    X, labels, targets, order = data
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
        rule.loss_kind,
        rule.smoothing,
        rule.mean_reduction,
        np.empty(rows, P.dtype),
        masks.keys,
        masks.thresholds,
        masks.scales,
        masks.weights,
        masks.offsets,
        first_row,
    )
    sums_end = col_sums.shape[0]
    for l in range(n_layers - 1, -1, -1):
        n_in, n_out, wp = layers[l, 0], layers[l, 1], layers[l, 2]
        w_off = params[wp, 0]
        W = P[w_off : w_off + n_out * n_in].reshape((n_out, n_in))
        if is_dropconnect(masks, l):  # dx through the masked weight, as forward
            W = dropconnect_weight(masks, l, n_out, n_in)
        dz = grads[l]
        if masks.keys.shape[0] != 0 and masks.thresholds[l] != 0:  # through the mask
            dropout_block(
                dz, masks.keys[l], masks.thresholds[l], masks.scales[l], first_row, 0, n_out
            )
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
def mask_weights_part(t, n_threads, net, P, masks):
    """Thread ``t``'s share of the elements of every DropConnect layer's masked weight
    for the step (``masks``: its :class:`~records.Masks`), from the weight in ``P``."""
    layers, params = net
    n_layers = layers.shape[0]
    for l in range(n_layers):
        if is_dropconnect(masks, l):
            size = layers[l, 0] * layers[l, 1]
            k0, k1 = share(size, t, n_threads)
            w_off = params[layers[l, 2], 0]
            span = masks.weights[masks.offsets[l] + k0 : masks.offsets[l] + k1]
            span[:] = P[w_off + k0 : w_off + k1]
            mask_weight_span(span, masks, n_layers + l, k0, size)


@njit(cache=True, nogil=True, error_model="numpy")
def forward_backward_part(t, team, data, net, P, Gx, work, rule, masks):
    """Thread ``t``'s forward and backward of a data-parallel step (its rows in
    ``team.flags``): its share of the rows, its ``dW`` into ``Gx``, its loss sum and
    bias-gradient sums into its row of ``team.shared``. Returns its correct count."""
    flags = team.flags
    nb = flags[FLAG_ROWS]
    r0, r1 = share(nb, t, flags[FLAG_THREADS])
    row = team.shared[t]
    sums = row[1:]
    sums[:] = 0.0
    loss, correct = forward_backward(
        data, flags[FLAG_START] + r0, r1 - r0, nb, net, P, Gx, work, sums, rule, masks, r0
    )
    row[0] = loss
    return correct


@njit(cache=True, nogil=True, error_model="numpy")
def update_weights_part(t, team, net, buf, rule, masks):
    """Thread ``t``'s share of the update of every weight matrix from the T threads'
    ``dW`` (``G`` and ``G_parts``), added into the buffer this thread wrote (``G`` for
    thread 0, ``G_parts[t - 1]``; a thread storing into lines another thread wrote would
    pull them over from its core): its own, then the others in thread order. Two
    threads: ``G + G_parts[0]`` on both halves. A DropConnect weight's sum goes through
    the step's mask (``masks``)."""
    layers, params = net
    P, G, S1, S2, S3, H, steps, firsts = buf
    parts = team.G_parts
    n_threads = team.flags[FLAG_THREADS]
    n_layers = layers.shape[0]
    own = G if t == 0 else parts[t - 1]
    for l in range(n_layers):
        wp = layers[l, 2]
        k0, k1 = share(params[wp, 1], t, n_threads)
        lo, hi = params[wp, 0] + k0, params[wp, 0] + k1
        # the others' dW added into its own, one vectorized pass each, in a fixed order
        if t != 0:
            for k in range(lo, hi):
                own[k] += G[k]
        for u in range(n_threads - 1):
            if u != t - 1:
                part = parts[u]
                for k in range(lo, hi):
                    own[k] += part[k]
        if is_dropconnect(masks, l):
            mask_weight_span(own[lo:hi], masks, n_layers + l, k0, params[wp, 1])
        update_parameter_span(
            rule.opt_kind, P, own, S1, S2, S3, H, steps, firsts, wp, lo, hi, rule.do_flush
        )


@njit(cache=True, nogil=True, error_model="numpy")
def data_parallel_step(team, data, net, buf, rule, masks, start, nb, step, generation, work):
    """One step on ``nb`` rows from ``start``, on the team's threads: each its share of
    the DropConnect weights' masking (if any), of the rows, then of every weight
    matrix's sweep, this thread the biases.
    ``step``: the step's index (the workers read their dropout keys from the epoch's
    table), ``masks`` its :class:`~records.Masks`; ``work``: this thread's scratch.
    Returns ``(loss sum, correct, generation)``."""
    flags, shared = team.flags, team.shared
    layers, params = net
    n_threads = flags[FLAG_THREADS]
    flags[FLAG_START] = start
    flags[FLAG_ROWS] = nb
    flags[FLAG_STEP] = step
    if masks.weights.shape[0] != 0:  # the masked weights, before any share reads them
        generation += 1
        hand_over(flags, generation, TASK_MASK_WEIGHTS)
        mask_weights_part(0, n_threads, net, buf.P, masks)
        wait_for_workers(flags, generation)
    generation += 1
    hand_over(flags, generation, TASK_FORWARD_BACKWARD)
    correct = forward_backward_part(0, team, data, net, buf.P, buf.G, work, rule, masks)
    wait_for_workers(flags, generation)
    loss = shared[0, 0]
    for t in range(1, n_threads):
        loss += shared[t, 0]
        correct += flags[slot(t, CORRECT)]
    for k in range(buf.steps.shape[0]):
        buf.steps[k] += 1
    generation += 1
    hand_over(flags, generation, TASK_UPDATE)
    update_weights_part(0, team, net, buf, rule, masks)
    P, G, S1, S2, S3, H, steps, firsts = buf
    sums_off = 1
    for l in range(layers.shape[0]):
        n_out, bp = layers[l, 1], layers[l, 3]
        if bp >= 0:
            lo, hi = params[bp, 0], params[bp, 0] + n_out
            for j in range(n_out):  # the shares' float64 sums, in thread order
                s = shared[0, sums_off + j]
                for t in range(1, n_threads):
                    s += shared[t, sums_off + j]
                G[lo + j] = s
            update_parameter_span(
                rule.opt_kind, P, G, S1, S2, S3, H, steps, firsts, bp, lo, hi, rule.do_flush
            )
        sums_off += n_out
    wait_for_workers(flags, generation)
    for k in range(firsts.shape[0]):
        firsts[k] = 0
    return loss, correct, generation
