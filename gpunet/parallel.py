"""How many CPU threads gpunet uses: ``set_num_threads`` / ``get_num_threads``, as in
PyTorch.

The count is, first found: what ``set_num_threads(n)`` set; the environment variable
``GPUNET_NUM_THREADS`` (a positive int, read at first use); the CPUs of this process's
affinity mask (``usable_cpus``). ``set_num_threads(n)`` (and ``GPUNET_NUM_THREADS``, at
first use) also limits the BLAS that NumPy and Numba's ``np.dot`` call to ``n`` threads
for the whole process; otherwise BLAS keeps its own default.
"""

from __future__ import annotations

import numbers
import os

ENV_VAR = "GPUNET_NUM_THREADS"

_threads: int | None = None  # set_num_threads' count, or the variable's once read


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def blas_controller():
    """The threadpoolctl controller of the BLAS libraries (the one the CPU kernels limit
    during multi-thread epochs: ``gpunet.kernels.cpu.blas.blas_controller``)."""
    from gpunet.kernels.cpu.blas import blas_controller as controller  # noqa: PLC0415

    return controller()


def _check(n, what: str) -> int:
    if isinstance(n, bool) or not isinstance(n, numbers.Integral):
        raise TypeError(f"{what} must be an int, got {type(n).__name__} {n!r}")
    if n < 1:
        raise ValueError(f"{what} must be at least 1, got {n}")
    return int(n)


def _from_environment() -> int | None:
    raw = os.environ.get(ENV_VAR)
    if raw is None:
        return None
    text = raw.strip()
    if not (text.isascii() and text.isdigit() and int(text) >= 1):
        raise ValueError(
            f"{ENV_VAR}={raw!r}: expected a positive integer, the number of CPU threads "
            "gpunet uses (unset it for the CPUs this process may run on)"
        )
    return int(text)


def _apply(n: int) -> None:
    global _threads
    blas_controller().limit(limits=n, user_api="blas")  # stays in force (no context)
    _threads = n


def set_num_threads(n: int) -> None:
    """Use ``n`` CPU threads (an int >= 1; it may exceed the CPUs, as in PyTorch): the
    count the engines read from ``get_num_threads``, and the BLAS that NumPy and Numba
    call is limited to ``n`` threads for the process."""
    _apply(_check(n, "set_num_threads: n"))


def get_num_threads() -> int:
    """The CPU threads gpunet uses: what ``set_num_threads`` set, else
    ``GPUNET_NUM_THREADS`` (read at first use, which then limits BLAS like
    ``set_num_threads``; a value that is not a positive int raises ValueError), else
    ``usable_cpus()``."""
    if _threads is not None:
        return _threads
    n = _from_environment()
    if n is None:
        return usable_cpus()
    _apply(n)
    return n
