"""Multi-thread steps of the fused epoch, for T = 1, 2, 3 and 4 threads.

- Model-parallel: each thread takes its share of every layer's columns. The same sums
  as one thread, element by element; BLAS may run a narrower product with another
  kernel than the whole one, which changes last bits.
- Data-parallel: each thread takes its share of the rows, then of every update sweep;
  the T weight gradients are added in thread order.

Every T is held to the autograd engine's weights and optimizer state at the issue's
tolerances (1e-10 float64, 1e-5 float32). The route table is forced small here
(model-parallel from 8 rows, data-parallel from 64), so small data sets reach every
route; T = 3 and 4 oversubscribe this machine's cores, which the waits allow (they
yield the CPU)."""

import functools
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

import gpunet
from gpunet import nn, optim
from gpunet.kernels.cpu import fused_mlp, routes, threads
from gpunet.train import Trainer
from gpunet.train.engines import FusedCpuEngine
from gpunet.train.engines import routes as route_tables
from tests.test_fused_engine import LOSSES, OPTIMIZERS, TOLERANCE, assert_close, make_model

WORKER_NAME = "gpunet-step-worker"
THREADS = (1, 2, 3, 4)
MODEL_MIN, DATA_MIN = 8, 64  # the forced route table's thresholds
SMALL_ROUTES = [(0, "one-thread"), (MODEL_MIN, "model-parallel"), (DATA_MIN, "data-parallel")]


@pytest.fixture
def hand_overs(monkeypatch):
    """The number of tasks each epoch's workers were handed (one entry per epoch that
    started worker threads)."""
    counts = []
    real = fused_mlp.worker_threads

    def counting(*args):
        context = real(*args)
        team = context.__enter__()

        class Wrapped:
            def __enter__(self):
                return team

            def __exit__(self, *exc):
                counts.append(int(team.flags[threads.FLAG_GENERATION]))
                return context.__exit__(*exc)

        return Wrapped()

    monkeypatch.setattr(fused_mlp, "worker_threads", counting)
    return counts


@pytest.fixture
def small_routes():
    with route_tables.forced_routes(SMALL_ROUTES):
        yield


@pytest.fixture
def team_of(monkeypatch):
    def set_threads(n):
        monkeypatch.setattr(FusedCpuEngine, "threads", n)

    return set_threads


def make_data(dtype, loss_name, n_samples):
    rng = np.random.default_rng(1)
    X = rng.standard_normal((n_samples, 5)).astype(dtype)
    if loss_name.startswith("ce"):
        y = rng.integers(0, 3, n_samples)
    else:
        y = rng.standard_normal((n_samples, 3)).astype(dtype)
    return X, y


def fit(engine, opt_name, loss_name, dtype, n_samples, batch_size, epochs=2):
    """Weights, optimizer state and History of a seeded shuffled fit."""
    X, y = make_data(dtype, loss_name, n_samples)
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


@functools.cache
def autograd_fit(opt_name, loss_name, dtype, n_samples, batch_size):
    return fit("autograd", opt_name, loss_name, dtype, n_samples, batch_size)


