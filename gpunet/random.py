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


def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    """The shuffle of epoch ``epoch`` (0-based) of a fit seeded ``seed``: a permutation
    of ``range(n)`` (int64) that depends on (seed, epoch) alone, so a run resumed at any
    epoch shuffles as the uninterrupted one did."""
    return np.random.default_rng([int(seed), int(epoch)]).permutation(n)


def draw_seed() -> int:
    """A fit's seed drawn from the global generator (when the caller gives none)."""
    return int(_generator.integers(2**63))
