"""Activation functions: one math, written once against ``xp``.

Each activation knows its forward ``y = f(z)`` and its derivative expressed through
what the dense layer saves for backward. For every activation except GELU the saved
array is the output ``y`` (the derivative is a function of ``y``); GELU saves the
pre-activation ``z``. Names follow PyTorch's functional names.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

LEAKY_RELU_SLOPE = 0.01
_SQRT1_2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def _erf(xp, z):
    if xp.__name__ == "cupy":
        import cupyx.scipy.special as cupy_special  # noqa: PLC0415

        return cupy_special.erf(z)
    from gpunet._erf import erf  # noqa: PLC0415

    return erf(z)


@dataclass(frozen=True)
class Activation:
    """An elementwise activation.

    ``forward(xp, z) -> y``; ``backward(xp, dy, saved) -> dz`` where ``saved`` is
    ``y`` when ``saves_input`` is False, else ``z``. All arrays share one shape.
    """

    name: str
    forward: Callable
    backward: Callable
    saves_input: bool = False


def _identity_fwd(xp, z):
    return z


def _identity_bwd(xp, dy, y):
    return dy


def _relu_fwd(xp, z):
    return xp.maximum(z, 0)


def _relu_bwd(xp, dy, y):
    return dy * (y > 0)


def _leaky_fwd(xp, z):
    return xp.where(z > 0, z, z * z.dtype.type(LEAKY_RELU_SLOPE))


def _leaky_bwd(xp, dy, y):
    return xp.where(y > 0, dy, dy * dy.dtype.type(LEAKY_RELU_SLOPE))


def _sigmoid_fwd(xp, z):
    # split by sign so exp never overflows
    e = xp.exp(-xp.abs(z))
    return xp.where(z >= 0, 1 / (1 + e), e / (1 + e)).astype(z.dtype, copy=False)


def _sigmoid_bwd(xp, dy, y):
    return dy * y * (1 - y)


def _tanh_fwd(xp, z):
    return xp.tanh(z)


def _tanh_bwd(xp, dy, y):
    return dy * (1 - y * y)


def _gelu_fwd(xp, z):
    t = z.dtype.type
    return (t(0.5) * z * (t(1) + _erf(xp, z * t(_SQRT1_2)))).astype(z.dtype, copy=False)


def _gelu_bwd(xp, dy, z):
    t = z.dtype.type
    cdf = t(0.5) * (t(1) + _erf(xp, z * t(_SQRT1_2)))
    pdf = xp.exp(t(-0.5) * z * z) * t(_INV_SQRT_2PI)
    return (dy * (cdf + z * pdf)).astype(z.dtype, copy=False)


ACTIVATIONS: dict[str, Activation] = {
    "linear": Activation("linear", _identity_fwd, _identity_bwd),
    "relu": Activation("relu", _relu_fwd, _relu_bwd),
    "leaky_relu": Activation("leaky_relu", _leaky_fwd, _leaky_bwd),
    "sigmoid": Activation("sigmoid", _sigmoid_fwd, _sigmoid_bwd),
    "tanh": Activation("tanh", _tanh_fwd, _tanh_bwd),
    "gelu": Activation("gelu", _gelu_fwd, _gelu_bwd, saves_input=True),
}


def get_activation(name: str | None) -> Activation:
    """Look up an activation by name (``None`` means ``"linear"``)."""
    key = "linear" if name is None else str(name).lower()
    if key in ("identity", "none"):
        key = "linear"
    if key not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; expected one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[key]
