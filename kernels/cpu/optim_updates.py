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
from gpunet.kernels.cpu.update_rules import (
    ADAGRAD,
    ADAM,
    N_HYPER,
    RMSPROP,
    SGD,
    update_array,
)

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


def _row(*values) -> np.ndarray:
    h = np.zeros(N_HYPER)
    h[: len(values)] = [float(v) for v in values]
    return h


def _run(kind, p, g, s1, s2, s3, h, step, first, flush_denormals):
    update_array(
        kind,
        _flat(p),
        _flat(g),
        _state(s1, p.dtype),
        _state(s2, p.dtype),
        _state(s3, p.dtype),
        h,
        int(step),
        bool(first),
        resolve_flush(flush_denormals),
    )


def sgd_(
    xp,
    p,
    g,
    buf,
    *,
    lr,
    momentum,
    dampening,
    nesterov,
    weight_decay,
    maximize,
    first_step,
    flush_denormals=None,
) -> None:
    """In-place SGD step (see ``gpunet.optim.functional.sgd_``); ``buf`` None when
    ``momentum == 0``. p, g, buf: same shape and dtype."""
    h = _row(lr, momentum, dampening, nesterov, weight_decay, maximize)
    _run(
        SGD,
        p,
        g,
        buf if float(momentum) != 0 else None,
        None,
        None,
        h,
        1,
        first_step,
        flush_denormals,
    )


def adagrad_(
    xp, p, g, state_sum, *, lr, lr_decay, weight_decay, eps, step, maximize, flush_denormals=None
) -> None:
    """In-place Adagrad step (see ``gpunet.optim.functional.adagrad_``);
    ``clr = lr / (1 + (step - 1) * lr_decay)``. p, g, state_sum: same shape and dtype."""
    h = _row(lr, lr_decay, weight_decay, eps, maximize)
    _run(ADAGRAD, p, g, state_sum, None, None, h, step, False, flush_denormals)


def rmsprop_(
    xp,
    p,
    g,
    square_avg,
    grad_avg,
    momentum_buffer,
    *,
    lr,
    alpha,
    eps,
    weight_decay,
    momentum,
    centered,
    maximize,
    flush_denormals=None,
) -> None:
    """In-place RMSprop step (see ``gpunet.optim.functional.rmsprop_``); ``grad_avg``
    None unless ``centered``, ``momentum_buffer`` None unless ``momentum > 0``."""
    h = _row(lr, alpha, eps, weight_decay, momentum, centered, maximize)
    _run(
        RMSPROP,
        p,
        g,
        square_avg,
        grad_avg if centered else None,
        momentum_buffer if float(momentum) > 0 else None,
        h,
        1,
        False,
        flush_denormals,
    )


def adam_(
    xp,
    p,
    g,
    exp_avg,
    exp_avg_sq,
    max_exp_avg_sq,
    *,
    lr,
    beta1,
    beta2,
    eps,
    weight_decay,
    decoupled,
    amsgrad,
    step,
    maximize,
    flush_denormals=None,
) -> None:
    """In-place Adam / AdamW (``decoupled``) step, optionally AMSGrad (see
    ``gpunet.optim.functional.adam_``); ``max_exp_avg_sq`` None unless ``amsgrad``;
    ``step`` is the 1-based count of this update."""
    h = _row(lr, beta1, beta2, eps, weight_decay, decoupled, amsgrad, maximize)
    _run(
        ADAM,
        p,
        g,
        exp_avg,
        exp_avg_sq,
        max_exp_avg_sq if amsgrad else None,
        h,
        step,
        False,
        flush_denormals,
    )


UPDATE_KERNELS = {"sgd": sgd_, "adagrad": adagrad_, "rmsprop": rmsprop_, "adam": adam_}


def fused_update(name: str):
    """The fused in-place update kernel for an optimizer name, or None if there is none."""
    return UPDATE_KERNELS.get(name)
