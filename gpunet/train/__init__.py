"""The learning loop: ``fit``/``Trainer``, ``evaluate``, ``predict``, callbacks, History."""

from gpunet.train.callbacks import (
    Callback,
    CallbackList,
    EarlyStopping,
    LRSchedulerCallback,
    ModelCheckpoint,
)
from gpunet.train.history import History
from gpunet.train.loop import Trainer, evaluate, fit, predict

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
