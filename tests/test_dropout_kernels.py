"""The dropout kernels (Numba, and CUDA C on the host build) draw the ``xp``
reference's masks (``gpunet.counter_rng``) and apply inverted dropout exactly."""

import numpy as np
import pytest

from gpunet import counter_rng
from gpunet.kernels.cpu.dropout import dropout_apply as numba_dropout
from gpunet.kernels.cuda import dropout_ops

DTYPES = [np.float32, np.float64]
rng = np.random.default_rng(17)


def reference(x, p, seed, counter):
    """x * keep / (1 - p) from the xp reference, in x's dtype."""
    scale = counter_rng.scaled_mask(np, x.shape, p, seed, counter, x.dtype)
    return x * scale


def _cases():
    for shape in ((1, 1), (3, 5), (17, 130)):
        for p in (0.0, 0.25, 0.5, 0.9):
            yield shape, p


def _check_blocks(apply, dtype):
    for (rows, cols), p in _cases():
        x = rng.standard_normal((rows, cols)).astype(dtype)
        expected = reference(x, p, 1234, 7)
        whole = apply(x.copy(), p, 1234, 7)
        np.testing.assert_array_equal(whole, expected)
        # a batch half and a column half draw their place's bits of the whole mask
        r0, c0 = rows // 2, cols // 2
        lower = apply(x[r0:].copy(), p, 1234, 7, first_row=r0, width=cols)
        np.testing.assert_array_equal(lower, expected[r0:])
        right = apply(x[:, c0:].copy(), p, 1234, 7, first_col=c0, width=cols)
        np.testing.assert_array_equal(right, expected[:, c0:])
    other = apply(np.ones((8, 8), dtype), 0.5, 1234, 8)
    assert not np.array_equal(other, reference(np.ones((8, 8), dtype), 0.5, 1234, 7))


@pytest.mark.parametrize("dtype", DTYPES)
def test_numba_kernel_draws_the_reference_masks(dtype):
    _check_blocks(numba_dropout, dtype)


@pytest.mark.cudahost
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_kernel_on_the_host_draws_the_reference_masks(host_runtime, dtype):
    def apply(a, p, seed, counter, first_row=0, first_col=0, width=None):
        return dropout_ops.dropout_apply(
            host_runtime, a, p, seed, counter, first_row, first_col, width
        )

    _check_blocks(apply, dtype)


def test_launchers_refuse_bad_blocks():
    with pytest.raises(ValueError, match="exceed the width"):
        numba_dropout(np.ones((2, 3)), 0.5, 1, 0, first_col=2, width=4)
    with pytest.raises(ValueError, match=r"p must be in \[0, 1\)"):
        numba_dropout(np.ones((2, 3)), 1.0, 1, 0)


@pytest.mark.cudahost
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_keyed_kernel_reads_its_key_from_the_device(host_runtime, dtype):
    """The GPU engine's dropout: each layer's (seed, counter, p) from a device table,
    out of place or in place, and ``dropout_advance`` moves the active layers' counters
    on, so the same launches draw the next step's reference masks."""
    from types import SimpleNamespace

    layers = {
        0: SimpleNamespace(p=0.5, seed=2**64 - 12345, counter=7),  # seed bits above 2**63
        2: SimpleNamespace(p=0.9, seed=99, counter=0),
        3: SimpleNamespace(p=0.0, seed=5, counter=4),  # p = 0: identity, counter stays
    }
    keys = dropout_ops.KeyTable(np, 4, dtype)
    keys.load(layers)
    x = rng.standard_normal((17, 130)).astype(dtype)
    for step in range(2):
        for l in range(4):
            m = layers.get(l)
            want = x if m is None or m.p == 0 else reference(x, m.p, m.seed, m.counter + step)
            out = dropout_ops.dropout_keyed(host_runtime, x, np.empty_like(x), keys, l)
            np.testing.assert_array_equal(out, want)
            a = x.copy()
            dropout_ops.dropout_keyed(host_runtime, a, a, keys, l)  # in place
            np.testing.assert_array_equal(a, want)
        dropout_ops.dropout_advance(host_runtime, keys)
    assert list(keys.counters(np.asarray)) == [9, 0, 2, 4]
