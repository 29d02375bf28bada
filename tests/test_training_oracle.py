"""A few training steps of both CPU engines against an independent float64 oracle.

The oracle is plain NumPy matrix code written here (forward, softmax cross-entropy and MSE
with their gradients, backward) stepped by the textbook optimizer formulas of
``tests/optim_oracles.py``; nothing is shared with ``gpunet`` (no backend, kernel,
activation or optimizer code). The fused-versus-autograd tests cannot see a bug in the
kernels both paths share (``kernels/cpu/update_rules.py``, ``blas.py``, ``dense.py``,
``softmax_xent.py``); these can.

Unshuffled epochs whose last batch is partial: the oracle shows that the partial batch's
step changes the weights, so an engine that skips or mis-scales it fails. Two
geometries: steps of 5, 5 and 1 rows (few-row loops, the single-row route of the fused
epoch) and of 40, 40 and 10 rows (the fused epoch's model-parallel steps).
"""

from __future__ import annotations

import numpy as np
import pytest

import gpunet
from gpunet import nn, optim
from gpunet.train import Trainer
from tests import optim_oracles

N_FEATURES, HIDDEN_1, HIDDEN_2, N_OUT = 5, 8, 6, 3
EPOCHS = 2
#: (samples, batch size): each epoch ends with a partial batch
GEOMETRIES = ((11, 5), (90, 40))

#: name -> (gpunet optimizer factory, oracle, oracle keyword arguments)
OPTIMIZERS = {
    "sgd": (lambda p: optim.SGD(p, lr=0.1), optim_oracles.sgd, dict(lr=0.1)),
    "sgd_momentum": (
        lambda p: optim.SGD(p, lr=0.1, momentum=0.9),
        optim_oracles.sgd,
        dict(lr=0.1, momentum=0.9),
    ),
    "sgd_momentum_slow": (
        lambda p: optim.SGD(p, lr=0.002, momentum=0.9),
        optim_oracles.sgd,
        dict(lr=0.002, momentum=0.9),
    ),
    "sgd_momentum_dampening_wd": (
        lambda p: optim.SGD(p, lr=0.1, momentum=0.9, dampening=0.3, weight_decay=0.05),
        optim_oracles.sgd,
        dict(lr=0.1, momentum=0.9, dampening=0.3, weight_decay=0.05),
    ),
    "sgd_nesterov_wd_maximize": (
        lambda p: optim.SGD(
            p, lr=0.05, momentum=0.8, nesterov=True, weight_decay=0.01, maximize=True
        ),
        optim_oracles.sgd,
        dict(lr=0.05, momentum=0.8, nesterov=True, weight_decay=0.01, maximize=True),
    ),
    "adam": (lambda p: optim.Adam(p, lr=0.02), optim_oracles.adam, dict(lr=0.02)),
    "adam_betas_wd": (
        lambda p: optim.Adam(p, lr=0.02, betas=(0.3, 0.6), weight_decay=0.1),
        optim_oracles.adam,
        dict(lr=0.02, betas=(0.3, 0.6), weight_decay=0.1),
    ),
    "adam_maximize": (
        lambda p: optim.Adam(p, lr=0.01, maximize=True),
        optim_oracles.adam,
        dict(lr=0.01, maximize=True),
    ),
    "amsgrad": (
        lambda p: optim.Adam(p, lr=0.02, amsgrad=True),
        optim_oracles.adam,
        dict(lr=0.02, amsgrad=True),
    ),
    "adamw": (
        lambda p: optim.AdamW(p, lr=0.02, weight_decay=0.1),
        optim_oracles.adamw,
        dict(lr=0.02, weight_decay=0.1),
    ),
    "adamw_amsgrad": (
        lambda p: optim.AdamW(p, lr=0.02, betas=(0.8, 0.95), weight_decay=0.2, amsgrad=True),
        optim_oracles.adamw,
        dict(lr=0.02, betas=(0.8, 0.95), weight_decay=0.2, amsgrad=True),
    ),
    "rmsprop": (lambda p: optim.RMSprop(p, lr=0.01), optim_oracles.rmsprop, dict(lr=0.01)),
    "rmsprop_momentum": (
        lambda p: optim.RMSprop(p, lr=0.01, alpha=0.9, momentum=0.5),
        optim_oracles.rmsprop,
        dict(lr=0.01, alpha=0.9, momentum=0.5),
    ),
    "rmsprop_centered_momentum_wd": (
        lambda p: optim.RMSprop(
            p, lr=0.01, alpha=0.3, centered=True, momentum=0.5, weight_decay=0.01
        ),
        optim_oracles.rmsprop,
        dict(lr=0.01, alpha=0.3, centered=True, momentum=0.5, weight_decay=0.01),
    ),
    "adagrad": (lambda p: optim.Adagrad(p, lr=0.1), optim_oracles.adagrad, dict(lr=0.1)),
    "adagrad_decay_wd_initial": (
        lambda p: optim.Adagrad(
            p, lr=0.1, lr_decay=0.05, weight_decay=0.1, initial_accumulator_value=0.5
        ),
        optim_oracles.adagrad,
        dict(lr=0.1, lr_decay=0.05, weight_decay=0.1, initial_accumulator_value=0.5),
    ),
}

