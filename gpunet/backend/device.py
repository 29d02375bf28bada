"""Device strings: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` and ``"auto"``."""

from __future__ import annotations

import re
import sys

_CUDA_RE = re.compile(r"^cuda(?::(\d+))?$")
_notices_shown: set[str] = set()


def notice_once(message: str) -> None:
    """Print ``message`` to stderr the first time this process asks, never again."""
    if message not in _notices_shown:
        _notices_shown.add(message)
        print(message, file=sys.stderr)


def cuda_unavailable_reason() -> str | None:
    """Why CUDA cannot be used here, or None if a usable GPU is present."""
    try:
        import cupy  # noqa: PLC0415
    except ImportError as exc:
        return f"CuPy is not installed ({exc}); install gpunet[cuda12] or gpunet[cuda13]"
    try:
        if not cupy.cuda.is_available():
            return "CuPy is installed but finds no CUDA device (no GPU or no driver)"
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # CUDARuntimeError, driver errors
        return f"CuPy cannot reach the CUDA driver: {exc}"
    if count < 1:
        return "CuPy finds zero CUDA devices"
    return None


def normalize_device(device) -> str:
    """Turn a user device spec into ``"cpu"`` or ``"cuda:N"``.

    ``"auto"`` picks ``"cuda:0"`` when CuPy finds a usable GPU, otherwise ``"cpu"`` and
    prints a one-line notice to stderr (once per process). Raises ValueError for unknown strings and
    RuntimeError when CUDA is asked for but unusable.
    """
    if device is None:
        return "cpu"
    if hasattr(device, "device") and isinstance(device.device, str):  # a Backend
        return device.device
    spec = str(device).strip().lower()
    if spec == "cpu":
        return "cpu"
    if spec == "auto":
        reason = cuda_unavailable_reason()
        if reason is None:
            return "cuda:0"
        notice_once(f"gpunet: device 'auto' -> cpu ({reason})")
        return "cpu"
    m = _CUDA_RE.match(spec)
    if not m:
        raise ValueError(f"unknown device {device!r}; expected 'cpu', 'cuda', 'cuda:N' or 'auto'")
    index = int(m.group(1) or 0)
    reason = cuda_unavailable_reason()
    if reason is not None:
        raise RuntimeError(f"device {device!r} requested but CUDA is unavailable: {reason}")
    return f"cuda:{index}"
