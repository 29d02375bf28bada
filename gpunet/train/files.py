"""Reading safetensors files with errors that name the file."""

from __future__ import annotations

import os


def check_readable_file(path, what: str = "file") -> str:
    """``path`` as a string; OSError subclasses naming it when it is missing, a
    directory, or not readable."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no {what} at {path!r}")
    if os.path.isdir(path):
        raise IsADirectoryError(f"{what} {path!r} is a directory, not a file")
    if not os.access(path, os.R_OK):
        raise PermissionError(f"{what} {path!r} is not readable")
    return path


def read_safetensors(path, what: str = "weights file") -> tuple[dict, dict]:
    """``(tensors, metadata)`` of a safetensors file: {name: ndarray} and its str->str
    metadata ({} when it has none). A missing, unreadable, truncated or foreign file
    raises an error naming ``path``."""
    from safetensors import safe_open  # noqa: PLC0415

    path = check_readable_file(path, what)
    try:
        with safe_open(path, framework="numpy") as f:
            metadata = f.metadata() or {}
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except Exception as error:  # safetensors raises its own SafetensorError, OSError, ...
        raise ValueError(
            f"{what} {path!r} is not a readable safetensors file "
            f"(truncated or another format?): {error}"
        ) from None
    return tensors, metadata
