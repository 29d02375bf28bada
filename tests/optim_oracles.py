"""Float64 NumPy oracles of PyTorch's optimizer algorithms, for tests.

Written from the pseudo-code in PyTorch's documentation (``torch.optim.SGD`` etc.),
independently of ``gpunet.optim``: plain loops over steps and parameters, the
textbook form of each formula, no code shared with the implementation. Where
PyTorch's code and its documentation differ, the oracle follows the code, and says
so (``maximize`` negates the gradient *before* weight decay is added).

Every oracle takes:

- ``params``: list of float64 arrays (any shapes), the starting values (not modified);
- ``grad_fn(t, params) -> list of arrays``: the gradients at 1-based step ``t``;
- ``steps``: number of updates;
- hyperparameters with PyTorch's names.

and returns the list of parameter arrays after ``steps`` updates.
"""

from __future__ import annotations

import itertools
import math

import numpy as np


def _start(params):
    return [np.array(p, dtype=np.float64, copy=True) for p in params]


def sgd(
    params,
    grad_fn,
    steps,
    lr=1e-3,
    momentum=0.0,
    dampening=0.0,
    weight_decay=0.0,
    nesterov=False,
    maximize=False,
):
    theta = _start(params)
    bufs = [None] * len(theta)
    for t in range(1, steps + 1):
        grads = grad_fn(t, theta)
        for i in range(len(theta)):
            g = np.array(grads[i], dtype=np.float64)
            if maximize:
                g = -g
            if weight_decay != 0:
                g = g + weight_decay * theta[i]
            if momentum != 0:
                if t > 1:
                    bufs[i] = momentum * bufs[i] + (1 - dampening) * g
                else:
                    bufs[i] = g.copy()
                if nesterov:
                    g = g + momentum * bufs[i]
                else:
                    g = bufs[i]
            theta[i] = theta[i] - lr * g
    return theta


def adagrad(
    params,
    grad_fn,
    steps,
    lr=1e-2,
    lr_decay=0.0,
    weight_decay=0.0,
    initial_accumulator_value=0.0,
    eps=1e-10,
    maximize=False,
):
    theta = _start(params)
    sums = [np.full(p.shape, float(initial_accumulator_value)) for p in theta]
    for t in range(1, steps + 1):
        grads = grad_fn(t, theta)
        for i in range(len(theta)):
            g = np.array(grads[i], dtype=np.float64)
            if maximize:
                g = -g
            lr_t = lr / (1 + (t - 1) * lr_decay)
            if weight_decay != 0:
                g = g + weight_decay * theta[i]
            sums[i] = sums[i] + g**2
            theta[i] = theta[i] - lr_t * g / (np.sqrt(sums[i]) + eps)
    return theta


def rmsprop(
    params,
    grad_fn,
    steps,
    lr=1e-2,
    alpha=0.99,
    eps=1e-8,
    weight_decay=0.0,
    momentum=0.0,
    centered=False,
    maximize=False,
):
    theta = _start(params)
    v = [np.zeros(p.shape) for p in theta]
    g_ave = [np.zeros(p.shape) for p in theta]
    b = [np.zeros(p.shape) for p in theta]
    for t in range(1, steps + 1):
        grads = grad_fn(t, theta)
        for i in range(len(theta)):
            g = np.array(grads[i], dtype=np.float64)
            if maximize:
                g = -g
            if weight_decay != 0:
                g = g + weight_decay * theta[i]
            v[i] = alpha * v[i] + (1 - alpha) * g**2
            v_tilde = v[i]
            if centered:
                g_ave[i] = alpha * g_ave[i] + (1 - alpha) * g
                v_tilde = v_tilde - g_ave[i] ** 2
            if momentum > 0:
                b[i] = momentum * b[i] + g / (np.sqrt(v_tilde) + eps)
                theta[i] = theta[i] - lr * b[i]
            else:
                theta[i] = theta[i] - lr * g / (np.sqrt(v_tilde) + eps)
    return theta