#: name -> (loss module factory, oracle loss kind, reduction, label smoothing)
LOSSES = {
    "cross_entropy": (lambda: nn.CrossEntropyLoss(), "ce", "mean", 0.0),
    "mse": (lambda: nn.MSELoss(), "mse", "mean", 0.0),
    "cross_entropy_sum_smoothing": (
        lambda: nn.CrossEntropyLoss(reduction="sum", label_smoothing=0.2),
        "ce",
        "sum",
        0.2,
    ),
    "mse_sum": (lambda: nn.MSELoss(reduction="sum"), "mse", "sum", 0.0),
}


def make_model():
    """tanh and ReLU layers, fused (Dense) and as separate modules; float64."""
    gpunet.manual_seed(7)
    model = nn.Sequential(
        nn.Dense(N_FEATURES, HIDDEN_1, "tanh"),
        nn.Linear(HIDDEN_1, HIDDEN_2),
        nn.ReLU(),
        nn.Dense(HIDDEN_2, N_OUT),
    )
    return model.to(dtype=np.float64)


def make_data(n, kind):
    rng = np.random.default_rng(n)
    X = rng.standard_normal((n, N_FEATURES))
    if kind == "ce":
        return X, rng.integers(0, N_OUT, n)
    return X, rng.standard_normal((n, N_OUT))


# ------------------------------------------------------------------------ the oracle
def oracle_gradients(params, X, y, kind, reduction, smoothing):
    """Gradients of the batch loss with respect to [W1, b1, W2, b2, W3, b3]."""
    W1, b1, W2, b2, W3, b3 = params
    n = X.shape[0]
    z1 = X @ W1.T + b1
    a1 = np.tanh(z1)
    z2 = a1 @ W2.T + b2
    a2 = np.maximum(z2, 0.0)
    out = a2 @ W3.T + b3
    if kind == "ce":
        p = np.exp(out - out.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        q = np.full(out.shape, smoothing / N_OUT)
        q[np.arange(n), y] += 1.0 - smoothing
        d_out = p - q  # d(sum of the per-sample losses) / d(logits)
        if reduction == "mean":
            d_out /= n
    else:
        d_out = 2.0 * (out - y)
        if reduction == "mean":
            d_out /= out.size
    dz2 = (d_out @ W3) * (z2 > 0)
    dz1 = (dz2 @ W2) * (1.0 - a1 * a1)
    return [
        dz1.T @ X,
        dz1.sum(axis=0),
        dz2.T @ a1,
        dz2.sum(axis=0),
        d_out.T @ a2,
        d_out.sum(axis=0),
    ]


def oracle_training(params, X, y, batch_size, loss_name, opt_name, steps):
    """Parameters after ``steps`` unshuffled mini-batch steps (epochs wrap around)."""
    _, kind, reduction, smoothing = LOSSES[loss_name]
    _, step_oracle, hyper = OPTIMIZERS[opt_name]
    n_batches = -(-X.shape[0] // batch_size)

    def grad_fn(t, theta):
        start = ((t - 1) % n_batches) * batch_size
        rows = slice(start, start + batch_size)
        return oracle_gradients(theta, X[rows], y[rows], kind, reduction, smoothing)

    return step_oracle(params, grad_fn, steps, **hyper)


# ------------------------------------------------------------------------- the tests
def check_against_oracle(engine, opt_name, loss_name):
    make_optimizer = OPTIMIZERS[opt_name][0]
    make_loss, kind = LOSSES[loss_name][:2]
    for n, batch_size in GEOMETRIES:
        X, y = make_data(n, kind)
        model = make_model()
        start = [p.data.copy() for p in model.parameters()]
        trainer = Trainer(
            model, make_loss(), make_optimizer(model.parameters()), engine=engine,
            progress=False, verbose=0,
        )  # fmt: skip
        history = trainer.fit(X, y, epochs=EPOCHS, batch_size=batch_size, shuffle=False)
        assert trainer.engine_name == engine
        steps = EPOCHS * -(-n // batch_size)
        assert history.iterations == steps
        expected = oracle_training(start, X, y, batch_size, loss_name, opt_name, steps)
        # the last step, on the partial batch, moves the weights well beyond the tolerance
        before_last = oracle_training(start, X, y, batch_size, loss_name, opt_name, steps - 1)
        assert max(np.abs(a - b).max() for a, b in zip(expected, before_last)) > 1e-4
        for name, param, want in zip(
            ("W1", "b1", "W2", "b2", "W3", "b3"), model.parameters(), expected
        ):
            np.testing.assert_allclose(
                param.data, want, rtol=1e-10, atol=1e-10,
                err_msg=f"{name} after {steps} steps of {batch_size} rows (n={n})",
            )  # fmt: skip


@pytest.mark.parametrize("engine", ["autograd", "fused"])
@pytest.mark.parametrize("loss_name", ["cross_entropy", "mse"])
@pytest.mark.parametrize("opt_name", [name for name in OPTIMIZERS if name != "sgd_momentum_slow"])
def test_training_steps_match_the_oracle(engine, opt_name, loss_name):
    check_against_oracle(engine, opt_name, loss_name)


@pytest.mark.parametrize("engine", ["autograd", "fused"])
@pytest.mark.parametrize("loss_name", ["cross_entropy_sum_smoothing", "mse_sum"])
@pytest.mark.parametrize("opt_name", ["sgd_momentum_slow", "adam"])
def test_sum_reduction_and_label_smoothing_match_the_oracle(engine, opt_name, loss_name):
    check_against_oracle(engine, opt_name, loss_name)
