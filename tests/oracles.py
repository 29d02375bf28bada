"""Float64 NumPy oracles for the fused kernels: plain textbook formulas, written
independently of ``gpunet.backend`` / ``gpunet.activations`` / ``gpunet.kernels``.

Every function takes arrays of any float dtype, computes in float64, and returns new
float64 arrays (nothing is modified in place). Shapes: ``x`` (N, in), ``W`` (out, in),
``b`` (out,) or None, ``z``/``y``/``dy`` (N, out), ``logits`` (N, C), ``target`` (N,).
"""

from __future__ import annotations

import math

import numpy as np

LEAKY_SLOPE = 0.01
_erfc = np.vectorize(math.erfc, otypes=[np.float64])


def normal_cdf(z):
    """Phi(z) = erfc(-z / sqrt 2) / 2 (accurate in both tails), float64."""
    return 0.5 * _erfc(-_f64(z) / math.sqrt(2.0))


def _f64(a):
    return np.asarray(a, dtype=np.float64)


# ------------------------------------------------------------------- activations
def activation(z, act: str):
    """f(z), float64, same shape as ``z``."""
    z = _f64(z)
    if act == "linear":
        return z.copy()
    if act == "relu":
        return np.where(z > 0, z, 0.0)
    if act == "leaky_relu":
        return np.where(z > 0, z, LEAKY_SLOPE * z)
    if act == "sigmoid":
        e = np.exp(-np.abs(z))  # 1 / (1 + exp(-z)) without overflow or cancellation
        return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
    if act == "tanh":
        return np.tanh(z)
    if act == "gelu":
        return z * normal_cdf(z)
    raise ValueError(act)


def activation_derivative(z, act: str):
    """f'(z) as a function of the pre-activation ``z``, float64."""
    z = _f64(z)
    if act == "linear":
        return np.ones_like(z)
    if act == "relu":
        return (z > 0).astype(np.float64)
    if act == "leaky_relu":
        return np.where(z > 0, 1.0, LEAKY_SLOPE)
    if act == "sigmoid":
        s = activation(z, "sigmoid")
        return s * (1.0 - s)
    if act == "tanh":
        with np.errstate(over="ignore"):  # cosh -> inf gives the right limit 0
            return 1.0 / np.cosh(z) ** 2
    if act == "gelu":
        pdf = np.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)
        return normal_cdf(z) + z * pdf
    raise ValueError(act)


# ------------------------------------------------------------------- dense layer
def dense_forward(x, W, b, act: str):
    """Returns ``(y, z)``: ``z = x @ W.T + b`` (N, out) and ``y = f(z)``."""
    z = _f64(x) @ _f64(W).T
    if b is not None:
        z = z + _f64(b)
    return activation(z, act), z


def dense_backward(dy, x, W, z, act: str):
    """Returns ``(dx (N, in), dW (out, in), db (out,))`` given the pre-activation ``z``."""
    dz = _f64(dy) * activation_derivative(z, act)
    return dz @ _f64(W), dz.T @ _f64(x), dz.sum(axis=0)


# ---------------------------------------------------------- softmax cross-entropy
def softmax_cross_entropy(logits, target, label_smoothing=0.0, grad_scale=1.0):
    """Returns ``(losses (N,), dlogits (N, C))``: ``loss = -sum_j q_j log p_j`` with
    ``q = (1 - s) onehot(target) + s / C``; ``dlogits = grad_scale * (p - q)``."""
    z = _f64(logits)
    n, c = z.shape
    zmax = z.max(axis=1, keepdims=True)
    logp = z - zmax - np.log(np.exp(z - zmax).sum(axis=1, keepdims=True))
    q = np.full((n, c), label_smoothing / c)
    q[np.arange(n), np.asarray(target)] += 1.0 - label_smoothing
    losses = -(q * logp).sum(axis=1)
    return losses, grad_scale * (np.exp(logp) - q)


# -------------------------------------------------------------------- optimizers
# Each returns the new (p, *state) in float64; ``None`` states stay None.
def sgd(p, g, buf, *, lr, momentum, dampening, nesterov, weight_decay, maximize, first_step):
    p, g = _f64(p), _f64(g)
    d = (-g if maximize else g) + weight_decay * p
    if momentum != 0:
        buf = d.copy() if first_step else momentum * _f64(buf) + (1.0 - dampening) * d
        d = d + momentum * buf if nesterov else buf
    return p - lr * d, buf


def adagrad(p, g, state_sum, *, lr, lr_decay, weight_decay, eps, step, maximize):
    p, g = _f64(p), _f64(g)
    d = (-g if maximize else g) + weight_decay * p
    clr = lr / (1.0 + (step - 1) * lr_decay)
    state_sum = _f64(state_sum) + d * d
    return p - clr * d / (np.sqrt(state_sum) + eps), state_sum


def rmsprop(
    p, g, square_avg, grad_avg, buf, *, lr, alpha, eps, weight_decay, momentum, centered, maximize
):
    p, g = _f64(p), _f64(g)
    d = (-g if maximize else g) + weight_decay * p
    square_avg = alpha * _f64(square_avg) + (1.0 - alpha) * d * d
    if centered:
        grad_avg = alpha * _f64(grad_avg) + (1.0 - alpha) * d
        avg = np.sqrt(square_avg - grad_avg * grad_avg) + eps
    else:
        avg = np.sqrt(square_avg) + eps
    if momentum > 0:
        buf = momentum * _f64(buf) + d / avg
        p = p - lr * buf
    else:
        p = p - lr * d / avg
    return p, square_avg, grad_avg, buf


def adam(
    p, g, m, v, vmax, *, lr, beta1, beta2, eps, weight_decay, decoupled, amsgrad, step, maximize
):
    p, g = _f64(p), _f64(g)
    d = -g if maximize else g
    if decoupled:
        p = p * (1.0 - lr * weight_decay)
    else:
        d = d + weight_decay * p
    m = beta1 * _f64(m) + (1.0 - beta1) * d
    v = beta2 * _f64(v) + (1.0 - beta2) * d * d
    if amsgrad:
        vmax = np.maximum(_f64(vmax), v)
        vhat = vmax
    else:
        vhat = v
    mhat = m / (1.0 - beta1**step)
    denom = np.sqrt(vhat) / math.sqrt(1.0 - beta2**step) + eps
    return p - lr * mhat / denom, m, v, vmax