def adam(
    params,
    grad_fn,
    steps,
    lr=1e-3,
    betas=(0.9, 0.999),
    eps=1e-8,
    weight_decay=0.0,
    amsgrad=False,
    maximize=False,
    decoupled=False,
):
    """Adam; ``decoupled=True`` is AdamW (``theta -= lr * wd * theta`` first)."""
    beta1, beta2 = betas
    theta = _start(params)
    m = [np.zeros(p.shape) for p in theta]
    v = [np.zeros(p.shape) for p in theta]
    v_max = [np.zeros(p.shape) for p in theta]
    for t in range(1, steps + 1):
        grads = grad_fn(t, theta)
        for i in range(len(theta)):
            g = np.array(grads[i], dtype=np.float64)
            if maximize:
                g = -g
            if weight_decay != 0:
                if decoupled:
                    theta[i] = theta[i] - lr * weight_decay * theta[i]
                else:
                    g = g + weight_decay * theta[i]
            m[i] = beta1 * m[i] + (1 - beta1) * g
            v[i] = beta2 * v[i] + (1 - beta2) * g**2
            m_hat = m[i] / (1 - beta1**t)
            if amsgrad:
                v_max[i] = np.maximum(v_max[i], v[i])
                v_hat = v_max[i] / (1 - beta2**t)
            else:
                v_hat = v[i] / (1 - beta2**t)
            theta[i] = theta[i] - lr * m_hat / (np.sqrt(v_hat) + eps)
    return theta


def adamw(
    params,
    grad_fn,
    steps,
    lr=1e-3,
    betas=(0.9, 0.999),
    eps=1e-8,
    weight_decay=1e-2,
    amsgrad=False,
    maximize=False,
):
    """AdamW: Adam with decoupled weight decay."""
    return adam(
        params,
        grad_fn,
        steps,
        lr=lr,
        betas=betas,
        eps=eps,
        weight_decay=weight_decay,
        amsgrad=amsgrad,
        maximize=maximize,
        decoupled=True,
    )


# ----------------------------------------------------------------- schedulers
def step_lr(base_lr, epoch, step_size, gamma=0.1):
    return base_lr * gamma ** (epoch // step_size)


def multistep_lr(base_lr, epoch, milestones, gamma=0.1):
    return base_lr * gamma ** sum(1 for m in milestones if m <= epoch)


def exponential_lr(base_lr, epoch, gamma):
    return base_lr * gamma**epoch


def cosine_annealing_lr(base_lr, epoch, T_max, eta_min=0.0):
    return eta_min + (base_lr - eta_min) * (1 + math.cos(math.pi * epoch / T_max)) / 2


def linear_lr(base_lr, epoch, start_factor=1 / 3, end_factor=1.0, total_iters=5):
    frac = min(epoch, total_iters) / total_iters
    return base_lr * (start_factor + (end_factor - start_factor) * frac)


# ------------------------------------------------------ functional option grid
def _grid(**axes):
    keys = list(axes)
    return [dict(zip(keys, values)) for values in itertools.product(*axes.values())]


#: (name, functional keyword arguments) covering every option of every update (shared by the
#: reference, CPU and CUDA kernel tests); adagrad's also carry initial_accumulator_value
FUNCTIONAL_CASES = (
    [
        ("sgd", dict(lr=0.1, **c))
        for c in _grid(
            momentum=(0.0, 0.9),
            dampening=(0.0, 0.3),
            nesterov=(False, True),
            weight_decay=(0.0, 0.05),
            maximize=(False, True),
        )
        if c["momentum"] or not (c["dampening"] or c["nesterov"])  # no-ops without momentum
    ]
    + [
        ("adagrad", dict(lr=0.1, eps=1e-10, **c))
        for c in _grid(
            lr_decay=(0.0, 0.05),
            weight_decay=(0.0, 0.1),
            initial_accumulator_value=(0.0, 0.5),
            maximize=(False, True),
        )
    ]
    + [
        ("rmsprop", dict(lr=0.01, eps=1e-8, **c))
        for c in _grid(
            alpha=(0.99, 0.3),  # 1 - alpha < 0.5 and >= 0.5: both branches of the lerp
            momentum=(0.0, 0.8),
            centered=(False, True),
            weight_decay=(0.0, 0.1),
            maximize=(False, True),
        )
    ]
    + [
        ("adam", dict(lr=0.02, eps=1e-8, beta1=b1, beta2=b2, **c))
        for (b1, b2), c in itertools.product(
            ((0.9, 0.999), (0.3, 0.6)),  # 1 - beta1 < 0.5 and >= 0.5
            _grid(
                weight_decay=(0.0, 0.1),
                decoupled=(False, True),
                amsgrad=(False, True),
                maximize=(False, True),
            ),
        )
    ]
)


def functional_case_id(case) -> str:
    """A readable pytest id of a FUNCTIONAL_CASES entry."""
    name, kw = case
    return name + "-" + ",".join(f"{k}={v}" for k, v in kw.items() if k not in ("lr", "eps"))
