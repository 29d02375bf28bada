"""Saving and loading model weights as safetensors files (written atomically)."""

from __future__ import annotations

import os

import numpy as np

from gpunet.train.callbacks import atomic_write


def save_weights(model, path, metadata: dict | None = None) -> None:
    """Write ``model.state_dict()`` to ``path``; an existing file is replaced only once
    the new one is complete."""
    from safetensors.numpy import save_file  # noqa: PLC0415

    # (ascontiguousarray turns a 0-d buffer such as BatchNorm's count into shape (1,))
    tensors = {k: np.ascontiguousarray(v).reshape(v.shape) for k, v in model.state_dict().items()}
    with atomic_write(path) as tmp:
        save_file(tensors, tmp, metadata={str(k): str(v) for k, v in (metadata or {}).items()})


def load_weights(model, path, strict: bool = True):
    """Load weights saved by :func:`save_weights` into ``model`` (checked first: nothing
    is changed if a key or shape does not match)."""
    from safetensors.numpy import load_file  # noqa: PLC0415

    if not os.path.exists(path):
        raise FileNotFoundError(f"no weights file at {path!r}")
    return model.load_state_dict(load_file(path), strict=strict)
