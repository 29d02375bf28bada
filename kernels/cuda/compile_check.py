"""Compile every CUDA C source for the GPU without a GPU (tier T1).

``compile_cubin(source, arch)`` runs ``nvcc -cubin -Xptxas -v,-warn-spills,-Werror`` and
returns each kernel's registers, shared memory and spills from ptxas's report; a spill
is a compile error. ``python -m gpunet.kernels.cuda.compile_check`` prints the table.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from gpunet.kernels.cuda import SOURCE_DIR, SOURCES, kernel_names

ARCHS = ("sm_80", "sm_90")
_ENTRY = re.compile(r"Compiling entry function '(\w+)'")
_FUNCTION = re.compile(r"Function properties for (\w+)")
_REGISTERS = re.compile(r"Used (\d+) registers")
_SPILLS = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")


def nvcc_path() -> str | None:
    found = shutil.which("nvcc")
    if found is None and Path("/usr/local/cuda/bin/nvcc").exists():
        found = "/usr/local/cuda/bin/nvcc"
    return found


def compile_cubin(source: str, arch: str) -> dict[str, dict]:
    """``{kernel: {"registers": int, "spill_stores": int, "spill_loads": int}}`` for
    every entry point ptxas reports (called device functions such as libdevice's
    ``__internal_accurate_pow`` report spills too and are folded into their caller's
    entry); RuntimeError with nvcc's output on failure."""
    nvcc = nvcc_path()
    if nvcc is None:
        raise RuntimeError("nvcc not found on PATH (install the CUDA toolkit's nvcc)")
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            nvcc,
            "-cubin",
            f"-arch={arch}",
            "-std=c++17",
            "-Xptxas",
            "-v,-warn-spills,-Werror",
            "-I",
            str(SOURCE_DIR),
            str(SOURCE_DIR / source),
            "-o",
            str(Path(tmp) / "out.cubin"),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
    report = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise RuntimeError(f"nvcc failed for {source} ({arch}):\n{report}")
    kernels: dict[str, dict] = {}
    current = None
    entry = None
    for line in report.splitlines():
        if m := _ENTRY.search(line):
            entry = kernels.setdefault(m.group(1), {"spill_stores": 0, "spill_loads": 0})
        elif m := _FUNCTION.search(line):
            current = entry if m.group(1) not in kernels else kernels[m.group(1)]
        elif current is not None and (m := _SPILLS.search(line)):
            current["spill_stores"] += int(m.group(1))
            current["spill_loads"] += int(m.group(2))
        elif current is not None and (m := _REGISTERS.search(line)):
            current["registers"] = int(m.group(1))
    return kernels


def check_all(archs=ARCHS) -> dict[tuple[str, str], dict[str, dict]]:
    """Compile every source for every arch (in parallel); each result also lists the
    entry points the loader needs and the binary lacks under ``"missing"``."""
    jobs = [(source, arch) for source in SOURCES for arch in archs]
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda job: compile_cubin(*job), jobs))
    out = {}
    for (source, arch), kernels in zip(jobs, results):
        missing = [k for k in kernel_names(source) if k not in kernels]
        out[(source, arch)] = {"kernels": kernels, "missing": missing}
    return out


def main() -> int:
    results = check_all()
    print(f"{'source':<20} {'arch':<6} {'kernel':<28} registers  spills")
    bad = False
    for (source, arch), result in results.items():
        for name, info in sorted(result["kernels"].items()):
            spills = info.get("spill_stores", 0) + info.get("spill_loads", 0)
            print(f"{source:<20} {arch:<6} {name:<28} {info.get('registers', '?'):>9}  {spills}")
        for name in result["missing"]:
            bad = True
            print(f"{source:<20} {arch:<6} {name:<28} MISSING")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())


# ------------------------------------------------------------------------ NVRTC
def nvrtc_libraries() -> dict[str, str]:
    """The libnvrtc of each CUDA major version installed as a wheel
    (``nvidia-cuda-nvrtc`` 13.x, ``nvidia-cuda-nvrtc-cu12``), else the system's:
    ``{"13": path, ...}``."""
    import ctypes.util  # noqa: PLC0415
    import glob  # noqa: PLC0415
    import sysconfig  # noqa: PLC0415

    site = sysconfig.get_paths()["purelib"]
    found = {}
    for pattern in ("nvidia/cu*/lib/libnvrtc.so.*", "nvidia/cuda_nvrtc/lib/libnvrtc.so.*"):
        for path in sorted(glob.glob(f"{site}/{pattern}")):
            found.setdefault(path.rsplit(".so.", 1)[1].split(".")[0], path)
    system = ctypes.util.find_library("nvrtc")
    if not found and system:
        found["system"] = system
    return found


_loaded: dict[str, object] = {}


def _nvrtc_library(version: str | None = None):
    """libnvrtc through ctypes (the newest installed, or ``version``), or None."""
    import ctypes  # noqa: PLC0415
    import glob  # noqa: PLC0415

    libraries = nvrtc_libraries()
    if not libraries:
        return None
    version = version or max(libraries)
    if version not in _loaded:
        path = libraries[version]
        # NVRTC dlopens its builtins library by name: load the one beside it first
        for builtins in glob.glob(f"{os.path.dirname(path)}/libnvrtc-builtins.so.*"):
            if ".alt." not in builtins:
                ctypes.CDLL(builtins, mode=ctypes.RTLD_GLOBAL)
        _loaded[version] = ctypes.CDLL(path)
    return _loaded[version]


def nvrtc_available() -> bool:
    return bool(nvrtc_libraries())


def nvrtc_compile(source: str, arch: str = "sm_90", version: str | None = None) -> bytes:
    """Compile ``source`` as CuPy's loader hands it to NVRTC (``device_source``: one
    string, ``-std=c++17``) for ``arch`` with the NVRTC of CUDA ``version`` (a key of
    :func:`nvrtc_libraries`; default the newest); returns the cubin. RuntimeError with
    NVRTC's log on failure."""
    import ctypes  # noqa: PLC0415

    from gpunet.kernels.cuda.runtime import device_source  # noqa: PLC0415

    lib = _nvrtc_library(version)
    if lib is None:
        raise RuntimeError("libnvrtc not found (pip install 'nvidia-cuda-nvrtc==13.0.*')")
    prog = ctypes.c_void_p()

    def check(status, what):
        if status != 0:
            raise RuntimeError(f"NVRTC {what} failed for {source} ({arch}): status {status}")

    check(
        lib.nvrtcCreateProgram(
            ctypes.byref(prog), device_source(source).encode(), source.encode(), 0, None, None
        ),
        "createProgram",
    )
    try:
        options = [f"-arch={arch}".encode(), b"-std=c++17"]
        status = lib.nvrtcCompileProgram(prog, len(options), (ctypes.c_char_p * 2)(*options))
        if status != 0:
            size = ctypes.c_size_t()
            lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
            log = ctypes.create_string_buffer(size.value)
            lib.nvrtcGetProgramLog(prog, log)
            raise RuntimeError(f"NVRTC failed for {source} ({arch}):\n{log.value.decode()}")
        size = ctypes.c_size_t()
        check(lib.nvrtcGetCUBINSize(prog, ctypes.byref(size)), "getCUBINSize")
        cubin = ctypes.create_string_buffer(size.value)
        check(lib.nvrtcGetCUBIN(prog, cubin), "getCUBIN")
        return cubin.raw
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(prog))
