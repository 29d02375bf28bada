"""``erf`` for NumPy arrays (NumPy has none), as a Numba ufunc compiled on first use."""

from __future__ import annotations

import math

import numpy as np

_ufunc = None


def erf(z: np.ndarray) -> np.ndarray:
    """Elementwise error function; same shape and dtype as ``z`` (float32 or float64)."""
    global _ufunc
    if _ufunc is None:
        import numba  # noqa: PLC0415

        @numba.vectorize(["float32(float32)", "float64(float64)"], cache=False)
        def _erf(x):
            return math.erf(x)

        _ufunc = _erf
    return _ufunc(z)
