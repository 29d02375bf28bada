"""Where gpunet's CUDA C kernels run: a ``KernelRuntime`` launches a kernel by name.

- ``CupyRuntime``: on a GPU. Each source is compiled by NVRTC through
  ``cupy.RawModule`` on first use (CuPy caches the binary on disk) and launched on the
  current stream, so launches can be captured into a CUDA graph.
- ``HostRuntime``: on the CPU, for tests on machines with no GPU. Each source is
  compiled by g++ as C++20 against ``host/cuda_host.h`` into a shared library (cached by
  content hash) and launched through ctypes; optional AddressSanitizer or
  ThreadSanitizer builds (``GPUNET_CUDAHOST_SANITIZER=address|thread``).

Both take the same launch: ``launch(source, kernel, grid, block, args, shared_mem)``
where ``args`` holds arrays of the runtime's ``xp`` and NumPy scalars
(``np.int32``, ``np.int64``, ``np.float32``, ``np.float64``) in the kernel's parameter
order and types, as ``cupy.RawKernel`` takes them.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import numpy as np

from gpunet.kernels.cuda import SOURCE_DIR, SOURCES, dtype_suffix

_INCLUDE_LINE = '#include "common.cuh"'


def cache_dir() -> Path:
    """gpunet's cache directory: ``$GPUNET_CACHE_DIR``, else ``$XDG_CACHE_HOME/gpunet``
    (``~/.cache/gpunet``)."""
    explicit = os.environ.get("GPUNET_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "gpunet"


def source_text(source: str) -> str:
    """The text of a kernel source as written (``source``: a key of ``SOURCES``)."""
    if source not in SOURCES:
        raise KeyError(f"unknown CUDA source {source!r}; known: {sorted(SOURCES)}")
    return (SOURCE_DIR / source).read_text()


def device_source(source: str) -> str:
    """A source with ``common.cuh`` pasted in place of its include: one self-contained
    string for NVRTC, so CuPy's cache key covers the shared header too."""
    text = source_text(source)
    if _INCLUDE_LINE not in text:
        raise ValueError(f"{source} does not include common.cuh")
    return text.replace(_INCLUDE_LINE, (SOURCE_DIR / "common.cuh").read_text(), 1)


class KernelRuntime:
    """Launches kernels by name; see the module docstring."""

    name = "abstract"
    xp = np
    #: whether ``capture`` records a CUDA graph (else it returns the step itself)
    captures_graphs = False

    def launch(self, source, kernel, grid, block, args, shared_mem=0):
        raise NotImplementedError

    def kernel_name(self, base: str, dtype) -> str:
        return f"{base}_{dtype_suffix(dtype)}"

    def matmul(self, a, b, out):
        """``out[...] = a @ b`` by the vendor BLAS (cuBLAS, or NumPy's on the host)."""
        return self.xp.matmul(a, b, out=out)

    def capture(self, step):
        """A callable replaying ``step()``; on a GPU as a CUDA graph (see CupyRuntime)."""
        return step

    def synchronize(self):
        pass

    def preload(self):
        """Compile and load every kernel now (a CUDA graph cannot capture a module load)."""

    def memory_info(self) -> tuple[int, int]:
        """``(free, total)`` bytes of device memory (host: zeros, not tracked)."""
        return 0, 0


# ------------------------------------------------------------------------- GPU
class CupyRuntime(KernelRuntime):
    """Kernels on a CUDA device through CuPy (NVRTC-compiled ``RawModule`` per source)."""

    name = "cupy"
    captures_graphs = True

    def __init__(self, device_index: int = 0):
        import cupy  # noqa: PLC0415

        self.xp = cupy
        self.device = cupy.cuda.Device(device_index)
        self._modules: dict[str, object] = {}
        self._functions: dict[tuple[str, str], object] = {}

    def module(self, source: str):
        mod = self._modules.get(source)
        if mod is None:
            mod = self.xp.RawModule(code=device_source(source), options=("-std=c++17",))
            self._modules[source] = mod
        return mod

    def launch(self, source, kernel, grid, block, args, shared_mem=0):
        fn = self._functions.get((source, kernel))
        if fn is None:
            fn = self._functions[(source, kernel)] = self.module(source).get_function(kernel)
        fn(tuple(grid), tuple(block), tuple(args), shared_mem=int(shared_mem))

    def preload(self):
        from gpunet.kernels.cuda import kernel_names  # noqa: PLC0415

        for source in SOURCES:
            for kernel in kernel_names(source):
                if (source, kernel) not in self._functions:
                    self._functions[(source, kernel)] = self.module(source).get_function(kernel)

    def memory_info(self) -> tuple[int, int]:
        return self.xp.cuda.runtime.memGetInfo()

    def capture(self, step):
        """Capture ``step()`` (kernel launches only: no cuBLAS, no allocation, no host
        synchronisation) on a fresh stream into a CUDA graph; the returned callable
        replays it on the current stream."""
        cupy = self.xp
        stream = cupy.cuda.Stream(non_blocking=True)
        with stream:
            stream.begin_capture()
            try:
                step()
            finally:
                graph = stream.end_capture()
        graph.upload(cupy.cuda.get_current_stream())
        return lambda: graph.launch(cupy.cuda.get_current_stream())

    def synchronize(self):
        self.device.synchronize()


# ------------------------------------------------------------------------ host
SANITIZER_FLAGS = {
    None: ["-O2"],
    "address": ["-O1", "-g", "-fsanitize=address", "-fno-omit-frame-pointer"],
    "thread": ["-O1", "-g", "-fsanitize=thread"],
}
_build_lock = threading.Lock()


