"""Built-in data sets, train/test splitting and standardization (gpunet.data)."""

import random
import sys

import numpy as np
import pytest

from gpunet.data import (
    DATASETS,
    Dataset,
    NotFittedError,
    Standardizer,
    load_dataset,
    load_digits,
    load_mnist1d,
    make_classification,
    make_regression,
    train_test_split,
)


def _check_classification(ds: Dataset, n_features: int, n_classes: int):
    assert ds.task == "classification"
    assert ds.n_classes == n_classes == ds.n_outputs
    assert ds.n_features == n_features
    for X, y in ((ds.X_train, ds.y_train), (ds.X_test, ds.y_test)):
        assert X.ndim == 2 and X.shape[1] == n_features
        assert X.dtype == np.float32
        assert y.shape == (X.shape[0],) and y.dtype == np.int64
        assert y.min() >= 0 and y.max() < n_classes
        assert np.all(np.isfinite(X))


# --------------------------------------------------------------------------- loaders


def test_digits_shapes_and_scaling():
    ds = load_digits()
    _check_classification(ds, 64, 10)
    assert ds.X_train.shape[0] + ds.X_test.shape[0] == 1797
    assert ds.X_test.shape[0] == 360  # ceil(0.2 * 1797)
    both = np.concatenate([ds.X_train, ds.X_test])
    assert both.min() == 0.0 and both.max() == 1.0
    assert set(np.unique(ds.y_train)) == set(range(10))
    assert load_digits(dtype=np.float64).X_train.dtype == np.float64


def test_digits_deterministic_per_seed():
    a, b, c = load_digits(seed=3), load_digits(seed=3), load_digits(seed=4)
    np.testing.assert_array_equal(a.X_train, b.X_train)
    np.testing.assert_array_equal(a.y_test, b.y_test)
    assert not np.array_equal(a.y_train, c.y_train)


@pytest.fixture(scope="module")
def mnist1d_default():
    return load_dataset("mnist1d")


def test_mnist1d_default_split(mnist1d_default):
    ds = mnist1d_default
    _check_classification(ds, 40, 10)
    assert ds.X_train.shape == (4000, 40) and ds.X_test.shape == (1000, 40)
    assert ds.name == "mnist1d"
    # the generator centres and scales the whole set
    both = np.concatenate([ds.X_train, ds.X_test]).astype(np.float64)
    assert abs(both.mean()) < 1e-4 and abs(both.std() - 1) < 1e-4


def test_mnist1d_deterministic_and_keeps_global_rng_state():
    # mnist1d reseeds the global generators; the loader must hide that from its caller
    saved = np.random.get_state(), random.getstate()  # noqa: NPY002
    try:
        np.random.seed(123)  # noqa: NPY002
        random.seed(123)
        expected_np, expected_py = np.random.rand(3), random.random()  # noqa: NPY002
        np.random.seed(123)  # noqa: NPY002
        random.seed(123)
        small = load_mnist1d(num_samples=200)
        assert np.array_equal(np.random.rand(3), expected_np)  # noqa: NPY002
        assert random.random() == expected_py
    finally:
        np.random.set_state(saved[0])  # noqa: NPY002
        random.setstate(saved[1])
    again = load_mnist1d(num_samples=200)
    np.testing.assert_array_equal(small.X_train, again.X_train)
    np.testing.assert_array_equal(small.y_test, again.y_test)
    assert small.X_train.shape == (160, 40) and small.X_test.shape == (40, 40)
    other = load_mnist1d(num_samples=200, seed=7)
    assert not np.array_equal(small.X_train, other.X_train)
    # the default seed is the paper's: load_dataset and load_mnist1d agree
    via_name = load_dataset("mnist1d", seed=9, num_samples=200)
    np.testing.assert_array_equal(via_name.X_test, small.X_test)


def test_mnist1d_argument_errors():
    with pytest.raises(ValueError, match="num_samples"):
        load_mnist1d(num_samples=5)
    with pytest.raises(ValueError, match="test_size"):
        load_mnist1d(num_samples=100, test_size=1.5)


def test_missing_optional_packages_give_install_advice(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)
    with pytest.raises(ImportError, match=r'scikit-learn; .*pip install "gpunet\[data\]"'):
        load_digits()
    monkeypatch.setitem(sys.modules, "mnist1d", None)
    monkeypatch.setitem(sys.modules, "mnist1d.data", None)
    with pytest.raises(ImportError, match=r'mnist1d package; .*pip install "gpunet\[data\]"'):
        load_mnist1d(num_samples=100)


