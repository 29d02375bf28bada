"""T threads taking turns through a shared int64 array (CPU).

The fused epoch (:mod:`fused_mlp`) runs its multi-thread steps on the calling thread
(thread 0) and T - 1 worker threads (:func:`fused_mlp.step_worker`, threads 1 .. T-1).
They talk through ``flags``, an int64 array laid out by the ``FLAG_*`` indices below,
then three slots per thread (:func:`slot`), then two per parameter (:func:`fold_slot`):
one thread publishes a value with :func:`atomic_store` (release), another waits for it
with :func:`wait_for` (acquire loads), so everything written before the store is
visible after the wait.

- The epoch hands every worker the same task (``TASK_*``, its rows in ``FLAG_START`` /
  ``FLAG_ROWS``...) by raising ``FLAG_GENERATION`` (:func:`hand_over`), and waits for
  each worker's ``DONE`` slot to reach it (:func:`wait_for_workers`). -1 tells the
  workers to exit; a worker that raised leaves ``WORKER_FAILED`` in its slot, so no one
  waits for it forever.
- Inside a model-parallel step all threads meet at numbered barriers
  (:func:`barrier`, each thread's ``ARRIVED`` slot), which give up when a worker failed
  or the epoch stopped them.
- Thread ``t`` of ``T`` takes the share :func:`share` of any range (rows, columns or a
  weight's elements), the same split for every T.

Waits spin: the threads' shares of a step take about as long, so a wait lasts
microseconds, and waking a sleeping thread costs more than that. After
``SPINS_BEFORE_YIELD`` looks a wait yields the CPU on every turn (:func:`yield_cpu`),
which costs nothing while no other thread wants this CPU, and lets an oversubscribed
CPU (more threads than cores) run the thread being waited for.
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


FLAG_GENERATION = 0  # raised by the epoch to hand the workers a task; -1: exit
FLAG_TASK = 1  # one of TASK_*
FLAG_START = 2  # the step's rows: order[start:start + rows] (or X's)
FLAG_ROWS = 3
FLAG_CARVE_ROWS = 4  # model-parallel step: rows the epoch's workspace is carved for
FLAG_STEP = 5  # the step's index in the epoch (its row of dropout keys)
FLAG_THREADS = 6  # T, the threads of a step
N_FLAGS = 7
# then per thread t, at N_FLAGS + 3t + one of:
ARRIVED = 0  # the barriers it has reached (model-parallel steps)
DONE = 1  # the generation it finished last (workers); WORKER_FAILED: it raised
CORRECT = 2  # data-parallel: its rows' correct predictions
# then per parameter k, at fold_slot(flags, k) and the one after: its FOLD_* in a
# model-parallel step, and whether that step's sweep leaves its momentum buffer scaled
FOLD_NONE, FOLD_UNSCALED, FOLD_SCALED = 0, 1, 2
TASK_FORWARD_BACKWARD, TASK_UPDATE, TASK_MODEL_PARALLEL, TASK_MASK_WEIGHTS = 0, 1, 2, 3
WORKER_FAILED = -2


def flags_size(n_threads: int, n_params: int) -> int:
    """Length of the ``flags`` array of ``n_threads`` threads and ``n_params``
    parameters."""
    return N_FLAGS + 3 * n_threads + 2 * n_params


@njit(inline="always")
def slot(t, what):
    """Index of thread ``t``'s ``what`` (``ARRIVED``, ``DONE`` or ``CORRECT``)."""
    return N_FLAGS + 3 * t + what


@njit(inline="always")
def fold_slot(flags, k):
    """Index of parameter ``k``'s ``FOLD_*`` (the next index: scaled after)."""
    return N_FLAGS + 3 * flags[FLAG_THREADS] + 2 * k


@njit(inline="always", error_model="numpy")
def share(n, t, n_threads):
    """Thread ``t``'s share ``(lo, hi)`` of ``range(n)`` among ``n_threads``: contiguous,
    in thread order, sizes differing by at most one."""
    return n * t // n_threads, n * (t + 1) // n_threads


@njit(cache=True, nogil=True, error_model="numpy")
def team_size(flags):
    """T: the threads that run the epoch's multi-thread steps (1 when ``flags`` is
    empty: every step on the calling thread)."""
    return flags[FLAG_THREADS] if flags.shape[0] != 0 else 1


@njit(cache=True, nogil=True, error_model="numpy")
def any_failed(flags):
    """Whether a worker raised, or the epoch told the workers to exit."""
    if atomic_load(flags, FLAG_GENERATION) < 0:
        return True
    for t in range(1, flags[FLAG_THREADS]):
        if atomic_load(flags, slot(t, DONE)) == WORKER_FAILED:
            return True
    return False


@njit(cache=True, nogil=True, error_model="numpy")
def wait_for_workers(flags, generation):
    """Wait until every worker has finished task ``generation``; raises if one failed."""
    for t in range(1, flags[FLAG_THREADS]):
        if wait_for(flags, slot(t, DONE), generation, WORKER_FAILED) != generation:
            raise RuntimeError("the fused epoch's worker thread failed")


@njit(cache=True, nogil=True, error_model="numpy")
def hand_over(flags, generation, task):
    """Give the workers ``task`` as ``generation`` (the task's other flags already
    set)."""
    flags[FLAG_TASK] = task
    atomic_store(flags, FLAG_GENERATION, generation)


@njit(cache=True, nogil=True, error_model="numpy")
def barrier(flags, t, count):
    """Thread ``t`` has reached its barrier ``count``; wait until every other thread
    has too. Returns False instead when a worker failed or the epoch stopped them."""
    atomic_store(flags, slot(t, ARRIVED), count)
    spins = 0
    for other in range(flags[FLAG_THREADS]):
        while atomic_load(flags, slot(other, ARRIVED)) < count:
            spins = _pause(spins)
            if any_failed(flags):
                return False
    return True
