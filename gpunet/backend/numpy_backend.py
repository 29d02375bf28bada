"""The CPU backend: NumPy arrays, with the Numba kernels of ``gpunet.kernels.cpu`` in
place of the ``xp`` reference ops (BLAS still does the matmuls)."""

from __future__ import annotations

import contextlib
import threading

import numpy as np

from gpunet.backend.base import Backend

_reference = threading.local()  # .active: this thread runs the reference ops


class NumpyBackend(Backend):
    name = "numpy"
    xp = np

    def __init__(self, device: str = "cpu"):
        super().__init__("cpu")

    def is_native(self, array) -> bool:
        return isinstance(array, np.ndarray)

    @staticmethod
    def kernels_ready() -> bool:
        """Whether this thread runs the Numba kernels for the ops below, rather than the
        base class's NumPy reference: decided once per process by
        :func:`gpunet.backend.jit_cache.use` (kernels not yet compiled start
        compiling in the background), except within :meth:`reference_ops`."""
        if getattr(_reference, "active", False):
            return False
        from gpunet.backend import jit_cache  # noqa: PLC0415

        return jit_cache.use("ops")

    @contextlib.contextmanager
    def reference_ops(self):
        saved = getattr(_reference, "active", False)
        _reference.active = True
        try:
            yield
        finally:
            _reference.active = saved

    def dense_forward(self, x, W, b, act: str):
        if not self.kernels_ready():
            return super().dense_forward(x, W, b, act)
        from gpunet.kernels.cpu import dense  # noqa: PLC0415

        return dense.dense_forward(x, W, b, act)

    def dense_backward(self, dy, x, W, saved, act: str, need_dx: bool = True):
        if not self.kernels_ready():
            return super().dense_backward(dy, x, W, saved, act, need_dx)
        from gpunet.kernels.cpu import dense  # noqa: PLC0415

        return dense.dense_backward(dy, x, W, saved, act, need_dx)

    def softmax_cross_entropy(
        self, logits, target, label_smoothing: float = 0.0, grad_scale: float = 1.0
    ):
        if not self.kernels_ready():
            return super().softmax_cross_entropy(logits, target, label_smoothing, grad_scale)
        from gpunet.kernels.cpu import softmax_xent  # noqa: PLC0415

        return softmax_xent.softmax_cross_entropy(logits, target, label_smoothing, grad_scale)

    def fused_update(self, optimizer_name: str):
        if not self.kernels_ready():
            return None
        from gpunet.kernels.cpu import optim_updates  # noqa: PLC0415

        return optim_updates.fused_update(optimizer_name)

    def epoch_context(self, batch_size: int):
        from gpunet.kernels.cpu import blas  # noqa: PLC0415

        if batch_size <= blas.ONE_BLAS_THREAD_MAX_ROWS:
            return blas.one_blas_thread()
        return super().epoch_context(batch_size)

    def fused_epoch_kernel(self):
        from gpunet.kernels.cpu import fused_mlp  # noqa: PLC0415

        return fused_mlp

    def training_context(self, flush_denormals: bool = True):
        """While training: with ``flush_denormals``, subnormal floats are flushed to zero
        on this thread (x86 FTZ/DAZ) and the update kernels store subnormal optimizer
        state as 0; without it, neither (see ``gpunet.kernels.cpu.denormals``)."""
        from gpunet.kernels.cpu.denormals import training_denormals  # noqa: PLC0415

        return training_denormals(flush_denormals)
