"""The learning loop: ``fit``/``Trainer``, ``evaluate``, ``predict``, callbacks, History.

The loop's names are imported from ``gpunet.train.loop`` on first use, so importing a
piece the loop builds on (``gpunet.train.engines``, ``callbacks``) does not load the loop.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from gpunet.train.callbacks import (
    Callback,
    CallbackList,
    EarlyStopping,
    LRSchedulerCallback,
    ModelCheckpoint,
)
from gpunet.train.history import History

if TYPE_CHECKING:
    from gpunet.train.loop import Trainer, evaluate, fit, predict

_LOOP_NAMES = ("Trainer", "evaluate", "fit", "predict")

__all__ = [
    "Callback",
    "CallbackList",
    "EarlyStopping",
    "History",
    "LRSchedulerCallback",
    "ModelCheckpoint",
    "Trainer",
    "evaluate",
    "fit",
    "predict",
]


def __getattr__(name: str):
    if name in _LOOP_NAMES:
        value = getattr(importlib.import_module("gpunet.train.loop"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
