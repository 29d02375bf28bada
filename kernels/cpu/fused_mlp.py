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

Two-thread steps, when the caller runs a :func:`step_worker` beside the epoch
(:func:`step_worker_thread`), each product on one BLAS thread:
- model-parallel (:mod:`model_parallel`), ``MODEL_PARALLEL_MIN_ROWS`` rows up to
  ``DATA_PARALLEL_MIN_ROWS``: each thread computes half of every layer's columns and
  updates its rows of every weight, meeting the other at a barrier after each layer;
- data-parallel (:mod:`data_parallel`), ``DATA_PARALLEL_MIN_ROWS`` rows or more: each
  thread takes half of the rows through forward and backward, then sweeps half of every
  weight matrix from the two ``dW``s added.
The pieces of a step (losses, weight updates, workspace) are in :mod:`fused_step`.

Layer table ``layers`` (L, 7) int64: ``n_in, n_out, w_param, b_param (-1: none), act,
dropout, dropconnect`` (1: a Dropout follows the layer, run by every step; 1: the
layer is a DropConnectDense, one-thread steps only).
Parameter table ``params`` (K, 2) int64: ``offset, size`` into ``P``.
"""

from __future__ import annotations

import contextlib
import threading

import numpy as np
from numba import njit

from gpunet.kernels.cpu.blas import (
    BLOCKED_DW_MAX_ROWS,
    data_parallel_split,
    matmul_nn,
    model_parallel_rows,
    one_blas_thread,
)
from gpunet.kernels.cpu.data_parallel import (
    data_parallel_step,
    evict_weights_half,
    forward_backward,
    shared_size,
    update_weights_part,
)
from gpunet.kernels.cpu.denormals import flush_denormals, hardware_flush_active
from gpunet.kernels.cpu.dense import (
    GELU,
    _backward_epilogue,
)
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
from gpunet.kernels.cpu.threads import (
    FLAG_BATCH_ROWS,
    FLAG_CORRECT,
    FLAG_DONE,
    FLAG_GENERATION,
    FLAG_ROWS,
    FLAG_START,
    FLAG_STEP,
    FLAG_TASK,
    N_FLAGS,
    TASK_FORWARD_BACKWARD,
    TASK_MODEL_PARALLEL,
    WORKER_FAILED,
    atomic_store,
    wait_for_change,
)

# what the fused engine (gpunet.train.fused) uses of this module
__all__ = [
    "LOSS_CODES",
    "hardware_flush_active",
    "scratch_rows",
    "step_worker_thread",
    "train_epoch",
    "workspace_size",
]


@njit(cache=True, nogil=True, error_model="numpy")
def step_worker(
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
    epoch_work,
    opt_kind,
    loss_kind,
    smoothing,
    mean_reduction,
    do_flush,
    drop_keys,
    drop_thresholds,
    drop_scales,
):
    """The worker thread of :func:`train_epoch`'s two-thread steps: waits for a task in
    ``flags`` (see ``threads.FLAG_*``), runs it, reports it done, until the generation
    is -1. A model-parallel task runs thread 1's part of the step in ``epoch_work``
    (the epoch's workspace); a forward-backward task (data-parallel) writes its ``dW``
    to ``G_b`` and its loss sum and bias-gradient sums to ``shared``; an update task
    sweeps the second half of every weight matrix. ``drop_*``: the epoch's dropout
    tables (:func:`train_epoch`), read at the step ``flags[FLAG_STEP]`` names."""
    generation = 0
    count = 0  # barriers of model-parallel steps passed
    no_loss = (labels[:0], targets[:0], loss_kind, smoothing, mean_reduction, work[:0])
    no_keys = np.zeros(0, np.uint64)
    while True:
        generation = wait_for_change(flags, FLAG_GENERATION, generation)
        if generation < 0:
            return
        task = flags[FLAG_TASK]
        step_keys = drop_keys[flags[FLAG_STEP]] if drop_keys.shape[0] != 0 else no_keys
        if task == TASK_MODEL_PARALLEL:
            count = model_parallel_part(
                1,
                flags,
                count,
                X,
                order,
                flags[FLAG_START],
                flags[FLAG_ROWS],
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
                epoch_work,
                opt_kind,
                do_flush,
                no_loss,
                (step_keys, drop_thresholds, drop_scales),
            )[0]
            if count < 0:
                return
        elif task == TASK_FORWARD_BACKWARD:
            sums = shared[1:]
            sums[:] = 0.0
            loss, correct = forward_backward(
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
                step_keys,
                drop_thresholds,
                drop_scales,
                flags[FLAG_BATCH_ROWS] - flags[FLAG_ROWS],  # its rows' place in the batch
            )
            evict_weights_half(P, layers, params, False)
            shared[0] = loss
            flags[FLAG_CORRECT] = correct
        else:
            update_weights_part(
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


@contextlib.contextmanager
def step_worker_thread(*args):
    """Context manager: a :func:`step_worker` on its own thread, with BLAS on
    one thread per caller, for one call of :func:`train_epoch`. ``args``: the worker's
    arguments after ``flags`` and ``shared``; yields ``(flags, shared)`` for
    :func:`train_epoch`. The worker flushes denormals as the calling thread does; on
    exit it is told to stop and joined."""
    layers = args[4]
    flags = np.zeros(N_FLAGS + 2 * len(args[5]), np.int64)  # args[5]: the parameter table
    shared = np.zeros(shared_size(layers), np.float64)
    flags[FLAG_GENERATION] = -1
    step_worker(flags, shared, *args)  # compiles here, returns at once
    flags[FLAG_GENERATION] = 0
    flush = hardware_flush_active()

    errors = []

    def run():
        try:
            with flush_denormals(flush):
                step_worker(flags, shared, *args)
        except BaseException as error:  # the epoch must not wait for it forever
            errors.append(error)
            flags[FLAG_DONE] = WORKER_FAILED

    thread = threading.Thread(target=run, name="gpunet-step-worker", daemon=True)
    with one_blas_thread():
        thread.start()
        try:
            yield flags, shared
        finally:
            flags[FLAG_GENERATION] = -1
            thread.join()
            if errors:
                raise RuntimeError("the fused epoch's worker thread failed") from errors[0]


@njit(cache=True, error_model="numpy")
def _step_scratch_rows(nb, two_threads):
    """Rows of scratch a step on ``nb`` rows needs (this thread's, the worker's) and
    whether it runs on two threads."""
    half = data_parallel_split(nb) if two_threads else 0
    if half:
        return half, nb - half, True
    return nb, 0, two_threads and model_parallel_rows(nb)


@njit(cache=True, error_model="numpy")
def scratch_rows(n, batch_size, two_threads):
    """Rows of scratch :func:`train_epoch` needs on this thread and on the worker
    thread, for an epoch of ``n`` rows in batches of ``batch_size`` (a data-parallel
    step takes half on each thread; a model-parallel one carves this thread's for both),
    and whether any step runs on two threads."""
    full = _step_scratch_rows(min(batch_size, n), two_threads)
    last = _step_scratch_rows(n % batch_size, two_threads)
    return max(full[0], last[0]), max(full[1], last[1]), full[2] or last[2]


def workspace_size(layers, rows: int, gather: bool = False) -> int:
    """Elements of scratch for steps of ``rows`` rows (:func:`scratch_rows`): per layer,
    activations and output gradients (rows, width), plus saved pre-activations for GELU
    layers and activations before the mask for layers a Dropout follows; with ``gather``
    (a shuffled epoch), the step's input rows (rows, features) too; then the masked
    weights (out, in) of the DropConnect layers."""
    widths = layers[:, 1]
    separate_saved = (layers[:, 4] == GELU) | (layers[:, 5] != 0)
    per_row = 2 * int(widths.sum()) + int(widths[separate_saved].sum())
    if gather:
        per_row += int(layers[0, 0])
    return rows * per_row + int(masked_weight_offsets(layers)[1])


@njit(cache=True, nogil=True, error_model="numpy")
def masked_weight_offsets(layers):
    """``(offsets, total)``: where each DropConnect layer's masked weight starts in its
    scratch (-1 for the other layers; (L,) int64) and the elements they take."""
    offsets = np.full(layers.shape[0], -1, np.int64)
    total = 0
    for l in range(layers.shape[0]):
        if layers[l, 6] != 0:
            offsets[l] = total
            total += layers[l, 0] * layers[l, 1]
    return offsets, total


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
    control,
    drop_keys,
    drop_thresholds,
    drop_scales,
):
    """Train over ``X`` (N, F) in batches of ``batch_size``; the targets are ``labels``
    (N,) int64 for cross-entropy or ``targets`` (N, K) float for MSE (the other one is
    ignored and may be empty). Batch ``k`` is the rows ``order[k*batch_size :
    (k+1)*batch_size]`` (``order`` (N,) int64), gathered into the workspace step by
    step; an empty ``order`` takes the rows in order, without copying.

    ``H`` (K, 8) float64 hyperparameter rows, ``steps`` (K,) int64 optimizer step counts
    (incremented here), ``firsts`` (K,) int64 1 while a momentum buffer does not exist.
    ``work`` is a scratch buffer of at least :func:`workspace_size` elements.

    Steps of ``MODEL_PARALLEL_MIN_ROWS`` rows or more run on two threads when a
    :func:`step_worker` runs on the same ``flags`` (int64, ``N_FLAGS`` + 2 per
    parameter), ``shared`` (float64, :func:`shared_size`) and ``G_b`` (like ``G``); an
    empty ``flags`` runs every step here (with the same sums). On return the worker has
    finished its last task; stopping it is the caller's.
    ``control`` (4,) int64 (``gpunet.train.engines.base.StepControl``): ``[stop request,
    steps done, first non-finite step or -1, end the epoch at a non-finite loss]``;
    checked and updated between steps (:func:`end_of_step`).
    Dropout and DropConnect (after, or of, layers whose table row says so; with
    DropConnect the caller runs no worker): ``drop_keys`` (steps, 2L) uint64 the mask key of
    each step and layer, ``drop_thresholds`` (2L,) uint64 (0: keep all),
    ``drop_scales`` (2L,) ``1 / (1 - p)`` in ``P``'s dtype, column ``l`` the Dropout
    after layer ``l``, column ``L + l`` layer ``l``'s DropConnect; ``drop_keys`` (0, 0)
    when the model has neither.
    Returns ``(loss_sum, correct)``: batch-mean losses times batch sizes, summed, and the
    number of correct arg-max predictions (cross-entropy only).
    """
    n = X.shape[0]
    n_layers = layers.shape[0]
    two_threads = flags.shape[0] != 0
    # dropout runs on two-thread steps too (each thread draws its rows or columns of the
    # masks), DropConnect on one-thread steps only (the caller then runs no worker)
    rows = scratch_rows(n, batch_size, two_threads)[0]  # this thread's steps
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
    masked_off, masked_total = masked_weight_offsets(layers)
    masked_w = work[off : off + masked_total]
    label_rows = np.empty(rows if gather else 0, labels.dtype)
    target_rows = np.empty((rows if gather else 0, targets.shape[1]), targets.dtype)
    # dz.T of one layer, for the blocked weight gradient of small batches
    dz_t = np.empty(layers[:, 1].max() * min(rows, BLOCKED_DW_MAX_ROWS), P.dtype)
    loss_rows = np.empty(rows, P.dtype)
    # per parameter: its momentum buffer holds momentum * buf (see update_weights_folded)
    scaled = np.zeros(params.shape[0], np.bool_)
    loss_sum = 0.0
    correct = 0
    generation = flags[FLAG_GENERATION] if two_threads else 0
    col_sums = np.zeros(int(layers[:, 1].sum()), np.float64)
    count = 0  # barriers of model-parallel steps passed
    no_keys = np.zeros(0, np.uint64)
    for start in range(0, n, batch_size):
        nb = min(batch_size, n - start)
        step_keys = drop_keys[start // batch_size] if drop_keys.shape[0] != 0 else no_keys
        if two_threads and data_parallel_split(nb):
            total, step_correct, generation = data_parallel_step(
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
                start // batch_size,
                step_keys,
                drop_thresholds,
                drop_scales,
            )
            correct += step_correct
            loss_sum += batch_loss(loss_kind, total, nb, layers[n_layers - 1, 1], mean_reduction)
            if end_of_step(control, total):
                break
            continue
        if two_threads and model_parallel_rows(nb):
            total, step_correct, generation, count = model_parallel_step(
                X,
                labels,
                targets,
                order,
                start,
                nb,
                min(batch_size, n - start - nb),
                rows,
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
                flags,
                generation,
                count,
                opt_kind,
                loss_kind,
                smoothing,
                mean_reduction,
                do_flush,
                scaled,
                label_rows,
                target_rows,
                loss_rows,
                start // batch_size,
                (step_keys, drop_thresholds, drop_scales),
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
                    drop_thresholds[n_layers + l],
                    drop_scales[n_layers + l],
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
            drop_thresholds,
            drop_scales,
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
            if step_keys.shape[0] != 0 and drop_thresholds[l] != 0:  # through the mask
                dropout_block(dz, step_keys[l], drop_thresholds[l], drop_scales[l], 0, 0, n_out)
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
                    drop_thresholds[n_layers + l],
                    drop_scales[n_layers + l],
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
