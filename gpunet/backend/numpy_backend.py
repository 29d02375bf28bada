"""The CPU backend: NumPy arrays, with the Numba kernels of ``gpunet.kernels.cpu`` in
place of the ``xp`` reference ops (BLAS still does the matmuls)."""

from __future__ import annotations

import numpy as np

from gpunet.backend.base import Backend


class NumpyBackend(Backend):
    name = "numpy"
    xp = np

    def __init__(self, device: str = "cpu"):
        super().__init__("cpu")

    def is_native(self, array) -> bool:
        return isinstance(array, np.ndarray)

    def dense_forward(self, x, W, b, act: str):
        from gpunet.kernels.cpu import dense  # noqa: PLC0415

        return dense.dense_forward(x, W, b, act)

    def dense_backward(self, dy, x, W, saved, act: str, need_dx: bool = True):
        from gpunet.kernels.cpu import dense  # noqa: PLC0415

        return dense.dense_backward(dy, x, W, saved, act, need_dx)

    def softmax_cross_entropy(
        self, logits, target, label_smoothing: float = 0.0, grad_scale: float = 1.0
    ):
        from gpunet.kernels.cpu import softmax_xent  # noqa: PLC0415

        return softmax_xent.softmax_cross_entropy(logits, target, label_smoothing, grad_scale)

    def fused_update(self, optimizer_name: str):
        from gpunet.kernels.cpu import optim_updates  # noqa: PLC0415

        return optim_updates.fused_update(optimizer_name)

    def fused_epoch_kernel(self):
        from gpunet.kernels.cpu import fused_mlp  # noqa: PLC0415

        return fused_mlp

    def training_context(self, flush_denormals: bool = True):
        """While training: with ``flush_denormals``, subnormal floats are flushed to zero
        on this thread (x86 FTZ/DAZ) and the update kernels store subnormal optimizer
        state as 0; without it, neither (see ``gpunet.kernels.cpu.denormals``)."""
        from gpunet.kernels.cpu.denormals import training_denormals  # noqa: PLC0415

        return training_denormals(flush_denormals)
