"""In-place optimizer updates for the CPU: one Numba pass over each parameter.

Each function has the exact signature of its reference in :mod:`gpunet.optim.functional`
(``xp`` is accepted and ignored) plus an optional ``flush_denormals`` keyword. ``p``,
``g`` and the state arrays share one shape (any shape, including ``()``) and one dtype
(float32 or float64) and must be C-contiguous; the kernels run over flat views.
``p`` and the state are updated in place; ``g`` is only read.

The math is :mod:`gpunet.kernels.cpu.update_rules` (shared with the fused epoch), whose
operation order is the reference's: results are bitwise equal to it.

Denormals: with ``flush_denormals`` (default: the module setting of
:mod:`gpunet.kernels.cpu.denormals`, ON) every state value whose magnitude falls below
``np.finfo(dtype).tiny`` is stored as exactly 0, so buffers of dead units never reach
the slow subnormal range.
"""

from __future__ import annotations

import numpy as np

from gpunet.kernels.cpu.denormals import resolve_flush
from gpunet.kernels.cpu.update_rules import per_parameter_update, update_array

__all__ = ["UPDATE_KERNELS", "adagrad_", "adam_", "fused_update", "rmsprop_", "sgd_"]


def _flat(a):
    """1-D view of a C-contiguous array (raises rather than silently copying)."""
    if not a.flags.c_contiguous:
        raise ValueError("fused optimizer kernels need C-contiguous arrays")
    return a.reshape(-1)


_dummies: dict = {}


def _state(a, dtype):
    """Flat view of a state array, or a zero-length stand-in for an absent one."""
    if a is not None:
        return _flat(a)
    d = _dummies.get(dtype)
    if d is None:
        d = _dummies[dtype] = np.zeros(0, dtype=dtype)
    return d


def _run(kind, p, g, slots, h, step, first, flush_denormals=None):
    update_array(
        kind,
        _flat(p),
        _flat(g),
        *(_state(s, p.dtype) for s in slots),
        h,
        int(step),
        bool(first),
        resolve_flush(flush_denormals),
    )


sgd_, adagrad_, rmsprop_, adam_ = (
    per_parameter_update(name, _run, {"flush_denormals": None})
    for name in ("sgd", "adagrad", "rmsprop", "adam")
)
UPDATE_KERNELS = {"sgd": sgd_, "adagrad": adagrad_, "rmsprop": rmsprop_, "adam": adam_}


def fused_update(name: str):
    """The fused in-place update kernel for an optimizer name, or None if there is none."""
    return UPDATE_KERNELS.get(name)
