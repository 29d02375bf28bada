"""Two-thread steps of the fused epoch.

- Data-parallel, ``DATA_PARALLEL_MIN_ROWS`` rows or more: half of the rows each, then
  half of every update sweep. They give the weights and optimizer state of the same
  kernels on one thread bit for bit (both sum each half's gradient, then add).
- Model-parallel, ``MODEL_PARALLEL_MIN_ROWS`` rows up to there: half of every layer's
  columns each. The same sums as one thread, element by element; BLAS may run a
  half-width product with another kernel than the whole one, so they are held to the
  issue's tolerances, like the autograd path."""

import threading

import numpy as np
import pytest

import gpunet
from gpunet import nn
from gpunet.kernels.cpu import blas, fused_mlp, threads
from gpunet.train import Trainer
from gpunet.train.engines import FusedCpuEngine
from tests.test_fused_engine import (
    LOSSES,
    OPTIMIZERS,
    TOLERANCE,
    assert_close,
    make_data,
    make_model,
)

WORKER_NAME = "gpunet-step-worker"


@pytest.fixture
def hand_overs(monkeypatch):
    """The number of tasks each epoch's worker thread was handed (one entry per epoch)."""
    counts = []
    real = fused_mlp.step_worker_thread

    def counting(*args):
        context = real(*args)
        flags, shared = context.__enter__()

        class Wrapped:
            def __enter__(self):
                return flags, shared

            def __exit__(self, *exc):
                counts.append(int(flags[threads.FLAG_GENERATION]))
                return context.__exit__(*exc)

        return Wrapped()

    monkeypatch.setattr(fused_mlp, "step_worker_thread", counting)
    return counts


def fit(engine, opt_name, loss_name, dtype, n_samples, batch_size, epochs=2):
    X, y = make_data(dtype, loss_name)
    rng = np.random.default_rng(1)
    rows = rng.integers(0, len(X), n_samples)
    X = (X[rows] + rng.standard_normal((n_samples, X.shape[1]))).astype(dtype)
    y = y[rows]
    model = make_model(dtype)
    opt = OPTIMIZERS[opt_name](model.parameters())
    if "sum" in loss_name:  # gradients batch_size times larger than the mean's
        for group in opt.param_groups:
            group["lr"] /= batch_size
    trainer = Trainer(
        model,
        LOSSES[loss_name](),
        opt,
        engine=engine,
        progress=False,
        verbose=0,
        metrics=["accuracy"] if loss_name.startswith("ce") else None,
    )
    history = trainer.fit(X, y, epochs=epochs, batch_size=batch_size, seed=3)
    state = {
        f"{k}.{key}": v
        for k, p in enumerate(model.parameters())
        for key, v in opt.state[p].items()
        if isinstance(v, np.ndarray)
    }
    return model.state_dict(), state, history.history


CASES = {
    # (samples, batch size, tasks handed to the worker per epoch, same bits as one
    # thread); data-parallel steps of 400 rows (two tasks each), a last one of 20 rows on
    # one thread
    "data-parallel-then-one": (820, 400, 4, True),
    # a full batch split 192 / 193 (odd, the smallest split)
    "data-parallel-full-odd": (385, 385, 2, True),
    # model-parallel steps of 40 rows (one task each), a last one of 20 on one thread
    # (SGD momentum: folded on both, the buffer handed over pre-scaled)
    "model-parallel-then-one": (100, 40, 2, False),
    # an odd full batch; the layers' widths are odd too (7, 5 and 3 columns)
    "model-parallel-full-odd": (67, 67, 1, False),
    # data-parallel steps, then a model-parallel one of 100 rows
    "data-parallel-then-model-parallel": (900, 400, 5, False),
}


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("loss_name", list(LOSSES))
@pytest.mark.parametrize("opt_name", list(OPTIMIZERS))
def test_two_threads_match_one_thread_and_autograd(
    opt_name, loss_name, case, dtype, hand_overs, monkeypatch
):
    n_samples, batch_size, tasks, same_bits = CASES[case]
    ref_w, ref_state, ref_hist = fit("autograd", opt_name, loss_name, dtype, n_samples, batch_size)
    assert hand_overs == []
    w, state, hist = fit("fused", opt_name, loss_name, dtype, n_samples, batch_size)
    assert hand_overs == [tasks] * 2
    monkeypatch.setattr(FusedCpuEngine, "two_threads", False)
    w1, state1, hist1 = fit("fused", opt_name, loss_name, dtype, n_samples, batch_size)
    assert len(hand_overs) == 2
    # the same kernels on one thread: the same bits (data-parallel) or to tolerance; the
    # autograd path: to tolerance
    for ref, out, one in ((ref_w, w, w1), (ref_state, state, state1)):
        assert ref.keys() == out.keys() == one.keys()
        if same_bits:
            for key in ref:
                np.testing.assert_array_equal(out[key], one[key], err_msg=key)
        assert_close(one, out, TOLERANCE[dtype], "weight or state")
        assert_close(ref, out, TOLERANCE[dtype], "weight or state")
    # the reported loss is a float64 sum, which each data-parallel thread sums over its
    # own rows
    np.testing.assert_allclose(hist["loss"], hist1["loss"], rtol=1e-13 if same_bits else 1e-6)
    np.testing.assert_allclose(hist["loss"], ref_hist["loss"], rtol=1e-6)
    if "accuracy" in ref_hist:
        assert hist["accuracy"] == ref_hist["accuracy"] == hist1["accuracy"]