CASES = {
    # (samples, batch size, tasks handed to the workers per epoch when T > 1)
    # (22 rows: on a 12-row set RMSprop in float32 put one weight 9.5e-6 off, 1.7e-5 of
    # the largest, on the one-thread path every T takes here: its first steps divide by
    # the gradient's own magnitude, so rounding near a zero gradient becomes a step)
    "batch-1": (22, 1, 0),
    # model-parallel steps of 20 rows (one task each), a partial last one of 5 rows on
    # the calling thread (SGD momentum: folded, the buffer handed over pre-scaled)
    "model-parallel-then-partial": (45, 20, 2),
    # data-parallel steps of 100 rows (two tasks each), then a model-parallel one of 30
    "data-parallel-then-model-parallel": (230, 100, 5),
    # an odd full batch, data-parallel; the layers' widths are odd too (7, 5 and 3
    # columns: with T = 4 one thread's share of a 3-wide layer is empty)
    "full-batch-data-parallel": (67, 67, 2),
    # a full batch, model-parallel
    "full-batch-model-parallel": (63, 63, 1),
}
LOSS_NAMES = list(LOSSES)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("opt_name", list(OPTIMIZERS))
@pytest.mark.parametrize("n_threads", THREADS)
def test_every_thread_count_matches_autograd(
    n_threads, opt_name, case, dtype, hand_overs, small_routes, team_of
):
    """Each optimizer with a loss (in turn), each route, T = 1-4: the autograd engine's
    weights, optimizer state, losses and accuracy."""
    loss_name = LOSS_NAMES[(list(OPTIMIZERS).index(opt_name) + n_threads) % len(LOSS_NAMES)]
    n_samples, batch_size, tasks = CASES[case]
    ref_w, ref_state, ref_hist = autograd_fit(opt_name, loss_name, dtype, n_samples, batch_size)
    team_of(n_threads)
    w, state, hist = fit("fused", opt_name, loss_name, dtype, n_samples, batch_size)
    assert hand_overs == ([tasks] * 2 if n_threads > 1 and tasks else [])
    for ref, out in ((ref_w, w), (ref_state, state)):
        assert ref.keys() == out.keys()
        assert_close(ref, out, TOLERANCE[dtype], "weight or state")
    np.testing.assert_allclose(hist["loss"], ref_hist["loss"], rtol=1e-6)
    if "accuracy" in ref_hist:
        assert hist["accuracy"] == ref_hist["accuracy"]


@pytest.mark.parametrize("n_threads", [2, 3])
def test_default_routes_match_autograd(n_threads, hand_overs, team_of, monkeypatch):
    """Without a forced table: model-parallel and data-parallel steps at the default
    thresholds (a batch of the data-parallel minimum, then a model-parallel rest). A
    table ``gpunet tune`` kept on this machine is set aside: the defaults are tested."""
    monkeypatch.setattr(route_tables, "measured_table", lambda n_threads: None)
    monkeypatch.setattr(route_tables, "_measured", {})
    (_, _), (model_min, _), (data_min, _) = route_tables.default_routes(n_threads)
    n_samples = data_min + model_min + 3
    team_of(n_threads)
    ref_w, _, _ = autograd_fit("adam", "ce_mean", np.float64, n_samples, data_min)
    w, _, _ = fit("fused", "adam", "ce_mean", np.float64, n_samples, data_min)
    assert hand_overs == [3, 3]
    assert_close(ref_w, w, TOLERANCE[np.float64], "weight")


def test_workers_end_with_each_epoch(team_of, small_routes):
    team_of(3)
    fit("fused", "adam", "ce_mean", np.float32, 200, 100, epochs=1)
    assert not [t for t in threading.enumerate() if t.name.startswith(WORKER_NAME)]


def test_workers_stop_when_the_epoch_raises(monkeypatch, team_of, small_routes):
    """An error inside the epoch still stops and joins the worker threads."""

    def failing(*args):
        raise RuntimeError("epoch failed")

    team_of(4)
    monkeypatch.setattr(fused_mlp, "train_epoch", failing)
    with pytest.raises(RuntimeError, match="epoch failed"):
        fit("fused", "sgd_momentum", "ce_mean", np.float32, 200, 100, epochs=1)
    assert not [t for t in threading.enumerate() if t.name.startswith(WORKER_NAME)]


@pytest.mark.parametrize(
    ("n", "batch_size", "n_threads", "expected"),
    [
        (230, 100, 2, (50, 50, True)),  # halves of 100; the last 30 rows: model-parallel
        (230, 100, 3, (33, 34, True)),  # shares 33 / 33 / 34
        (230, 100, 4, (30, 25, True)),  # the last 30 rows (model-parallel) take more
        (67, 67, 4, (16, 17, True)),  # full batch, shares 16 / 17 / 17 / 17
        (45, 20, 3, (20, 0, True)),  # model-parallel steps carve this thread's scratch
        (12, 1, 4, (1, 0, False)),  # nothing on several threads
        (230, 100, 1, (100, 0, False)),
    ],
)
def test_scratch_rows(n, batch_size, n_threads, expected):
    table = route_tables.pack(SMALL_ROUTES)
    assert tuple(routes.scratch_rows(n, batch_size, n_threads, table)) == expected


