"""Optimizers and learning-rate schedulers, with PyTorch's names and semantics.

``gpunet.optim.functional`` holds each update as an in-place function over arrays
(the reference a backend's fused kernel must match); the classes here keep the
parameter groups and per-parameter state.
"""

from gpunet.optim import functional, lr_scheduler
from gpunet.optim.adagrad import Adagrad
from gpunet.optim.adam import Adam, AdamW
from gpunet.optim.optimizer import Optimizer
from gpunet.optim.rmsprop import RMSprop
from gpunet.optim.sgd import SGD

__all__ = [
    "SGD",
    "Adagrad",
    "Adam",
    "AdamW",
    "Optimizer",
    "RMSprop",
    "functional",
    "lr_scheduler",
]
