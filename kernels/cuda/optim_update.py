"""Launchers of the optimizer update kernels (``optim_update.cu``).

- :func:`update_all`: one optimizer step of a whole model held in flat buffers (the
  layout of ``gpunet.train.engines.qualify.FlatState``): every parameter updated in one
  launch, then the step counts advanced in a second; nothing is read on the host, so a
  training step holding it can be captured as a CUDA graph.
- :func:`fused_update`: per-parameter kernels with the signatures of
  :mod:`gpunet.optim.functional`'s references (as ``gpunet.kernels.cpu.optim_updates``
  has for the CPU), running the same kernel on one parameter.

The math is ``gpunet.kernels.cpu.update_rules``' (coefficients in float64, cast to the
parameter dtype, the CPU rules' order of operations). One difference from the CPU
kernels: no software denormal flush (subnormal arithmetic is not slow on a GPU).
"""

from __future__ import annotations

import functools

import numpy as np

from gpunet.kernels.cpu.update_rules import (
    N_HYPER,
    SGD,
    STATE_ARGUMENTS,
    per_parameter_update,
)

__all__ = ["SOURCE", "fused_update", "update_all"]

SOURCE = "optim_update.cu"
THREADS = 256
#: most blocks of an update launch: about one wave of a large GPU (132 SMs x 2048
#: threads); each thread then updates several elements per coefficient computation
MAX_BLOCKS = 1024


def _blocks(total: int) -> int:
    return max(1, min(MAX_BLOCKS, -(-total // THREADS)))


def update_all(rt, kind: int, param_table, H, steps, firsts, P, G, S1, S2, S3, use_s2, use_s3):
    """One optimizer step of every parameter: ``optimizer_update`` then ``advance_steps``.

    ``kind``: ``update_rules.OPTIMIZER_CODES``' code. Arrays of ``rt.xp``: ``param_table``
    (K, 2) int64 ``(offset, size)``; ``H`` (K, N_HYPER) float64 rows of ``hyper_row``;
    ``steps`` (K,) int64 updates done (this one is ``steps[k] + 1``; incremented here);
    ``firsts`` (K,) int64, nonzero while SGD has no momentum buffer (cleared here);
    ``P``, ``G`` (T,) and the state slots ``S1``..``S3`` of one float dtype. ``S1`` has
    T elements (SGD: unless no parameter has momentum: then it is never touched);
    ``S2`` / ``S3`` are read and written only with ``use_s2`` / ``use_s3`` (any array
    otherwise, e.g. an empty one)."""
    total = P.shape[0]
    n_params = param_table.shape[0]
    for name, a in (("G", G), ("S1", S1), ("S2", S2), ("S3", S3)):
        if a.dtype != P.dtype:
            raise TypeError(f"{name} is {a.dtype}, P is {P.dtype}")
    if G.shape[0] != total:
        raise ValueError(f"G has {G.shape[0]} elements, P {total}")
    for name, a, used in (("S2", S2, use_s2), ("S3", S3, use_s3)):
        if used and a.shape[0] != total:
            raise ValueError(f"{name} has {a.shape[0]} elements, P {total}")
    if kind != SGD and S1.shape[0] != total:
        raise ValueError(f"S1 has {S1.shape[0]} elements, P {total}")
    if H.shape != (n_params, N_HYPER) or steps.shape != (n_params,) or firsts.shape != (n_params,):
        raise ValueError("param_table, H, steps and firsts disagree on the parameter count")
    if n_params == 0:
        return
    _launch_update(rt, kind, param_table, H, steps, firsts, P, G, S1, S2, S3, use_s2, use_s3)
    rt.launch(
        SOURCE,
        rt.kernel_name("advance_steps", P.dtype),
        (-(-n_params // THREADS), 1, 1),
        (THREADS, 1, 1),
        (np.int32(n_params), steps, firsts),
    )


def _launch_update(rt, kind, param_table, H, steps, firsts, P, G, S1, S2, S3, use_s2, use_s3):
    """The ``optimizer_update`` launch alone (the step counts are read, not advanced)."""
    total = P.shape[0]
    rt.launch(
        SOURCE,
        rt.kernel_name("optimizer_update", P.dtype),
        (_blocks(total), 1, 1),
        (THREADS, 1, 1),
        (
            np.int32(kind),
            np.int32(param_table.shape[0]),
            param_table,
            H,
            steps,
            firsts,
            np.int64(total),
            P,
            G,
            S1,
            S2,
            S3,
            np.int32(bool(use_s2)),
            np.int32(bool(use_s3)),
        ),
    )


# -------------------------------------------------------------- per parameter
def _flat(a):
    """1-D view of a C-contiguous array (raises rather than silently copying)."""
    if not a.flags.c_contiguous:
        raise ValueError("fused optimizer kernels need C-contiguous arrays")
    return a.reshape(-1)


def _update_one(rt, kind, p, g, slots, h, step, first):
    """``optimizer_update`` over one parameter (K = 1): ``step`` the 1-based count of
    this update, ``first`` SGD's first-step flag; None state slots are not touched."""
    xp = rt.xp
    p_ = _flat(p)
    n = p_.shape[0]
    if n == 0:
        return
    g_ = _flat(g)
    flat_slots = [p_ if s is None else _flat(s) for s in slots]
    for s in (g_, *flat_slots):
        if s.shape[0] != n or s.dtype != p_.dtype:
            raise ValueError("p, g and the state arrays must share one shape and dtype")
    _launch_update(
        rt, kind, xp.asarray(np.array([[0, n]], dtype=np.int64)), xp.asarray(h[None, :]),
        xp.asarray(np.array([int(step) - 1], dtype=np.int64)),
        xp.asarray(np.array([int(bool(first))], dtype=np.int64)),
        p_, g_, *flat_slots, slots[1] is not None, slots[2] is not None,
    )  # fmt: skip


def fused_update(rt, name: str):
    """The in-place update of one parameter for optimizer ``name`` on runtime ``rt``,
    with exactly the signature of ``gpunet.optim.functional``'s reference (``xp`` is
    accepted and ignored), or None for an unknown name."""
    if name not in STATE_ARGUMENTS:
        return None
    return per_parameter_update(name, functools.partial(_update_one, rt))
