"""Input checks for the fit loop: every problem is reported before any state changes."""

from __future__ import annotations

import numpy as np

from gpunet.autograd import Tensor


def as_host_or_device_array(data, name: str, model_backend):
    """Return the raw array behind ``data`` (array, list or Tensor) after checking its
    device. Tensors on another device than the model raise RuntimeError."""
    if isinstance(data, Tensor):
        if data.backend is not model_backend:
            raise RuntimeError(
                f"{name} is on device {data.device} but the model is on "
                f"{model_backend.device}; move it with .to({model_backend.device!r})"
            )
        return data.data
    if data is None:
        raise ValueError(f"{name} is None")
    array = data if hasattr(data, "dtype") and hasattr(data, "shape") else np.asarray(data)
    return array


def _all_finite(x) -> bool:
    """No NaN or Inf in the float array ``x``: its min and max are finite (both
    propagate NaN). Two reductions, no temporary the size of ``x`` (``isfinite(x)``
    allocated one per call, a page-faulted N x F bool array every epoch of ``fit``)."""
    if x.size == 0:
        return True
    xp = _xp(x)
    return bool(xp.isfinite(x.min())) and bool(xp.isfinite(x.max()))


def check_features(x, name: str, model_dtype):
    """Validate an input array (N, ...) and cast it to the model dtype."""
    if x.dtype.kind not in "fiub":
        raise TypeError(f"{name} has dtype {x.dtype}; expected a numeric (float or int) array")
    if x.ndim < 2:
        raise ValueError(f"{name} must have shape (samples, features), got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} is empty (0 samples)")
    if x.dtype.kind == "f" and not _all_finite(x):
        raise ValueError(f"{name} contains NaN or Inf values")
    return x.astype(model_dtype, copy=False) if model_dtype is not None else x


def check_targets(y, name: str, n_samples: int, x_name: str = "x"):
    """Validate targets: same sample count as the inputs, finite, non-empty."""
    if y.ndim == 0:
        raise ValueError(f"{name} must have one entry per sample, got a scalar")
    if y.shape[0] != n_samples:
        raise ValueError(
            f"{x_name} has {n_samples} samples but {name} has {y.shape[0]}; they must match"
        )
    if y.dtype.kind not in "fiub":
        raise TypeError(f"{name} has dtype {y.dtype}; expected numeric targets")
    if y.dtype.kind == "f" and not _all_finite(y):
        raise ValueError(f"{name} contains NaN or Inf values")
    return y


def check_class_labels(y, n_classes: int, name: str = "y"):
    """Class-index targets must be integers in [0, n_classes)."""
    if y.dtype.kind not in "iu":
        if y.dtype.kind == "f" and bool((y == _xp(y).round(y)).all()):
            raise TypeError(
                f"{name} has dtype {y.dtype} but the loss needs integer class indices; "
                f"convert with y.astype(int)"
            )
        raise TypeError(f"{name} has dtype {y.dtype}; the loss needs integer class indices")
    if y.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of class indices, got shape {y.shape}")
    lo, hi = int(y.min()), int(y.max())
    if lo < 0 or hi >= n_classes:
        bad = lo if lo < 0 else hi
        raise ValueError(
            f"{name}: label {bad} out of range for a model with {n_classes} outputs "
            f"(labels must be in [0, {n_classes - 1}])"
        )
    return y


def check_batch_size(batch_size, n_samples: int) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)):
        raise TypeError(f"batch_size must be an int, got {batch_size!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return int(min(batch_size, n_samples))


def _xp(array):
    if type(array).__module__.startswith("cupy"):
        import cupy  # noqa: PLC0415

        return cupy
    return np
