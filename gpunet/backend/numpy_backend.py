"""The CPU backend: NumPy arrays, with Numba kernels where they beat the reference."""

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

    def fused_epoch_kernel(self):
        from gpunet.kernels.cpu.fused_mlp import train_epoch  # noqa: PLC0415

        return train_epoch
