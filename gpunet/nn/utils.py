"""Gradient clipping (``torch.nn.utils.clip_grad_norm_`` / ``clip_grad_value_``)."""

from __future__ import annotations

import math

from gpunet.autograd import Tensor


def _grads(parameters) -> list:
    """The ``.grad`` arrays of ``parameters`` (a tensor or an iterable of them) that
    have one."""
    if isinstance(parameters, Tensor):
        parameters = [parameters]
    return [p.grad.data for p in parameters if p.grad is not None]


def clip_grad_norm_(
    parameters, max_norm: float, norm_type: float = 2.0, error_if_nonfinite: bool = False
) -> Tensor:
    """Scale the gradients in place so that their total ``norm_type``-norm (the norm of
    the vector of every gradient's norm, i.e. of all gradients concatenated) is at most
    ``max_norm``: each is multiplied by ``min(1, max_norm / (total + 1e-6))``, PyTorch's
    rule. ``norm_type`` may be ``inf`` (largest absolute value). Returns the total norm
    before clipping, a 0-d tensor on the gradients' device (0 when no gradient).
    ``error_if_nonfinite``: raise RuntimeError, before changing anything, when the
    total norm is NaN or infinite."""
    max_norm, norm_type = float(max_norm), float(norm_type)
    if math.isnan(max_norm) or max_norm < 0:
        raise ValueError(f"max_norm must be >= 0, got {max_norm}")
    if math.isnan(norm_type) or norm_type <= 0:
        raise ValueError(f"norm_type must be positive (or inf), got {norm_type}")
    if isinstance(parameters, Tensor):
        parameters = [parameters]
    parameters = list(parameters)
    grads = _grads(parameters)
    if not grads:
        return Tensor(0.0)
    tensor = next(p for p in parameters if p.grad is not None).grad
    xp = tensor.backend.xp
    if norm_type == math.inf:
        norms = xp.stack([xp.abs(g).max() if g.size else xp.zeros((), g.dtype) for g in grads])
        total = norms.max()
    else:
        norms = xp.stack([(xp.abs(g) ** norm_type).sum() ** (1.0 / norm_type) for g in grads])
        total = (norms**norm_type).sum() ** (1.0 / norm_type)
    if error_if_nonfinite and not bool(xp.isfinite(total)):
        raise RuntimeError(
            f"the total norm of order {norm_type} of the gradients is non-finite "
            f"({float(total)}), so it cannot be clipped"
        )
    coef = xp.minimum(max_norm / (total + 1e-6), 1.0).astype(total.dtype)
    for g in grads:
        g *= coef.astype(g.dtype)
    return Tensor._wrap(total, tensor.backend)


def clip_grad_value_(parameters, clip_value: float) -> None:
    """Clamp every gradient in place to ``[-clip_value, clip_value]`` (PyTorch's
    ``clip_grad_value_``)."""
    clip_value = float(clip_value)
    if math.isnan(clip_value) or clip_value < 0:
        raise ValueError(f"clip_value must be >= 0, got {clip_value}")
    for g in _grads(parameters):
        g.clip(-clip_value, clip_value, out=g)
