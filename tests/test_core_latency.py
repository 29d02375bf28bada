"""The benchmark's CPU round-trip probe (benchmarks/core_latency.py)."""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import core_latency  # noqa: E402


@pytest.mark.skipif(
    not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2,
    reason="needs two usable CPUs and thread pinning (Linux)",
)
def test_round_trip_is_measured_and_affinity_restored():
    before = os.sched_getaffinity(0)
    ns = core_latency.round_trip_ns(rounds=1000)
    assert ns is not None and math.isfinite(ns) and ns > 0
    assert os.sched_getaffinity(0) == before


def test_round_trip_needs_two_cpus(monkeypatch):
    if not hasattr(os, "sched_getaffinity"):
        assert core_latency.round_trip_ns(rounds=10) is None
        return
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    assert core_latency.round_trip_ns(rounds=10) is None
