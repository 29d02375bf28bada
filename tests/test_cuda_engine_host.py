"""Tier T2: whole training runs through the GPU engine's step sequence, its CUDA C
kernels compiled for the host CPU, against the NumPy (autograd) engine and against a
float64 NumPy oracle of the same steps."""

from __future__ import annotations

import numpy as np
import pytest

import gpunet
from gpunet import nn, optim
from gpunet.losses import CrossEntropyLoss, MSELoss
from gpunet.train import Trainer
from gpunet.train.engines.fused_gpu import FusedGpuEngine

pytestmark = pytest.mark.cudahost

N, F, H1, C = 21, 6, 9, 3

OPTIMIZERS = {
    "sgd": lambda p: optim.SGD(p, lr=0.1),
    "sgd_momentum": lambda p: optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3),
    "adam": lambda p: optim.Adam(p, lr=0.01, amsgrad=True),
    "adamw": lambda p: optim.AdamW(p, lr=0.01, weight_decay=0.1),
    "rmsprop": lambda p: optim.RMSprop(p, lr=0.01, momentum=0.5, centered=True),
    "adagrad": lambda p: optim.Adagrad(p, lr=0.1, lr_decay=0.01),
}


def _model(dtype, seed, acts=("tanh", "gelu")):
    gpunet.manual_seed(seed)
    model = nn.Sequential(
        nn.Linear(F, H1),
        nn.Tanh() if acts[0] == "tanh" else nn.ReLU(),
        nn.Linear(H1, H1, bias=False),
        nn.GELU() if acts[1] == "gelu" else nn.Sigmoid(),
        nn.Linear(H1, C),
    )
    return model.to(dtype=dtype) if dtype != np.float32 else model


def _data(dtype, loss_name):
    rng = np.random.default_rng(5)
    X = rng.standard_normal((N, F)).astype(dtype)
    y = rng.integers(0, C, N) if loss_name == "ce" else rng.standard_normal((N, C)).astype(dtype)
    return X, y


def _train(engine, dtype, opt_name, loss_name, batch_size, epochs=2, seed=0, **engine_kw):
    model = _model(dtype, seed)
    loss = CrossEntropyLoss(label_smoothing=0.1) if loss_name == "ce" else MSELoss()
    opt = OPTIMIZERS[opt_name](model.parameters())
    if engine == "host":
        rt = engine_kw.pop("runtime")

        def engine(m, lo, o, track):
            return FusedGpuEngine(m, lo, o, track, runtime=rt, **engine_kw)

    trainer = Trainer(model, loss, opt, engine=engine, progress=False, verbose=0)
    X, y = _data(dtype, loss_name)
    history = trainer.fit(X, y, epochs=epochs, batch_size=batch_size, seed=3)
    return model, opt, history


def _weights(model):
    return [np.asarray(p.data, np.float64) for p in model.parameters()]


