"""Launchers of ``dropout.cu``: inverted dropout with ``gpunet.counter_rng``'s masks.

- :func:`dropout_apply`: a block of a mask whose key is a launch argument;
- :class:`KeyTable`, :func:`dropout_keyed`, :func:`dropout_advance`: the GPU engine's
  step (``kernels/cuda/fused_mlp.py``), whose launches sit in a CUDA graph: each
  layer's seed, counter, threshold and scale live in device memory, and the step ends by
  advancing the counters on the device, so every replay draws the next step's masks.

Tested on the host build against the ``xp`` reference (``tests/test_dropout_kernels.py``).
"""

from __future__ import annotations

import numpy as np

from gpunet import counter_rng

SOURCE = "dropout.cu"
_THREADS = 256
_MAX_BLOCKS = 4096
#: columns of the key table: seed bits, counter, threshold, active (1: advance counter)
SEED, COUNTER, THRESHOLD, ACTIVE = range(4)


def _signed(u: int) -> int:
    """The int64 with the bits of the uint64 ``u``."""
    u %= 2**64
    return u - 2**64 if u >= 2**63 else u


def _blocks(n: int) -> int:
    return max(1, min(_MAX_BLOCKS, -(-n // _THREADS)))


class KeyTable:
    """The parameters of M masks on the device (the GPU engine's rows: ``l`` the Dropout
    after layer ``l``, ``L + l`` layer ``l``'s DropConnect): ``table`` (M, 4) int64
    (seed bits, counter, threshold, active) and ``scales`` (M,) ``1 / (1 - p)`` in the
    parameters' dtype. A row with no module (or ``p = 0``) has threshold 0, scale 1 and
    active 0: its mask keeps everything and its counter stays."""

    def __init__(self, xp, n_masks: int, dtype):
        self.xp = xp
        self.table = xp.zeros((n_masks, 4), np.int64)
        self.scales = xp.ones(n_masks, dtype)

    def load(self, modules: dict):
        """Fill from ``{row: module with p, seed, counter}`` (in place: the addresses a
        captured graph holds stay)."""
        table = np.zeros(self.table.shape, np.int64)
        scales = np.ones(self.scales.shape, self.scales.dtype)
        for l, m in modules.items():
            p = counter_rng.check_probability(m.p)
            table[l] = (_signed(int(m.seed)), int(m.counter), counter_rng.threshold(p), p > 0)
            scales[l] = 1.0 / (1.0 - p)
        self.table[...] = self.xp.asarray(table)
        self.scales[...] = self.xp.asarray(scales)

    def counters(self, to_host) -> np.ndarray:
        """(M,) int64: each row's counter now (``to_host``: device -> NumPy)."""
        return np.asarray(to_host(self.table))[:, COUNTER].copy()


def dropout_keyed(rt, src, dst, keys: KeyTable, layer: int):
    """``dst = src * keep / (1 - p)`` with the mask of row ``layer`` of ``keys`` (its
    seed, counter, threshold, scale read on the device); ``src``, ``dst`` (rows, cols)
    C-contiguous, the same array or not overlapping."""
    if src.shape != dst.shape or not (src.flags.c_contiguous and dst.flags.c_contiguous):
        raise ValueError("dropout_keyed takes C-contiguous arrays of one shape")
    rows, cols = src.shape
    rt.launch(
        SOURCE,
        rt.kernel_name("dropout_keyed", dst.dtype),
        (_blocks(rows * cols), 1, 1),
        (_THREADS, 1, 1),
        (np.int32(rows), np.int32(cols), src, dst, keys.table, keys.scales, np.int32(layer)),
    )
    return dst


def dropout_advance(rt, keys: KeyTable):
    """Every active row's counter += 1 (on the device), at the end of a step."""
    n_layers = keys.table.shape[0]
    rt.launch(
        SOURCE,
        rt.kernel_name("dropout_advance", keys.scales.dtype),
        (1, 1, 1),
        (max(32, min(256, n_layers)), 1, 1),
        (np.int32(n_layers), keys.table),
    )


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
    rt.launch(
        SOURCE,
        rt.kernel_name("dropout_apply", a.dtype),
        (_blocks(rows * cols), 1, 1),
        (_THREADS, 1, 1),
        (
            np.int32(rows),
            np.int32(cols),
            a,
            np.int64(_signed(key)),  # the same 64 bits, signed
            np.int64(counter_rng.threshold(p)),
            a.dtype.type(1.0 / (1.0 - p)),
            np.int64(first_row),
            np.int64(first_col),
            np.int64(width),
        ),
    )
    return a
