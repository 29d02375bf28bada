"""Tier T2: the loss and batch kernels (``loss.cu``, ``gather.cu``) compiled for the host
CPU, against the float64 oracles, the autograd losses and the CPU fused epoch's sums."""

from __future__ import annotations

import zlib

import numpy as np
import pytest

from gpunet import Tensor
from gpunet import functional as F
from gpunet.kernels.cuda import loss_ops
from tests import oracles

pytestmark = pytest.mark.cudahost

DTYPES = [np.float32, np.float64]
# (rtol, atol) per dtype, for values of order one
TOL = {np.float32: (3e-5, 3e-6), np.float64: (1e-12, 1e-14)}


def _rng(*key):
    """A generator seeded by ``key`` (the same in every process)."""
    return np.random.default_rng([zlib.crc32(str(k).encode()) for k in key])


def _run_xent(rt, logits, target, smoothing, grad_scale, inplace):
    n, c = logits.shape
    losses = np.full(n, np.nan, logits.dtype)
    correct = np.full(n, -7, np.int32)
    dlogits = logits if inplace else np.full_like(logits, np.nan)
    loss_ops.softmax_xent(rt, logits, target, smoothing, grad_scale, losses, dlogits, correct)
    return losses, dlogits, correct


# ------------------------------------------------------------------ softmax_xent
@pytest.mark.parametrize("inplace", [False, True], ids=["out", "inplace"])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("c", [1, 2, 3, 10, 37])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_softmax_xent_matches_oracle(host_runtime, dtype, c, smoothing, inplace):
    rtol, atol = TOL[dtype]
    for n in (1, 7, 130):  # 130: more rows than one block's 128 threads
        rng = _rng(dtype, c, smoothing, inplace, n)
        logits = (rng.standard_normal((n, c)) * 3).astype(dtype)
        target = rng.integers(0, c, n).astype(np.int64)
        want_loss, want_grad = oracles.softmax_cross_entropy(logits, target, smoothing)
        for grad_scale in (1.0, 1.0 / n):
            gs = dtype(grad_scale)
            losses, dlogits, correct = _run_xent(
                host_runtime, logits.copy(), target, smoothing, gs, inplace
            )
            assert losses.dtype == dtype and dlogits.dtype == dtype
            np.testing.assert_allclose(losses, want_loss, rtol=rtol, atol=atol)
            np.testing.assert_allclose(
                dlogits, float(gs) * want_grad, rtol=rtol, atol=atol * float(gs)
            )
            np.testing.assert_array_equal(correct, logits.argmax(axis=1) == target)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_softmax_xent_large_logits_stay_finite(host_runtime, dtype, smoothing):
    """A 1e4 spread (exp overflows without the max subtraction, even in float64)."""
    rng = _rng("large", dtype, smoothing)
    n, c = 9, 10
    logits = (rng.standard_normal((n, c)) * 1e4).astype(dtype)
    logits[0, :] = dtype(3e4)  # a flat row of huge values
    logits[1, 3] = dtype(8e4)  # one dominant logit
    target = rng.integers(0, c, n).astype(np.int64)
    losses, dlogits, correct = _run_xent(host_runtime, logits.copy(), target, smoothing, 1.0, False)
    assert np.isfinite(losses).all() and np.isfinite(dlogits).all()
    want_loss, want_grad = oracles.softmax_cross_entropy(logits, target, smoothing)
    rtol, atol = TOL[dtype]
    np.testing.assert_allclose(losses, want_loss, rtol=rtol, atol=atol)
    np.testing.assert_allclose(dlogits, want_grad, rtol=rtol, atol=atol)
    np.testing.assert_array_equal(correct, logits.argmax(axis=1) == target)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_softmax_xent_ties_take_the_first_maximum(host_runtime, dtype):
    logits = np.array(
        [[1, 3, 3, 0], [1, 3, 3, 0], [2, 2, 2, 2], [2, 2, 2, 2], [0, 0, 5, 5], [-1, -1, -1, -1]],
        dtype,
    )
    target = np.array([1, 2, 0, 3, 2, 0], np.int64)
    _, _, correct = _run_xent(host_runtime, logits.copy(), target, 0.0, 1.0, False)
    np.testing.assert_array_equal(correct, [1, 0, 1, 0, 1, 1])
    np.testing.assert_array_equal(correct, logits.argmax(axis=1) == target)


def test_softmax_xent_one_class(host_runtime):
    """C = 1: p = 1, loss 0, gradient 0 whatever the logit."""
    logits = np.array([[5.0], [-1e4], [0.0]])
    losses, dlogits, correct = _run_xent(
        host_runtime, logits, np.zeros(3, np.int64), 0.0, 1.0, False
    )
    np.testing.assert_array_equal(losses, 0.0)
    np.testing.assert_array_equal(dlogits, 0.0)
    np.testing.assert_array_equal(correct, 1)


