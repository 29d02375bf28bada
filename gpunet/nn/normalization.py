"""Batch normalization (Ioffe & Szegedy 2015) with PyTorch's semantics."""

from __future__ import annotations

import numpy as np

from gpunet import functional as F
from gpunet.autograd import Tensor
from gpunet.dtypes import check_float_dtype, get_default_dtype
from gpunet.nn.layers import as_input
from gpunet.nn.module import Module, Parameter


class BatchNorm1d(Module):
    """``torch.nn.BatchNorm1d``: x (N, C) or (N, C, L) -> the same shape.

    Training: normalize each channel by the batch's mean and biased variance (over N,
    and L), then ``weight * x_hat + bias`` (``affine``: weight ones, bias zeros,
    trained); with ``track_running_stats`` the buffers ``running_mean`` (zeros),
    ``running_var`` (ones) are updated to ``(1 - momentum) * running + momentum *
    batch`` with the unbiased batch variance (``momentum`` None: the cumulative
    average), and ``num_batches_tracked`` counts the updates. Eval: normalize by the
    running statistics (by the batch's when ``track_running_stats`` is False). A batch
    of one row (one value per channel) raises ValueError in training, as in PyTorch.
    The buffers are part of ``state_dict`` and of ``gpunet.io`` files."""

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        device=None,
        dtype=None,
    ):
        super().__init__()
        if not isinstance(num_features, int) or isinstance(num_features, bool) or num_features < 1:
            raise ValueError(f"num_features must be a positive int, got {num_features!r}")
        if not eps > 0:
            raise ValueError(f"eps must be positive, got {eps}")
        if momentum is not None and not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1] or None, got {momentum}")
        dtype = check_float_dtype(dtype) if dtype is not None else get_default_dtype()
        self.num_features, self.eps, self.momentum = num_features, float(eps), momentum
        self.affine, self.track_running_stats = bool(affine), bool(track_running_stats)
        if affine:
            self.weight = Parameter(np.ones(num_features, dtype), device=device)
            self.bias = Parameter(np.zeros(num_features, dtype), device=device)
        else:
            self.weight = self.bias = None
        if track_running_stats:
            self.register_buffer(
                "running_mean", Tensor(np.zeros(num_features, dtype), device=device)
            )
            self.register_buffer("running_var", Tensor(np.ones(num_features, dtype), device=device))
            self.register_buffer(
                "num_batches_tracked", Tensor(np.zeros((), np.int64), device=device)
            )
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)

    def reset_running_stats(self) -> None:
        if self.track_running_stats:
            self.running_mean.data[...] = 0
            self.running_var.data[...] = 1
            self.num_batches_tracked.data[...] = 0

    def forward(self, x) -> Tensor:
        x = as_input(x, self)
        F._batch_norm_axes(x, self.num_features)
        tracked = self.track_running_stats
        return F.batch_norm(
            x,
            self.running_mean.data if tracked else None,
            self.running_var.data if tracked else None,
            self.weight,
            self.bias,
            training=self.training,
            momentum=self.momentum,
            eps=self.eps,
            num_batches_tracked=self.num_batches_tracked.data if tracked else None,
        )

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
            f"affine={self.affine}, track_running_stats={self.track_running_stats}"
        )
