"""The fit loop: batch regimes, validation, History, predict/evaluate and bad input."""

import math

import numpy as np
import pytest

import gpunet
import gpunet.data
from gpunet import Tensor, nn, optim
from gpunet.data import make_classification
from gpunet.train import Trainer, evaluate, fit, predict
from gpunet.train.engines import AutogradEngine, Engine, FusedCpuEngine


def blobs(n=120, seed=0):
    """Three well separated Gaussian blobs in 4-D: any regime should learn them."""
    rng = np.random.default_rng(seed)
    centers = np.array([[3, 0, 0, 0], [0, 3, 0, 0], [0, 0, 3, 0]], np.float32)
    y = rng.integers(0, 3, n)
    X = centers[y] + rng.standard_normal((n, 4)).astype(np.float32) * 0.5
    return X.astype(np.float32), y


def classifier(seed=0):
    gpunet.manual_seed(seed)
    return nn.Sequential(nn.Dense(4, 16, "relu"), nn.Dense(16, 3))


@pytest.mark.parametrize("engine", ["autograd", "fused"])
@pytest.mark.parametrize(
    "mode,batch_size,expected_batch",
    [("batch", None, 120), ("stochastic", None, 1), ("minibatch", 32, 32), (None, 50, 50)],
)
def test_regimes_iteration_counts_and_convergence(engine, mode, batch_size, expected_batch):
    X, y = blobs()
    model = classifier()
    lr = {1: 0.01, 120: 0.5}.get(expected_batch, 0.1)
    opt = optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    history = fit(
        model,
        X,
        y,
        loss=nn.CrossEntropyLoss(),
        optimizer=opt,
        epochs=15,
        batch_size=batch_size if batch_size else 32,
        mode=mode,
        engine=engine,
        progress=False,
        verbose=0,
    )
    per_epoch = math.ceil(120 / expected_batch)
    assert history.iterations_per_epoch == per_epoch
    assert history.iterations == 15 * per_epoch
    assert history.history["loss"][-1] < 0.5 * history.history["loss"][0]
    assert history.history["accuracy"][-1] > 0.95