@pytest.mark.parametrize("n_threads", [1, 2, 3, 16])
def test_step_route(n_threads):
    table = route_tables.pack(SMALL_ROUTES)
    multi = n_threads > 1
    assert routes.step_route(MODEL_MIN - 1, n_threads, table) == routes.ROUTE_ONE
    assert routes.step_route(MODEL_MIN, n_threads, table) == (
        routes.ROUTE_MODEL if multi else routes.ROUTE_ONE
    )
    assert routes.step_route(DATA_MIN - 1, n_threads, table) == (
        routes.ROUTE_MODEL if multi else routes.ROUTE_ONE
    )
    assert routes.step_route(DATA_MIN, n_threads, table) == (
        routes.ROUTE_DATA if multi else routes.ROUTE_ONE
    )
    # any order of routes: data-parallel at 4-15 rows, one thread from 16, model from 64
    mixed = route_tables.pack([(4, "data-parallel"), (16, "one-thread"), (64, "model-parallel")])
    assert routes.step_route(3, n_threads, mixed) == routes.ROUTE_ONE
    assert routes.step_route(20, n_threads, mixed) == routes.ROUTE_ONE
    assert routes.step_route(64, n_threads, mixed) == (
        routes.ROUTE_MODEL if multi else routes.ROUTE_ONE
    )
    # a data-parallel step needs a row per thread (model-parallel below that)
    assert routes.step_route(15, n_threads, mixed) == (
        (routes.ROUTE_DATA if n_threads <= 15 else routes.ROUTE_MODEL)
        if multi
        else routes.ROUTE_ONE
    )


@pytest.mark.parametrize("n", [0, 1, 2, 3, 7, 100, 101])
@pytest.mark.parametrize("n_threads", [1, 2, 3, 4, 16])
def test_shares_cover_the_range_in_order(n, n_threads):
    shares = [threads.share(n, t, n_threads) for t in range(n_threads)]
    assert shares[0][0] == 0 and shares[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(shares, shares[1:]))
    sizes = [hi - lo for lo, hi in shares]
    assert max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize("case", ["data-parallel", "model-parallel"])
def test_a_failing_worker_stops_the_epoch_instead_of_hanging(case, monkeypatch, team_of):
    batch_size = {"data-parallel": 100, "model-parallel": 20}[case]
    team_of(3)
    with route_tables.forced_routes(SMALL_ROUTES):
        fit("fused", "adam", "ce_mean", np.float32, 200, batch_size, epochs=1)  # compiled
    real = fused_mlp.step_worker

    def failing_worker(t, team, *args):
        if team.flags[threads.FLAG_GENERATION] < 0 or t == 1:  # the compile call; one
            return real(t, team, *args)  # worker runs, the other breaks
        raise ValueError("worker broke")

    monkeypatch.setattr(fused_mlp, "step_worker", failing_worker)
    outcome = []

    def train():
        try:
            with route_tables.forced_routes(SMALL_ROUTES):
                fit("fused", "adam", "ce_mean", np.float32, 200, batch_size, epochs=1)
        except RuntimeError as error:
            outcome.append(error)

    trainer_thread = threading.Thread(target=train, daemon=True)
    trainer_thread.start()
    trainer_thread.join(timeout=60)
    assert not trainer_thread.is_alive(), "the epoch waited for a dead worker"
    assert len(outcome) == 1 and "worker thread failed" in str(outcome[0])
    assert isinstance(outcome[0].__cause__, ValueError)
    assert not [t for t in threading.enumerate() if t.name.startswith(WORKER_NAME)]


@pytest.mark.parametrize("batch_size", [100, 20], ids=["data-parallel", "model-parallel"])
def test_one_thread_keeps_every_step_on_the_calling_thread(
    batch_size, monkeypatch, hand_overs, small_routes
):
    monkeypatch.setattr(gpunet.parallel, "_threads", 1)
    fit("fused", "sgd_momentum", "ce_mean", np.float32, 200, batch_size, epochs=1)
    assert hand_overs == []


def _arrive(flags, t, count, results):
    results[t] = threads.barrier(flags, t, count)


def _team_flags(n_threads):
    flags = np.zeros(threads.flags_size(n_threads, 0), np.int64)
    flags[threads.FLAG_THREADS] = n_threads
    return flags


