"""Built-in data sets and host-side preprocessing (NumPy arrays in, NumPy arrays out).

``load_dataset(name)`` returns a :class:`Dataset` (``X_train`` (N, F), ``y_train`` (N,)
int64 or (N, k) float, ``X_test``, ``y_test``). Real data sets need the ``data`` extra
(``pip install "gpunet[data]"``); the synthetic ones need only NumPy.
"""

from gpunet.data.datasets import (
    DATASETS,
    Dataset,
    load_dataset,
    load_digits,
    load_mnist1d,
    make_classification,
    make_regression,
)
from gpunet.data.splits import NotFittedError, Standardizer, train_test_split

__all__ = [
    "DATASETS",
    "Dataset",
    "NotFittedError",
    "Standardizer",
    "load_dataset",
    "load_digits",
    "load_mnist1d",
    "make_classification",
    "make_regression",
    "train_test_split",
]