def test_make_classification_shapes_balance_and_determinism():
    X, y = make_classification(301, 7, 4, seed=5)
    assert X.shape == (301, 7) and X.dtype == np.float32
    assert y.shape == (301,) and y.dtype == np.int64
    counts = np.bincount(y, minlength=4)
    assert counts.max() - counts.min() <= 1
    X2, y2 = make_classification(301, 7, 4, seed=5)
    np.testing.assert_array_equal(X, X2)
    np.testing.assert_array_equal(y, y2)
    X3, _ = make_classification(301, 7, 4, seed=6)
    assert not np.array_equal(X, X3)
    assert make_classification(10, 3, 2, dtype=np.float64)[0].dtype == np.float64


def test_make_classification_is_learnable():
    # nearest class centroid on the training split beats chance by a wide margin
    ds = load_dataset("synthetic-classification", seed=0)
    centroids = np.stack([ds.X_train[ds.y_train == k].mean(0) for k in range(ds.n_classes)])
    dist = ((ds.X_test[:, None, :] - centroids[None]) ** 2).sum(-1)
    accuracy = (dist.argmin(1) == ds.y_test).mean()
    assert accuracy > 0.5  # chance is 1/3


def test_make_classification_errors():
    with pytest.raises(ValueError, match="n_classes"):
        make_classification(10, 3, 1)
    with pytest.raises(ValueError, match="n_informative"):
        make_classification(10, 3, 2, n_informative=4)
    with pytest.raises(ValueError, match="floating dtype"):
        make_classification(10, 3, 2, dtype=np.int32)


def test_make_regression_shapes_determinism_and_signal():
    X, y = make_regression(500, 6, 2, noise=0.05, seed=1)
    assert X.shape == (500, 6) and y.shape == (500, 2)
    assert X.dtype == np.float32 and y.dtype == np.float32
    X2, y2 = make_regression(500, 6, 2, noise=0.05, seed=1)
    np.testing.assert_array_equal(X, X2)
    np.testing.assert_array_equal(y, y2)
    assert not np.array_equal(y, make_regression(500, 6, 2, noise=0.05, seed=2)[1])
    # a least-squares fit explains most of the variance: the targets depend on X
    A = np.c_[X, np.ones(len(X))].astype(np.float64)
    coef, *_ = np.linalg.lstsq(A, y, rcond=None)
    r2 = 1 - ((A @ coef - y) ** 2).sum(0) / ((y - y.mean(0)) ** 2).sum(0)
    assert np.all(r2 > 0.5)
    with pytest.raises(ValueError, match="noise"):
        make_regression(10, 2, noise=-1)


def test_load_dataset_synthetic_regression():
    ds = load_dataset("synthetic-regression", seed=2, n_targets=3)
    assert ds.task == "regression" and ds.n_classes is None
    assert ds.y_train.shape == (800, 3) and ds.y_train.dtype == np.float32
    assert ds.n_outputs == 3 and ds.n_features == 10
    X_train, y_train, X_test, y_test = ds  # unpacks like a tuple
    assert X_test.shape == (200, 10) and y_test.shape == (200, 3)


@pytest.mark.parametrize("name", ["digits", "synthetic-classification", "synthetic_classification"])
def test_load_dataset_classification(name):
    ds = load_dataset(name, seed=1, test_size=0.25)
    n_features, n_classes = (64, 10) if name == "digits" else (20, 3)
    _check_classification(ds, n_features, n_classes)
    n = len(ds.y_train) + len(ds.y_test)
    assert len(ds.y_test) == int(np.ceil(0.25 * n))
    assert "train=" in repr(ds)


def test_load_dataset_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match="unknown dataset 'cifar'") as info:
        load_dataset("cifar")
    for name in DATASETS:
        assert name in str(info.value)


# ---------------------------------------------------------------------------- splits


