"""The benchmark's process isolation: a peer in its own process trains exactly like the
same peer in this process (timings are not tested; they belong in benchmarks/)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import isolated, peers  # noqa: E402

WIDTHS = [12, 9, 4]


@pytest.fixture
def shared():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((96, WIDTHS[0])).astype(np.float32)
    y = rng.integers(0, WIDTHS[-1], 96)
    arrays = isolated.SharedArrays(X=X, y=y)
    yield arrays
    arrays.close()


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_isolated_peer_trains_like_the_peer_in_process(shared, optimizer):
    X, y = shared.arrays["X"], shared.arrays["y"]
    local = peers.NumpyPeer(WIDTHS, seed=0)
    remote = isolated.IsolatedPeer("numpy", WIDTHS, shared)
    try:
        assert (remote.key, remote.label) == (local.key, local.label)
        assert remote.supports(16, 96) is True
        for peer in (local, remote):
            peer.setup(optimizer, np.float32)
        initial = local.loss(X, y)
        assert remote.loss(X, y) == initial
        for peer in (local, remote):
            peer.train(X[:64], y[:64], 16)
            peer.train(X, y, 32)
        trained = local.loss(X, y)
        assert trained != initial  # the worker trained: same weights, same shuffles
        assert remote.loss(X, y) == trained
    finally:
        remote.close()


def test_isolated_peer_rejects_data_outside_the_shared_arrays(shared):
    remote = isolated.IsolatedPeer("numpy", WIDTHS, shared)
    try:
        remote.setup("sgd", np.float32)
        with pytest.raises(ValueError, match="leading slices of the shared X"):
            remote.train(shared.arrays["X"][8:], shared.arrays["y"][8:], 4)
        with pytest.raises(ValueError, match="leading slices of the shared X"):
            remote.train(shared.arrays["X"].copy(), shared.arrays["y"], 4)
    finally:
        remote.close()


def test_worker_errors_name_the_framework(shared):
    remote = isolated.IsolatedPeer("numpy", WIDTHS, shared)
    try:
        with pytest.raises(RuntimeError, match="benchmark peer numpy: KeyError"):
            remote.setup("no-such-optimizer", np.float32)
    finally:
        remote.close()


def test_a_peer_that_fails_to_start_says_why(shared):
    with pytest.raises(RuntimeError, match="benchmark peer numpy: TypeError"):
        isolated.IsolatedPeer("numpy", WIDTHS, shared, no_such_option=1)
