"""Train/test splitting and feature standardization (NumPy, host side).

Shapes: ``X`` (N, F) features, ``y`` (N,) class indices or (N, k) regression targets.
Everything here runs on the host before the data are moved to a device.
"""

from __future__ import annotations

import numbers

import numpy as np

__all__ = ["NotFittedError", "Standardizer", "train_test_split"]


class NotFittedError(ValueError, AttributeError):
    """Raised when a transformer is used before :meth:`fit` (as in scikit-learn)."""


def _resolve_test_count(test_size, n: int) -> int:
    """Number of test samples for ``test_size`` (fraction in (0, 1) or count in [1, n-1])."""
    if isinstance(test_size, bool) or not isinstance(test_size, numbers.Real):
        raise ValueError(
            f"test_size must be a float in (0, 1) or an int in [1, {n - 1}], got {test_size!r}"
        )
    if isinstance(test_size, numbers.Integral):
        n_test = int(test_size)
        if not 1 <= n_test <= n - 1:
            raise ValueError(
                f"test_size={n_test} must be in [1, {n - 1}] for {n} samples "
                "(both splits need at least one sample)"
            )
        return n_test
    frac = float(test_size)
    if not 0.0 < frac < 1.0:
        raise ValueError(f"test_size as a fraction must be in (0, 1), got {frac}")
    n_test = int(np.ceil(frac * n))
    if not 1 <= n_test <= n - 1:
        raise ValueError(
            f"test_size={frac} gives {n_test} test and {n - n_test} train samples out of "
            f"{n}; both splits need at least one sample"
        )
    return n_test


def _stratified_test_indices(labels: np.ndarray, n_test: int, rng) -> np.ndarray:
    """Indices of a test set holding each class in proportion to its frequency.

    Per class ``c`` with ``n_c`` members the test set gets ``floor(n_test * n_c / N)``
    samples, and the remaining slots go to the classes with the largest fractional parts
    (ties broken at random), preferring classes that keep a training sample.
    """
    classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    if counts.min() < 2:
        rare = classes[counts < 2].tolist()
        raise ValueError(
            f"stratify: classes {rare} have fewer than 2 members; each class needs at least "
            "2 to appear in both splits"
        )
    n = labels.shape[0]
    if n_test < classes.size or n - n_test < classes.size:
        raise ValueError(
            f"stratify: {n_test} test and {n - n_test} train samples cannot hold all "
            f"{classes.size} classes; each split needs at least one sample per class"
        )
    exact = n_test * counts / n
    alloc = np.floor(exact).astype(np.int64)
    left = n_test - int(alloc.sum())
    if left:
        frac = exact - alloc
        order = np.lexsort((rng.random(classes.size), -frac))
        # classes that would still keep one training sample first
        keeps_train = alloc[order] + 1 <= counts[order] - 1
        order = np.concatenate([order[keeps_train], order[~keeps_train]])
        alloc[order[:left]] += 1
    test = []
    for k in range(classes.size):
        members = np.flatnonzero(inverse == k)
        test.append(rng.permutation(members)[: alloc[k]])
    return np.concatenate(test)


def train_test_split(X, y, test_size=0.2, seed=0, stratify=None):
    """Shuffle and split ``X`` (N, F) and ``y`` (N,) or (N, k) into train and test parts.

    Args:
        X: features, first axis N samples.
        y: targets, first axis N samples.
        test_size: fraction in (0, 1) (rounded up) or an absolute count in [1, N-1].
        seed: seed of the shuffle (``np.random.default_rng``); same seed, same split.
        stratify: None, class labels (N,) whose proportions both splits keep, or True
            to stratify on ``y``.

    Returns:
        ``(X_train, X_test, y_train, y_test)`` (scikit-learn's order), each shuffled.

    Raises:
        ValueError: for mismatched lengths, an impossible ``test_size`` or a class with
            fewer than 2 members under ``stratify``.
    """
    X = np.asarray(X)
    y = np.asarray(y)
    if X.ndim == 0 or y.ndim == 0:
        raise ValueError("X and y must have a sample axis (got a scalar)")
    n = X.shape[0]
    if y.shape[0] != n:
        raise ValueError(
            f"X and y have different numbers of samples: X has {n}, y has {y.shape[0]}"
        )
    if n < 2:
        raise ValueError(f"need at least 2 samples to split, got {n}")
    n_test = _resolve_test_count(test_size, n)
    rng = np.random.default_rng(seed)

    if stratify is None or stratify is False:
        perm = rng.permutation(n)
        test_idx, train_idx = perm[:n_test], perm[n_test:]
    else:
        labels = y if stratify is True else np.asarray(stratify)
        if labels.ndim != 1 or labels.shape[0] != n:
            raise ValueError(f"stratify must be labels of shape ({n},), got shape {labels.shape}")
        test_idx = _stratified_test_indices(labels, n_test, rng)
        mask = np.ones(n, dtype=bool)
        mask[test_idx] = False
        train_idx = rng.permutation(np.flatnonzero(mask))
        test_idx = rng.permutation(test_idx)
    return X[train_idx], X[test_idx], y[train_idx], y[test_idx]


