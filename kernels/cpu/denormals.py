"""Denormal (subnormal) float handling for CPU training.

Why: arithmetic on subnormal floats (|x| < ``np.finfo(dtype).tiny``, 1.18e-38 in float32)
takes a slow microcode path on x86 CPUs. Momentum / Adam buffers of dead ReLU units
decay geometrically (x0.9 per step) into that range, and small-batch training then
slows 3-6x. Two independent remedies live here:

1. **Per-kernel flush** (portable, default ON). The optimizer update kernels in
   :mod:`gpunet.kernels.cpu.optim_updates` write exactly ``0`` instead of any state
   value whose magnitude falls below ``tiny``. Such values are below 1.2e-38 (float32)
   or 2.3e-308 (float64), so results agree with unflushed math to float tolerance.
   Controlled by :func:`set_flush_denormals` (module default) or the kernels'
   ``flush_denormals=`` keyword.

2. **FTZ/DAZ in MXCSR** (x86-64 only): :func:`flush_denormals` is a context manager
   that sets the flush-to-zero (bit 15) and denormals-are-zero (bit 6) bits of the
   calling thread's SSE control register and restores the saved value on exit. Inside
   it every SSE/AVX float operation *on this thread* (Numba code, NumPy ufuncs,
   CPython float math) flushes subnormal results and inputs to zero. It does not reach
   other threads (OpenBLAS worker threads, Numba parallel workers). The register is
   read and written by two tiny Numba functions built on the LLVM intrinsics
   ``llvm.x86.sse.stmxcsr`` / ``llvm.x86.sse.ldmxcsr``; they compile on first use
   (``cache=True``), never at import. Elsewhere (ARM, ...) the context manager is a no-op.
"""

from __future__ import annotations

import contextlib
import platform

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

__all__ = [
    "DAZ_BIT",
    "FTZ_BIT",
    "flush_denormals",
    "get_flush_denormals",
    "get_mxcsr",
    "hardware_flush_active",
    "mxcsr_supported",
    "resolve_flush",
    "set_flush_denormals",
    "set_mxcsr",
    "tiny_of",
    "training_denormals",
]

FTZ_BIT = 0x8000  # MXCSR bit 15: flush subnormal results to zero
DAZ_BIT = 0x0040  # MXCSR bit 6: treat subnormal inputs as zero

# ------------------------------------------------------------- per-kernel flush flag
_flush_state = {"on": True}
_TINY = {
    np.dtype(np.float32): np.float32(np.finfo(np.float32).tiny),
    np.dtype(np.float64): np.float64(np.finfo(np.float64).tiny),
}


def set_flush_denormals(on: bool) -> bool:
    """Set the module default for the update kernels' per-element flush; returns the
    previous setting. Default: True."""
    previous = _flush_state["on"]
    _flush_state["on"] = bool(on)
    return previous


def get_flush_denormals() -> bool:
    """The module default for the update kernels' per-element denormal flush."""
    return _flush_state["on"]


def resolve_flush(flag) -> bool:
    """``flag`` if it is not None, else the module default."""
    return _flush_state["on"] if flag is None else bool(flag)


def tiny_of(dtype):
    """Smallest positive normal number of a float dtype, as a scalar of that dtype."""
    dt = np.dtype(dtype)
    tiny = _TINY.get(dt)
    if tiny is None:
        tiny = _TINY[dt] = dt.type(np.finfo(dt).tiny)
    return tiny


# -------------------------------------------------------------------- MXCSR access
_X86_64 = platform.machine().lower() in ("x86_64", "amd64", "x64")


def mxcsr_supported() -> bool:
    """True on x86-64, where :func:`flush_denormals` really sets FTZ/DAZ."""
    return _X86_64


def _call_void_intrinsic(builder, name, slot):
    fnty = ir.FunctionType(ir.VoidType(), [slot.type])
    fn = cgutils.get_or_insert_function(builder.module, fnty, name)
    builder.call(fn, [slot])


@intrinsic
def _stmxcsr(typingctx):
    """``stmxcsr`` -> int64 (the 32-bit register, zero-extended)."""

    def codegen(context, builder, sig, args):
        slot = cgutils.alloca_once(builder, ir.IntType(32))
        _call_void_intrinsic(builder, "llvm.x86.sse.stmxcsr", slot)
        return builder.zext(builder.load(slot), ir.IntType(64))

    return types.int64(), codegen


@intrinsic
def _ldmxcsr(typingctx, value):
    """``ldmxcsr`` of the low 32 bits of an int64."""

    def codegen(context, builder, sig, args):
        slot = cgutils.alloca_once(builder, ir.IntType(32))
        builder.store(builder.trunc(args[0], ir.IntType(32)), slot)
        _call_void_intrinsic(builder, "llvm.x86.sse.ldmxcsr", slot)
        return context.get_dummy_value()

    return types.void(types.int64), codegen


@njit(cache=True, error_model="numpy")
def _read_mxcsr():
    return _stmxcsr()


@njit(cache=True, error_model="numpy")
def _write_mxcsr(value):
    _ldmxcsr(value)


def get_mxcsr() -> int:
    """The calling thread's MXCSR register (x86-64 only; raises RuntimeError elsewhere)."""
    if not _X86_64:
        raise RuntimeError("MXCSR exists only on x86-64")
    return int(_read_mxcsr())


def set_mxcsr(value: int) -> None:
    """Load ``value`` into the calling thread's MXCSR (x86-64 only)."""
    if not _X86_64:
        raise RuntimeError("MXCSR exists only on x86-64")
    _write_mxcsr(int(value) & 0xFFFF)


def hardware_flush_active() -> bool:
    """Whether FTZ and DAZ are both on for the calling thread. Then no float operation
    on this thread reads or produces a subnormal, so the per-kernel flush is a no-op a
    kernel running on this thread may skip (the results are bitwise the same)."""
    if not _X86_64:
        return False
    both = FTZ_BIT | DAZ_BIT
    return int(_read_mxcsr()) & both == both


@contextlib.contextmanager
def flush_denormals(enabled: bool = True):
    """Context manager: FTZ+DAZ on for the calling thread, MXCSR restored on exit.

    Yields True if the bits were set (x86-64 and ``enabled``), else False (no-op).
    Only the calling thread is affected; nesting is safe (each level restores the
    value it saw on entry).
    """
    if not (enabled and _X86_64):
        yield False
        return
    saved = int(_read_mxcsr())
    _write_mxcsr(saved | FTZ_BIT | DAZ_BIT)
    try:
        yield True
    finally:
        _write_mxcsr(saved)


@contextlib.contextmanager
def training_denormals(flush: bool):
    """Denormal handling for a training run: when ``flush``, FTZ/DAZ on this thread (x86)
    and per-kernel flushing; otherwise neither. The previous state is restored on exit."""
    previous = set_flush_denormals(flush)
    try:
        if flush:
            with flush_denormals():
                yield
        else:
            yield
    finally:
        set_flush_denormals(previous)
