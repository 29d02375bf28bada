"""The GPU backend: CuPy arrays on one CUDA device.

Imported only when a CUDA device is asked for, so ``import gpunet`` never needs CuPy.
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
