"""Launchers of a training step's loss and batch kernels (``loss.cu``, ``gather.cu``).

Every launcher takes a ``KernelRuntime`` (``rt``) and arrays of ``rt.xp``; outputs are
written into arrays the caller owns (nothing is allocated here: a requirement of CUDA
graph capture), and nothing a step changes is read on the host: the batch cursor, the
epoch's loss sum and correct count live in device arrays.

Shapes and dtypes (``T`` float32 or float64; ``n`` the batch's rows):

- ``logits`` / ``dlogits`` (n, C) T, ``target`` (n,) int64 class indices in [0, C);
- ``pred`` / ``grad`` / MSE ``target`` (n, K) T;
- ``losses`` (n,) T, ``correct`` (n,) int32;
- ``loss_acc`` (1,) float64, ``correct_acc`` (1,) int64, ``cursor`` (1,) int64;
- ``X`` (N, F) T, ``order`` (N',) int64 or None, ``x_out`` (n, F) T, ``labels`` (N,)
  int64 and ``labels_out`` (n,) int64, or ``targets`` (N, K) T and ``targets_out``
  (n, K) T.

The per-step constants of a loss, from the CPU fused epoch (``kernels/cpu/fused_step.py``:
``_cross_entropy``, ``_mse``, ``batch_loss``), are :func:`loss_scales`: with them,
``loss_acc`` sums each batch's loss times its rows, as ``run_epoch`` reports it.
"""

from __future__ import annotations

import numpy as np

LOSS = "loss.cu"
GATHER = "gather.cu"
_THREADS = 128
_ACCUMULATE_THREADS = 256
_GATHER_BLOCK = (32, 8, 1)
_MAX_BLOCKS = 4096
_REDUCTIONS = ("mean", "sum")


