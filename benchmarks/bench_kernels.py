"""Micro-benchmarks: each Numba CPU kernel vs the ``xp`` reference it replaces
(``gpunet.backend.base.Backend`` ops, ``gpunet.optim.functional`` updates) and, where
PyTorch is installed, the equivalent torch CPU call.

Not collected by the normal test run (``testpaths = ["tests"]``). Run with::

    pytest benchmarks/bench_kernels.py                     # everything
    pytest benchmarks/bench_kernels.py -k "dense_forward"  # one kernel
    pytest benchmarks/bench_kernels.py --benchmark-json=out.json

Each case compiles/warms its function first (one untimed call, then warm-up rounds),
then times rounds of several calls; compare the ``numba`` row of a group with its
``reference`` (and ``torch``) row. Shapes: dense (N, 512) x (512, 512) for N in
{1, 8, 128} (8: the skinny matmul loops); softmax cross-entropy (N, 10) and (N, 1000);
optimizers over a (512, 512) parameter and a (512,) one; the weight gradient with the
momentum update, folded or not, at 32-512 rows on a 784->512 layer; the gather of
128 or 512 shuffled rows of a 60,000 x 784 data set; a fused epoch whose steps run on
two threads or on one. float32 throughout.

On a shared 2-core machine run with ``OMP_NUM_THREADS=1``: when another process holds
the second core, a 2-thread OpenBLAS (or torch) GEMM waits for its worker thread and a
0.4 ms matmul can take 16-40 ms, which swamps every comparison.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

pytest.importorskip("pytest_benchmark")

from gpunet.backend.base import Backend  # noqa: E402
from gpunet.kernels.cpu import (  # noqa: E402
    UPDATE_KERNELS,
    dense_backward,
    dense_forward,
    flush_denormals,
    softmax_cross_entropy,
)

try:
    import torch
except ImportError:  # pragma: no cover - torch is optional
    torch = None

REFERENCE = Backend("cpu")
ACTS = ["linear", "relu", "sigmoid", "tanh", "gelu"]
BATCHES = [1, 8, 128]
DTYPE = np.float32
IMPLS = ["numba", "reference", "torch"]


def _run(benchmark, fn, *args, target_s=2e-3):
    """Warm up (compile), calibrate calls per round to ~target_s, then time 30 rounds."""
    fn(*args)
    t0 = time.perf_counter()
    fn(*args)
    once = max(time.perf_counter() - t0, 1e-7)
    iterations = max(1, min(1000, int(target_s / once)))
    benchmark.pedantic(fn, args=args, warmup_rounds=3, rounds=30, iterations=iterations)


def _need_torch(impl):
    if impl == "torch" and torch is None:
        pytest.skip("PyTorch not installed")


def _dense_data(n, k=512, m=512, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, k)).astype(DTYPE)
    W = (rng.standard_normal((m, k)) / np.sqrt(k)).astype(DTYPE)
    b = (0.1 * rng.standard_normal(m)).astype(DTYPE)
    dy = rng.standard_normal((n, m)).astype(DTYPE)
    return x, W, b, dy


_TORCH_ACT = {
    "linear": lambda z: z,
    "relu": lambda z: torch.relu(z),
    "sigmoid": lambda z: torch.sigmoid(z),
    "tanh": lambda z: torch.tanh(z),
    "gelu": lambda z: torch.nn.functional.gelu(z),
}


# ------------------------------------------------------------------ dense forward
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("n", BATCHES)
def test_dense_forward(benchmark, n, act, impl):
    _need_torch(impl)
    benchmark.group = f"dense_forward N={n} 512x512 {act}"
    x, W, b, _ = _dense_data(n)
    if impl == "numba":
        _run(benchmark, dense_forward, x, W, b, act)
    elif impl == "reference":
        _run(benchmark, REFERENCE.dense_forward, x, W, b, act)
    else:
        tx, tW, tb = (torch.from_numpy(a) for a in (x, W, b))
        f = _TORCH_ACT[act]
        with torch.no_grad():
            _run(benchmark, lambda: f(torch.nn.functional.linear(tx, tW, tb)))


# ----------------------------------------------------------------- dense backward
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("n", BATCHES)
def test_dense_backward(benchmark, n, act, impl):
    _need_torch(impl)
    benchmark.group = f"dense_backward N={n} 512x512 {act}"
    x, W, b, dy = _dense_data(n)
    if impl == "numba":
        _, saved = dense_forward(x, W, b, act)
        _run(benchmark, dense_backward, dy, x, W, saved, act)
    elif impl == "reference":
        _, saved = REFERENCE.dense_forward(x, W, b, act)
        _run(benchmark, REFERENCE.dense_backward, dy, x, W, saved, act)
    else:
        # autograd backward of linear+activation (graph rebuilt each call, as in training;
        # the forward is timed too, so subtract the torch forward row for the backward alone)
        tx = torch.from_numpy(x).requires_grad_()
        tW = torch.from_numpy(W.copy()).requires_grad_()
        tb = torch.from_numpy(b.copy()).requires_grad_()
        tdy = torch.from_numpy(dy)
        f = _TORCH_ACT[act]

        def fwd_bwd():
            y = f(torch.nn.functional.linear(tx, tW, tb))
            return torch.autograd.grad(y, (tx, tW, tb), tdy)

        benchmark.group += " (torch row = fwd+bwd)"
        _run(benchmark, fwd_bwd)


# --------------------------------------------------------- softmax cross-entropy
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("c", [10, 1000])
@pytest.mark.parametrize("n", BATCHES)
def test_softmax_cross_entropy(benchmark, n, c, impl):
    _need_torch(impl)
    benchmark.group = f"softmax_xent N={n} C={c}"
    rng = np.random.default_rng(0)
    logits = (3 * rng.standard_normal((n, c))).astype(DTYPE)
    target = rng.integers(0, c, n)
    if impl == "numba":
        _run(benchmark, softmax_cross_entropy, logits, target, 0.1, 1.0 / n)
    elif impl == "reference":
        _run(benchmark, REFERENCE.softmax_cross_entropy, logits, target, 0.1, 1.0 / n)
    else:
        tl = torch.from_numpy(logits).requires_grad_()
        tt = torch.from_numpy(target)

        def fwd_bwd():
            loss = torch.nn.functional.cross_entropy(tl, tt, label_smoothing=0.1)
            return torch.autograd.grad(loss, tl)

        _run(benchmark, fwd_bwd)


# -------------------------------------------------------------------- optimizers
_OPTIM = {
    "sgd": (
        1,
        dict(
            lr=0.01,
            momentum=0.9,
            dampening=0.0,
            nesterov=True,
            weight_decay=1e-4,
            maximize=False,
            first_step=False,
        ),
    ),
    "adagrad": (
        1,
        dict(lr=0.01, lr_decay=0.0, weight_decay=0.0, eps=1e-10, step=10, maximize=False),
    ),
    "rmsprop": (
        3,
        dict(
            lr=0.01,
            alpha=0.99,
            eps=1e-8,
            weight_decay=0.0,
            momentum=0.9,
            centered=True,
            maximize=False,
        ),
    ),
    "adam": (
        2,
        dict(
            lr=1e-3,
            beta1=0.9,
            beta2=0.999,
            eps=1e-8,
            weight_decay=0.01,
            decoupled=True,
            amsgrad=False,
            step=10,
            maximize=False,
        ),
    ),
}


def _torch_optimizer(name, tp):
    o = torch.optim
    kw = dict(foreach=False)
    if name == "sgd":
        return o.SGD([tp], lr=0.01, momentum=0.9, nesterov=True, weight_decay=1e-4, **kw)
    if name == "adagrad":
        return o.Adagrad([tp], lr=0.01, **kw)
    if name == "rmsprop":
        return o.RMSprop([tp], lr=0.01, momentum=0.9, centered=True, **kw)
    return o.AdamW([tp], lr=1e-3, weight_decay=0.01, **kw)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("shape", [(512, 512), (512,)], ids=["512x512", "512"])
@pytest.mark.parametrize("name", list(_OPTIM))
def test_optimizer_update(benchmark, name, shape, impl):
    _need_torch(impl)
    benchmark.group = f"optim {name} {'x'.join(map(str, shape))}"
    n_state, kw = _OPTIM[name]
    rng = np.random.default_rng(0)
    p = rng.standard_normal(shape).astype(DTYPE)
    g = rng.standard_normal(shape).astype(DTYPE)
    state = [np.abs(rng.standard_normal(shape)).astype(DTYPE) * 0.1 for _ in range(n_state)]
    if name == "rmsprop":  # square_avg >= grad_avg**2 keeps the centered sqrt real
        state[1] *= 0.1
        state.insert(2, state.pop())  # (square_avg, grad_avg, momentum_buffer)
    if name == "adam":
        state.append(None)  # max_exp_avg_sq (amsgrad off)
    if impl == "numba":
        _run(benchmark, lambda: UPDATE_KERNELS[name](np, p, g, *state, **kw))
    elif impl == "reference":
        functional = pytest.importorskip("gpunet.optim.functional")
        ref = getattr(functional, name + "_")
        # repeated identical steps drive centered RMSprop's variance to ~0 and, after
        # rounding, below it (NaN): harmless for a timing, so silence NumPy about it
        with np.errstate(invalid="ignore"):
            _run(benchmark, lambda: ref(np, p, g, *state, **kw))
    else:
        tp = torch.from_numpy(p).requires_grad_()
        tp.grad = torch.from_numpy(g)
        opt = _torch_optimizer(name, tp)
        _run(benchmark, opt.step)


# ------------------------------------------- weight gradient + momentum update
@pytest.mark.parametrize("impl", ["folded", "separate", "torch"])
@pytest.mark.parametrize("n", [32, 128, 512])
def test_weight_grad_and_momentum_update(benchmark, n, impl):
    """``dW = dz.T @ a`` then SGD momentum on a 784->512 layer: the fused epoch's fold
    (BLAS adds ``dW`` into the pre-scaled momentum buffer, one sweep updates the weight)
    against forming ``dW`` and then one update sweep (what batches over
    ``FOLDED_MOMENTUM_MAX_ROWS`` rows run) and torch (``mm`` + ``SGD.step``)."""
    from gpunet.kernels.cpu.blas import weight_grad  # noqa: PLC0415
    from gpunet.kernels.cpu.fused_step import update_weights_folded  # noqa: PLC0415
    from gpunet.kernels.cpu.update_rules import SGD, hyper_row, update_array  # noqa: PLC0415

    _need_torch(impl)
    benchmark.group = f"dW + sgd momentum, {n} rows, 784->512"
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, 784)).astype(DTYPE)
    dz = (rng.standard_normal((n, 512)) / n).astype(DTYPE)
    W = (rng.standard_normal((512, 784)) / 28).astype(DTYPE)
    buf = (1e-3 * rng.standard_normal((512, 784))).astype(DTYPE)
    grad = np.zeros_like(W)
    group = dict(lr=1e-3, momentum=0.9, dampening=0.0, nesterov=False, weight_decay=0.0)
    h = hyper_row("sgd", group)
    p_flat, g_flat, s_flat, none = W.ravel(), grad.ravel(), buf.ravel(), W.ravel()[:0]
    if impl == "folded":  # a middle step of an epoch: buf arrives scaled, leaves scaled
        _run(benchmark, update_weights_folded, p_flat, s_flat, 0, dz, a, h, 5, False, True, True)
    elif impl == "separate":

        def step():
            weight_grad(dz, a, grad)
            update_array(SGD, p_flat, g_flat, s_flat, none, none, h, 5, False, False)

        _run(benchmark, step)
    else:
        tW, tdz, ta, tg = (torch.from_numpy(x) for x in (W, dz, a, grad))
        tW.requires_grad_()
        tW.grad = tg
        opt = torch.optim.SGD([tW], foreach=False, **group)
        opt.state[tW]["momentum_buffer"] = torch.from_numpy(buf)

        def step():
            torch.mm(tdz.T, ta, out=tg)
            opt.step()

        _run(benchmark, step)


# ------------------------------------------------------- shuffled batch gather
@pytest.mark.parametrize("impl", ["numba", "reference", "torch"])
@pytest.mark.parametrize("n", [128, 512])
def test_gather_batch(benchmark, n, impl):
    """A shuffled batch's rows out of a 60,000 x 784 data set (188 MB): the fused epoch's
    :func:`gather_rows` against NumPy's ``take`` and torch's ``index_select``. Each
    call takes the next ``n`` rows of one permutation, as an epoch does, so the rows
    come from memory, not from the cache."""
    from gpunet.kernels.cpu.gather import gather_rows  # noqa: PLC0415

    _need_torch(impl)
    benchmark.group = f"gather {n} shuffled rows of 60000x784"
    rng = np.random.default_rng(0)
    X = rng.standard_normal((60_000, 784), dtype=DTYPE)
    order = rng.permutation(len(X))
    out = np.empty((n, 784), DTYPE)
    starts = iter(np.tile(np.arange(0, len(X) - n, n), 1000))
    if impl == "numba":
        gather = gather_rows
    elif impl == "reference":

        def gather(X, rows, out):
            np.take(X, rows, axis=0, out=out)

    else:
        tX, t_order, t_out = torch.from_numpy(X), torch.from_numpy(order), torch.from_numpy(out)

        def gather(X, rows, out):
            torch.index_select(tX, 0, t_order[rows[0] : rows[0] + n], out=t_out)

    def next_batch():
        start = next(starts)
        rows = order[start : start + n] if impl != "torch" else (start,)
        gather(X, rows, out)

    _run(benchmark, next_batch)


# ------------------------------------------------------------- multi-thread steps
@pytest.mark.parametrize("threads", ["all", "one"])
@pytest.mark.parametrize("n", [32, 128, 512, 4096])
def test_multi_thread_epoch(benchmark, n, threads, monkeypatch):
    """A shuffled fused epoch of ``n``-row batches (8 of them, at least 4096 rows;
    784-512-512-10 ReLU, SGD with momentum): steps on ``gpunet.get_num_threads()``
    threads of gpunet's own with one-thread BLAS, routed by this machine's route table,
    against the same kernels on the calling thread with BLAS's own threads. Run it
    without ``OMP_NUM_THREADS=1``."""
    from gpunet import nn, optim  # noqa: PLC0415
    from gpunet.train import Trainer  # noqa: PLC0415
    from gpunet.train.engines import FusedCpuEngine  # noqa: PLC0415

    monkeypatch.setattr(FusedCpuEngine, "threads", None if threads == "all" else 1)
    batches = max(8, 4096 // n)
    benchmark.group = f"fused epoch, {batches} batches of {n}"
    rng = np.random.default_rng(0)
    X = rng.standard_normal((batches * n, 784), dtype=DTYPE)
    y = rng.integers(0, 10, batches * n)
    model = nn.Sequential(nn.Dense(784, 512, "relu"), nn.Dense(512, 512, "relu"), nn.Dense(512, 10))
    trainer = Trainer(
        model,
        nn.CrossEntropyLoss(),
        optim.SGD(model.parameters(), lr=0.01, momentum=0.9),
        engine="fused",
        progress=False,
        verbose=0,
    )

    def epoch():
        trainer.fit(X, y, epochs=1, batch_size=n)

    _run(benchmark, epoch)


# -------------------------------------------------------------------- denormals
@pytest.mark.parametrize("mode", ["flush_off", "flush_on", "mxcsr_ftz"])
def test_denormal_momentum(benchmark, mode):
    """SGD momentum=1 over a buffer of subnormal floats (dead units): the arithmetic
    stays subnormal forever unless flushed; flush_on zeroes it on the first call."""
    benchmark.group = "denormals sgd(momentum=1) 512x512 subnormal buffer"
    shape = (512, 512)
    p = np.ones(shape, DTYPE)
    g = np.zeros(shape, DTYPE)
    buf = np.full(shape, 1e-39, DTYPE)
    kw = dict(
        lr=0.01,
        momentum=1.0,
        dampening=0.0,
        nesterov=False,
        weight_decay=0.0,
        maximize=False,
        first_step=False,
    )
    sgd = UPDATE_KERNELS["sgd"]
    if mode == "mxcsr_ftz":
        with flush_denormals():
            _run(benchmark, lambda: sgd(np, p, g, buf, flush_denormals=False, **kw))
    else:
        flush = mode == "flush_on"
        _run(benchmark, lambda: sgd(np, p, g, buf, flush_denormals=flush, **kw))
