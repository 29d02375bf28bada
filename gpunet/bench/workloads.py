"""The workloads: network shapes, synthetic MNIST-shaped data, FLOP counts, and the real
data sets of the time-to-accuracy part (digits, MNIST-1D), standardised."""

from __future__ import annotations

import numpy as np

# name -> layer widths (input first); every hidden layer ReLU, a linear output layer
NETWORKS = {
    "mnist-mlp": (784, 512, 512, 10),
    "mnist1d-mlp": (40, 100, 100, 10),
    "wide-4096": (784, 4096, 4096, 10),
}
# the network each real data set trains in the time-to-accuracy part
DATASET_WIDTHS = {"digits": (64, 100, 100, 10), "mnist1d": (40, 100, 100, 10)}


def make_data(n: int, n_features: int, n_classes: int, kind: str = "mnist-like", seed: int = 0):
    """Synthetic data: X float32 (n, n_features) in [0, 1), y int64 (n,) in [0, n_classes).

    ``mnist-like``: each pixel of a square image is "ink" with a probability that falls
    from 0.7 at the centre to ~0.004 in the corners (a Gaussian bump, sigma 6 px), ~81%
    zeros overall as in MNIST; ink values are U(0, 1). ``uniform``: dense U(0, 1).
    """
    rng = np.random.default_rng(seed)
    X = rng.random((n, n_features), dtype=np.float32)
    if kind == "mnist-like":
        side = int(round(np.sqrt(n_features)))
        c = np.arange(side) - (side - 1) / 2
        p_ink = 0.7 * np.exp(-(c[:, None] ** 2 + c[None, :] ** 2) / (2 * 6.0**2))
        p_ink = np.resize(p_ink.ravel(), n_features).astype(np.float32)
        X *= rng.random((n, n_features), dtype=np.float32) < p_ink
    y = rng.integers(0, n_classes, n, dtype=np.int64)
    return X, y


def flops_per_sample(widths) -> dict:
    """Matmul FLOPs of one training step, per sample: forward 2*in*out per layer, weight
    gradient 2*in*out per layer, input gradient 2*in*out for every layer but the first
    (nobody needs dL/dX). Bias, activation, loss and optimizer work are left out."""
    macs = [i * o for i, o in zip(widths[:-1], widths[1:])]
    forward, grad_w, grad_x = 2 * sum(macs), 2 * sum(macs), 2 * sum(macs[1:])
    return {
        "forward": forward,
        "grad_w": grad_w,
        "grad_x": grad_x,
        "total": forward + grad_w + grad_x,
    }


def n_params(widths) -> int:
    """Weights and biases of the dense network ``widths``."""
    return sum((i + 1) * o for i, o in zip(widths[:-1], widths[1:]))


def load_standardized(name: str, seed: int = 0, max_train: int | None = None):
    """``(X_train (N, F) float32, y_train (N,) int64, X_val, y_val)`` of a built-in data
    set (gpunet.data: its test split serves as the validation set), every feature
    standardised with the training split's mean and deviation. ``max_train``: keep only
    the first rows of the training split (quick runs)."""
    from gpunet.data import Standardizer, load_dataset  # noqa: PLC0415

    ds = load_dataset(name, seed=seed)
    X_train, y_train = ds.X_train, ds.y_train
    if max_train is not None:
        X_train, y_train = X_train[:max_train], y_train[:max_train]
    scaler = Standardizer().fit(X_train)
    as32 = lambda a: np.ascontiguousarray(a, dtype=np.float32)  # noqa: E731
    return (
        as32(scaler.transform(X_train)),
        np.ascontiguousarray(y_train, dtype=np.int64),
        as32(scaler.transform(ds.X_test)),
        np.ascontiguousarray(ds.y_test, dtype=np.int64),
    )
