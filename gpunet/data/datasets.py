"""Built-in data sets: scikit-learn digits, MNIST-1D and seeded synthetic problems.

No network access. Every loader returns NumPy arrays on the host:
``X`` (N, features) floating (float32 by default, ``dtype`` to change), ``y`` (N,) int64
class indices in [0, n_classes) for classification, or (N, k) floating targets for
regression. Loaders give the same arrays for the same seed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np

from gpunet.data.splits import train_test_split

__all__ = [
    "DATASETS",
    "Dataset",
    "load_dataset",
    "load_digits",
    "load_mnist1d",
    "make_classification",
    "make_regression",
]

_EXTRA_HINT = 'install the data extra: pip install "gpunet[data]"'


@dataclass(frozen=True, eq=False)
class Dataset:
    """A train/test split of one data set.

    ``X_train`` (N_train, F), ``y_train`` (N_train,) int64 or (N_train, k) float,
    ``X_test`` (N_test, F), ``y_test`` likewise. ``task`` is ``"classification"`` or
    ``"regression"``; ``n_classes`` is None for regression. Unpacks like a tuple:
    ``X_train, y_train, X_test, y_test = ds``.
    """

    X_train: np.ndarray = field(repr=False)
    y_train: np.ndarray = field(repr=False)
    X_test: np.ndarray = field(repr=False)
    y_test: np.ndarray = field(repr=False)
    task: str = "classification"
    name: str = ""
    n_classes: int | None = None

    def __post_init__(self):
        if self.task not in ("classification", "regression"):
            raise ValueError(f"task must be 'classification' or 'regression', got {self.task!r}")
        if self.X_train.ndim != 2 or self.X_test.ndim != 2:
            raise ValueError("X_train and X_test must be 2-D (N, features)")
        if self.X_train.shape[1] != self.X_test.shape[1]:
            raise ValueError(
                f"X_train has {self.X_train.shape[1]} features, X_test {self.X_test.shape[1]}"
            )
        if len(self.y_train) != len(self.X_train) or len(self.y_test) != len(self.X_test):
            raise ValueError("X and y of a split must have the same number of samples")

    @property
    def n_features(self) -> int:
        """Number of input features F."""
        return int(self.X_train.shape[1])

    @property
    def n_outputs(self) -> int:
        """Width of the model's output layer: n_classes, or the number of targets k."""
        if self.task == "classification":
            return int(self.n_classes)
        return int(self.y_train.shape[1]) if self.y_train.ndim == 2 else 1

    def __iter__(self):
        return iter((self.X_train, self.y_train, self.X_test, self.y_test))

    def __repr__(self) -> str:
        extra = f", n_classes={self.n_classes}" if self.n_classes is not None else ""
        return (
            f"Dataset(name={self.name!r}, task={self.task!r}, "
            f"train={self.X_train.shape}, test={self.X_test.shape}, "
            f"n_features={self.n_features}{extra}, dtype={self.X_train.dtype})"
        )


def _check_float_dtype(dtype) -> np.dtype:
    dtype = np.dtype(dtype)
    if not np.issubdtype(dtype, np.floating):
        raise ValueError(f"dtype must be a floating dtype, got {dtype}")
    return dtype


def _classification(X, y, name, seed, test_size, n_classes) -> Dataset:
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=test_size, seed=seed, stratify=y)
    return Dataset(X_tr, y_tr, X_te, y_te, "classification", name, int(n_classes))


# ----------------------------------------------------------------------------- real data


def load_digits(seed: int = 0, test_size=0.2, dtype=np.float32) -> Dataset:
    """scikit-learn's 8x8 handwritten digits: 1797 samples, 64 features, 10 classes.

    Pixels (0..16) are scaled to [0, 1]. The split is stratified and shuffled by ``seed``.
    Returns a :class:`Dataset` with ``X`` (N, 64) ``dtype`` and ``y`` (N,) int64.
    Needs scikit-learn (``pip install "gpunet[data]"``); the data ship with it.
    """
    dtype = _check_float_dtype(dtype)
    try:
        from sklearn import datasets as skd
    except ImportError as exc:
        raise ImportError(f"load_digits needs scikit-learn; {_EXTRA_HINT}") from exc
    bunch = skd.load_digits()
    X = (np.asarray(bunch.data, dtype=np.float64) / 16.0).astype(dtype)
    y = np.asarray(bunch.target, dtype=np.int64)
    return _classification(X, y, "digits", seed, test_size, 10)


