"""Weight penalties with Keras's semantics (``keras.regularizers``).

A regularizer maps a weight tensor to a scalar penalty tensor: ``L1(l1)`` is
``l1 * sum(|w|)``, ``L2(l2)`` is ``l2 * sum(w ** 2)`` (no 1/2, as in Keras: its
gradient is ``2 * l2 * w``), ``L1L2(l1, l2)`` their sum. ``Dense(...,
kernel_regularizer=L2(1e-4), bias_regularizer=L1(1e-5))`` attaches them to a layer;
:func:`penalty` sums every layer's penalty, and the trainer adds it to each batch's
loss (so it is part of the reported loss and its gradient of ``dW``), and to
``evaluate``'s loss, as Keras does. In a loop of your own, add ``penalty(model)`` to
the loss before ``backward()``. The subgradient of ``|w|`` at 0 is 0.

Unlike an optimizer's ``weight_decay`` (the same for every parameter of a group, and
decoupled for AdamW), a penalty is per layer and part of the loss.
"""

from __future__ import annotations

import math

from gpunet import autograd as A
from gpunet.autograd import Tensor


def _coefficient(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    value = float(value)
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {value}")
    return value


class Regularizer:
    """Base class: ``__call__(w: Tensor) -> Tensor`` (0-d)."""

    l1 = 0.0
    l2 = 0.0

    def __call__(self, w: Tensor) -> Tensor:
        total = None
        if self.l1:
            total = A.sum(A.abs(w)) * self.l1
        if self.l2:
            term = A.sum(w * w) * self.l2
            total = term if total is None else total + term
        return total if total is not None else A.sum(w) * 0.0

    def get_config(self) -> dict:
        return {"l1": self.l1, "l2": self.l2}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(l1={self.l1}, l2={self.l2})"


class L1L2(Regularizer):
    """``l1 * sum(|w|) + l2 * sum(w ** 2)``."""

    def __init__(self, l1: float = 0.0, l2: float = 0.0):
        self.l1, self.l2 = _coefficient(l1, "l1"), _coefficient(l2, "l2")


class L1(L1L2):
    """``l1 * sum(|w|)`` (Keras default 0.01)."""

    def __init__(self, l1: float = 0.01):
        super().__init__(l1=l1)

    def __repr__(self) -> str:
        return f"L1({self.l1})"


class L2(L1L2):
    """``l2 * sum(w ** 2)`` (Keras default 0.01)."""

    def __init__(self, l2: float = 0.01):
        super().__init__(l2=l2)

    def __repr__(self) -> str:
        return f"L2({self.l2})"


def get(identifier) -> Regularizer | None:
    """None, a :class:`Regularizer`, or a name ("l1", "l2", "l1_l2") with Keras's
    default coefficients."""
    if identifier is None or isinstance(identifier, Regularizer):
        return identifier
    names = {"l1": L1, "l2": L2, "l1_l2": lambda: L1L2(0.01, 0.01)}
    if isinstance(identifier, str) and identifier.lower() in names:
        return names[identifier.lower()]()
    raise ValueError(
        f"unknown regularizer {identifier!r}; expected None, a Regularizer or one of "
        f"{sorted(names)}"
    )


def penalty(model) -> Tensor | None:
    """Sum of the penalties of every module of ``model`` that has regularizers (0-d
    tensor on the model's device), or None when none has."""
    total = None
    for module in model.modules():
        for reg, param in (
            (getattr(module, "kernel_regularizer", None), getattr(module, "weight", None)),
            (getattr(module, "bias_regularizer", None), getattr(module, "bias", None)),
        ):
            if reg is None or param is None:
                continue
            term = reg(param)
            total = term if total is None else total + term
    return total


def has_penalty(model) -> bool:
    """Whether some module of ``model`` carries a kernel or bias regularizer."""
    return any(
        getattr(m, "kernel_regularizer", None) is not None
        or getattr(m, "bias_regularizer", None) is not None
        for m in model.modules()
    )
