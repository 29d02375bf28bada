"""Inverted dropout with ``gpunet.counter_rng``'s masks, compiled by Numba.

:func:`dropout_apply` multiplies a block of a layer's activations (or, in the backward
pass, of their gradient) by ``keep / (1 - p)``, drawing each element's mask bit in the
loop from its index, with the very :func:`gpunet.counter_rng.mix64` that the ``xp``
reference runs on arrays. A block of rows (a batch half) or of columns (a
model-parallel half) gets the bits of its place in the whole mask. The fused epoch's
one-thread steps call it (``fused_step.forward_and_loss`` and the backward pass of
``fused_mlp.train_epoch``); tested against the reference in
``tests/test_dropout_kernels.py``.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from gpunet import counter_rng

mix64 = njit(cache=True, inline="always")(counter_rng.mix64)
_GOLDEN = counter_rng.GOLDEN
_ONE = counter_rng.ONE
_S11 = counter_rng.S11


@njit(cache=True, nogil=True, error_model="numpy")
def dropout_block(a, key, threshold, scale, first_row, first_col, width):
    """In place, ``a`` (rows, cols), any strides: ``a[r, c] *= scale`` when the mask
    keeps element ``e = (first_row + r) * width + first_col + c`` of the stream ``key``
    (uint64), else 0. ``threshold`` uint64, ``scale`` of ``a``'s dtype."""
    rows, cols = a.shape
    zero = scale - scale  # 0 in a's dtype
    for r in range(rows):
        base = np.uint64((first_row + r) * width + first_col)
        for c in range(cols):
            bits = mix64(key + (base + np.uint64(c) + _ONE) * _GOLDEN)
            a[r, c] = a[r, c] * scale if (bits >> _S11) >= threshold else zero


def dropout_apply(a, p: float, seed: int, counter: int, first_row=0, first_col=0, width=None):
    """Python front end of :func:`dropout_block` with ``dropout_ops.dropout_apply``'s
    signature (minus the runtime): masks of ``(seed, counter)``, drop probability ``p``."""
    if a.ndim != 2:
        raise ValueError("dropout_apply takes a 2-D array")
    width = a.shape[1] if width is None else int(width)
    if first_col + a.shape[1] > width:
        raise ValueError(f"columns {first_col}..{first_col + a.shape[1]} exceed the width {width}")
    p = counter_rng.check_probability(p)
    dropout_block(
        a,
        np.uint64(counter_rng.stream_key(seed, counter)),
        np.uint64(counter_rng.threshold(p)),
        a.dtype.type(1.0 / (1.0 - p)),
        first_row,
        first_col,
        width,
    )
    return a
