"""Launcher of ``dropout.cu``: inverted dropout with ``gpunet.counter_rng``'s masks.

Not yet called by the GPU fused engine (which refuses Dropout, see
``gpunet.train.engines.qualify``); tested on the host build against the ``xp``
reference (``tests/test_dropout_kernels.py``).
"""

from __future__ import annotations

import numpy as np

from gpunet import counter_rng

SOURCE = "dropout.cu"
_THREADS = 256
_MAX_BLOCKS = 4096


def dropout_apply(rt, a, p: float, seed: int, counter: int, first_row=0, first_col=0, width=None):
    """In place: ``a[r, c] *= keep(e) / (1 - p)`` with ``e = (first_row + r) * width +
    first_col + c`` the element's index in the full (rows, ``width``) mask of
    ``(seed, counter)`` (``width`` default: ``a``'s columns). ``a`` (rows, cols)
    C-contiguous float32/float64. Applied to the gradient it is the backward pass."""
    if a.ndim != 2 or not a.flags.c_contiguous:
        raise ValueError("dropout_apply takes a C-contiguous 2-D array")
    rows, cols = a.shape
    width = cols if width is None else int(width)
    if first_col + cols > width:
        raise ValueError(f"columns {first_col}..{first_col + cols} exceed the width {width}")
    p = counter_rng.check_probability(p)
    key = counter_rng.stream_key(seed, counter)
    blocks = max(1, min(_MAX_BLOCKS, -(-(rows * cols) // _THREADS)))
    rt.launch(
        SOURCE,
        rt.kernel_name("dropout_apply", a.dtype),
        (blocks, 1, 1),
        (_THREADS, 1, 1),
        (
            np.int32(rows),
            np.int32(cols),
            a,
            np.int64(key - 2**64 if key >= 2**63 else key),  # the same 64 bits, signed
            np.int64(counter_rng.threshold(p)),
            a.dtype.type(1.0 / (1.0 - p)),
            np.int64(first_row),
            np.int64(first_col),
            np.int64(width),
        ),
    )
    return a
