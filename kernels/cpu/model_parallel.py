"""Model-parallel steps of the fused epoch (CPU): the ``ROUTE_MODEL`` steps of
:mod:`routes`, on the team's T threads.

Every thread runs :func:`model_parallel_part` on its share (:func:`threads.share`) of
every layer's output columns (thread 0 the first), in the calling thread's workspace:

- gather: each thread copies its share of the batch's rows; barrier;
- forward, per layer: ``z[:, cols] = a_prev @ W[cols].T``, bias and activation on those
  columns (a DropConnect layer: its rows ``cols`` of the step's masked weight first,
  used here and, once the barriers have passed, by every thread's ``dx``); barrier (the
  next layer reads all of ``a``);
- loss: thread 0, all rows; barrier;
- backward, per layer, last first: activation derivative and bias gradient of its
  columns (the bias updated at once), its rows of ``dW = dz.T @ a_prev``; barrier (all
  of ``dz`` ready, and every thread done reading the layer above's weight, whose
  rows this thread now updates); its share of the columns of ``dx = dz @ W``. The first
  layer's rows are updated right after its ``dW``. A DropConnect layer's ``dW`` rows go
  through the mask, and ``dx`` through the masked weight.

Each thread writes only its own rows of every weight and of the optimizer state (it
reads the others' rows of a weight for ``dx``, before they update them); every
product runs on one BLAS thread on a share of the weight, which a threaded BLAS would
split the same way, but without its synchronisation inside every product. Each
element of a product and each column sum is computed as on one thread, in the same
order; BLAS may still run a narrower product with another kernel than the whole
one, which changes last bits (the tests hold every T to the issue's tolerances).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from gpunet.kernels.cpu.blas import gemm_view
from gpunet.kernels.cpu.dense import GELU, _backward_epilogue_columns, _forward_epilogue_columns
from gpunet.kernels.cpu.dropout import dropout_block
from gpunet.kernels.cpu.fused_step import (
    carve_layers,
    dropconnect_weight,
    folded_sweep,
    folds_momentum,
    gather_targets,
    is_dropconnect,
    loss_and_gradient,
    mask_weight_span,
    scale_momentum,
    update_parameter_span,
)
from gpunet.kernels.cpu.gather import gather_rows
from gpunet.kernels.cpu.threads import (
    FLAG_CARVE_ROWS,
    FLAG_ROWS,
    FLAG_START,
    FLAG_STEP,
    FLAG_THREADS,
    FOLD_NONE,
    FOLD_SCALED,
    FOLD_UNSCALED,
    TASK_MODEL_PARALLEL,
    barrier,
    fold_slot,
    hand_over,
    share,
    wait_for_workers,
)


@njit(cache=True, nogil=True, error_model="numpy")
def _model_parallel_forward(t, flags, count, net, P, xb, acts, saved, masks):
    """Thread ``t``'s part of a model-parallel step's forward on the batch ``xb``
    (nb, F): per layer its share of the output columns (``a @ W[cols].T``, bias,
    activation, then its columns of the Dropout mask) into ``acts`` / ``saved`` (the
    epoch's workspace), a barrier after each; a DropConnect layer's rows ``cols`` of
    its masked weight first. ``masks``: the step's :class:`~records.Masks`. Returns the
    barrier count, -1 if stopped."""
    layers, params = net
    n_threads = flags[FLAG_THREADS]
    n_layers = layers.shape[0]
    nb = xb.shape[0]
    a_prev = xb
    for l in range(layers.shape[0]):
        n_in, n_out, wp, bp, act = (
            layers[l, 0],
            layers[l, 1],
            layers[l, 2],
            layers[l, 3],
            layers[l, 4],
        )
        c0, c1 = share(n_out, t, n_threads)
        w_off = params[wp, 0]
        W = P[w_off : w_off + n_out * n_in].reshape((n_out, n_in))
        if is_dropconnect(masks, l):  # this thread's rows of the step's masked weight
            lo = masks.offsets[l] + c0 * n_in
            span = masks.weights[lo : lo + (c1 - c0) * n_in]
            span[:] = P[w_off + c0 * n_in : w_off + c1 * n_in]
            mask_weight_span(span, masks, n_layers + l, c0 * n_in, n_out * n_in)
            W = dropconnect_weight(masks, l, n_out, n_in)
        z = acts[l][:nb, c0:c1]
        gemm_view(a_prev, W[c0:c1].T, z, 0.0)
        if bp >= 0:
            b = P[params[bp, 0] + c0 : params[bp, 0] + c1]
        else:
            b = np.zeros(c1 - c0, P.dtype)
        _forward_epilogue_columns(acts[l][:nb], b, saved[l][:nb], act, c0, c1)
        if layers[l, 5] != 0 and act != GELU:  # a separate buffer (carve_layers): the
            saved[l][:nb, c0:c1] = z  # derivative reads the activations before the mask
        if masks.keys.shape[0] != 0 and masks.thresholds[l] != 0:
            dropout_block(z, masks.keys[l], masks.thresholds[l], masks.scales[l], 0, c0, n_out)
        a_prev = acts[l][:nb]
        count += 1
        if not barrier(flags, t, count):
            return -1
    return count


@njit(cache=True, nogil=True, error_model="numpy")
def _model_parallel_backward(t, flags, count, net, buf, rule, xb, acts, saved, grads, masks):
    """Thread ``t``'s part of a model-parallel step's backward, the loss gradient in the
    last layer's ``grads``: per layer, last first, the activation derivative and bias
    gradient of its share of the columns (the bias updated at once), its rows of ``dW``,
    a barrier, then its share of the columns of ``dx = dz @ W``. A weight's rows are
    updated after the next barrier, once every thread has read the weight for ``dx``
    (the first layer's at once). Its columns of an output gradient go through the
    Dropout mask first; a DropConnect layer's ``dW`` rows through the weight's mask,
    and ``dx`` uses the masked weight. Returns the barrier count, -1 if stopped."""
    layers, params = net
    P, G, S1, S2, S3, H, steps, firsts = buf
    n_threads = flags[FLAG_THREADS]
    n_layers = layers.shape[0]
    nb = xb.shape[0]
    for l in range(n_layers - 1, -1, -1):
        n_in, n_out, wp, bp, act = (
            layers[l, 0],
            layers[l, 1],
            layers[l, 2],
            layers[l, 3],
            layers[l, 4],
        )
        c0, c1 = share(n_out, t, n_threads)
        dz_rows = grads[l][:nb]
        dz = dz_rows[:, c0:c1]
        if masks.keys.shape[0] != 0 and masks.thresholds[l] != 0:  # this thread's columns
            dropout_block(dz, masks.keys[l], masks.thresholds[l], masks.scales[l], 0, c0, n_out)
        if bp >= 0:
            lo, hi = params[bp, 0] + c0, params[bp, 0] + c1
            _backward_epilogue_columns(dz_rows, saved[l][:nb], dz_rows, G[lo:hi], act, c0, c1)
            update_parameter_span(
                rule.opt_kind, P, G, S1, S2, S3, H, steps, firsts, bp, lo, hi, rule.do_flush
            )
        else:
            _backward_epilogue_columns(
                dz_rows, saved[l][:nb], dz_rows, np.empty(c1 - c0, P.dtype), act, c0, c1
            )
        a_in = xb if l == 0 else acts[l - 1][:nb]
        _weight_grad_part(flags, buf, wp, params[wp, 0] + c0 * n_in, dz, a_in)
        dropconnect = is_dropconnect(masks, l)
        if dropconnect:  # dW through the mask (never folded: see plan_folds)
            lo = params[wp, 0] + c0 * n_in
            span = G[lo : lo + (c1 - c0) * n_in]
            mask_weight_span(span, masks, n_layers + l, c0 * n_in, n_out * n_in)
        if l == 0:
            _update_weight_part(flags, net, buf, rule, l, t)
        # all of dz (for dx), and every thread done reading the layer above
        count += 1
        if not barrier(flags, t, count):
            return -1
        if l + 1 < n_layers:
            _update_weight_part(flags, net, buf, rule, l + 1, t)
        if l > 0:
            w_off = params[wp, 0]
            W = P[w_off : w_off + n_out * n_in].reshape((n_out, n_in))
            if dropconnect:
                W = dropconnect_weight(masks, l, n_out, n_in)
            i0, i1 = share(n_in, t, n_threads)
            gemm_view(grads[l][:nb], W[:, i0:i1], grads[l - 1][:nb, i0:i1], 0.0)
    return count


@njit(cache=True, nogil=True, error_model="numpy")
def _weight_grad_part(flags, buf, wp, lo, dz, a):
    """The rows of weight ``wp``'s ``dW = dz.T @ a`` for a block of ``dz``'s columns,
    from element ``lo`` of the flat buffers on: into ``G``, or (its flag ``FOLD_*``)
    added into the momentum buffer, first scaled by the momentum unless the previous
    step left it so."""
    shape = (dz.shape[1], a.shape[1])
    size = shape[0] * shape[1]
    fold = flags[fold_slot(flags, wp)]
    if fold == FOLD_NONE:
        gemm_view(dz.T, a, buf.G[lo : lo + size].reshape(shape), 0.0)
        return
    momentum = buf.S1[lo : lo + size]
    if fold == FOLD_UNSCALED:
        scale_momentum(momentum, buf.H[wp], buf.steps[wp], buf.firsts[wp] != 0)
    gemm_view(dz.T, a, momentum.reshape(shape), 1.0)


@njit(cache=True, nogil=True, error_model="numpy")
def _update_weight_part(flags, net, buf, rule, l, t):
    """Thread ``t``'s rows of layer ``l``'s weight: the optimizer step from ``G``, or the
    folded momentum sweep (:func:`folded_sweep`)."""
    layers, params = net
    P, G, S1, S2, S3, H, steps, firsts = buf
    n_in, wp = layers[l, 0], layers[l, 2]
    r0, r1 = share(layers[l, 1], t, flags[FLAG_THREADS])
    lo, hi = params[wp, 0] + r0 * n_in, params[wp, 0] + r1 * n_in
    k = fold_slot(flags, wp)
    if flags[k] == FOLD_NONE:
        update_parameter_span(
            rule.opt_kind, P, G, S1, S2, S3, H, steps, firsts, wp, lo, hi, rule.do_flush
        )
    else:
        folded_sweep(P[lo:hi], S1[lo:hi], H[wp], steps[wp], firsts[wp] != 0, flags[k + 1] != 0)


@njit(cache=True, nogil=True, error_model="numpy")
def plan_folds(flags, net, buf, rule, nb, nb_next, scaled):
    """Before a model-parallel step on ``nb`` rows (``steps`` already counted): per
    weight whether its ``dW`` folds into the momentum buffer (``FOLD_*``) and whether
    the sweep leaves the buffer scaled for the next step, on ``nb_next`` rows (0: none);
    the epoch's ``scaled`` flags follow. A DropConnect weight never folds: its ``dW``
    goes through the mask first."""
    layers, params = net
    P, H, steps, firsts = buf.P, buf.H, buf.steps, buf.firsts
    kind, do_flush = rule.opt_kind, rule.do_flush
    for l in range(layers.shape[0]):
        n_in, n_out, wp = layers[l, 0], layers[l, 1], layers[l, 2]
        W = P[params[wp, 0] : params[wp, 0] + n_out * n_in].reshape((n_out, n_in))
        fold = FOLD_NONE
        after = False
        dropconnect = layers[l, 6] != 0
        if not dropconnect and folds_momentum(
            kind, H[wp], steps[wp], firsts[wp] != 0, nb, W, do_flush
        ):
            fold = FOLD_SCALED if scaled[wp] else FOLD_UNSCALED
            after = nb_next > 0 and folds_momentum(
                kind, H[wp], steps[wp] + 1, False, nb_next, W, do_flush
            )
        k = fold_slot(flags, wp)
        flags[k] = fold
        flags[k + 1] = after
        scaled[wp] = after


@njit(cache=True, nogil=True, error_model="numpy")
def model_parallel_part(t, team, data, net, buf, rule, masks, count, out_loss):
    """Thread ``t``'s part of a whole model-parallel step (its rows in ``team.flags``)
    on ``team.epoch_work`` (the calling thread's workspace, carved for
    ``flags[FLAG_CARVE_ROWS]`` rows): its share of the batch's rows gathered (barrier),
    forward, backward; thread 0 also computes the loss between forward and backward
    with ``out_loss`` (``(y_b, t_b, loss_rows)``; empty on the workers). ``masks``: the
    step's :class:`~records.Masks`. Returns ``(count, loss sum, correct)``, count -1 if
    stopped."""
    flags = team.flags
    start, nb = flags[FLAG_START], flags[FLAG_ROWS]
    X, order = data.X, data.order
    acts, saved, grads, off = carve_layers(team.epoch_work, net.layers, flags[FLAG_CARVE_ROWS])
    if order.shape[0] != 0:
        n_features = X.shape[1]
        xb = team.epoch_work[off : off + nb * n_features].reshape((nb, n_features))
        r0, r1 = share(nb, t, flags[FLAG_THREADS])
        gather_rows(X, order[start + r0 : start + r1], xb[r0:r1])
        count += 1
        if not barrier(flags, t, count):
            return -1, 0.0, 0
    else:
        xb = X[start : start + nb]
    count = _model_parallel_forward(t, flags, count, net, buf.P, xb, acts, saved, masks)
    if count < 0:
        return -1, 0.0, 0
    total, correct = 0.0, 0
    if t == 0:
        y_b, t_b, loss_rows = out_loss
        last = net.layers.shape[0] - 1
        total, correct = loss_and_gradient(
            acts[last][:nb],
            grads[last][:nb],
            y_b,
            t_b,
            nb,
            rule.loss_kind,
            rule.smoothing,
            rule.mean_reduction,
            loss_rows,
        )
    count += 1
    if not barrier(flags, t, count):
        return -1, 0.0, 0
    count = _model_parallel_backward(t, flags, count, net, buf, rule, xb, acts, saved, grads, masks)
    return count, total, correct


@njit(cache=True, nogil=True, error_model="numpy")
def model_parallel_step(
    team,
    data,
    net,
    buf,
    rule,
    masks,
    start,
    nb,
    nb_next,
    carve_rows,
    step,
    generation,
    count,
    scratch,
):
    """The calling thread's side of one model-parallel step on ``nb`` rows from
    ``start`` (the next step has ``nb_next``; ``team.epoch_work`` carved for
    ``carve_rows``): hands the workers their parts, runs thread 0's, waits for the
    workers. ``step``: the step's index (the workers' row of the dropout keys),
    ``masks`` its :class:`~records.Masks`. ``scratch``: ``(scaled, label_rows,
    target_rows, loss_rows)``, the epoch's per-parameter momentum-buffer flags
    (:func:`plan_folds`) and this thread's scratch for the loss. Returns ``(loss sum,
    correct, generation, count)``."""
    scaled, label_rows, target_rows, loss_rows = scratch
    flags = team.flags
    if data.order.shape[0] != 0:
        rows = data.order[start : start + nb]
        gather_targets(data.labels, data.targets, rows, label_rows, target_rows)
        y_b, t_b = label_rows[:nb], target_rows[:nb]
    else:
        y_b, t_b = data.labels[start : start + nb], data.targets[start : start + nb]
    for k in range(buf.steps.shape[0]):
        buf.steps[k] += 1
    plan_folds(flags, net, buf, rule, nb, nb_next, scaled)
    flags[FLAG_START] = start
    flags[FLAG_ROWS] = nb
    flags[FLAG_CARVE_ROWS] = carve_rows
    flags[FLAG_STEP] = step
    generation += 1
    hand_over(flags, generation, TASK_MODEL_PARALLEL)
    count, total, correct = model_parallel_part(
        0, team, data, net, buf, rule, masks, count, (y_b, t_b, loss_rows)
    )
    if count < 0:
        raise RuntimeError("the fused epoch's worker thread failed")
    wait_for_workers(flags, generation)
    for k in range(buf.firsts.shape[0]):
        buf.firsts[k] = 0
    return total, correct, generation, count