class Standardizer:
    """Per-feature standardization ``(X - mean) / std``; fit on the training set only.

    Statistics are computed in float64 over the sample axis of ``X`` (N, F) (population
    std, ``ddof=0``); a feature whose std is zero (to float64 rounding) gets std 1, so it
    is only centred. ``transform`` returns the input's floating dtype (float32 stays
    float32; integer input becomes float64).

    Attributes (after :meth:`fit`): ``mean_`` (F,), ``std_`` (F,) float64,
    ``n_features_in_``.
    """

    def __init__(self):
        self.mean_ = None
        self.std_ = None
        self.n_features_in_ = None

    def __repr__(self) -> str:
        state = f"n_features={self.n_features_in_}" if self.is_fitted else "unfitted"
        return f"Standardizer({state})"

    @property
    def is_fitted(self) -> bool:
        return self.mean_ is not None

    @staticmethod
    def _as_2d(X, what: str) -> np.ndarray:
        X = np.asarray(X)
        if X.ndim != 2:
            raise ValueError(f"{what} expects a 2-D array (N, features), got shape {X.shape}")
        return X

    def fit(self, X) -> Standardizer:
        """Learn ``mean_`` and ``std_`` from ``X`` (N, F). Returns ``self``."""
        X = self._as_2d(X, "fit")
        if X.shape[0] < 1:
            raise ValueError("fit needs at least one sample, got 0")
        X64 = X.astype(np.float64, copy=False)
        if not np.all(np.isfinite(X64)):
            raise ValueError("fit: X contains NaN or infinity")
        mean = X64.mean(axis=0)
        std = X64.std(axis=0)
        tiny = 10 * np.finfo(np.float64).eps * np.maximum(1.0, np.abs(mean))
        std[std <= tiny] = 1.0
        self.mean_, self.std_, self.n_features_in_ = mean, std, X.shape[1]
        return self

    def _check(self, X, what: str) -> np.ndarray:
        if not self.is_fitted:
            raise NotFittedError(
                f"this Standardizer is not fitted yet; call fit(X_train) before {what}"
            )
        X = self._as_2d(X, what)
        if X.shape[1] != self.n_features_in_:
            raise ValueError(
                f"{what}: X has {X.shape[1]} features but the Standardizer was fitted "
                f"on {self.n_features_in_}"
            )
        return X

    @staticmethod
    def _out_dtype(X: np.ndarray):
        return X.dtype if np.issubdtype(X.dtype, np.floating) else np.float64

    def transform(self, X) -> np.ndarray:
        """``(X - mean_) / std_`` for ``X`` (M, F); returns a new array (M, F)."""
        X = self._check(X, "transform")
        dtype = self._out_dtype(X)
        return ((X - self.mean_) / self.std_).astype(dtype, copy=False)

    def fit_transform(self, X) -> np.ndarray:
        """:meth:`fit` on ``X`` (N, F), then :meth:`transform` it."""
        return self.fit(X).transform(X)

    def inverse_transform(self, Z) -> np.ndarray:
        """``Z * std_ + mean_`` for ``Z`` (M, F): undoes :meth:`transform`."""
        Z = self._check(Z, "inverse_transform")
        dtype = self._out_dtype(Z)
        return (Z * self.std_ + self.mean_).astype(dtype, copy=False)