# ------------------------------------------------------------------------- mse
@pytest.mark.parametrize("inplace", [False, True], ids=["out", "inplace"])
@pytest.mark.parametrize("m", [1, 3, 37])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_mse_matches_oracle(host_runtime, dtype, m, inplace):
    rtol, atol = TOL[dtype]
    for n in (1, 130):
        rng = _rng("mse", dtype, m, inplace, n)
        pred = rng.standard_normal((n, m)).astype(dtype)
        target = rng.standard_normal((n, m)).astype(dtype)
        d = pred.astype(np.float64) - target
        for grad_scale in (1.0, 1.0 / (n * m)):
            gs = dtype(grad_scale)
            p = pred.copy()
            grad = p if inplace else np.full_like(p, np.nan)
            losses = np.full(n, np.nan, dtype)
            correct = np.full(n, -7, np.int32)
            loss_ops.mse(host_runtime, p, target, gs, losses, grad, correct)
            np.testing.assert_allclose(losses, (d * d).sum(axis=1), rtol=rtol, atol=atol)
            np.testing.assert_allclose(grad, 2 * float(gs) * d, rtol=rtol, atol=atol * float(gs))
            np.testing.assert_array_equal(correct, 0)


# --------------------------------------------------- reductions: the epoch's sums
def _cpu_term(kind, out, y, t, mean, smoothing):
    """The CPU fused epoch's (loss-sum term, correct, dout) for one batch."""
    from gpunet.kernels.cpu import fused_step as fs  # noqa: PLC0415

    nb, k = out.shape
    dout = np.empty_like(out)
    code = fs.LOSS_CODES[kind]
    total, correct = fs.loss_and_gradient(
        out.copy(), dout, y, t, nb, code, smoothing, mean, np.empty(nb, out.dtype)
    )
    return fs.batch_loss(code, total, nb, k, mean), int(correct), dout


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("kind", ["cross_entropy", "mse"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_loss_scales_reproduce_the_cpu_epoch_and_autograd(host_runtime, dtype, kind, reduction):
    """losses -> accumulate_loss with loss_scales' (grad_scale, weight) give the CPU
    fused epoch's batch term (batch loss times rows), its gradient, its correct count,
    and the autograd loss times the batch's rows."""
    rtol, atol = TOL[dtype]
    rng = _rng("scales", dtype, kind, reduction)
    nb, k, smoothing = 37, 5, 0.1
    out = rng.standard_normal((nb, k)).astype(dtype)
    y = rng.integers(0, k, nb).astype(np.int64)
    t = rng.standard_normal((nb, k)).astype(dtype)
    gs, weight = loss_ops.loss_scales(kind, reduction, nb, k, dtype)
    losses, grad = np.empty(nb, dtype), np.empty_like(out)
    correct = np.empty(nb, np.int32)
    if kind == "cross_entropy":
        loss_ops.softmax_xent(host_runtime, out, y, smoothing, gs, losses, grad, correct)
    else:
        smoothing = 0.0
        loss_ops.mse(host_runtime, out, t, gs, losses, grad, correct)
    loss_acc, correct_acc, cursor = np.zeros(1), np.zeros(1, np.int64), np.zeros(1, np.int64)
    loss_ops.accumulate_loss(
        host_runtime, losses, correct, weight, loss_acc, correct_acc, cursor, nb
    )

    term, cpu_correct, cpu_grad = _cpu_term(kind, out, y, t, reduction == "mean", smoothing)
    np.testing.assert_allclose(loss_acc[0], term, rtol=rtol)
    np.testing.assert_allclose(grad, cpu_grad, rtol=rtol, atol=atol * float(gs))
    assert correct_acc[0] == cpu_correct and cursor[0] == nb

    z = Tensor(out.copy(), requires_grad=True)
    if kind == "cross_entropy":
        loss = F.cross_entropy(z, y, reduction, label_smoothing=smoothing)
    else:
        loss = F.mse_loss(z, Tensor(t), reduction)
    loss.backward()
    np.testing.assert_allclose(loss_acc[0], float(loss.data) * nb, rtol=rtol)
    np.testing.assert_allclose(grad, z.grad.data, rtol=rtol, atol=atol * float(gs))


def test_loss_scales_rejects_unknown_names():
    with pytest.raises(ValueError, match="reduction"):
        loss_ops.loss_scales("mse", "none", 4, 1, np.float32)
    with pytest.raises(ValueError, match="loss"):
        loss_ops.loss_scales("bce", "mean", 4, 1, np.float32)


# ---------------------------------------------------------------- accumulate_loss
@pytest.mark.parametrize("n", [1, 255, 256, 257, 1000])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_accumulate_loss_sums_deterministically(host_runtime, dtype, n):
    rng = _rng("acc", dtype, n)
    losses = (rng.standard_normal(n) * 10 ** rng.uniform(-3, 3, n)).astype(dtype)
    correct = rng.integers(0, 2, n).astype(np.int32)
    weight = 0.37

    def run(loss0=1.5, correct0=4, cursor0=10):
        acc = np.array([loss0])
        cacc = np.array([correct0], np.int64)
        cur = np.array([cursor0], np.int64)
        loss_ops.accumulate_loss(host_runtime, losses, correct, weight, acc, cacc, cur, 64)
        return acc, cacc, cur

    acc, cacc, cur = run()
    want = 1.5 + weight * losses.astype(np.float64).sum()
    np.testing.assert_allclose(acc[0], want, rtol=1e-13, atol=1e-13)
    assert cacc[0] == 4 + int(correct.sum())
    assert cur[0] == 10 + 64
    for _ in range(3):  # the same bits on every run
        again = run()[0]
        assert again.tobytes() == acc.tobytes()
    # accumulates: a second step adds to the first
    acc2 = acc.copy()
    loss_ops.accumulate_loss(host_runtime, losses, correct, weight, acc2, cacc, cur, 64)
    np.testing.assert_allclose(acc2[0], 1.5 + 2 * weight * losses.astype(np.float64).sum())
    assert cacc[0] == 4 + 2 * int(correct.sum()) and cur[0] == 10 + 128


@pytest.mark.parametrize("bad", [np.nan, np.inf])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_accumulate_loss_records_the_first_non_finite_step(host_runtime, dtype, bad):
    losses = np.ones(300, dtype)
    correct = np.zeros(300, np.int32)
    acc, cacc = np.zeros(1), np.zeros(1, np.int64)
    cur, first_bad = np.array([0], np.int64), np.array([-1], np.int64)
    for step in range(4):  # steps 2 and 3 are bad; the first one is kept
        losses[137] = bad if step >= 2 else 1.0
        loss_ops.accumulate_loss(
            host_runtime, losses, correct, 1.0, acc, cacc, cur, 300, first_bad=first_bad
        )
        assert first_bad[0] == (-1 if step < 2 else 600)
    assert cur[0] == 1200 and not np.isfinite(acc[0])


# ------------------------------------------------------------------- gather_batch
def _gather(rt, X, order, start, rows, labels=None, targets=None):
    cursor = np.array([start], np.int64)
    x_out = np.full((rows, X.shape[1]), np.nan, X.dtype)
    labels_out = None if labels is None else np.full(rows, -1, np.int64)
    targets_out = None if targets is None else np.full((rows, targets.shape[1]), np.nan, X.dtype)
    loss_ops.gather_batch(rt, X, order, cursor, x_out, labels, labels_out, targets, targets_out)
    assert cursor[0] == start  # gather reads the cursor; accumulate_loss moves it
    return x_out, labels_out, targets_out


@pytest.mark.parametrize("ordered", [False, True], ids=["in_order", "order"])
@pytest.mark.parametrize("cols", [1, 3, 33, 70])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_gather_batch_rows_labels_targets(host_runtime, dtype, cols, ordered):
    rng = _rng("gather", dtype, cols, ordered)
    N, K = 53, 3
    X = rng.standard_normal((N, cols)).astype(dtype)
    labels = rng.integers(0, 10, N).astype(np.int64)
    targets = rng.standard_normal((N, K)).astype(dtype)
    order = rng.permutation(N).astype(np.int64) if ordered else None
    idx = order if ordered else np.arange(N)
    batch = 16
    # full batches at cursor offsets 0, 16, 32, then the partial last batch (5 rows)
    for start in range(0, N, batch):
        rows = min(batch, N - start)
        src = idx[start : start + rows]
        xb, lb, _ = _gather(host_runtime, X, order, start, rows, labels=labels)
        np.testing.assert_array_equal(xb, X[src])
        np.testing.assert_array_equal(lb, labels[src])
        xb, _, tb = _gather(host_runtime, X, order, start, rows, targets=targets)
        np.testing.assert_array_equal(xb, X[src])
        np.testing.assert_array_equal(tb, targets[src])
    # one row, at the last position
    xb, lb, _ = _gather(host_runtime, X, order, N - 1, 1, labels=labels)
    np.testing.assert_array_equal(xb, X[idx[N - 1 :]])
    np.testing.assert_array_equal(lb, labels[idx[N - 1 :]])


def test_gather_batch_without_targets_leaves_them_alone(host_runtime):
    X = np.arange(12.0).reshape(6, 2)
    xb, _, _ = _gather(host_runtime, X, None, 2, 3)
    np.testing.assert_array_equal(xb, X[2:5])


def test_gather_batch_many_rows(host_runtime):
    """More rows than one block's 8 warp-rows times the grid, a long order."""
    rng = _rng("many")
    N = 2000
    X = rng.standard_normal((N, 5)).astype(np.float32)
    order = np.concatenate([rng.permutation(N), rng.permutation(N)]).astype(np.int64)
    xb, _, _ = _gather(host_runtime, X, order, 1500, 1800)
    np.testing.assert_array_equal(xb, X[order[1500:3300]])


def test_launchers_check_dtypes_and_shapes(host_runtime):
    logits = np.zeros((4, 3), np.float32)
    with pytest.raises(TypeError, match="target"):
        loss_ops.softmax_xent(
            host_runtime,
            logits,
            np.zeros(4, np.int32),
            0.0,
            1.0,
            np.empty(4, np.float32),
            logits,
            np.empty(4, np.int32),
        )
    with pytest.raises(ValueError, match="labels"):
        loss_ops.gather_batch(
            host_runtime, logits, None, np.zeros(1, np.int64), logits, labels=np.zeros(4, np.int64)
        )
