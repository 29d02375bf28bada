"""Evicting from every cache the data one thread handed to the other (CPU).

In a data-parallel step each thread reads what the other wrote (the other's ``dW`` half,
the half of the weights the other updated) and the writer overwrites it in the next
step. The reader's read leaves a shared copy in its core's cache, so each of the
writer's later stores must first invalidate that copy: a round trip between the cores
per cache line. On the 2-core EPYC VM this is cheap while both vCPUs share an L3, and
costs 4x more once the host places them on different dies (ping-pong latency 50-100 ns
-> 320-650 ns, for minutes at a time): writing back 256 KB the other core had read took
30 us -> 117 us (``clflushopt`` by the reader after its last read: 9 us, the reader's
read 4 -> 14 us).

:func:`evict_span` flushes the cache lines of a 1-D span (``clflushopt``; ``clflush``
where the CPU or Numba's target lacks it; nothing off x86). A flush never changes data:
it writes modified lines back and drops every cached copy, so the writer's next stores
go to memory instead of waiting for the reader's core. (Model-parallel steps hand over
less per step and gained nothing from it: see ``kernels/cpu/model_parallel.py``.)
"""

from __future__ import annotations

import platform

from llvmlite import binding as llvm
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils, config
from numba.extending import intrinsic

#: bytes per cache line (every x86-64 CPU)
CACHE_LINE_BYTES = 64


def flush_instruction() -> str | None:
    """The LLVM intrinsic that flushes a cache line on the CPU Numba compiles for, or
    None where there is none (not x86)."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return None
    if config.CPU_NAME or config.CPU_FEATURES:  # a portable target: x86-64's baseline
        return "llvm.x86.sse2.clflush"
    if llvm.get_host_cpu_features().get("clflushopt", False):
        return "llvm.x86.clflushopt"
    return "llvm.x86.sse2.clflush"


_FLUSH = flush_instruction()


@intrinsic
def flush_line(typingctx, address):
    """Flush the cache line holding byte ``address`` (an integer) from every cache."""
    if not isinstance(address, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        if _FLUSH is not None:
            byte_ptr = ir.IntType(8).as_pointer()
            fn = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(ir.VoidType(), [byte_ptr]), _FLUSH
            )
            builder.call(fn, [builder.inttoptr(args[0], byte_ptr)])
        return context.get_dummy_value()

    return types.void(address), codegen


@njit(cache=True, nogil=True)
def evict_span(a):
    """Flush every cache line of the contiguous 1-D array ``a``."""
    start = a.ctypes.data
    end = start + a.size * a.itemsize
    line = start - start % CACHE_LINE_BYTES
    while line < end:
        flush_line(line)
        line += CACHE_LINE_BYTES
