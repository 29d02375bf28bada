"""Floating-point dtype policy: float32 by default, float64 allowed (for gradient checks)."""

from __future__ import annotations

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
_default_dtype = np.dtype(np.float32)


def get_default_dtype() -> np.dtype:
    """The dtype new floating tensors and parameters get."""
    return _default_dtype


def set_default_dtype(dtype) -> None:
    """Set the default floating dtype; only float32 and float64 are supported."""
    global _default_dtype
    _default_dtype = check_float_dtype(dtype)


def check_float_dtype(dtype) -> np.dtype:
    """Return ``np.dtype(dtype)`` if it is float32 or float64, else raise TypeError."""
    try:
        dt = np.dtype(dtype)
    except TypeError as exc:
        raise TypeError(f"unsupported dtype {dtype!r}; use float32 or float64") from exc
    if dt not in FLOAT_DTYPES:
        raise TypeError(f"unsupported dtype {dt}; gpunet computes in float32 or float64")
    return dt
