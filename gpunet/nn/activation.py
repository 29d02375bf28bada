"""Activation modules (PyTorch names)."""

from __future__ import annotations

from gpunet import functional as F
from gpunet.activations import LEAKY_RELU_SLOPE
from gpunet.nn.layers import as_input
from gpunet.nn.module import Module


class _Elementwise(Module):
    """An activation module applying ``gpunet.functional.activation(x, name)``."""

    activation = "linear"

    def forward(self, x):
        return F.activation(as_input(x, self), self.activation)


class ReLU(_Elementwise):
    activation = "relu"


class Sigmoid(_Elementwise):
    activation = "sigmoid"


class Tanh(_Elementwise):
    activation = "tanh"


class GELU(_Elementwise):
    """Exact (erf) GELU, PyTorch's default ``approximate='none'``."""

    activation = "gelu"


class LeakyReLU(Module):
    def __init__(self, negative_slope: float = LEAKY_RELU_SLOPE):
        super().__init__()
        self.negative_slope = negative_slope

    @property
    def activation(self) -> str | None:
        """The fusable activation name, or None for a non-default slope."""
        return "leaky_relu" if self.negative_slope == LEAKY_RELU_SLOPE else None

    def forward(self, x):
        return F.leaky_relu(as_input(x, self), self.negative_slope)

    def extra_repr(self) -> str:
        return f"negative_slope={self.negative_slope}"


class Softmax(Module):
    def __init__(self, dim: int = -1):
        super().__init__()
        self.dim = dim

    def forward(self, x):
        return F.softmax(as_input(x, self), self.dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class LogSoftmax(Softmax):
    def forward(self, x):
        return F.log_softmax(as_input(x, self), self.dim)


ACTIVATION_MODULES = {
    "relu": ReLU,
    "sigmoid": Sigmoid,
    "tanh": Tanh,
    "gelu": GELU,
    "leaky_relu": LeakyReLU,
}