def test_worker_thread_ends_with_each_epoch():
    fit("fused", "adam", "ce_mean", np.float32, 800, 400, epochs=1)
    assert WORKER_NAME not in {t.name for t in threading.enumerate()}


def test_worker_stops_when_the_epoch_raises(monkeypatch):
    """An error inside the epoch still stops and joins the worker thread."""

    def failing(*args):
        raise RuntimeError("epoch failed")

    monkeypatch.setattr(fused_mlp, "train_epoch", failing)
    with pytest.raises(RuntimeError, match="epoch failed"):
        fit("fused", "sgd_momentum", "ce_mean", np.float32, 800, 400, epochs=1)
    assert WORKER_NAME not in {t.name for t in threading.enumerate()}


@pytest.mark.parametrize(
    ("n", "batch_size", "expected"),
    [
        (900, 400, (200, 200, True)),  # halves of 400; the last 100 rows: model-parallel
        (1000, 600, (300, 300, True)),  # the last 400 rows split 200 / 200
        (1000, 800, (400, 400, True)),  # the last 200 rows: model-parallel, 200 <= 400
        (700, 500, (250, 250, True)),
        (500, 300, (300, 0, True)),  # model-parallel steps carve this thread's scratch
        (384, 384, (192, 192, True)),
        (385, 1000, (192, 193, True)),
        (100, 40, (40, 0, True)),
        (100, 20, (20, 0, False)),  # nothing on two threads
        (40, 31, (31, 0, False)),
    ],
)
def test_scratch_rows(n, batch_size, expected):
    assert tuple(fused_mlp.scratch_rows(n, batch_size, True)) == expected
    single = min(batch_size, n)
    assert tuple(fused_mlp.scratch_rows(n, batch_size, False)) == (single, 0, False)


def test_split_thresholds():
    low = blas.DATA_PARALLEL_MIN_ROWS
    assert blas.data_parallel_split(low - 1) == 0
    assert blas.data_parallel_split(low) == low // 2
    assert blas.data_parallel_split(2 * low + 1) == low
    model_low = blas.MODEL_PARALLEL_MIN_ROWS
    assert 1 < model_low < low
    assert not blas.model_parallel_rows(model_low - 1)
    assert blas.model_parallel_rows(model_low)
    assert blas.model_parallel_rows(low - 1)
    assert not blas.model_parallel_rows(low)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
def test_split_weight_gradient_against_float64_oracle(dtype):
    """``weight_grad`` of a split step (two half products, added) against float64."""
    rng = np.random.default_rng(4)
    n = blas.DATA_PARALLEL_MIN_ROWS + 17
    dz = rng.standard_normal((n, 9)).astype(dtype)
    a = rng.standard_normal((n, 13)).astype(dtype)
    out = np.empty((9, 13), dtype)
    blas.weight_grad(dz, a, out)
    ref = dz.astype(np.float64).T @ a.astype(np.float64)
    scale = np.abs(dz.astype(np.float64)).T @ np.abs(a.astype(np.float64))
    tol = 1e-13 if dtype == np.float64 else 1e-5
    assert np.all(np.abs(out - ref) <= tol * scale)
    half = n // 2
    expected = (dz[:half].T @ a[:half]).astype(dtype)
    expected += (dz[half:].T @ a[half:]).astype(dtype)
    np.testing.assert_allclose(out, expected, rtol=0, atol=tol * scale.max())


@pytest.mark.parametrize(
    ("batch_size", "tasks"), [(400, 4), (64, 13)], ids=["data-parallel", "model-parallel"]
)
def test_gelu_network_with_biasless_layers_on_two_threads(
    batch_size, tasks, monkeypatch, hand_overs
):
    """Saved pre-activations (GELU) and layers without bias through the worker."""
    dtype = np.float64
    rng = np.random.default_rng(9)
    X = rng.standard_normal((800, 6))
    y = rng.integers(0, 3, 800)
    results = []
    for engine, two_threads in (("autograd", False), ("fused", True), ("fused", False)):
        monkeypatch.setattr(FusedCpuEngine, "two_threads", two_threads)
        gpunet.manual_seed(3)
        model = nn.Sequential(
            nn.Dense(6, 16, "gelu"), nn.Linear(16, 8, bias=False), nn.GELU(), nn.Dense(8, 3)
        ).to(dtype=dtype)
        opt = OPTIMIZERS["adamw"](model.parameters())
        Trainer(model, nn.CrossEntropyLoss(), opt, engine=engine, progress=False, verbose=0).fit(
            X, y, epochs=2, batch_size=batch_size, seed=1
        )
        results.append(model.state_dict())
    assert hand_overs == [tasks, tasks]
    ref, two, one = results
    if batch_size >= blas.DATA_PARALLEL_MIN_ROWS:
        for key in ref:
            np.testing.assert_array_equal(two[key], one[key], err_msg=key)
    assert_close(one, two, TOLERANCE[dtype], "weight")
    assert_close(ref, two, TOLERANCE[dtype], "weight")


