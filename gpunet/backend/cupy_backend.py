"""The GPU backend: CuPy arrays on one CUDA device.

Imported only when a CUDA device is asked for, so ``import gpunet`` never needs CuPy.
The fused ops (dense forward/backward epilogues, softmax cross-entropy, optimizer
updates) run gpunet's CUDA C kernels (``gpunet.kernels.cuda.ops``); everything else
runs the ``xp`` reference of ``Backend``.
"""

from __future__ import annotations

import numpy as np

from gpunet.backend.base import Backend


class CupyBackend(Backend):
    name = "cupy"

    def __init__(self, device: str = "cuda:0"):
        import cupy  # noqa: PLC0415

        super().__init__(device)
        self.xp = cupy
        self.index = int(device.split(":")[1])
        self._device = cupy.cuda.Device(self.index)
        self._ops = None

    @property
    def ops(self):
        """The CUDA C kernels of this device (compiled on first use)."""
        if self._ops is None:
            from gpunet.kernels.cuda.ops import CudaOps  # noqa: PLC0415
            from gpunet.kernels.cuda.runtime import CupyRuntime  # noqa: PLC0415

            self._ops = CudaOps(CupyRuntime(self.index))
        return self._ops

    def asarray(self, data, dtype=None):
        with self._device:
            return self.xp.asarray(data, dtype=dtype)

    def to_numpy(self, array) -> np.ndarray:
        if isinstance(array, self.xp.ndarray):
            return self.xp.asnumpy(array)
        return np.asarray(array)

    def is_native(self, array) -> bool:
        return isinstance(array, self.xp.ndarray) and array.device.id == self.index

    def synchronize(self) -> None:
        self._device.synchronize()

    def dense_forward(self, x, W, b, act: str):
        with self._device:
            return self.ops.dense_forward(x, W, b, act)

    def dense_backward(self, dy, x, W, saved, act: str, need_dx: bool = True):
        with self._device:
            return self.ops.dense_backward(dy, x, W, saved, act, need_dx)

    def softmax_cross_entropy(
        self, logits, target, label_smoothing: float = 0.0, grad_scale: float = 1.0
    ):
        with self._device:
            return self.ops.softmax_cross_entropy(logits, target, label_smoothing, grad_scale)

    def fused_update(self, optimizer_name: str):
        return self.ops.fused_update(optimizer_name)
