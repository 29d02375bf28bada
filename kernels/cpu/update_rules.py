"""Per-element optimizer update rules, the scalar core of the CPU update kernels.

Each rule follows ``torch.optim``'s documented algorithm (the array reference is
``gpunet.optim.functional``) rewritten as branch-free arithmetic over per-step
coefficients, so a loop applying it vectorizes:

- the options (maximize, weight decay, first momentum step, nesterov, decoupled decay,
  amsgrad, centered, momentum on/off) become coefficients computed once per step by
  :func:`coefficients` (e.g. ``buf = mb * buf + md * d`` with ``mb = 0, md = 1`` on the
  first SGD step). Every substitution is exact: it multiplies by 0 or 1 or adds 0;
- the caller casts the coefficients to the parameter dtype before its loop, so float32
  parameters are updated in float32 like the reference.

Hyperparameter rows ``h`` (float64, length :data:`N_HYPER`), built by :func:`hyper_row`:
- SGD:     lr, momentum, dampening, nesterov, weight_decay, maximize
- Adam:    lr, beta1, beta2, eps, weight_decay, decoupled, amsgrad, maximize
- RMSprop: lr, alpha, eps, weight_decay, momentum, centered, maximize
- Adagrad: lr, lr_decay, weight_decay, eps, maximize

State slots: SGD s1 = momentum buffer; Adam s1 = exp_avg, s2 = exp_avg_sq,
s3 = max_exp_avg_sq; RMSprop s1 = square_avg, s2 = grad_avg, s3 = momentum buffer;
Adagrad s1 = sum of squared gradients.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

SGD, ADAM, RMSPROP, ADAGRAD = range(4)
OPTIMIZER_CODES = {"sgd": SGD, "adam": ADAM, "rmsprop": RMSPROP, "adagrad": ADAGRAD}
N_HYPER = 8


@njit(cache=True, error_model="numpy")
def coefficients(kind, h, step, first):
    """Per-step coefficients ``(c0..c9)`` of a rule, from ``h``, the 1-based ``step``
    count and ``first`` (SGD: no momentum buffer exists yet)."""
    sign = -1.0 if h[N_HYPER - 1 if kind == ADAM else (6 if kind == RMSPROP else
                                                        (5 if kind == SGD else 4))] else 1.0
    if kind == SGD:
        lr, momentum, dampening, nesterov, wd = h[0], h[1], h[2], h[3], h[4]
        if momentum == 0.0:
            mb, md, n1, n2 = 0.0, 0.0, 1.0, 0.0
        else:
            mb, md = (0.0, 1.0) if first else (momentum, 1.0 - dampening)
            n1, n2 = (1.0, momentum) if nesterov != 0.0 else (0.0, 1.0)
        return sign, wd, mb, md, n1, n2, lr, 0.0, 0.0, 0.0
    if kind == ADAM:
        lr, beta1, beta2, eps, wd, decoupled, amsgrad = h[0], h[1], h[2], h[3], h[4], h[5], h[6]
        l2 = 0.0 if decoupled != 0.0 else wd
        decay = 1.0 - lr * wd if decoupled != 0.0 else 1.0
        step_size = lr / (1.0 - beta1**step)
        bc2_sqrt = math.sqrt(1.0 - beta2**step)
        return sign, l2, decay, 1.0 - beta1, beta2, 1.0 - beta2, step_size, bc2_sqrt, eps, amsgrad
    if kind == RMSPROP:
        lr, alpha, eps, wd, momentum, centered = h[0], h[1], h[2], h[3], h[4], h[5]
        return sign, wd, alpha, 1.0 - alpha, eps, momentum, centered, lr, 0.0, 0.0
    lr, lr_decay, wd, eps = h[0], h[1], h[2], h[3]
    return sign, wd, lr / (1.0 + (step - 1) * lr_decay), eps, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0


@njit(inline="always", error_model="numpy")
def apply_rule(kind, p, g, s1, s2, s3, c0, c1, c2, c3, c4, c5, c6, c7, c8, c9):
    """One element's update; returns ``(p, s1, s2, s3)``. ``c0..c9`` come from
    :func:`coefficients`, cast by the caller to the element dtype (so no operation here
    promotes float32 to float64)."""
    d = c0 * g + c1 * p
    if kind == SGD:
        buf = c2 * s1 + c3 * d
        return p - c6 * (c4 * d + c5 * buf), buf, s2, s3
    if kind == ADAM:
        m = s1 + (d - s1) * c3
        v = s2 * c4 + c5 * d * d
        vmax = max(s3, v)
        denom = math.sqrt(vmax if c9 != c9 * 0 else v) / c7 + c8
        return p * c2 - c6 * (m / denom), m, v, vmax
    if kind == RMSPROP:
        sq = s1 * c2 + c3 * d * d
        ga = s2 + (d - s2) * c3 if c6 != c6 * 0 else s2
        step = d / (math.sqrt(sq - ga * ga) + c4)
        with_momentum = c5 > c5 * 0
        buf = c5 * s3 + step if with_momentum else s3
        return p - c7 * (buf if with_momentum else step), sq, ga, buf
    total = s1 + d * d
    return p - c2 * (d / (math.sqrt(total) + c3)), total, s2, s3


@njit(inline="always", error_model="numpy")
def uses_slots_2_3(kind):
    """Whether the rule keeps state in s2/s3 (else the caller skips those arrays)."""
    return kind == ADAM or kind == RMSPROP


@njit(inline="always", error_model="numpy")
def flush(value, tiny):
    """``value`` with magnitudes below the smallest normal float (``tiny``) set to 0."""
    return value if abs(value) >= tiny else value - value


def hyper_row(name: str, group: dict) -> np.ndarray:
    """The float64 row ``h`` for an optimizer name and a torch-style param group
    (``"adam"`` follows the group's ``decoupled_weight_decay``; ``"adamw"`` forces it)."""
    h = np.zeros(N_HYPER)
    if name == "sgd":
        vals = [group["lr"], group["momentum"], group["dampening"], group["nesterov"],
                group["weight_decay"], group.get("maximize", False)]
    elif name in ("adam", "adamw"):
        beta1, beta2 = group["betas"]
        decoupled = name == "adamw" or group.get("decoupled_weight_decay", False)
        vals = [group["lr"], beta1, beta2, group["eps"], group["weight_decay"], decoupled,
                group["amsgrad"], group.get("maximize", False)]
    elif name == "rmsprop":
        vals = [group["lr"], group["alpha"], group["eps"], group["weight_decay"],
                group["momentum"], group["centered"], group.get("maximize", False)]
    elif name == "adagrad":
        vals = [group["lr"], group["lr_decay"], group["weight_decay"], group["eps"],
                group.get("maximize", False)]
    else:
        raise ValueError(f"no update rule for optimizer {name!r}")
    h[: len(vals)] = [float(v) for v in vals]
    return h
