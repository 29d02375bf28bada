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
  (:func:`update_weights_folded`), so no gradient array is written and read back.

Multi-thread steps, when the caller runs T - 1 :func:`step_worker` threads beside the
epoch (:func:`worker_threads`), each product on one BLAS thread; the route of a step
comes from the route table by its rows (:mod:`routes`):
- model-parallel (:mod:`model_parallel`): each thread computes its share of every
  layer's columns and updates its rows of every weight, meeting the others at a barrier
  after each layer;
- data-parallel (:mod:`data_parallel`): each thread takes its share of the rows through
  forward and backward, then sweeps its share of every weight matrix from the T
  ``dW``s added.
The pieces of a step (losses, weight updates, workspace) are in :mod:`fused_step`; the
records the functions pass (:class:`~records.Net`, :class:`~records.Buffers`, ...) in
:mod:`records`.

Layer table ``layers`` (L, 7) int64: ``n_in, n_out, w_param, b_param (-1: none), act,
dropout, dropconnect`` (1: a Dropout follows the layer; 1: the layer is a
DropConnectDense; every route runs both).
Parameter table ``params`` (K, 2) int64: ``offset, size`` into ``P``.
"""

from __future__ import annotations

import contextlib
import threading

import numpy as np
from numba import njit

from gpunet.kernels.cpu.blas import BLOCKED_DW_MAX_ROWS, matmul_nn, one_blas_thread
from gpunet.kernels.cpu.data_parallel import (
    data_parallel_step,
    forward_backward_part,
    mask_weights_part,
    shared_columns,
    update_weights_part,
)
from gpunet.kernels.cpu.denormals import flush_denormals, hardware_flush_active
from gpunet.kernels.cpu.dense import GELU, _backward_epilogue
from gpunet.kernels.cpu.dropout import dropout_block
from gpunet.kernels.cpu.fused_step import (
    LOSS_CODES,
    batch_loss,
    carve_layers,
    folds_momentum,
    forward_and_loss,
    gather_batch,
    mask_weight,
    update_parameter_span,
    update_weights_blas,
    update_weights_folded,
    update_weights_masked,
    update_weights_rowwise,
)
from gpunet.kernels.cpu.model_parallel import model_parallel_part, model_parallel_step
from gpunet.kernels.cpu.records import Batches, Buffers, Masks, Net, Rule, Team, make_rule
from gpunet.kernels.cpu.routes import ROUTE_DATA, ROUTE_MODEL, scratch_rows, step_route
from gpunet.kernels.cpu.threads import (
    CORRECT,
    DONE,
    FLAG_GENERATION,
    FLAG_STEP,
    FLAG_TASK,
    FLAG_THREADS,
    TASK_FORWARD_BACKWARD,
    TASK_MASK_WEIGHTS,
    TASK_MODEL_PARALLEL,
    WORKER_FAILED,
    atomic_store,
    flags_size,
    slot,
    team_size,
    wait_for_change,
)

# what the fused engine (gpunet.train.engines.fused_cpu) uses of this module
__all__ = [
    "LOSS_CODES",
    "Batches",
    "Buffers",
    "Masks",
    "Net",
    "Rule",
    "Team",
    "hardware_flush_active",
    "make_rule",
    "masked_weight_offsets",
    "one_thread_team",
    "scratch_rows",
    "train_epoch",
    "worker_threads",
    "workspace_size",
]


@njit(cache=True, nogil=True, error_model="numpy")
def step_worker(t, team, data, net, buf, rule, drop):
    """Worker thread ``t`` (1 .. T-1) of :func:`train_epoch`'s multi-thread steps: waits
    for a task in ``team.flags`` (see ``threads.FLAG_*``), runs it, reports it done in
    its ``DONE`` slot, until the generation is -1. A model-parallel task runs thread
    ``t``'s part of the step in ``team.epoch_work``; a forward-backward task
    (data-parallel) writes its ``dW`` to ``team.G_parts[t - 1]`` and its sums to its row
    of ``team.shared``; an update task sweeps its share of every weight matrix; a mask
    task forms its share of the step's DropConnect weights.
    ``drop``: the epoch's :class:`~records.Masks`, read at the step ``FLAG_STEP``
    names."""
    flags = team.flags
    generation = 0
    count = 0  # barriers of model-parallel steps passed
    no_loss = (data.labels[:0], data.targets[:0], buf.P[:0])
    no_keys = np.zeros(0, np.uint64)
    while True:
        generation = wait_for_change(flags, FLAG_GENERATION, generation)
        if generation < 0:
            return
        task = flags[FLAG_TASK]
        step_keys = drop.keys[flags[FLAG_STEP]] if drop.keys.shape[0] != 0 else no_keys
        masks = Masks(step_keys, drop.thresholds, drop.scales, drop.weights, drop.offsets)
        if task == TASK_MODEL_PARALLEL:
            count = model_parallel_part(t, team, data, net, buf, rule, masks, count, no_loss)[0]
            if count < 0:
                return
        elif task == TASK_FORWARD_BACKWARD:
            flags[slot(t, CORRECT)] = forward_backward_part(
                t, team, data, net, buf.P, team.G_parts[t - 1], team.works[t - 1], rule, masks
            )
        elif task == TASK_MASK_WEIGHTS:
            mask_weights_part(t, flags[FLAG_THREADS], net, buf.P, masks)
        else:
            update_weights_part(t, team, net, buf, rule, masks)
        atomic_store(flags, slot(t, DONE), generation)


def one_thread_team(work, routes):
    """The :class:`~records.Team` of an epoch whose every step runs on the calling
    thread (``work``: its scratch, giving the dtype)."""
    none = np.zeros((0, 0), work.dtype)
    return Team(np.zeros(0, np.int64), np.zeros((0, 0)), none, none, work, routes)


@contextlib.contextmanager
def worker_threads(n_threads, G_parts, works, epoch_work, routes, data, net, buf, rule, drop):
    """Context manager: T - 1 :func:`step_worker` threads (T = ``n_threads`` >= 2) for
    one call of :func:`train_epoch`, with BLAS on one thread per caller; yields their
    :class:`~records.Team`. ``G_parts`` (T - 1, P.size) and ``works`` (T - 1, size):
    the workers' ``dW`` and scratch. The workers flush denormals as the calling thread
    does; on exit they are told to stop and joined."""
    flags = np.zeros(flags_size(n_threads, net.params.shape[0]), np.int64)
    flags[FLAG_THREADS] = n_threads
    shared = np.zeros((n_threads, shared_columns(net.layers)), np.float64)
    team = Team(flags, shared, G_parts, works, epoch_work, routes)
    flags[FLAG_GENERATION] = -1
    step_worker(1, team, data, net, buf, rule, drop)  # compiles here, returns at once
    flags[FLAG_GENERATION] = 0
    flush = hardware_flush_active()
    errors = []

    def run(t):
        try:
            with flush_denormals(flush):
                step_worker(t, team, data, net, buf, rule, drop)
        except BaseException as error:  # the epoch must not wait for it forever
            errors.append(error)
            flags[slot.py_func(t, DONE)] = WORKER_FAILED

    threads = [
        threading.Thread(target=run, args=(t,), name=f"gpunet-step-worker-{t}", daemon=True)
        for t in range(1, n_threads)
    ]
    with one_blas_thread():
        for thread in threads:
            thread.start()
        try:
            yield team
        finally:
            flags[FLAG_GENERATION] = -1
            for thread in threads:
                thread.join()
            if errors:
                raise RuntimeError("the fused epoch's worker thread failed") from errors[0]


def workspace_size(layers, rows: int, gather: bool = False) -> int:
    """Elements of scratch for steps of ``rows`` rows (:func:`scratch_rows`): per layer,
    activations and output gradients (rows, width), plus saved pre-activations for GELU
    layers and activations before the mask for layers a Dropout follows; with ``gather``
    (a shuffled epoch), the step's input rows (rows, features) too."""
    widths = layers[:, 1]
    separate_saved = (layers[:, 4] == GELU) | (layers[:, 5] != 0)
    per_row = 2 * int(widths.sum()) + int(widths[separate_saved].sum())
    if gather:
        per_row += int(layers[0, 0])
    return rows * per_row