@pytest.mark.parametrize("outcome", ["all-arrive", "worker-failed", "epoch-stopped"])
def test_barrier_meets_or_gives_up(outcome):
    """Three threads meet at a numbered barrier; those waiting give up once a worker has
    failed or the epoch has stopped them, instead of spinning forever."""
    warm = _team_flags(1)
    assert threads.barrier(warm, 0, 1)  # compiled before any timed wait
    flags = _team_flags(3)
    results = [None] * 3
    waiters = [threading.Thread(target=_arrive, args=(flags, t, 1, results)) for t in (0, 1)]
    for waiter in waiters:
        waiter.start()
    for waiter in waiters:
        waiter.join(timeout=0.2)
        assert waiter.is_alive(), "passed a barrier the third thread has not reached"
    if outcome == "all-arrive":
        _arrive(flags, 2, 1, results)
    elif outcome == "worker-failed":
        flags[threads.N_FLAGS + 3 * 2 + threads.DONE] = threads.WORKER_FAILED
    else:
        flags[threads.FLAG_GENERATION] = -1
    for waiter in waiters:
        waiter.join(timeout=60)
        assert not waiter.is_alive()
    assert results[:2] == [outcome == "all-arrive"] * 2


MASKED = (nn.Dropout, nn.DropConnectDense)


def masked_fits(build, make_optimizer, dtype, seed, n_threads, team_of):
    """Weights and mask counters of the autograd engine and of the fused engine on
    ``n_threads`` threads, each training ``build()`` in ``dtype`` with cross-entropy on
    the same 230 rows (seeded by ``seed``) for two epochs in batches of 100."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((230, 6)).astype(dtype)
    y = rng.integers(0, 3, 230)
    results = []
    for engine, threads_of_engine in (("autograd", None), ("fused", n_threads)):
        team_of(threads_of_engine)
        gpunet.manual_seed(0)
        model = build().to(dtype=dtype)
        opt = make_optimizer(model.parameters())
        trainer = Trainer(model, "cross_entropy", opt, engine=engine, progress=False, verbose=0)
        trainer.fit(X, y, epochs=2, batch_size=100, seed=1)
        counters = [m.counter for m in model if isinstance(m, MASKED)]
        results.append(([p.data.copy() for p in model.parameters()], counters))
    return results


def assert_same_fits(fits, dtype):
    (want, want_counts), (got, got_counts) = fits
    tol = TOLERANCE[dtype]
    for multi, ref in zip(got, want):
        np.testing.assert_allclose(multi, ref, rtol=tol, atol=tol)
    assert got_counts == want_counts


@pytest.mark.parametrize("n_threads", [2, 4])
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
def test_multi_thread_steps_run_dropout(n_threads, dtype, hand_overs, small_routes, team_of):
    """Dropout on multi-thread steps: each share of a data-parallel step draws its rows
    of the step's masks, each thread of a model-parallel step its columns, so the
    weights are the autograd engine's (1e-10 float64, 1e-5 float32): 230 rows in
    batches of 100, two data-parallel steps of two tasks each, then a model-parallel
    one of 30 rows (the widths 16, 12 and 3: uneven shares too)."""

    def build():
        return nn.Sequential(
            nn.Dense(6, 16, "gelu"),
            nn.Dropout(0.3),
            nn.Dense(16, 12),
            nn.Tanh(),
            nn.Dropout(0.2),
            nn.Dense(12, 3),
            nn.Dropout(0.25),
        )

    fits = masked_fits(build, lambda p: optim.Adam(p, lr=0.01), dtype, 2, n_threads, team_of)
    assert hand_overs == [5, 5]
    assert_same_fits(fits, dtype)
    assert fits[1][1] == [6, 6, 6]


@pytest.mark.parametrize("opt_name", ["adam", "sgd_momentum"])
@pytest.mark.parametrize("n_threads", [2, 3, 4])
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
def test_multi_thread_steps_run_dropconnect(
    n_threads, dtype, opt_name, hand_overs, small_routes, team_of
):
    """DropConnectDense on multi-thread steps, against the autograd engine's weights
    (1e-10 float64, 1e-5 float32) and mask counters: 230 rows in batches of 100, two
    data-parallel steps of three tasks each (the masked weights, each share its
    elements; forward-backward; the update, each share of the summed ``dW`` through the
    mask), then a model-parallel step of 30 rows (each thread masks its rows of the
    weights; SGD with momentum would fold ``dW`` there, which a masked weight must not).
    The first layer has no ``dx``, one has p = 0, the last no bias and 3 columns (an
    empty share at T = 4)."""

    def build():
        return nn.Sequential(
            nn.DropConnectDense(6, 16, "relu", p=0.5),
            nn.Dropout(0.2),
            nn.DropConnectDense(16, 12, "tanh", p=0.3),
            nn.DropConnectDense(12, 12, "gelu", p=0.0),
            nn.DropConnectDense(12, 3, p=0.4, bias=False),
        )

    fits = masked_fits(build, OPTIMIZERS[opt_name], dtype, 5, n_threads, team_of)
    assert hand_overs == [7, 7]
    assert_same_fits(fits, dtype)
    assert fits[1][1] == [6, 6, 6, 0, 6]


@pytest.mark.parametrize(("batch_size", "tasks"), [(100, 4), (20, 10)], ids=["data", "model"])
def test_gelu_network_with_biasless_layers(batch_size, tasks, hand_overs, small_routes, team_of):
    """Saved pre-activations (GELU) and layers without bias through the workers."""
    dtype = np.float64
    rng = np.random.default_rng(9)
    X = rng.standard_normal((200, 6))
    y = rng.integers(0, 3, 200)
    results = []
    for engine, n_threads in (("autograd", 1), ("fused", 3)):
        team_of(n_threads)
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
    assert_close(results[0], results[1], TOLERANCE[dtype], "weight")


PINNED_CHILD = """
import os, sys
import numpy as np
os.sched_setaffinity(0, {0})
sys.path.insert(0, sys.argv[1])
from gpunet.train.engines import FusedCpuEngine
from gpunet.train.engines import routes
from tests.test_thread_steps import SMALL_ROUTES, fit
from tests.test_fused_engine import assert_close, TOLERANCE
FusedCpuEngine.threads = 3
with routes.forced_routes(SMALL_ROUTES):
    ref = fit("autograd", "sgd_momentum", "ce_mean", np.float64, 230, 100)
    out = fit("fused", "sgd_momentum", "ce_mean", np.float64, 230, 100)
