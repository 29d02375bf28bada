"""Counter-based random numbers: the masks of Dropout and DropConnect.

A mask element is a pure function of ``(seed, counter, element index)``; there is no
generator state to carry between calls, so the autograd path (these functions on
``xp`` arrays), a fused epoch (the same :func:`mix64` compiled by Numba on scalars) and
a CUDA kernel (``kernels/cuda/dropout.cu``, the same constants) draw the same masks
from the same counters.

The generator is splitmix64 (Steele, Lea & Flood 2014; the seeder of
xoshiro): with ``GOLDEN`` the odd constant ``0x9E3779B97F4A7C15``,

- ``key(seed, counter) = mix64(mix64(seed + GOLDEN) + counter * GOLDEN)``, one key per
  (layer seed, training step); ``mix64`` is a bijection of the 64-bit integers, so
  distinct counters give distinct keys;
- ``bits(key, i) = mix64(key + (i + 1) * GOLDEN)``, element ``i`` (C order in the masked
  array: ``row * features + column``) of that step's stream;
- ``keep(i) = (bits(key, i) >> 11) >= threshold(p)``, ``threshold(p) = floor(p * 2**53)``:
  an integer comparison (no rounding anywhere), true with probability
  ``1 - threshold / 2**53`` (``1 - p`` to within ``2**-53``).

All arithmetic is on unsigned 64-bit integers and wraps modulo ``2**64`` (NumPy and
CuPy arrays wrap silently; Numba scalars and CUDA ``unsigned long long`` do too).
"""

from __future__ import annotations

import math

import numpy as np

U64 = np.uint64
GOLDEN = U64(0x9E3779B97F4A7C15)
MIX1 = U64(0xBF58476D1CE4E5B9)
MIX2 = U64(0x94D049BB133111EB)
S30, S27, S31, S11 = U64(30), U64(27), U64(31), U64(11)
ONE = U64(1)
#: mask bits kept per draw (the top 53 of 64, as for a float64 in [0, 1))
MASK_BITS = 53


def mix64(x):
    """splitmix64's finalizer on uint64 ``x`` (an array, or a scalar inside Numba)."""
    x = (x ^ (x >> S30)) * MIX1
    x = (x ^ (x >> S27)) * MIX2
    return x ^ (x >> S31)


def check_probability(p, what: str = "p") -> float:
    """``p`` as a float in [0, 1), or ValueError naming the problem."""
    if isinstance(p, bool) or not isinstance(p, (int, float, np.integer, np.floating)):
        raise TypeError(f"{what} must be a number in [0, 1), got {type(p).__name__}")
    p = float(p)
    if not 0.0 <= p < 1.0:  # NaN fails too
        raise ValueError(f"{what} must be in [0, 1), got {p}")
    return p


def threshold(p: float) -> int:
    """``floor(p * 2**53)``: an element is kept when its top 53 bits are at least this."""
    return int(math.floor(check_probability(p) * 2.0**MASK_BITS))


def stream_key(seed: int, counter: int) -> int:
    """The 64-bit key of one (seed, counter) stream, as a Python int."""
    for name, value in (("seed", seed), ("counter", counter)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"{name} must be a non-negative int, got {value!r}")
    s = np.array([int(seed) % 2**64], dtype=U64)
    c = np.array([int(counter) % 2**64], dtype=U64)
    return int(mix64(mix64(s + GOLDEN) + c * GOLDEN)[0])


def stream_keys(seed: int, counters) -> np.ndarray:
    """``(len(counters),)`` uint64: :func:`stream_key` of ``seed`` with each counter
    (the keys of a fused epoch's steps, computed at once)."""
    s = np.array([int(seed) % 2**64], dtype=U64)
    c = np.asarray(counters, dtype=np.int64).astype(U64)
    return mix64(mix64(s + GOLDEN) + c * GOLDEN)


def random_bits(xp, key: int, n: int):
    """``(n,)`` uint64: ``bits(key, i)`` for ``i = 0 .. n-1``, computed with ``xp``."""
    index = xp.arange(1, n + 1, dtype=U64)
    return mix64(U64(key) + index * GOLDEN)


def keep_mask(xp, shape, p: float, seed: int, counter: int):
    """Bool array of ``shape``: which elements a mask of drop probability ``p`` keeps
    at ``(seed, counter)``."""
    n = int(np.prod(shape, dtype=np.int64))
    bits = random_bits(xp, stream_key(seed, counter), n)
    return ((bits >> S11) >= U64(threshold(p))).reshape(shape)


def scaled_mask(xp, shape, p: float, seed: int, counter: int, dtype):
    """``keep / (1 - p)`` as ``dtype``, the multiplier of inverted dropout (``shape``)."""
    keep = keep_mask(xp, shape, p, seed, counter)
    return keep.astype(dtype) * xp.asarray(1.0 / (1.0 - p), dtype=dtype)


def new_seed(generator=None) -> int:
    """A 63-bit seed drawn from ``generator`` (default: gpunet's global generator, so
    ``gpunet.manual_seed`` makes masks reproducible)."""
    if generator is None:
        from gpunet.random import default_generator  # noqa: PLC0415

        generator = default_generator()
    return int(generator.integers(0, 2**63 - 1))
