"""Fused training engine for Sequential dense networks (see issue: CPU speed)."""

from __future__ import annotations


def fused_unsupported_reason(model, loss, optimizer, backend, callbacks):
    return "the fused engine is not available yet"


class FusedDenseEngine:
    name = "fused"
