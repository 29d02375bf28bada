"""Two threads taking turns through a shared int64 array (CPU).

The fused epoch (:mod:`fused_mlp`) runs its two-thread steps on the calling thread and
one worker thread (:func:`fused_mlp.step_worker`). They talk through ``flags``, an int64
array laid out by the ``FLAG_*`` indices below: one thread publishes a value with
:func:`atomic_store` (release), the other waits for it with :func:`wait_for` (acquire
loads), so everything written before the store is visible after the wait.

- The epoch hands the worker a task (``TASK_*``, its rows in ``FLAG_START`` /
  ``FLAG_ROWS``...) by raising ``FLAG_GENERATION`` (:func:`hand_over`), and waits for
  ``FLAG_DONE`` to reach it (:func:`wait_for_worker`). -1 tells the worker to exit;
  a worker that raised leaves ``WORKER_FAILED``, so no one waits for it forever.
- Inside a model-parallel step both threads meet at numbered barriers
  (:func:`barrier`, ``FLAG_ARRIVED + t``), which give up when the other side failed
  or was stopped.

Waits spin: the two threads' shares of a step take about as long, so a wait lasts
microseconds, and waking a sleeping thread costs more than that. After
``SPINS_BEFORE_YIELD`` looks a wait yields the CPU on every turn (:func:`yield_cpu`),
which costs nothing while no other thread wants this CPU.
"""

from __future__ import annotations

import sys

from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

#: spins between a wait's first look and its first yield of the CPU
SPINS_BEFORE_YIELD = 64
# the OS call that lets another runnable thread have this CPU (found by name when the
# kernel is linked, so compiled kernels stay cacheable)
_YIELD_SYMBOL = "SwitchToThread" if sys.platform == "win32" else "sched_yield"


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


@intrinsic
def yield_cpu(typingctx):
    """Let another runnable thread have this CPU, if there is one (``sched_yield``).

    A wait must not spin through a whole time slice when the thread it waits for is
    queued on the same CPU (a third busy thread, e.g. another library's BLAS worker
    spinning after its call, can leave both of ours on one CPU of two): each of a
    model-parallel step's barriers would then cost a slice."""

    def codegen(context, builder, sig, args):
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.IntType(32), []), _YIELD_SYMBOL
        )
        builder.call(fn, ())
        return context.get_dummy_value()

    return types.void(), codegen


@njit(inline="always")
def _pause(spins):
    """One turn of a wait that has looked ``spins`` times: the first turns only look
    again, later ones yield the CPU first."""
    if spins >= SPINS_BEFORE_YIELD:
        yield_cpu()
    return spins + 1


@njit(cache=True, nogil=True)
def wait_for(flags, index, value, failed):
    """Spin until ``flags[index]`` is ``value`` or ``failed`` (the other thread gave
    up); returns which."""
    seen = atomic_load(flags, index)
    spins = 0
    while seen != value and seen != failed:
        spins = _pause(spins)
        seen = atomic_load(flags, index)
    return seen


@njit(cache=True, nogil=True)
def wait_for_change(flags, index, old):
    """Spin until ``flags[index] != old``; returns the new value."""
    value = atomic_load(flags, index)
    spins = 0
    while value == old:
        spins = _pause(spins)
        value = atomic_load(flags, index)
    return value


FLAG_GENERATION = 0  # raised by the epoch to hand the worker a task; -1: exit
FLAG_TASK = 1  # one of TASK_*
FLAG_START = 2  # the task's rows: order[start:start + rows] (or X's)
FLAG_ROWS = 3
FLAG_BATCH_ROWS = 4  # data-parallel: rows of the whole step
FLAG_DONE = 5  # the generation the worker finished last; WORKER_FAILED: it raised
FLAG_CORRECT = 6  # data-parallel: the worker's correct predictions
FLAG_CARVE_ROWS = 7  # model-parallel step: rows the epoch's workspace is carved for
FLAG_ARRIVED = 8  # and 9: the barriers each thread has reached (model-parallel steps)
FLAG_STEP = 10  # the step's index in the epoch (its row of dropout keys)
N_FLAGS = 11  # then per parameter k, at FLAG_FOLDS + 2k: its FOLD_* in a model-parallel
# step, and whether that step's sweep leaves its momentum buffer scaled
FLAG_FOLDS = N_FLAGS
FOLD_NONE, FOLD_UNSCALED, FOLD_SCALED = 0, 1, 2
TASK_FORWARD_BACKWARD, TASK_UPDATE, TASK_MODEL_PARALLEL = 0, 1, 2
WORKER_FAILED = -2


@njit(cache=True, nogil=True, error_model="numpy")
def wait_for_worker(flags, generation):
    """Wait until the worker has finished task ``generation``; raises if it failed."""
    if wait_for(flags, FLAG_DONE, generation, WORKER_FAILED) != generation:
        raise RuntimeError("the fused epoch's worker thread failed")


@njit(cache=True, nogil=True, error_model="numpy")
def hand_over(flags, generation, task):
    """Give the worker ``task`` as ``generation`` (the task's other flags already set)."""
    flags[FLAG_TASK] = task
    atomic_store(flags, FLAG_GENERATION, generation)


@njit(cache=True, nogil=True, error_model="numpy")
def barrier(flags, t, count):
    """Thread ``t`` has reached its barrier ``count``; wait until the other thread has
    too. Returns False instead when the worker failed or the epoch stopped it."""
    atomic_store(flags, FLAG_ARRIVED + t, count)
    other = FLAG_ARRIVED + 1 - t
    spins = 0
    while atomic_load(flags, other) < count:
        spins = _pause(spins)
        if atomic_load(flags, FLAG_DONE) == WORKER_FAILED:
            return False
        if atomic_load(flags, FLAG_GENERATION) < 0:
            return False
    return True