assert_close(ref[0], out[0], TOLERANCE[np.float64], "weight")
print("pinned ok", len(os.sched_getaffinity(0)))
"""


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity here")
def test_three_threads_on_one_cpu():
    """T = 3 in a process pinned to one CPU (``taskset -c 0``): the waits yield the CPU,
    so the thread being waited for runs, and the numbers stay the autograd engine's."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "GPUNET_COMPILE": "foreground"}
    done = subprocess.run(
        [sys.executable, "-c", PINNED_CHILD, root],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "pinned ok 1" in done.stdout


def test_route_table_defaults_measured_and_forced(tmp_path, monkeypatch):
    from gpunet.backend import jit_cache

    monkeypatch.setattr(jit_cache, "cache_dir", lambda: tmp_path)
    monkeypatch.setattr(route_tables, "_measured", {})

    def table(n):
        return route_tables.route_table(n).tolist()

    assert table(3) == route_tables.pack(route_tables.default_routes(3)).tolist()
    measured = [(0, "model-parallel"), (512, "one-thread"), (2048, "data-parallel")]
    route_tables.save_route_table(3, measured, {"measured": "test"})
    assert table(3) == [0, 1, 512, 0, 2048, 2]
    assert table(2) == route_tables.pack(route_tables.default_routes(2)).tolist()
    with route_tables.forced_routes(route_tables.only("data-parallel")):
        assert table(3) == [0, 2]
    assert table(3) == [0, 1, 512, 0, 2048, 2]
    # a damaged file is ignored (defaults), a bad table is refused before it is kept
    (tmp_path / route_tables.ROUTES_FILE).write_text('{"x": ')
    monkeypatch.setattr(route_tables, "_measured", {})
    assert table(3) == route_tables.pack(route_tables.default_routes(3)).tolist()
    with pytest.raises(ValueError, match="unknown route"):
        route_tables.save_route_table(3, [(0, "three-thread")], {})
    with pytest.raises(ValueError, match="out of order"):
        route_tables.pack([(8, "one-thread"), (8, "model-parallel")])