def test_train_test_split_shapes_shuffle_and_determinism():
    X = np.arange(100, dtype=np.float32).reshape(50, 2)
    y = np.arange(50)
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=0.2, seed=0)
    assert X_tr.shape == (40, 2) and X_te.shape == (10, 2)
    assert X_tr.dtype == np.float32
    np.testing.assert_array_equal(X_tr[:, 0] // 2, y_tr)  # rows stay paired
    np.testing.assert_array_equal(X_te[:, 0] // 2, y_te)
    assert sorted(np.concatenate([y_tr, y_te]).tolist()) == list(range(50))
    assert not np.array_equal(y_tr, np.sort(y_tr))  # shuffled
    again = train_test_split(X, y, test_size=0.2, seed=0)
    np.testing.assert_array_equal(again[3], y_te)
    assert not np.array_equal(train_test_split(X, y, seed=1)[3], y_te)
    assert train_test_split(X, y, test_size=7)[1].shape == (7, 2)


def test_train_test_split_stratified_keeps_proportions():
    y = np.repeat([0, 1, 2], [60, 30, 10])
    X = np.arange(100.0)[:, None]
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=0.2, seed=3, stratify=y)
    assert np.bincount(y_te).tolist() == [12, 6, 2]
    assert np.bincount(y_tr).tolist() == [48, 24, 8]
    np.testing.assert_array_equal(y[X_te[:, 0].astype(int)], y_te)
    # odd sizes: each class within one of its exact share, totals exact
    y = np.repeat([0, 1, 2, 3], [17, 23, 9, 2])
    _, _, y_tr, y_te = train_test_split(np.zeros((51, 1)), y, test_size=0.3, stratify=True)
    assert len(y_te) == 16 and len(y_tr) == 35
    exact = 16 * np.bincount(y) / 51
    assert np.all(np.abs(np.bincount(y_te, minlength=4) - exact) < 1)
    assert np.all(np.bincount(y_tr, minlength=4) >= 1)


def test_train_test_split_errors():
    X, y = np.zeros((10, 2)), np.zeros(10)
    with pytest.raises(ValueError, match="different numbers of samples"):
        train_test_split(X, np.zeros(9))
    with pytest.raises(ValueError, match=r"must be in \(0, 1\)"):
        train_test_split(X, y, test_size=1.0)
    with pytest.raises(ValueError, match=r"must be in \[1, 9\]"):
        train_test_split(X, y, test_size=10)
    with pytest.raises(ValueError, match="test_size must be"):
        train_test_split(X, y, test_size="half")
    with pytest.raises(ValueError, match="fewer than 2 members"):
        train_test_split(X, y, stratify=np.r_[np.zeros(9), 1])
    with pytest.raises(ValueError, match="stratify must be labels"):
        train_test_split(X, y, stratify=np.zeros(4))
    with pytest.raises(ValueError, match="at least 2 samples"):
        train_test_split(X[:1], y[:1])


# ---------------------------------------------------------------------- standardizer


def test_standardizer_statistics_and_round_trip():
    rng = np.random.default_rng(0)
    X = (rng.standard_normal((200, 4)) * [1.0, 5.0, 0.1, 2.0] + [0.0, -3.0, 10.0, 1.0]).astype(
        np.float32
    )
    X[:, 3] = 7.0  # zero variance
    s = Standardizer()
    Z = s.fit_transform(X)
    assert Z.dtype == np.float32 and Z.shape == X.shape
    np.testing.assert_allclose(Z.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(Z[:, :3].std(0), 1, rtol=1e-5)
    assert s.std_[3] == 1.0 and np.all(Z[:, 3] == 0)
    np.testing.assert_allclose(s.mean_, X.astype(np.float64).mean(0), rtol=1e-6)
    np.testing.assert_allclose(s.inverse_transform(Z), X, rtol=1e-5, atol=1e-5)
    assert s.n_features_in_ == 4 and "n_features=4" in repr(s)


def test_standardizer_fit_on_train_only():
    X_train = np.array([[0.0], [2.0]])
    X_test = np.array([[4.0]])
    s = Standardizer().fit(X_train)
    np.testing.assert_allclose(s.transform(X_test), [[3.0]])  # (4 - 1) / 1
    assert s.transform(np.array([[1, 3]]).T).dtype == np.float64  # ints become float64


def test_standardizer_errors():
    s = Standardizer()
    with pytest.raises(ValueError, match="not fitted"):
        s.transform(np.zeros((2, 3)))
    with pytest.raises(NotFittedError):
        s.inverse_transform(np.zeros((2, 3)))
    s.fit(np.ones((4, 3)))
    with pytest.raises(ValueError, match="has 2 features but the Standardizer was fitted on 3"):
        s.transform(np.zeros((5, 2)))
    with pytest.raises(ValueError, match="2-D array"):
        s.transform(np.zeros(3))
    with pytest.raises(ValueError, match="NaN or infinity"):
        Standardizer().fit(np.array([[np.nan, 1.0]]))
