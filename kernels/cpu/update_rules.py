"""Per-element optimizer update rules, the scalar core of every CPU update kernel.

Each rule maps one parameter element, its gradient and its state to their new values,
following ``torch.optim``'s documented algorithm (see ``gpunet.optim.functional`` for the
array reference). Hyperparameters come as one float64 row ``h`` (layout below) plus
per-step constants ``c`` computed once per step by :func:`step_constants`. Rules are
``inline="always"`` so the caller's loop specializes on a constant optimizer kind.

Row layouts of ``h`` (float64, length :data:`N_HYPER`):
- SGD:     lr, momentum, dampening, nesterov, weight_decay, maximize
- Adam:    lr, beta1, beta2, eps, weight_decay, decoupled, amsgrad, maximize
- RMSprop: lr, alpha, eps, weight_decay, momentum, centered, maximize
- Adagrad: lr, lr_decay, weight_decay, eps, maximize
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

SGD, ADAM, RMSPROP, ADAGRAD = range(4)
OPTIMIZER_CODES = {"sgd": SGD, "adam": ADAM, "rmsprop": RMSPROP, "adagrad": ADAGRAD}
N_HYPER = 8


@njit(inline="always")
def step_constants(kind, h, step):
    """Per-step scalars ``(c0, c1)``: Adam -> (lr / (1 - beta1**step), sqrt(1 - beta2**step));
    Adagrad -> (lr / (1 + (step - 1) * lr_decay), 0); others (0, 0). ``step`` is 1-based."""
    if kind == ADAM:
        return h[0] / (1.0 - h[1] ** step), math.sqrt(1.0 - h[2] ** step)
    if kind == ADAGRAD:
        return h[0] / (1.0 + (step - 1) * h[1]), 0.0
    return 0.0, 0.0


@njit(inline="always")
def apply_rule(kind, p, g, s1, s2, s3, h, c0, c1, first):
    """One element's update; returns ``(p, s1, s2, s3)`` (as float64).

    State meaning by kind: SGD s1 = momentum buffer (``first``: no buffer yet, so it
    becomes the gradient undampened); Adam s1 = exp_avg, s2 = exp_avg_sq,
    s3 = max_exp_avg_sq; RMSprop s1 = square_avg, s2 = grad_avg, s3 = momentum buffer;
    Adagrad s1 = sum of squares.
    """
    if kind == SGD:
        lr, momentum, dampening, nesterov, wd, maximize = h[0], h[1], h[2], h[3], h[4], h[5]
        d = -g if maximize != 0.0 else g * 1.0
        if wd != 0.0:
            d = d + wd * p
        buf = s1 * 1.0
        if momentum != 0.0:
            if first:
                buf = d
            else:
                buf = momentum * buf + (1.0 - dampening) * d
            if nesterov != 0.0:
                d = d + momentum * buf
            else:
                d = buf
        return p - lr * d, buf, s2 * 1.0, s3 * 1.0
    if kind == ADAM:
        lr, beta1, beta2, eps, wd = h[0], h[1], h[2], h[3], h[4]
        decoupled, amsgrad, maximize = h[5], h[6], h[7]
        d = -g if maximize != 0.0 else g * 1.0
        q = p * 1.0
        if wd != 0.0:
            if decoupled != 0.0:
                q = q * (1.0 - lr * wd)
            else:
                d = d + wd * q
        m = s1 + (d - s1) * (1.0 - beta1)
        v = s2 * beta2 + (1.0 - beta2) * d * d
        vmax = s3 * 1.0
        if amsgrad != 0.0:
            vmax = max(vmax, v)
            denom = math.sqrt(vmax) / c1 + eps
        else:
            denom = math.sqrt(v) / c1 + eps
        return q - c0 * (m / denom), m, v, vmax
    if kind == RMSPROP:
        lr, alpha, eps, wd, momentum, centered, maximize = h[0], h[1], h[2], h[3], h[4], h[5], h[6]
        d = -g if maximize != 0.0 else g * 1.0
        if wd != 0.0:
            d = d + wd * p
        sq = s1 * alpha + (1.0 - alpha) * d * d
        ga = s2 * 1.0
        if centered != 0.0:
            ga = ga + (d - ga) * (1.0 - alpha)
            avg = math.sqrt(sq - ga * ga) + eps
        else:
            avg = math.sqrt(sq) + eps
        buf = s3 * 1.0
        if momentum > 0.0:
            buf = momentum * buf + d / avg
            return p - lr * buf, sq, ga, buf
        return p - lr * (d / avg), sq, ga, buf
    # ADAGRAD
    wd, eps, maximize = h[2], h[3], h[4]
    d = -g if maximize != 0.0 else g * 1.0
    if wd != 0.0:
        d = d + wd * p
    total = s1 + d * d
    return p - c0 * (d / (math.sqrt(total) + eps)), total, s2 * 1.0, s3 * 1.0


@njit(inline="always")
def flush(value, tiny):
    """``value`` with magnitudes below the smallest normal float (``tiny``) set to 0."""
    return value if abs(value) >= tiny else 0.0 * value


def hyper_row(name: str, group: dict) -> np.ndarray:
    """The float64 row ``h`` for an optimizer name and a torch-style param group."""
    h = np.zeros(N_HYPER)
    if name == "sgd":
        vals = [group["lr"], group["momentum"], group["dampening"], group["nesterov"],
                group["weight_decay"], group.get("maximize", False)]
    elif name in ("adam", "adamw"):
        beta1, beta2 = group["betas"]
        vals = [group["lr"], beta1, beta2, group["eps"], group["weight_decay"],
                name == "adamw" or group.get("decoupled", False), group["amsgrad"],
                group.get("maximize", False)]
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
