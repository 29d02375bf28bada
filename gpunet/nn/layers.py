"""Dense layers and shape layers."""

from __future__ import annotations

import math

from gpunet import functional as F
from gpunet import regularizers
from gpunet.activations import get_activation
from gpunet.autograd import Tensor
from gpunet.dtypes import check_float_dtype, get_default_dtype
from gpunet.nn.module import Module, Parameter
from gpunet.random import default_generator


def as_input(x, like: Module) -> Tensor:
    """Accept arrays as well as tensors at a model's entry, on the model's device."""
    if isinstance(x, Tensor):
        return x
    return Tensor(x, device=like.device)


class Linear(Module):
    """``y = x @ weight.T + bias``; weight (out, in), bias (out,).

    Initialised like ``torch.nn.Linear``: weight and bias ~ U(-1/sqrt(in), 1/sqrt(in)),
    drawn from gpunet's global generator on the host (same numbers on every device).
    """

    activation = "linear"

    def __init__(
        self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None
    ):
        super().__init__()
        for name, value in (("in_features", in_features), ("out_features", out_features)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.in_features, self.out_features = in_features, out_features
        dtype = check_float_dtype(dtype) if dtype is not None else get_default_dtype()
        bound = 1.0 / math.sqrt(in_features)
        rng = default_generator()
        w = rng.uniform(-bound, bound, size=(out_features, in_features)).astype(dtype)
        self.weight = Parameter(w, device=device)
        if bias:
            b = rng.uniform(-bound, bound, size=(out_features,)).astype(dtype)
            self.bias = Parameter(b, device=device)
        else:
            self.bias = None

    def forward(self, x) -> Tensor:
        return F.dense(as_input(x, self), self.weight, self.bias, self.activation)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}"
        )


class Dense(Linear):
    """Keras-style dense layer: ``activation(x @ weight.T + bias)`` as one fused node.

    ``activation``: "linear" (default, like Keras), "relu", "leaky_relu", "sigmoid",
    "tanh" or "gelu". ``kernel_regularizer`` / ``bias_regularizer``: None, a
    ``gpunet.regularizers.Regularizer`` (``L1``, ``L2``, ``L1L2``) or its name; the
    trainer adds their penalties to the loss (Keras semantics, see
    ``gpunet.regularizers``).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        activation: str | None = "linear",
        bias: bool = True,
        device=None,
        dtype=None,
        kernel_regularizer=None,
        bias_regularizer=None,
    ):
        self_activation = get_activation(activation).name  # validate before allocating
        kernel_regularizer = regularizers.get(kernel_regularizer)
        bias_regularizer = regularizers.get(bias_regularizer)
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        object.__setattr__(self, "activation", self_activation)
        object.__setattr__(self, "kernel_regularizer", kernel_regularizer)
        object.__setattr__(self, "bias_regularizer", bias_regularizer)

    def extra_repr(self) -> str:
        extra = f", activation={self.activation!r}"
        for name in ("kernel_regularizer", "bias_regularizer"):
            if getattr(self, name) is not None:
                extra += f", {name}={getattr(self, name)!r}"
        return super().extra_repr() + extra


class Flatten(Module):
    """Flatten dims ``start_dim..end_dim`` into one (PyTorch defaults 1, -1)."""

    def __init__(self, start_dim: int = 1, end_dim: int = -1):
        super().__init__()
        self.start_dim, self.end_dim = start_dim, end_dim

    def forward(self, x) -> Tensor:
        x = as_input(x, self)
        shape = x.shape
        start = self.start_dim % len(shape)
        end = self.end_dim % len(shape)
        size = 1
        for n in shape[start : end + 1]:
            size *= n
        return x.reshape(shape[:start] + (size,) + shape[end + 1 :])

    def extra_repr(self) -> str:
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"


class Identity(Module):
    def forward(self, x) -> Tensor:
        return as_input(x, self)