def host_compiler() -> str:
    """The C++ compiler for the host build: ``$CXX`` or g++; RuntimeError if absent."""
    cxx = os.environ.get("CXX") or "g++"
    if shutil.which(cxx) is None:
        raise RuntimeError(
            f"the host build of the CUDA kernels needs a C++20 compiler; {cxx!r} is not on PATH"
        )
    return cxx


def host_compile_command(source, output: Path, sanitizer: str | None = None) -> list[str]:
    """The g++ command building ``source`` (a name in ``SOURCES`` or a path to a file in
    the same dialect) into the shared library ``output``."""
    if sanitizer not in SANITIZER_FLAGS:
        raise ValueError(f"unknown sanitizer {sanitizer!r}; expected address or thread")
    return [
        host_compiler(),
        "-std=c++20",
        *SANITIZER_FLAGS[sanitizer],
        "-fPIC",
        "-shared",
        "-pthread",
        "-Wall",
        "-Werror",
        "-Wno-unknown-pragmas",
        "-I",
        str(SOURCE_DIR),
        "-x",
        "c++",
        str(SOURCE_DIR / source if source in SOURCES else Path(source)),
        "-o",
        str(output),
    ]


def build_host_library(source, sanitizer: str | None = None) -> Path:
    """Compile ``source`` (a name in ``SOURCES``, or a path to a file in the same
    dialect) for the CPU, cached by the hash of everything it is built from; returns the
    shared library's path. RuntimeError with the compiler's output when the build fails."""
    text = source_text(source) if source in SOURCES else Path(source).read_text()
    parts = [text, (SOURCE_DIR / "common.cuh").read_text()]
    parts.append((SOURCE_DIR / "host" / "cuda_host.h").read_text())
    parts.append(" ".join(host_compile_command(source, Path("out"), sanitizer)))
    digest = hashlib.sha256("\0".join(parts).encode()).hexdigest()[:20]
    folder = cache_dir() / "cudahost"
    target = folder / f"{Path(source).stem}-{sanitizer or 'plain'}-{digest}.so"
    with _build_lock:
        if target.exists():
            return target
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=folder) as tmp:
            built = Path(tmp) / target.name
            proc = subprocess.run(
                host_compile_command(source, built, sanitizer), capture_output=True, text=True
            )
            if proc.returncode != 0:
                raise RuntimeError(f"host build of {source} failed:\n{proc.stderr}")
            os.replace(built, target)
    return target


_C_SCALARS = {
    np.int32: ctypes.c_int32,
    np.int64: ctypes.c_int64,
    np.float32: ctypes.c_float,
    np.float64: ctypes.c_double,
}


def _c_argument(value):
    if isinstance(value, np.ndarray):
        return ctypes.c_void_p(value.ctypes.data)
    c_type = _C_SCALARS.get(type(value))
    if c_type is None:
        raise TypeError(
            f"kernel arguments are NumPy arrays or np.int32/int64/float32/float64 "
            f"scalars, not {type(value).__name__}"
        )
    return c_type(value)


class HostRuntime(KernelRuntime):
    """The CUDA C kernels compiled for the CPU (see the module docstring); ``xp`` is
    NumPy. ``sanitizer``: None, "address" or "thread" (default from
    ``GPUNET_CUDAHOST_SANITIZER``); a sanitized library needs the sanitizer's runtime
    preloaded into Python (``LD_PRELOAD``)."""

    name = "cudahost"

    def __init__(self, sanitizer: str | None = None):
        self.sanitizer = sanitizer or os.environ.get("GPUNET_CUDAHOST_SANITIZER") or None
        self._libraries: dict[str, ctypes.CDLL] = {}
        self._functions: dict[str, object] = {}

    def library(self, source: str) -> ctypes.CDLL:
        lib = self._libraries.get(source)
        if lib is None:
            lib = ctypes.CDLL(str(build_host_library(source, self.sanitizer)))
            self._libraries[source] = lib
        return lib

    def launch(self, source, kernel, grid, block, args, shared_mem=0):
        fn = self._functions.get(kernel)
        if fn is None:
            fn = getattr(self.library(source), f"{kernel}__host_launch")
            fn.restype = None
            fn.argtypes = [ctypes.c_uint] * 6 + [ctypes.c_size_t, ctypes.c_void_p]
            self._functions[kernel] = fn
        grid = tuple(grid) + (1,) * (3 - len(grid))
        block = tuple(block) + (1,) * (3 - len(block))
        values = [_c_argument(a) for a in args]
        pointers = (ctypes.c_void_p * max(len(values), 1))(
            *[ctypes.cast(ctypes.pointer(v), ctypes.c_void_p) for v in values]
        )
        fn(*grid, *block, int(shared_mem), pointers)


def nvrtc_status(arch: str = "sm_90") -> str:
    """Whether NVRTC (CuPy's kernel compiler) works here, checked by compiling a tiny
    kernel for ``arch`` (no device needed): "ok (NVRTC X.Y)" or why not."""
    try:
        from cupy.cuda import nvrtc  # noqa: PLC0415
    except ImportError as exc:
        return f"unavailable: CuPy is not installed ({exc})"
    try:
        major, minor = nvrtc.getVersion()
        prog = nvrtc.createProgram(
            'extern "C" __global__ void gn_probe(float* x) { x[threadIdx.x] *= 2.0f; }',
            "gn_probe.cu",
            [],
            [],
        )
        try:
            nvrtc.compileProgram(prog, [f"-arch={arch}"])
            size = len(nvrtc.getCUBIN(prog))
        finally:
            nvrtc.destroyProgram(prog)
    except Exception as exc:  # missing libnvrtc, compile errors
        return f"failed: {type(exc).__name__}: {exc}"
    return f"ok (NVRTC {major}.{minor}, {arch} cubin of {size} bytes)"
