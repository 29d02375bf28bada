"""Shared settings, and the fixtures of the CUDA tiers.

T1 (``-m nvcc``) needs nvcc, T2 (``-m cudahost``) a C++20 compiler. Under CI
(``GPUNET_CI=1``, set by ``.ci/run``) a missing tool fails the tier instead of skipping it.
"""

from __future__ import annotations

import os
import shutil

import pytest

# Numba's own behaviour for the suite: kernels compile on first use, in this process
# (gpunet's default compiles missing kernels in a background process and uses NumPy's
# ops meanwhile; tests/test_jit_cache.py tests that mode)
os.environ.setdefault("GPUNET_COMPILE", "foreground")


def _missing(what: str):
    if os.environ.get("GPUNET_CI"):
        pytest.fail(f"{what} (CI must run this tier, not skip it)")
    pytest.skip(what)


@pytest.fixture(scope="session")
def nvcc():
    from gpunet.kernels.cuda.compile_check import nvcc_path  # noqa: PLC0415

    path = nvcc_path()
    if path is None:
        _missing("nvcc is not on PATH: tier T1 compiles the CUDA sources with it")
    return path


@pytest.fixture(scope="session")
def host_runtime():
    """The CUDA C kernels compiled for this CPU (``HostRuntime``)."""
    from gpunet.kernels.cuda.runtime import HostRuntime  # noqa: PLC0415

    cxx = os.environ.get("CXX") or "g++"
    if shutil.which(cxx) is None:
        _missing(f"{cxx} is not on PATH: tier T2 builds the CUDA sources as C++20 with it")
    return HostRuntime()