@njit(cache=True, nogil=True, error_model="numpy")
def masked_weight_offsets(layers):
    """``(offsets, total)``: where each DropConnect layer's masked weight starts in
    :class:`~records.Masks` ``weights`` (-1 for the other layers; (L,) int64) and the
    elements they take."""
    offsets = np.full(layers.shape[0], -1, np.int64)
    total = 0
    for l in range(layers.shape[0]):
        if layers[l, 6] != 0:
            offsets[l] = total
            total += layers[l, 0] * layers[l, 1]
    return offsets, total


@njit(cache=True, nogil=True, error_model="numpy")
def train_epoch(data, batch_size, net, buf, work, rule, team, control, drop):
    """Train over ``data`` (:class:`~records.Batches`: ``X`` (N, F), the targets
    ``labels`` (N,) int64 for cross-entropy or ``targets`` (N, K) float for MSE, the
    other one empty) in batches of ``batch_size``. Batch ``k`` is the rows
    ``order[k*batch_size : (k+1)*batch_size]``, gathered into the workspace step by
    step; an empty ``order`` takes the rows in order, without copying.

    ``net`` (:class:`~records.Net`), ``buf`` (:class:`~records.Buffers`: the step counts
    are incremented here), ``rule`` (:class:`~records.Rule`). ``work`` is a scratch
    buffer of at least :func:`workspace_size` elements.

    ``team`` (:class:`~records.Team`): steps whose route (:func:`routes.step_route`, by
    ``team.routes``) is model- or data-parallel run on the team's T threads while T - 1
    :func:`step_worker` threads run on it (:func:`worker_threads`); a
    :func:`one_thread_team` runs every step here (with the same sums). On return the
    workers have finished their last task; stopping them is the caller's.
    ``control`` (4,) int64 (``gpunet.train.engines.base.StepControl``): ``[stop request,
    steps done, first non-finite step or -1, end the epoch at a non-finite loss]``;
    checked and updated between steps (:func:`end_of_step`).
    Dropout and DropConnect (after, or of, layers whose table row says so): ``drop``
    (:class:`~records.Masks`): ``keys`` (steps, 2L) uint64 the mask key of each step
    and layer, ``thresholds`` (2L,) uint64 (0: keep all), ``scales`` (2L,) ``1 / (1 -
    p)`` in ``P``'s dtype, column ``l`` the Dropout after layer ``l``, column ``L + l``
    layer ``l``'s DropConnect; ``keys`` (0, 0) when the model has neither. ``weights``
    (:func:`masked_weight_offsets` total elements) receives each step's masked
    weights, ``offsets`` = :func:`masked_weight_offsets` ``[0]``.
    Returns ``(loss_sum, correct)``: batch-mean losses times batch sizes, summed, and the
    number of correct arg-max predictions (cross-entropy only).
    """
    X, labels, targets, order = data
    layers, params = net
    P, G, S1, S2, S3, H, steps, firsts = buf
    opt_kind, loss_kind, smoothing, mean_reduction, do_flush = rule
    n = X.shape[0]
    n_layers = layers.shape[0]
    n_threads = team_size(team.flags)
    rows = scratch_rows(n, batch_size, n_threads, team.routes)[0]  # this thread's steps
    dtype_tiny = np.finfo(P.dtype).tiny
    # the per-layer activations, saved pre-activations (GELU) and output gradients live
    # in the caller's workspace (see workspace_size): reusing it across epochs avoids
    # page-faulting fresh memory, which dominated full-batch epochs
    acts, saved, grads, off = carve_layers(work, layers, rows)
    zero_bias = np.zeros(layers[:, 1].max(), P.dtype)  # forward bias of layers without one
    no_bias_grad = np.zeros(layers[:, 1].max(), P.dtype)  # bias-gradient output of those
    gather = order.shape[0] != 0
    n_features = X.shape[1]
    x_rows = work[off : off + (rows * n_features if gather else 0)]
    off += rows * n_features if gather else 0
    masked_off, masked_w = drop.offsets, drop.weights
    label_rows = np.empty(rows if gather else 0, labels.dtype)
    target_rows = np.empty((rows if gather else 0, targets.shape[1]), targets.dtype)
    # dz.T of one layer, for the blocked weight gradient of small batches
    dz_t = np.empty(layers[:, 1].max() * min(rows, BLOCKED_DW_MAX_ROWS), P.dtype)
    loss_rows = np.empty(rows, P.dtype)
    # per parameter: its momentum buffer holds momentum * buf (see update_weights_folded)
    scaled = np.zeros(params.shape[0], np.bool_)
    loss_sum = 0.0
    correct = 0
    generation = team.flags[FLAG_GENERATION] if n_threads > 1 else 0
    count = 0  # barriers of model-parallel steps passed
    no_keys = np.zeros(0, np.uint64)
    for start in range(0, n, batch_size):
        nb = min(batch_size, n - start)
        step = start // batch_size
        step_keys = drop.keys[step] if drop.keys.shape[0] != 0 else no_keys
        masks = Masks(step_keys, drop.thresholds, drop.scales, masked_w, masked_off)
        route = step_route(nb, n_threads, team.routes)
        if route == ROUTE_DATA:
            total, step_correct, generation = data_parallel_step(
                team, data, net, buf, rule, masks, start, nb, step, generation, work
            )
            correct += step_correct
            loss_sum += batch_loss(loss_kind, total, nb, layers[n_layers - 1, 1], mean_reduction)
            if end_of_step(control, total):
                break
            continue
        if route == ROUTE_MODEL:
            total, step_correct, generation, count = model_parallel_step(
                team,
                data,
                net,
                buf,
                rule,
                masks,
                start,
                nb,
                min(batch_size, n - start - nb),
                rows,
                step,
                generation,
                count,
                (scaled, label_rows, target_rows, loss_rows[:nb]),
            )
            correct += step_correct
            loss_sum += batch_loss(loss_kind, total, nb, layers[n_layers - 1, 1], mean_reduction)
            if end_of_step(control, total):
                break
            continue
        for l in range(masked_off.shape[0]):  # this step's DropConnect weights
            if masked_off[l] >= 0:
                mask_weight(
                    P,
                    params[layers[l, 2], 0],
                    masked_w[masked_off[l] : masked_off[l] + layers[l, 0] * layers[l, 1]].reshape(
                        (layers[l, 1], layers[l, 0])
                    ),
                    step_keys[n_layers + l],
                    drop.thresholds[n_layers + l],
                    drop.scales[n_layers + l],
                )
        if gather:
            xb = x_rows[: nb * n_features].reshape((nb, n_features))
            gather_batch(X, labels, targets, order[start : start + nb], xb, label_rows, target_rows)
            y_b = label_rows[:nb]
            t_b = target_rows[:nb]
        else:
            xb = X[start : start + nb]
            y_b = labels[start : start + nb]  # the unused one of the two is empty
            t_b = targets[start : start + nb]
        # ------------------------------------------------------ forward, loss
        total, batch_correct = forward_and_loss(
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
            step_keys,
            drop.thresholds,
            drop.scales,
            masked_w,
            masked_off,
            0,
        )
        correct += batch_correct
        loss_sum += batch_loss(loss_kind, total, nb, layers[n_layers - 1, 1], mean_reduction)
        if not np.isfinite(total) and halt_before_update(control):
            break
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
            if step_keys.shape[0] != 0 and drop.thresholds[l] != 0:  # through the mask
                dropout_block(dz, step_keys[l], drop.thresholds[l], drop.scales[l], 0, 0, n_out)
            b_off = params[bp, 0] if bp >= 0 else 0
            db = G[b_off : b_off + n_out] if bp >= 0 else no_bias_grad[:n_out]
            _backward_epilogue(dz, saved[l][:nb], dz, db, act)
            a_in = xb if l == 0 else acts[l - 1][:nb]
            # dx with the old weights (one-row batches: inside the weight sweep)
            dx = grads[l - 1][:nb] if l > 0 else dz
            if l > 0 and nb > 1 and not (masked_off.shape[0] != 0 and masked_off[l] >= 0):
                matmul_nn(dz, W, dx)
            steps[wp] += 1
            first = firsts[wp] != 0
            if masked_off.shape[0] != 0 and masked_off[l] >= 0:  # DropConnect
                Wm = masked_w[masked_off[l] : masked_off[l] + n_out * n_in].reshape((n_out, n_in))
                if l > 0:
                    matmul_nn(dz, Wm, dx)  # through the masked weight, as forward
                update_weights_masked(
                    opt_kind,
                    P,
                    G,
                    S1,
                    S2,
                    S3,
                    w_off,
                    dz,
                    a_in,
                    step_keys[n_layers + l],
                    drop.thresholds[n_layers + l],
                    drop.scales[n_layers + l],
                    H[wp],
                    steps[wp],
                    first,
                    do_flush,
                )
            elif folds_momentum(opt_kind, H[wp], steps[wp], first, nb, W, do_flush):
                # the next step folds too (same hyperparameters, its own batch size)
                nb_next = min(batch_size, n - start - nb)
                scale_after = nb_next > 0 and folds_momentum(
                    opt_kind, H[wp], steps[wp] + 1, False, nb_next, W, do_flush
                )
                update_weights_folded(
                    P, S1, w_off, dz, a_in, H[wp], steps[wp], first, scaled[wp], scale_after
                )
                scaled[wp] = scale_after
            elif nb == 1:
                update_weights_rowwise(
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
                update_weights_blas(
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
                update_parameter_span(
                    opt_kind, P, G, S1, S2, S3, H, steps, firsts, bp, b_off, b_off + n_out, do_flush
                )
                firsts[bp] = 0
        if end_of_step(control, 0.0):  # a non-finite loss was handled before the update
            break
    return loss_sum, correct


@njit(cache=True, nogil=True, error_model="numpy")
def halt_before_update(control):
    """A step's loss is not finite: record the step; True when the epoch ends before
    its update."""
    if control[2] < 0:
        control[2] = control[1]
    return control[3] != 0


@njit(cache=True, nogil=True, error_model="numpy")
def end_of_step(control, loss_total):
    """After a step's update (``loss_total`` its loss sum, checked when the step's route
    computes the loss with the update): count it; True when the epoch ends here (a stop
    request, or a non-finite loss that ends the epoch; that step is not counted)."""
    if not np.isfinite(loss_total) and halt_before_update(control):
        return True
    control[1] += 1
    return control[0] != 0
