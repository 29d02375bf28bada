"""Backends: the array layer under tensors (see ``base.Backend``)."""

from __future__ import annotations

from gpunet.backend.base import Backend
from gpunet.backend.device import cuda_unavailable_reason, normalize_device
from gpunet.backend.numpy_backend import NumpyBackend

_backends: dict[str, Backend] = {}


def get_backend(device="cpu") -> Backend:
    """The (cached) backend for a device spec: ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"auto"``."""
    if isinstance(device, Backend):
        return device
    key = normalize_device(device)
    if key not in _backends:
        if key == "cpu":
            _backends[key] = NumpyBackend()
        else:
            from gpunet.backend.cupy_backend import CupyBackend  # noqa: PLC0415

            _backends[key] = CupyBackend(key)
    return _backends[key]


def backend_of_array(array) -> Backend:
    """The backend whose device holds ``array`` (NumPy arrays -> CPU)."""
    module = type(array).__module__
    if module.startswith("cupy"):
        return get_backend(f"cuda:{array.device.id}")
    return get_backend("cpu")


__all__ = [
    "Backend",
    "NumpyBackend",
    "backend_of_array",
    "cuda_unavailable_reason",
    "get_backend",
    "normalize_device",
]