@pytest.mark.parametrize("batch_size", [1, 8, N])  # stochastic, partial last batch, full
@pytest.mark.parametrize("loss_name", ["ce", "mse"])
@pytest.mark.parametrize("opt_name", sorted(OPTIMIZERS))
def test_host_engine_matches_numpy_engine_float64(host_runtime, opt_name, loss_name, batch_size):
    ref_model, ref_opt, ref_hist = _train("autograd", np.float64, opt_name, loss_name, batch_size)
    model, opt, hist = _train(
        "host", np.float64, opt_name, loss_name, batch_size, runtime=host_runtime
    )
    for got, want in zip(_weights(model), _weights(ref_model)):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(hist.history["loss"], ref_hist.history["loss"], rtol=1e-10)
    if loss_name == "ce":
        assert hist.history["accuracy"] == ref_hist.history["accuracy"]
    for p, q in zip(model.parameters(), ref_model.parameters()):
        s, t = opt.state[p], ref_opt.state[q]
        assert sorted(s) == sorted(t)
        for key in s:
            if key == "step":
                assert int(s[key]) == int(t[key])
            elif s[key] is not None:
                np.testing.assert_allclose(s[key], t[key], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("route", ["kernels", "blas"])
@pytest.mark.parametrize("opt_name", ["sgd_momentum", "adam"])
@pytest.mark.parametrize("batch_size", [1, 8, N])
def test_host_engine_matches_numpy_engine_float32(host_runtime, opt_name, batch_size, route):
    ref_model, _, _ = _train("autograd", np.float32, opt_name, "ce", batch_size)
    model, _, _ = _train(
        "host", np.float32, opt_name, "ce", batch_size, runtime=host_runtime, route=route
    )
    for got, want in zip(_weights(model), _weights(ref_model)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def _oracle_sgd_steps(W1, b1, W2, b2, X, y, lr, batches):
    """Plain float64 matrix code: a 2-layer tanh MLP, softmax cross-entropy (mean), SGD."""
    for rows in batches:
        x, t = X[rows], y[rows]
        h = np.tanh(x @ W1.T + b1)
        z = h @ W2.T + b2
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        p[np.arange(len(rows)), t] -= 1
        dz2 = p / len(rows)
        dW2, db2 = dz2.T @ h, dz2.sum(0)
        dz1 = (dz2 @ W2) * (1 - h * h)
        dW1, db1 = dz1.T @ x, dz1.sum(0)
        W1, b1, W2, b2 = W1 - lr * dW1, b1 - lr * db1, W2 - lr * dW2, b2 - lr * db2
    return W1, b1, W2, b2


@pytest.mark.parametrize("route", ["kernels", "blas"])
def test_host_engine_against_independent_oracle(host_runtime, route):
    """Unshuffled SGD with a partial last batch, checked against plain matrix code (so a
    bug the engine shared with the autograd path would still show)."""
    gpunet.manual_seed(1)
    model = nn.Sequential(nn.Linear(F, H1), nn.Tanh(), nn.Linear(H1, C)).to(dtype=np.float64)
    start = [np.array(p.data, np.float64) for p in model.parameters()]
    opt = optim.SGD(model.parameters(), lr=0.3)

    def factory(m, lo, o, track):
        return FusedGpuEngine(m, lo, o, track, runtime=host_runtime, route=route)

    X, y = _data(np.float64, "ce")
    Trainer(model, CrossEntropyLoss(), opt, engine=factory, progress=False, verbose=0).fit(
        X, y, epochs=2, batch_size=8, shuffle=False
    )
    batches = [np.arange(0, 8), np.arange(8, 16), np.arange(16, N)] * 2
    want = _oracle_sgd_steps(*start, X, y, 0.3, batches)
    for got, w in zip(model.parameters(), want):
        np.testing.assert_allclose(np.asarray(got.data), w, rtol=1e-12, atol=1e-12)
    # the partial batch's step moved the weights: one step less gives other weights
    fewer = _oracle_sgd_steps(*start, X, y, 0.3, batches[:-1])
    assert not np.allclose(fewer[0], want[0], rtol=1e-6, atol=0)


class ReplayRuntime:
    """The host build with a CUDA graph's semantics: ``capture`` records the step's
    launches (scalar arguments and buffer addresses as they are then) without running
    them, and every replay runs that record, so a value the step computes on the host
    is frozen at capture, as on a GPU."""

    captures_graphs = True

    def __init__(self, host):
        self.host, self.xp, self._record = host, host.xp, None

    def __getattr__(self, name):
        return getattr(self.host, name)

    def launch(self, *args, **kwargs):
        if self._record is None:
            self.host.launch(*args, **kwargs)
        else:
            self._record.append((args, kwargs))

    def capture(self, step):
        self._record = []
        try:
            step()
        finally:
            record, self._record = self._record, None
        return lambda: [self.host.launch(*a, **kw) for a, kw in record]


MASKED = (nn.Dropout, nn.DropConnectDense)


def _masked_model(net, dtype):
    """Net "dropout": after a GELU layer, a separate Tanh, a p = 0 one and the output
    layer; "dropconnect": DropConnectDense as the first layer (with a Dropout after it), a p = 0
    one, and the output layer without bias."""
    gpunet.manual_seed(4)
    if net == "dropout":
        layers = [
            nn.Dense(F, H1, "gelu"),
            nn.Dropout(0.3),
            nn.Linear(H1, H1),
            nn.Tanh(),
            nn.Dropout(0.2),
            nn.Dense(H1, H1, "relu", bias=False),
            nn.Dropout(0.0),
            nn.Dense(H1, C),
            nn.Dropout(0.25),
        ]
    else:
        layers = [
            nn.DropConnectDense(F, H1, "relu", p=0.5),
            nn.Dropout(0.2),
            nn.DropConnectDense(H1, H1, "tanh", p=0.0),
            nn.Dense(H1, H1, "gelu"),
            nn.DropConnectDense(H1, C, p=0.3, bias=False),
        ]
    return nn.Sequential(*layers).to(dtype=dtype)


@pytest.mark.parametrize(
    ("net", "dtype", "batch_size", "route"),
    [
        ("dropout", np.float64, 1, "kernels"),
        ("dropout", np.float64, 8, "kernels"),
        ("dropout", np.float64, N, "kernels"),
        ("dropout", np.float64, 8, "blas"),
        ("dropout", np.float32, 1, "kernels"),
        ("dropout", np.float32, 8, "kernels"),
        ("dropout", np.float32, N, "blas"),
        ("dropconnect", np.float64, 1, "kernels"),
        ("dropconnect", np.float64, 8, "kernels"),
        ("dropconnect", np.float64, N, "blas"),
        ("dropconnect", np.float32, 8, "blas"),
        ("dropconnect", np.float32, N, "kernels"),
    ],
)
def test_host_engine_masks_give_the_autograd_weights(host_runtime, net, dtype, batch_size, route):
    """Dropout and DropConnect in the GPU engine's step, its captured graph replayed
    (``ReplayRuntime``): each replay draws the masks the autograd layers draw at that
    step (keys from the device table, counters advanced on the device), so the weights
    agree (1e-10 float64, 1e-5 float32), the counters too, and the masks matter.
    (Batch 1 on 6 rows: every host launch starts its block's threads.)"""
    X, y = _data(dtype, "ce")
    n = 6 if batch_size == 1 else N
    X, y = X[:n], y[:n]
    results = {}
    for engine in ("autograd", "host", "no_mask"):
        model = _masked_model(net, dtype)
        if engine == "no_mask":
            for m in model:
                if isinstance(m, MASKED):
                    object.__setattr__(m, "p", 0.0)
        opt = optim.Adam(model.parameters(), lr=0.01)
        if engine != "host":
            choice = "autograd"
        else:

            def choice(m, lo, o, track):
                rt = ReplayRuntime(host_runtime)
                return FusedGpuEngine(m, lo, o, track, runtime=rt, route=route)

        trainer = Trainer(model, CrossEntropyLoss(), opt, engine=choice, progress=False, verbose=0)
        hist = trainer.fit(X, y, epochs=2, batch_size=batch_size, seed=3)
        counters = [m.counter for m in model if isinstance(m, MASKED)]
        results[engine] = (_weights(model), counters, hist.history["loss"])
    tol = 1e-10 if dtype == np.float64 else 1e-5
    (want, want_counts, want_loss), (got, got_counts, got_loss) = (
        results["autograd"],
        results["host"],
    )
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol)
    steps = 2 * -(-n // batch_size)
    model = _masked_model(net, dtype)
    assert got_counts == want_counts == [steps * (m.p > 0) for m in model if isinstance(m, MASKED)]
    np.testing.assert_allclose(got_loss, want_loss, rtol=tol)
    plain = results["no_mask"][0]
    assert max(float(np.abs(a - b).max()) for a, b in zip(plain, want)) > 1e-3


def test_host_engine_guard_names_the_bad_step_and_keeps_the_last_good_epoch(host_runtime):
    """The loss kernel records the first non-finite step on the device; the engine
    reports it and does not write back, so the model is the last good epoch's."""
    from gpunet.train.guard import NonFiniteError

    X, y = _data(np.float64, "ce")
    model = _model(np.float64, 0)
    opt = optim.SGD(model.parameters(), lr=0.05)

    class BlowUp(gpunet.train.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 1:
                opt.param_groups[0]["lr"] = 1e306

        def on_epoch_end(self, epoch, logs=None):
            self.kept = _weights(model)

    def engine(m, lo, o, track):
        return FusedGpuEngine(m, lo, o, track, runtime=host_runtime)

    blow_up = BlowUp()
    trainer = Trainer(model, CrossEntropyLoss(), opt, callbacks=[blow_up], engine=engine, verbose=0)
    with pytest.raises(NonFiniteError, match=r"epoch 2, step 2 of 3") as info:
        trainer.fit(X, y, epochs=3, batch_size=8, shuffle=False)
    assert info.value.step == 2
    for got, want in zip(_weights(model), blow_up.kept):
        np.testing.assert_array_equal(got, want)


def test_host_engine_stops_between_steps(host_runtime):
    from gpunet.train.engines.base import StepControl

    X, y = _data(np.float64, "ce")
    model = _model(np.float64, 0)
    opt = optim.Adam(model.parameters(), lr=0.01)
    engine = FusedGpuEngine(model, CrossEntropyLoss(), opt, True, runtime=host_runtime)
    engine.prepare(X, y, 4)
    control = StepControl()
    control.request_stop()  # as the Ctrl-C handler does: no step runs after it
    engine.run_epoch(None, None, control)
    assert control.steps == 0
    control.array[control.STOP] = 0
    engine.run_epoch(None, None, control)
    engine.write_back()
    assert control.steps == 6 and {s["step"] for s in opt.state.values()} == {6}
