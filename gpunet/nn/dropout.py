"""Dropout (Srivastava et al. 2014) and DropConnect (Wan et al., ICML 2013).

Masks come from :mod:`gpunet.counter_rng`: each layer holds a ``seed`` (drawn from
gpunet's global generator when the layer is built, so ``gpunet.manual_seed`` makes a
run reproducible) and a ``counter``, the number of training forwards it has run; the
mask of a forward is ``keep_mask(shape, p, seed, counter)``. A fused engine that trains
such a layer reads both and draws the same masks.
"""

from __future__ import annotations

from gpunet import counter_rng
from gpunet import functional as F
from gpunet.autograd import Tensor
from gpunet.nn.layers import Dense, as_input
from gpunet.nn.module import Module


class _Masked:
    """The seed and step counter of a layer that draws a mask per training forward."""

    def _init_mask(self, p, seed):
        object.__setattr__(self, "p", counter_rng.check_probability(p))
        object.__setattr__(self, "seed", counter_rng.new_seed() if seed is None else int(seed))
        object.__setattr__(self, "counter", 0)

    def _next_counter(self) -> int:
        counter = self.counter
        object.__setattr__(self, "counter", counter + 1)
        return counter


class Dropout(_Masked, Module):
    """``torch.nn.Dropout(p)``: in training, each element is zeroed with probability
    ``p`` and the others scaled by ``1 / (1 - p)`` (inverted dropout); in eval mode the
    identity. Input: any shape; output: the same shape.

    ``p`` in [0, 1) (PyTorch also accepts 1, which zeroes everything); ``seed`` None
    draws one from gpunet's global generator. Unlike PyTorch's, the mask is a function
    of ``(seed, counter)``, so the masks of a run do not depend on other random draws."""

    def __init__(self, p: float = 0.5, seed: int | None = None):
        super().__init__()
        self._init_mask(p, seed)

    def forward(self, x) -> Tensor:
        x = as_input(x, self)
        if not self.training or self.p == 0.0:
            return x
        return F.dropout(x, self.p, True, seed=self.seed, counter=self._next_counter())

    def extra_repr(self) -> str:
        return f"p={self.p}"


class DropConnectDense(_Masked, Dense):
    """A :class:`~gpunet.nn.Dense` layer with DropConnect on its weight (Wan et al.).

    Training: each forward draws one mask ``M`` (out, in), each entry kept with
    probability ``1 - p``, shared by the rows of the batch, and computes
    ``act(x @ (W * M / (1 - p)).T + b)`` (inverted scaling, as inverted dropout: the
    expected masked weight is ``W``). The gradient reaching ``W`` is the masked one,
    ``dW * M / (1 - p)``; the bias is not masked. Eval: ``act(x @ W.T + b)``, i.e. the
    mean-field (expected-weight) inference; the paper's Gaussian moment-matching
    inference (sampling the pre-activation's Gaussian) is not implemented.

    The paper draws a mask per example; one mask per batch (as in most
    implementations) costs one elementwise product per step instead of a weight matrix
    per row. x (N, in) -> (N, out).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        activation: str | None = "linear",
        p: float = 0.5,
        bias: bool = True,
        seed: int | None = None,
        device=None,
        dtype=None,
        kernel_regularizer=None,
        bias_regularizer=None,
    ):
        counter_rng.check_probability(p)  # validate before allocating
        super().__init__(
            in_features,
            out_features,
            activation,
            bias=bias,
            device=device,
            dtype=dtype,
            kernel_regularizer=kernel_regularizer,
            bias_regularizer=bias_regularizer,
        )
        self._init_mask(p, seed)

    def forward(self, x) -> Tensor:
        x = as_input(x, self)
        weight = self.weight
        if self.training and self.p > 0.0:
            xp = weight.backend.xp
            scale = counter_rng.scaled_mask(
                xp, weight.shape, self.p, self.seed, self._next_counter(), weight.dtype
            )
            weight = weight * Tensor._wrap(scale, weight.backend)
        return F.dense(x, weight, self.bias, self.activation)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", p={self.p}"
