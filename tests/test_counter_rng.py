"""The counter-based mask generator against a pure-Python splitmix64 oracle."""

import math

import numpy as np
import pytest

from gpunet import counter_rng

M64 = 2**64 - 1
GOLDEN = 0x9E3779B97F4A7C15


def splitmix64_outputs(state: int, n: int) -> list[int]:
    """The first ``n`` outputs of splitmix64 seeded with ``state`` (Vigna's C code in
    Python integers)."""
    out = []
    for _ in range(n):
        state = (state + GOLDEN) & M64
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
        out.append(z ^ (z >> 31))
    return out


def finalizer(z: int) -> int:
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def test_bits_are_splitmix64_streams():
    assert int(counter_rng.random_bits(np, 0, 1)[0]) == 0xE220A8397B1DCDAF  # Vigna's seed 0
    for key in (0, 1, 2**63 + 12345, M64):
        got = [int(v) for v in counter_rng.random_bits(np, key, 7)]
        assert got == splitmix64_outputs(key, 7)


def test_stream_key_formula():
    for seed, counter in ((0, 0), (7, 1), (2**62 + 3, 10**9)):
        expected = finalizer((finalizer((seed + GOLDEN) & M64) + counter * GOLDEN) & M64)
        assert counter_rng.stream_key(seed, counter) == expected
    with pytest.raises(ValueError, match="counter must be a non-negative int"):
        counter_rng.stream_key(1, -1)


def test_keep_mask_is_the_integer_comparison():
    p, seed, counter = 0.3, 99, 4
    mask = counter_rng.keep_mask(np, (5, 7), p, seed, counter)
    bits = splitmix64_outputs(counter_rng.stream_key(seed, counter), 35)
    expected = np.array([(b >> 11) >= math.floor(p * 2**53) for b in bits]).reshape(5, 7)
    np.testing.assert_array_equal(mask, expected)
    scale = counter_rng.scaled_mask(np, (5, 7), p, seed, counter, np.float64)
    np.testing.assert_array_equal(scale, expected / (1 - p))


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_keep_rate_within_binomial_bound(p):
    n = 200_000
    for counter in range(3):
        rate = counter_rng.keep_mask(np, (n,), p, 5, counter).mean()
        assert abs(rate - (1 - p)) < 5 * math.sqrt(p * (1 - p) / n)


def test_counters_and_seeds_give_different_masks_and_repeat():
    a = counter_rng.keep_mask(np, (64, 64), 0.5, 1, 0)
    np.testing.assert_array_equal(a, counter_rng.keep_mask(np, (64, 64), 0.5, 1, 0))
    for other in (
        counter_rng.keep_mask(np, (64, 64), 0.5, 1, 1),
        counter_rng.keep_mask(np, (64, 64), 0.5, 2, 0),
    ):
        agree = (a == other).mean()  # independent masks agree on about half
        assert 0.45 < agree < 0.55
    assert counter_rng.keep_mask(np, (10,), 0.0, 1, 0).all()


@pytest.mark.parametrize("p", [1.0, -0.1, float("nan"), 2])
def test_probability_outside_range_is_refused(p):
    with pytest.raises(ValueError, match=r"p must be in \[0, 1\)"):
        counter_rng.threshold(p)