@pytest.mark.parametrize("batch_size", [400, 64], ids=["data-parallel", "model-parallel"])
def test_a_failing_worker_stops_the_epoch_instead_of_hanging(batch_size, monkeypatch):
    real = fused_mlp.step_worker

    def failing_worker(flags, *args):
        if flags[threads.FLAG_GENERATION] < 0:  # the compile call before the thread
            return real(flags, *args)
        raise ValueError("worker broke")

    monkeypatch.setattr(fused_mlp, "step_worker", failing_worker)
    outcome = []

    def train():
        try:
            fit("fused", "adam", "ce_mean", np.float32, 800, batch_size, epochs=1)
        except RuntimeError as error:
            outcome.append(error)

    trainer_thread = threading.Thread(target=train, daemon=True)
    trainer_thread.start()
    trainer_thread.join(timeout=120)
    assert not trainer_thread.is_alive(), "the epoch waited for a dead worker"
    assert len(outcome) == 1 and "worker thread failed" in str(outcome[0])
    assert isinstance(outcome[0].__cause__, ValueError)
    assert WORKER_NAME not in {t.name for t in threading.enumerate()}


@pytest.mark.parametrize("batch_size", [400, 64], ids=["data-parallel", "model-parallel"])
def test_one_cpu_keeps_every_step_on_the_calling_thread(batch_size, monkeypatch, hand_overs):
    from gpunet.train.engines import fused_cpu

    monkeypatch.setattr(fused_cpu, "usable_cpus", lambda: 1)
    fit("fused", "sgd_momentum", "ce_mean", np.float32, 800, batch_size, epochs=1)
    assert hand_overs == []


def _arrive(flags, t, count, results):
    results[t] = threads.barrier(flags, t, count)


@pytest.mark.parametrize("outcome", ["both-arrive", "worker-failed", "epoch-stopped"])
def test_barrier_meets_or_gives_up(outcome):
    """Two threads meet at a numbered barrier; one waiting alone gives up once the
    worker has failed or the epoch has stopped it, instead of spinning forever."""
    flags = np.zeros(threads.N_FLAGS, np.int64)
    results = [None, None]
    waiter = threading.Thread(target=_arrive, args=(flags, 0, 1, results))
    waiter.start()
    waiter.join(timeout=0.2)
    assert waiter.is_alive(), "passed a barrier the other thread has not reached"
    if outcome == "both-arrive":
        _arrive(flags, 1, 1, results)
    elif outcome == "worker-failed":
        flags[threads.FLAG_DONE] = threads.WORKER_FAILED
    else:
        flags[threads.FLAG_GENERATION] = -1
    waiter.join(timeout=60)
    assert not waiter.is_alive()
    assert results[0] is (outcome == "both-arrive")
    assert flags[threads.FLAG_ARRIVED] == 1


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
def test_two_thread_steps_run_dropout(dtype, hand_overs, monkeypatch):
    """Dropout on two-thread steps: each half of a data-parallel step draws its rows of
    the step's masks, each thread of a model-parallel step its columns, so the weights
    are the one-thread epoch's and the autograd engine's (1e-10 float64, 1e-5 float32):
    900 rows in batches of 400, two data-parallel steps of two tasks each, then a
    model-parallel one of 100 rows (the widths 16, 12 and 3: an odd split too)."""
    from gpunet import optim

    rng = np.random.default_rng(2)
    X = rng.standard_normal((900, 6)).astype(dtype)
    y = rng.integers(0, 3, 900)

    def run(engine):
        gpunet.manual_seed(0)
        model = nn.Sequential(
            nn.Dense(6, 16, "gelu"),
            nn.Dropout(0.3),
            nn.Dense(16, 12),
            nn.Tanh(),
            nn.Dropout(0.2),
            nn.Dense(12, 3),
            nn.Dropout(0.25),
        ).to(dtype=dtype)
        opt = optim.Adam(model.parameters(), lr=0.01)
        trainer = Trainer(model, "cross_entropy", opt, engine=engine, progress=False, verbose=0)
        trainer.fit(X, y, epochs=2, batch_size=400, seed=1)
        counters = [m.counter for m in model if isinstance(m, nn.Dropout)]
        return [p.data.copy() for p in model.parameters()], counters

    want, want_counts = run("autograd")
    got, got_counts = run("fused")
    assert hand_overs == [5, 5]
    monkeypatch.setattr(FusedCpuEngine, "two_threads", False)
    one, _ = run("fused")
    assert len(hand_overs) == 2
    tol = TOLERANCE[dtype]
    for two, single, ref in zip(got, one, want):
        np.testing.assert_allclose(two, single, rtol=tol, atol=tol)
        np.testing.assert_allclose(two, ref, rtol=tol, atol=tol)
    assert got_counts == want_counts == [6, 6, 6]
