"""What a benchmark result was measured on: CPU, GPU, library versions, BLAS and thread
settings, denormal handling, load averages. Every value is JSON-serialisable."""

from __future__ import annotations

import datetime
import os
import platform
import socket
from pathlib import Path

import numpy as np


def cpu_name() -> str:
    """The CPU's model name (Linux), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average():
    """(1, 5, 15)-minute load averages, or None where the OS has none."""
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


def library_versions() -> dict:
    """Versions of Python and of every library a benchmark may use (None: not installed)."""
    versions = {"python": platform.python_version(), "numpy": np.__version__}
    for name in ("numba", "torch", "sklearn", "cupy", "matplotlib", "gpunet"):
        try:
            versions[name] = __import__(name).__version__
        except ImportError:
            versions[name] = None
    return versions


def blas_info():
    """The BLAS / OpenMP libraries loaded in this process and their thread counts."""
    try:
        from threadpoolctl import threadpool_info  # noqa: PLC0415
    except ImportError:
        return np.show_config(mode="dicts").get("Build Dependencies", {}).get("blas")
    keys = ("internal_api", "version", "num_threads", "threading_layer", "architecture", "prefix")
    return [{k: d.get(k) for k in keys} for d in threadpool_info()]


def thread_counts() -> dict:
    """Threads each library will use: Numba, PyTorch, gpunet (``get_num_threads``),
    and the GPUNET/OMP/OpenBLAS/MKL/Numba thread variables."""
    counts = {}
    try:
        import numba  # noqa: PLC0415

        counts["numba"] = numba.get_num_threads()
    except ImportError:
        pass
    try:
        import torch  # noqa: PLC0415

        counts["torch"] = torch.get_num_threads()
    except ImportError:
        pass
    import gpunet  # noqa: PLC0415

    counts["gpunet"] = gpunet.get_num_threads()
    for var in (
        "GPUNET_NUM_THREADS",
        "OMP_NUM_THREADS",
        "OPENBLAS_NUM_THREADS",
        "MKL_NUM_THREADS",
        "NUMBA_NUM_THREADS",
    ):
        if var in os.environ:
            counts[var] = os.environ[var]
    return counts


def subnormals_work() -> bool:
    """True if this thread still computes with subnormal floats (no FTZ/DAZ left on)."""
    tiny = np.array([1e-40], np.float32)
    return bool((tiny * np.float32(1.0))[0] != 0)


def denormal_settings() -> dict:
    """gpunet's denormal handling: the kernels' default per-element flush, whether the
    CPU has FTZ/DAZ (MXCSR) and whether they are on in this thread now."""
    from gpunet.kernels.cpu import denormals  # noqa: PLC0415

    return {
        "gpunet_flush_default": denormals.get_flush_denormals(),
        "mxcsr_supported": denormals.mxcsr_supported(),
        "ftz_daz_on_main_thread": denormals.hardware_flush_active(),
        "subnormals_work_main_thread": subnormals_work(),
    }


def gpu_info(device: str) -> dict:
    """Name, compute capability, memory and CUDA versions of a ``cuda:N`` device."""
    import cupy  # noqa: PLC0415

    index = int(device.split(":")[1]) if ":" in device else 0
    runtime = cupy.cuda.runtime
    props = runtime.getDeviceProperties(index)
    name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
    return {
        "name": name,
        "compute_capability": f"{props['major']}.{props['minor']}",
        "memory_gib": props["totalGlobalMem"] / 2**30,
        "driver": runtime.driverGetVersion(),
        "runtime": runtime.runtimeGetVersion(),
    }


def machine_info() -> dict:
    """CPU, cores, host, date, versions, BLAS, threads, denormals and the load now."""
    return {
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "versions": library_versions(),
        "blas": blas_info(),
        "threads": thread_counts(),
        "denormals": denormal_settings(),
        "loadavg_start": load_average(),
    }


def machine_slug(info: dict) -> str:
    """A short file-name part such as ``2core-amd-epyc`` from ``machine_info()``."""
    words = [w for w in info["cpu"].lower().replace("(r)", "").replace("(tm)", "").split() if w]
    vendor = "-".join(w for w in words[:2] if w.isalnum()) or "cpu"
    return f"{info['cpus_usable'] or info['cpu_count']}core-{vendor}"