def load_mnist1d(
    num_samples: int = 5000, seed: int = 42, test_size=0.2, dtype=np.float32
) -> Dataset:
    """MNIST-1D (Greydanus 2020), generated locally with the paper's settings.

    Uses ``mnist1d.data.get_dataset_args()`` (templates of 12 points, 40 output points,
    noise/shear/translation defaults) with ``num_samples`` and generator ``seed`` (42
    reproduces the paper's data). The generator's own split is kept: the first
    ``1 - test_size`` of its shuffled samples train (4000/1000 by default).
    Returns a :class:`Dataset` with ``X`` (N, 40) ``dtype`` and ``y`` (N,) int64 in [0, 10).

    mnist1d seeds the global ``random`` and ``np.random`` generators; their states are
    saved and restored, so calling this does not disturb the caller's random streams.
    Needs the ``mnist1d`` package (``pip install "gpunet[data]"``).
    """
    dtype = _check_float_dtype(dtype)
    if int(num_samples) < 20:
        raise ValueError(f"num_samples must be at least 20 (2 per class), got {num_samples}")
    if not 0.0 < float(test_size) < 1.0:
        raise ValueError(f"test_size must be a fraction in (0, 1), got {test_size}")
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError as exc:
        raise ImportError(f"load_mnist1d needs the mnist1d package; {_EXTRA_HINT}") from exc
    args = get_dataset_args()
    args.num_samples = int(num_samples)
    args.seed = int(seed)
    args.train_split = 1.0 - float(test_size)
    np_state, py_state = np.random.get_state(), random.getstate()  # noqa: NPY002
    try:
        data = make_dataset(args)
    finally:
        np.random.set_state(np_state)  # noqa: NPY002
        random.setstate(py_state)
    return Dataset(
        np.asarray(data["x"], dtype=dtype),
        np.asarray(data["y"], dtype=np.int64),
        np.asarray(data["x_test"], dtype=dtype),
        np.asarray(data["y_test"], dtype=np.int64),
        "classification",
        "mnist1d",
        10,
    )


# ------------------------------------------------------------------------ synthetic data


def make_classification(
    n_samples: int = 1000,
    n_features: int = 20,
    n_classes: int = 3,
    seed: int = 0,
    *,
    n_informative: int | None = None,
    n_clusters_per_class: int = 2,
    class_sep: float = 2.0,
    dtype=np.float32,
):
    """Gaussian clusters, pure NumPy: a classification problem with a learnable structure.

    Each class owns ``n_clusters_per_class`` cluster centres drawn from
    ``N(0, class_sep^2)`` in ``n_informative`` dimensions (default ``min(n_features,
    max(2, 2*n_classes))``); each sample is its cluster's centre plus ``N(0, 1)`` noise.
    The remaining features are pure ``N(0, 1)`` noise, and a random rotation mixes all
    features so no single column carries the label. Several clusters per class make
    the boundary non-linear (an MLP beats a linear model). Classes are balanced
    (sizes differ by at most one) and samples are shuffled.

    Returns ``(X, y)``: ``X`` (n_samples, n_features) ``dtype``, ``y`` (n_samples,) int64
    in [0, n_classes). Same ``seed``, same arrays.
    """
    dtype = _check_float_dtype(dtype)
    if n_classes < 2:
        raise ValueError(f"n_classes must be at least 2, got {n_classes}")
    if n_samples < n_classes:
        raise ValueError(f"n_samples ({n_samples}) must be at least n_classes ({n_classes})")
    if n_features < 1:
        raise ValueError(f"n_features must be at least 1, got {n_features}")
    if n_clusters_per_class < 1:
        raise ValueError(f"n_clusters_per_class must be at least 1, got {n_clusters_per_class}")
    if n_informative is None:
        n_informative = min(n_features, max(2, 2 * n_classes))
    if not 1 <= n_informative <= n_features:
        raise ValueError(f"n_informative must be in [1, n_features={n_features}]")
    rng = np.random.default_rng(seed)
    centres = class_sep * rng.standard_normal((n_classes, n_clusters_per_class, n_informative))
    y = rng.permutation(np.arange(n_samples) % n_classes).astype(np.int64)
    cluster = rng.integers(0, n_clusters_per_class, size=n_samples)
    X = rng.standard_normal((n_samples, n_features))
    X[:, :n_informative] += centres[y, cluster]
    q, r = np.linalg.qr(rng.standard_normal((n_features, n_features)))
    rotation = q * np.sign(np.diag(r))  # uniformly random orthogonal matrix
    return (X @ rotation).astype(dtype), y


