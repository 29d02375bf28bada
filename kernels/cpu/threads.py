"""Two threads taking turns through a shared int64 array (CPU).

The fused epoch's data-parallel steps (:mod:`fused_mlp`) run on the calling thread and
one worker thread. They hand work over through flags in an int64 array: one thread
publishes a value with :func:`atomic_store` (release), the other waits for it with
:func:`wait_for` (acquire loads), so everything written before the store is visible
after the wait. Waits spin: a step's halves take about as long on both threads, so a
wait lasts microseconds, and waking a sleeping thread costs more than that.
"""

from __future__ import annotations

from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic


def _element_pointer(context, builder, array_type, array, index):
    view = context.make_array(array_type)(context, builder, array)
    return cgutils.get_item_pointer(context, builder, array_type, view, [index])


@intrinsic
def atomic_load(typingctx, flags, index):
    """``flags[index]`` read with acquire ordering (``flags``: 1-D int64 array)."""
    if not (isinstance(flags, types.Array) and flags.dtype == types.int64 and flags.ndim == 1):
        return None

    def codegen(context, builder, sig, args):
        ptr = _element_pointer(context, builder, sig.args[0], args[0], args[1])
        return builder.load_atomic(ptr, "acquire", 8)

    return types.int64(flags, types.intp), codegen


@intrinsic
def atomic_store(typingctx, flags, index, value):
    """``flags[index] = value`` with release ordering (``flags``: 1-D int64 array)."""
    if not (isinstance(flags, types.Array) and flags.dtype == types.int64 and flags.ndim == 1):
        return None

    def codegen(context, builder, sig, args):
        ptr = _element_pointer(context, builder, sig.args[0], args[0], args[1])
        value = context.cast(builder, args[2], sig.args[2], types.int64)
        builder.store_atomic(value, ptr, "release", 8)
        return context.get_dummy_value()

    return types.void(flags, types.intp, types.int64), codegen


@njit(cache=True, nogil=True)
def wait_for(flags, index, value, failed):
    """Spin until ``flags[index]`` is ``value`` or ``failed`` (the other thread gave
    up); returns which."""
    seen = atomic_load(flags, index)
    while seen != value and seen != failed:
        seen = atomic_load(flags, index)
    return seen


@njit(cache=True, nogil=True)
def wait_for_change(flags, index, old):
    """Spin until ``flags[index] != old``; returns the new value."""
    value = atomic_load(flags, index)
    while value == old:
        value = atomic_load(flags, index)
    return value