@pytest.mark.parametrize("engine", ["autograd", "fused"])
def test_partial_last_batch_is_trained_on(engine):
    # 10 samples, batch 4: batches of 4, 4, 2. The weights after the epoch must be those
    # after the first two batches (a fit on the first 8 rows) moved by one SGD step on the
    # last two rows, computed here in NumPy: an engine that skips or mis-scales the
    # partial batch's step fails.
    rng = np.random.default_rng(0)
    X = rng.standard_normal((10, 2))
    y = np.array([0, 1, 1, 0, 1, 0, 0, 1, 1, 0])
    lr = 0.5

    def train(n):
        gpunet.manual_seed(0)
        model = nn.Sequential(nn.Linear(2, 2)).to(dtype=np.float64)
        history = fit(
            model,
            X[:n],
            y[:n],
            loss=nn.CrossEntropyLoss(),
            optimizer=optim.SGD(model.parameters(), lr=lr),
            epochs=1,
            batch_size=4,
            shuffle=False,
            engine=engine,
            progress=False,
            verbose=0,
        )
        return model[0], history

    trained, history = train(10)
    before, _ = train(8)
    assert history.iterations == 3
    W, b = before.weight.data, before.bias.data
    xb, yb = X[8:], y[8:]
    z = xb @ W.T + b
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    p[np.arange(len(yb)), yb] -= 1.0
    dz = p / len(yb)  # mean reduction over the 2-row batch
    W_expected, b_expected = W - lr * dz.T @ xb, b - lr * dz.sum(axis=0)
    assert np.abs(W_expected - W).max() > 1e-2  # the step moves the weights
    np.testing.assert_allclose(trained.weight.data, W_expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(trained.bias.data, b_expected, rtol=0, atol=1e-12)


def test_regime_is_logged(capsys):
    X, y = blobs(30)
    model = classifier()
    fit(
        model,
        X,
        y,
        loss=nn.CrossEntropyLoss(),
        optimizer=optim.SGD(model.parameters()),
        epochs=1,
        batch_size=1,
        progress=False,
        verbose=1,
    )
    assert "stochastic gradient descent (batch size 1)" in capsys.readouterr().err
    fit(
        model,
        X,
        y,
        loss=nn.CrossEntropyLoss(),
        optimizer=optim.SGD(model.parameters()),
        epochs=1,
        mode="batch",
        progress=False,
        verbose=1,
    )
    assert "batch gradient descent (full batch of 30)" in capsys.readouterr().err


def test_history_validation_and_lr():
    X, y = blobs(100)
    model = classifier()
    opt = optim.Adam(model.parameters(), lr=0.01)
    sched = optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    history = Trainer(
        model, nn.CrossEntropyLoss(), opt, scheduler=sched, progress=False, verbose=0
    ).fit(X, y, epochs=3, batch_size=16, validation_split=0.2)
    assert set(history.history) >= {"loss", "accuracy", "val_loss", "val_accuracy", "lr"}
    assert history.history["lr"] == [0.01, 0.005, 0.0025]
    assert history.epoch == [0, 1, 2]
    assert history.iterations_per_epoch == math.ceil(80 / 16)


def test_shuffle_seed_is_reproducible():
    X, y = blobs(60)
    weights = []
    for _ in range(2):
        model = classifier()
        fit(
            model,
            X,
            y,
            loss=nn.CrossEntropyLoss(),
            optimizer=optim.SGD(model.parameters()),
            epochs=2,
            batch_size=8,
            seed=123,
            progress=False,
            verbose=0,
        )
        weights.append(model.state_dict())
    for key in weights[0]:
        np.testing.assert_array_equal(weights[0][key], weights[1][key])


class RecordingEngine(Engine):
    """Delegates to the engine ``select`` names and records what the fit loop hands it:
    the prepared training rows and each epoch's ``order``."""

    def __init__(self, inner):
        self.inner, self.model = inner, inner.model
        self.name, self.whole_epochs = inner.name, inner.whole_epochs
        self.trains_in_place = inner.trains_in_place
        self.prepared, self.orders = [], []

    def prepare(self, X, y, batch_size):
        self.prepared.append((np.array(X), np.array(y)))
        self.inner.prepare(X, y, batch_size)

    def run_epoch(self, order=None, on_batch_end=None, control=None):
        self.orders.append(None if order is None else np.array(order))
        return self.inner.run_epoch(order, on_batch_end, control)

    def parameters_finite(self):
        return self.inner.parameters_finite()

    def write_back(self):
        self.inner.write_back()


def recording_factory(engine, recorders):
    def factory(model, loss, optimizer, track_accuracy):
        if engine == "fused":
            inner = FusedCpuEngine(model, loss, optimizer, track_accuracy)
        else:
            inner = AutogradEngine(model, loss, optimizer, track_accuracy)
        recorders.append(RecordingEngine(inner))
        return recorders[-1]

    return factory


@pytest.mark.parametrize("engine", ["autograd", "fused"])
def test_validation_split_holds_out_exactly_the_last_rows(engine):
    X, y = blobs(50, seed=4)
    recorders = []
    model = classifier()
    trainer = Trainer(
        model,
        nn.CrossEntropyLoss(),
        optim.SGD(model.parameters(), lr=0.05),
        engine=recording_factory(engine, recorders),
        progress=False,
        verbose=0,
    )
    history = trainer.fit(X, y, epochs=2, batch_size=8, seed=1, validation_split=0.2)
    (rec,) = recorders
    ((trained_x, trained_y),) = rec.prepared
    # training sees exactly the first 40 rows (in their order: shuffling comes later)
    np.testing.assert_array_equal(trained_x, X[:40])
    np.testing.assert_array_equal(trained_y, y[:40])
    # validation is the last 10 rows, evaluated on the trained model
    held_out = trainer.evaluate(X[40:], y[40:])
    assert history.history["val_loss"][-1] == pytest.approx(held_out["loss"], rel=1e-12)
    assert history.history["val_accuracy"][-1] == held_out["accuracy"]
    # other rows give another loss, so the equality above tells the rows apart
    assert trainer.evaluate(X[:10], y[:10])["loss"] != pytest.approx(held_out["loss"], rel=1e-3)


def test_seeded_epochs_get_different_permutations_and_same_seed_same_ones():
    X, y = blobs(40)

    def orders(seed, engine="autograd"):
        recorders = []
        model = classifier()
        Trainer(
            model,
            nn.CrossEntropyLoss(),
            optim.SGD(model.parameters()),
            engine=recording_factory(engine, recorders),
            progress=False,
            verbose=0,
        ).fit(X, y, epochs=4, batch_size=8, seed=seed)
        return recorders[0].orders

    first = orders(11)
    assert len(first) == 4
    for order in first:
        np.testing.assert_array_equal(np.sort(order), np.arange(40))
    keys = {tuple(order) for order in first}
    assert len(keys) == 4, "two epochs of a seeded fit got the same permutation"
    assert tuple(range(40)) not in keys
    for again in (orders(11), orders(11, engine="fused")):
        assert len(again) == 4
        for a, b in zip(first, again):
            np.testing.assert_array_equal(a, b)
    assert {tuple(order) for order in orders(12)} != keys


def test_predict_and_evaluate_in_batches():
    X, y = blobs(50)
    model = classifier()
    out = predict(model, X, batch_size=7)
    full = model(Tensor(X)).detach().numpy()
    # 7-row and 50-row batches multiply through different kernels (skinny loops, BLAS)
    # that sum in different orders: equal to float32 rounding of the largest outputs
    np.testing.assert_allclose(out, full, rtol=1e-6, atol=1e-6 * np.abs(full).max())
    result = evaluate(model, X, y, loss=nn.CrossEntropyLoss(), batch_size=7)
    expected = nn.CrossEntropyLoss()(model(Tensor(X)), y).item()
    assert abs(result["loss"] - expected) < 1e-5
    assert result["accuracy"] == np.mean(out.argmax(1) == y)


def test_regression_with_mse_converges():
    X, y = gpunet.data.make_regression(n_samples=200, n_features=5, seed=0)
    gpunet.manual_seed(0)
    model = nn.Sequential(nn.Dense(5, 32, "tanh"), nn.Dense(32, 1))
    history = fit(
        model,
        X,
        y,
        loss=nn.MSELoss(),
        optimizer=optim.Adam(model.parameters(), lr=0.01),
        epochs=40,
        batch_size=16,
        progress=False,
        verbose=0,
    )
    assert "accuracy" not in history.history
    assert history.history["loss"][-1] < 0.3 * history.history["loss"][0]


# --------------------------------------------------------------------- bad input
def make_trainer():
    model = classifier()
    return model, Trainer(
        model, nn.CrossEntropyLoss(), optim.SGD(model.parameters()), progress=False, verbose=0
    )


BAD_INPUTS = [
    ("feature_mismatch", lambda X, y: (X[:, :3], y), ValueError, "expects 4 input features, got 3"),
    ("sample_mismatch", lambda X, y: (X, y[:-1]), ValueError, "x has 20 samples but y has 19"),
    (
        "labels_out_of_range",
        lambda X, y: (X, np.where(y == 2, 3, y)),
        ValueError,
        "label 3 out of range for a model with 3 outputs",
    ),
    (
        "negative_label",
        lambda X, y: (X, np.where(y == 2, -1, y)),
        ValueError,
        "label -1 out of range",
    ),
    (
        "float_labels",
        lambda X, y: (X, y.astype(np.float32)),
        TypeError,
        "needs integer class indices",
    ),
    ("string_features", lambda X, y: (X.astype(str), y), TypeError, "expected a numeric"),
    ("nan", lambda X, y: (np.where(X > 2.5, np.nan, X), y), ValueError, "NaN or Inf"),
    ("inf", lambda X, y: (np.where(X > 2.5, np.inf, X), y), ValueError, "NaN or Inf"),
    ("minus_inf", lambda X, y: (np.where(X > 2.5, -np.inf, X), y), ValueError, "NaN or Inf"),
    ("one_nan", lambda X, y: (np.where(X == X.flat[7], np.nan, X), y), ValueError, "NaN or Inf"),
    ("empty", lambda X, y: (X[:0], y[:0]), ValueError, "empty"),
    ("one_dimensional", lambda X, y: (X[:, 0], y), ValueError, "shape \\(samples, features\\)"),
]


@pytest.mark.parametrize("name,corrupt,error,message", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_raises_before_any_state_changes(name, corrupt, error, message):
    X, y = blobs(20)
    model, trainer = make_trainer()
    before = model.state_dict()
    Xb, yb = corrupt(X, y)
    with pytest.raises(error, match=message):
        trainer.fit(Xb, yb, epochs=1)
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(value, before[key])
    assert trainer.optimizer.state == {} or all(not s for s in trainer.optimizer.state.values())


@pytest.mark.parametrize(
    "kwargs,error,message",
    [
        ({"batch_size": 0}, ValueError, "batch_size must be >= 1, got 0"),
        ({"batch_size": 2.5}, TypeError, "batch_size must be an int"),
        ({"epochs": 0}, ValueError, "epochs must be a positive int"),
        ({"mode": "online"}, ValueError, "unknown mode 'online'"),
        ({"validation_split": 1.0}, ValueError, "validation_split must be in"),
        ({"validation_data": ([[1.0]], [0])}, ValueError, "expects 4 input features, got 1"),
    ],
)
def test_bad_fit_arguments(kwargs, error, message):
    X, y = blobs(20)
    model, trainer = make_trainer()
    before = model.state_dict()
    with pytest.raises(error, match=message):
        trainer.fit(X, y, **kwargs)
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(value, before[key])


def test_unknown_names_raise():
    with pytest.raises(ValueError, match="unknown activation 'relux'"):
        nn.Dense(2, 2, activation="relux")
    with pytest.raises(ValueError, match="unknown loss 'hinge'"):
        gpunet.losses.get_loss("hinge")
    with pytest.raises(ValueError, match="unknown engine 'turbo'"):
        model = classifier()
        Trainer(model, "cross_entropy", optim.SGD(model.parameters()), engine="turbo")
    from gpunet.cli import main

    assert main(["train", "--optimizer", "lion", "--epochs", "1", "--no-progress"]) == 2


def test_tensor_on_another_device_is_rejected():
    from gpunet.backend.numpy_backend import NumpyBackend

    X, y = blobs(20)
    other = NumpyBackend()
    other.device = "cuda:3"
    x_elsewhere = Tensor._wrap(X, other)
    model, trainer = make_trainer()
    with pytest.raises(RuntimeError, match="x is on device cuda:3 but the model is on cpu"):
        trainer.fit(x_elsewhere, y)


def test_synthetic_classification_learns():
    X, y = make_classification(n_samples=300, n_features=8, n_classes=3, seed=1)
    gpunet.manual_seed(0)
    model = nn.Sequential(nn.Dense(X.shape[1], 32, "relu"), nn.Dense(32, 3))
    history = fit(
        model,
        X,
        y,
        loss="cross_entropy",
        optimizer=optim.Adam(model.parameters(), lr=0.01),
        epochs=30,
        batch_size=32,
        progress=False,
        verbose=0,
    )
    assert history.history["accuracy"][-1] > 0.6


def test_small_batches_run_blas_on_one_thread_during_the_epoch():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    from gpunet.backend import get_backend
    from gpunet.kernels.cpu import blas

    backend = get_backend("cpu")

    def blas_threads():
        return [
            i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"
        ]

    with backend.epoch_context(blas.ONE_BLAS_THREAD_MAX_ROWS):
        inside = blas_threads()
    before = blas_threads()
    assert inside and all(n == 1 for n in inside)
    with backend.epoch_context(blas.ONE_BLAS_THREAD_MAX_ROWS + 1):
        assert blas_threads() == before
    assert blas_threads() == before


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_regression_targets_raise_before_training(bad):
    X, y = gpunet.data.make_regression(n_samples=20, n_features=5, seed=0)
    y = y.astype(np.float32)
    y[3] = bad
    model = nn.Sequential(nn.Dense(5, 1))
    before = model.state_dict()
    with pytest.raises(ValueError, match="y contains NaN or Inf"):
        fit(model, X, y, loss=nn.MSELoss(), optimizer=optim.SGD(model.parameters(), lr=0.1))
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(value, before[key])