def make_regression(
    n_samples: int = 1000,
    n_features: int = 10,
    n_targets: int = 1,
    noise: float = 0.1,
    seed: int = 0,
    *,
    dtype=np.float32,
):
    """A smooth non-linear regression problem, pure NumPy.

    ``X ~ N(0, 1)`` (n_samples, n_features) and
    ``y = X @ W / sqrt(F) + 0.5 * sin(2 * X @ V) + noise * N(0, 1)`` with ``W``, ``V``
    (n_features, n_targets) drawn from ``N(0, 1)`` and ``N(0, 1/F)``: a linear part any
    model finds plus a bounded non-linear part an MLP can learn; ``noise`` is the
    irreducible error's standard deviation.

    Returns ``(X, y)``: ``X`` (n_samples, n_features) and ``y`` (n_samples, n_targets),
    both ``dtype``. Same ``seed``, same arrays.
    """
    dtype = _check_float_dtype(dtype)
    if n_samples < 1 or n_features < 1 or n_targets < 1:
        raise ValueError("n_samples, n_features and n_targets must all be at least 1")
    if noise < 0:
        raise ValueError(f"noise must be non-negative, got {noise}")
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((n_features, n_targets))
    V = rng.standard_normal((n_features, n_targets)) / np.sqrt(n_features)
    X = rng.standard_normal((n_samples, n_features))
    y = X @ W / np.sqrt(n_features) + 0.5 * np.sin(2.0 * (X @ V))
    y += noise * rng.standard_normal((n_samples, n_targets))
    return X.astype(dtype), y.astype(dtype)


# ---------------------------------------------------------------------------- dispatcher


def _synthetic_classification(seed=0, test_size=0.2, **kwargs) -> Dataset:
    X, y = make_classification(seed=seed, **kwargs)
    n_classes = int(kwargs.get("n_classes", 3))
    return _classification(X, y, "synthetic-classification", seed, test_size, n_classes)


def _synthetic_regression(seed=0, test_size=0.2, **kwargs) -> Dataset:
    X, y = make_regression(seed=seed, **kwargs)
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=test_size, seed=seed)
    return Dataset(X_tr, y_tr, X_te, y_te, "regression", "synthetic-regression", None)


def _mnist1d(seed=0, test_size=0.2, **kwargs) -> Dataset:
    # ``seed`` is a split seed elsewhere; MNIST-1D keeps the paper's generator seed (42)
    # and its own split unless ``generator_seed`` is given.
    generator_seed = kwargs.pop("generator_seed", 42)
    return load_mnist1d(seed=generator_seed, test_size=test_size, **kwargs)


DATASETS = {
    "digits": load_digits,
    "mnist1d": _mnist1d,
    "synthetic-classification": _synthetic_classification,
    "synthetic-regression": _synthetic_regression,
}


def load_dataset(name: str, seed: int = 0, test_size=0.2, **kwargs) -> Dataset:
    """Load a built-in data set by name as a :class:`Dataset`.

    Names: ``"digits"`` (N=1797, F=64, 10 classes), ``"mnist1d"`` (N=5000, F=40,
    10 classes), ``"synthetic-classification"`` (N=1000, F=20, 3 classes),
    ``"synthetic-regression"`` (N=1000, F=10, 1 target). ``seed`` seeds the split and the
    synthetic generators (MNIST-1D always uses the paper's generator seed 42 unless
    ``generator_seed=`` is passed, and its generator's own split). Classification splits
    are stratified. Extra keyword arguments go to the loader (e.g. ``n_samples=``,
    ``n_features=`` for synthetic data, ``num_samples=`` for MNIST-1D, ``dtype=``).

    Raises:
        ValueError: for an unknown name (the message lists the valid ones).
    """
    key = str(name).strip().lower().replace("_", "-")
    if key not in DATASETS:
        raise ValueError(
            f"unknown dataset {name!r}; valid names are: {', '.join(sorted(DATASETS))}"
        )
    return DATASETS[key](seed=seed, test_size=test_size, **kwargs)
