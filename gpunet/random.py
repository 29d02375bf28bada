"""Global seeded RNG. Parameters are initialised on the host from this generator and
then moved to their device, so a seed gives the same initial weights on CPU and GPU."""

from __future__ import annotations

import numpy as np

_generator = np.random.default_rng(0)


def manual_seed(seed: int) -> np.random.Generator:
    """Reseed gpunet's global generator (like ``torch.manual_seed``); returns it."""
    global _generator
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    _generator = np.random.default_rng(int(seed))
    return _generator


def default_generator() -> np.random.Generator:
    """The generator used by parameter initialisation and shuffling when none is given."""
    return _generator


_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15


def _mix64(xp, z):
    """SplitMix64's finaliser on uint64 values (``xp`` arrays wrap modulo 2**64)."""
    z = z ^ (z >> xp.uint64(30))
    z = z * xp.uint64(0xBF58476D1CE4E5B9)
    z = z ^ (z >> xp.uint64(27))
    z = z * xp.uint64(0x94D049BB133111EB)
    return z ^ (z >> xp.uint64(31))


def epoch_permutation(xp, n: int, seed: int, epoch: int):
    """The shuffle of epoch ``epoch`` for ``seed``: a permutation of ``range(n)`` (int64,
    an ``xp`` array) drawn on ``xp``'s device as the order of counter-based random keys
    (SplitMix64 of ``(seed, epoch, i)``). It depends on ``(seed, epoch)`` alone, so it is
    the same on NumPy and CuPy, and a resumed run can redraw any epoch's order."""
    base = int(_mix64(np, np.array([(seed * _GOLDEN) & _MASK64], np.uint64))[0])
    base = int(_mix64(np, np.array([(base + epoch * _GOLDEN) & _MASK64], np.uint64))[0])
    counters = xp.arange(n, dtype=xp.uint64) * xp.uint64(_GOLDEN) + xp.uint64(base)
    return xp.argsort(_mix64(xp, counters), kind="stable").astype(xp.int64, copy=False)
