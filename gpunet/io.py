"""Saving and loading model weights as safetensors files (written atomically)."""

from __future__ import annotations

import numpy as np

from gpunet.train.callbacks import atomic_write
from gpunet.train.files import read_safetensors


def save_weights(model, path, metadata: dict | None = None) -> None:
    """Write ``model.state_dict()`` to ``path``; an existing file is replaced only once
    the new one is complete."""
    from safetensors.numpy import save_file  # noqa: PLC0415

    # (ascontiguousarray turns a 0-d buffer such as BatchNorm's count into shape (1,))
    tensors = {k: np.ascontiguousarray(v).reshape(v.shape) for k, v in model.state_dict().items()}
    with atomic_write(path) as tmp:
        save_file(tensors, tmp, metadata={str(k): str(v) for k, v in (metadata or {}).items()})


def load_weights(model, path, strict: bool = True, allow_nonfinite: bool = False):
    """Load weights saved by :func:`save_weights` (or the model part of a checkpoint
    written by ``ModelCheckpoint``) into ``model``. Everything is checked first, and
    nothing is changed if a key or shape does not match, or (unless
    ``allow_nonfinite``) a value is NaN or infinite; every error names the file."""
    from gpunet.train.checkpoint import is_checkpoint, model_tensors  # noqa: PLC0415

    tensors, metadata = read_safetensors(path)
    if is_checkpoint(metadata):
        tensors = model_tensors(tensors)
    try:
        model.check_state_dict(tensors, strict=strict, allow_nonfinite=allow_nonfinite)
    except (KeyError, ValueError, TypeError) as error:
        message = error.args[0] if error.args else str(error)
        raise ValueError(f"cannot load weights from {str(path)!r}: {message}") from None
    return model.load_state_dict(tensors, strict=strict)