def _blocks(rows: int, per_block: int) -> int:
    return max(1, min(_MAX_BLOCKS, -(-rows // per_block)))


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise ValueError(message)


def _check_dtype(a, dtype, what: str) -> None:
    if a.dtype != dtype:
        raise TypeError(f"{what} must be {np.dtype(dtype).name}, not {a.dtype}")


def _check_contiguous(*arrays) -> None:
    for a in arrays:
        if not a.flags.c_contiguous:
            raise ValueError("loss and gather kernels take C-contiguous arrays")


def loss_scales(
    loss: str, reduction: str, batch_rows: int, n_outputs: int, dtype
) -> tuple[np.floating, np.float64]:
    """``(grad_scale, weight)`` for a batch of ``batch_rows`` rows of ``n_outputs``
    outputs: ``grad_scale`` in ``dtype`` for :func:`softmax_xent` / :func:`mse`,
    ``weight`` for :func:`accumulate_loss`, so that ``loss_acc`` gains the batch's loss
    times ``batch_rows`` (the CPU fused epoch's ``batch_loss``):

    ======================  =====================  =============
    loss, reduction         grad_scale             weight
    ======================  =====================  =============
    cross_entropy, mean     ``dtype(1 / nb)``      1
    cross_entropy, sum      1                      nb
    mse, mean               ``dtype(1 / (nb K))``  1 / K
    mse, sum                1                      nb
    ======================  =====================  =============

    (``losses[i]`` is the row's cross-entropy, or for MSE its sum of squared errors.)
    """
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    if loss not in ("cross_entropy", "mse"):
        raise ValueError(f"loss must be 'cross_entropy' or 'mse', got {loss!r}")
    t = np.dtype(dtype).type
    if reduction == "sum":
        return t(1.0), np.float64(batch_rows)
    if loss == "cross_entropy":
        return t(1.0 / batch_rows), np.float64(1.0)
    return t(1.0 / (batch_rows * n_outputs)), np.float64(1.0 / n_outputs)


def softmax_xent(rt, logits, target, smoothing, grad_scale, losses, dlogits, correct):
    """Softmax cross-entropy of ``logits`` (n, C) against ``target`` (n,) int64 with label
    smoothing ``smoothing``: ``losses`` (n,) the per-row losses, ``dlogits`` (n, C)
    ``= grad_scale * (softmax - q)`` (may be ``logits``: in place), ``correct`` (n,)
    int32 1 where the row's first arg-max is its target."""
    n, c = logits.shape
    _check(c >= 1, "softmax_xent needs at least one class")
    _check(target.shape == (n,), f"target {target.shape} does not match logits {logits.shape}")
    _check(dlogits.shape == (n, c), f"dlogits {dlogits.shape} != logits {logits.shape}")
    _check(losses.shape == (n,) and correct.shape == (n,), "losses and correct must be (n,)")
    _check_dtype(target, np.int64, "target")
    _check_dtype(correct, np.int32, "correct")
    for a in (dlogits, losses):
        _check_dtype(a, logits.dtype, "losses and dlogits")
    _check_contiguous(logits, target, losses, dlogits, correct)
    t = logits.dtype.type
    rt.launch(
        LOSS,
        rt.kernel_name("softmax_xent", logits.dtype),
        (_blocks(n, _THREADS), 1, 1),
        (_THREADS, 1, 1),
        (
            np.int32(n),
            np.int32(c),
            logits,
            target,
            t(smoothing),
            t(grad_scale),
            losses,
            dlogits,
            correct,
        ),
    )
    return losses, dlogits


def mse(rt, pred, target, grad_scale, losses, grad, correct):
    """Squared error of ``pred`` vs ``target`` (n, K): ``losses`` (n,) each row's sum of
    squared errors, ``grad`` (n, K) ``= grad_scale * 2 * (pred - target)`` (computed as
    ``s * d + s * d``, the autograd path's order; may be ``pred``), ``correct`` (n,)
    int32 set to 0."""
    n, m = pred.shape
    _check(target.shape == (n, m), f"target {target.shape} != pred {pred.shape}")
    _check(grad.shape == (n, m), f"grad {grad.shape} != pred {pred.shape}")
    _check(losses.shape == (n,) and correct.shape == (n,), "losses and correct must be (n,)")
    for a in (target, grad, losses):
        _check_dtype(a, pred.dtype, "target, losses and grad")
    _check_dtype(correct, np.int32, "correct")
    _check_contiguous(pred, target, losses, grad, correct)
    rt.launch(
        LOSS,
        rt.kernel_name("mse", pred.dtype),
        (_blocks(n, _THREADS), 1, 1),
        (_THREADS, 1, 1),
        (
            np.int32(n),
            np.int32(m),
            pred,
            target,
            pred.dtype.type(grad_scale),
            losses,
            grad,
            correct,
        ),
    )
    return losses, grad


def accumulate_loss(
    rt, losses, correct, weight, loss_acc, correct_acc, cursor, advance, first_bad=None
):
    """One block: ``loss_acc[0] += weight * sum(losses)`` (float64, summed in a fixed
    order, so the same bits on every run), ``correct_acc[0] += sum(correct)``, then
    ``cursor[0] += advance``; when ``sum(losses)`` is not finite and ``first_bad[0] < 0``,
    ``first_bad[0] = cursor[0]`` first (the row offset of the first bad step). ``losses``
    (n,) T, ``correct`` (n,) int32, ``loss_acc`` (1,) float64, ``correct_acc``,
    ``cursor`` and ``first_bad`` (1,) int64 (None: a scratch one); ``weight`` from
    :func:`loss_scales`."""
    if first_bad is None:
        first_bad = rt.xp.full(1, -1, np.int64)
    (n,) = losses.shape
    _check(correct.shape == (n,), f"correct {correct.shape} != losses {losses.shape}")
    _check_dtype(correct, np.int32, "correct")
    _check_dtype(loss_acc, np.float64, "loss_acc")
    _check_dtype(correct_acc, np.int64, "correct_acc")
    _check_dtype(cursor, np.int64, "cursor")
    _check_dtype(first_bad, np.int64, "first_bad")
    _check(min(loss_acc.size, correct_acc.size, cursor.size, first_bad.size) >= 1, "empty sums")
    _check_contiguous(losses, correct)
    rt.launch(
        LOSS,
        rt.kernel_name("accumulate_loss", losses.dtype),
        (1, 1, 1),
        (_ACCUMULATE_THREADS, 1, 1),
        (
            np.int32(n),
            losses,
            correct,
            np.float64(weight),
            loss_acc,
            correct_acc,
            cursor,
            first_bad,
            np.int64(advance),
        ),
        shared_mem=2 * _ACCUMULATE_THREADS * 8,
    )
    return loss_acc


def gather_batch(
    rt, X, order, cursor, x_out, labels=None, labels_out=None, targets=None, targets_out=None
):
    """The batch at the device cursor: with ``start = cursor[0]``, row ``r`` of the batch
    is ``src = order[start + r]`` (``order`` (N',) int64; None: ``start + r``);
    ``x_out[r] = X[src]`` (``X`` (N, F), ``x_out`` (rows, F)), and ``labels_out[r] =
    labels[src]`` (int64) or ``targets_out[r] = targets[src]`` ((N, K) -> (rows, K)) when
    given. The caller keeps ``start + rows`` within ``order`` (or ``N``)."""
    rows, cols = x_out.shape
    _check(X.ndim == 2 and X.shape[1] == cols, f"X {X.shape} does not match x_out {x_out.shape}")
    _check_dtype(X, x_out.dtype, "X and x_out")
    _check_dtype(cursor, np.int64, "cursor")
    _check((labels is None) == (labels_out is None), "labels and labels_out go together")
    _check((targets is None) == (targets_out is None), "targets and targets_out go together")
    arrays = [X, x_out]
    if order is not None:
        _check_dtype(order, np.int64, "order")
        arrays.append(order)
    if labels is not None:
        _check_dtype(labels, np.int64, "labels")
        _check_dtype(labels_out, np.int64, "labels_out")
        _check(labels_out.shape == (rows,), f"labels_out {labels_out.shape} != ({rows},)")
        arrays += [labels, labels_out]
    tcols = 0
    if targets is not None:
        _check_dtype(targets, x_out.dtype, "targets")
        _check_dtype(targets_out, x_out.dtype, "targets_out")
        tcols = targets.shape[1]
        _check(targets_out.shape == (rows, tcols), "targets_out must be (rows, K)")
        arrays += [targets, targets_out]
    _check_contiguous(*arrays)
    rt.launch(
        GATHER,
        rt.kernel_name("gather_batch", x_out.dtype),
        (_blocks(rows, _GATHER_BLOCK[1]), 1, 1),
        _GATHER_BLOCK,
        (
            np.int32(rows),
            np.int32(cols),
            X,
            cursor if order is None else order,
            np.int32(order is not None),
            cursor,
            x_out,
            cursor if labels is None else labels,
            cursor if labels_out is None else labels_out,
            np.int32(labels is not None),
            x_out if targets is None else targets,
            np.int32(tcols),
            x_out if targets_out is None else targets_out,
            np.int32(targets is not None),
        ),
    )
    return x_out
