"""Optimizer updates as in-place functions over arrays: the one reference of each.

Every function here is written once against ``xp`` (NumPy or CuPy) and follows the
order of operations of PyTorch's single-tensor implementation (``torch.optim.*``,
``foreach=False``), so float64 trajectories agree with PyTorch to rounding.

Shapes: ``p`` (the parameter), ``g`` (its gradient) and every state array have the
same shape, any shape including ``()``, and the same dtype (float32 or float64).
``p`` and the state arrays are updated in place; ``g`` is only read.

Hyperparameters are Python scalars. They are passed through ``float`` so that NumPy
scalars never upcast a float32 computation (NumPy treats Python floats as "weak").

A backend may replace any of these with a faster kernel of the *same signature*
(``Backend.fused_update(name)``); tests compare such kernels with these references.
"""

from __future__ import annotations

__all__ = ["adagrad_", "adam_", "rmsprop_", "sgd_"]


def _views(*arrays):
    """1-element views of 0-d arrays (NumPy ufuncs turn 0-d results into scalars,
    which cannot be updated in place); other arrays and None pass through."""
    return [a.reshape(1) if a is not None and a.ndim == 0 else a for a in arrays]


def _direction(xp, p, g, weight_decay: float, maximize: bool):
    """``(-g if maximize else g) + weight_decay * p``; returns ``g`` itself (which the
    caller must not write) when neither option applies, else a new array."""
    d = xp.negative(g) if maximize else g
    if weight_decay != 0:
        decay = xp.multiply(p, weight_decay)
        if d is g:
            d = xp.add(g, decay, out=decay)
        else:
            d += decay
    return d


def _lerp_(xp, a, b, weight: float) -> None:
    """``a <- a + weight * (b - a)`` in place, with torch's two-branch lerp formula."""
    diff = xp.subtract(b, a)
    if abs(weight) < 0.5:
        diff *= weight
        a += diff
    else:
        diff *= 1.0 - weight
        xp.subtract(b, diff, out=a)


def _addcmul_sq_(xp, acc, d, value: float) -> None:
    """``acc <- acc + value * d * d`` in place (torch's ``addcmul_(d, d, value=...)``)."""
    tmp = xp.multiply(d, value)
    tmp *= d
    acc += tmp


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
) -> None:
    """SGD with optional momentum, dampening, Nesterov and L2 weight decay.

    ``d = (-g if maximize else g) + weight_decay * p``; with ``momentum != 0``:
    ``buf = d`` on the first step (no dampening), else
    ``buf = momentum * buf + (1 - dampening) * d``, and the direction becomes
    ``d + momentum * buf`` (Nesterov) or ``buf``. Finally ``p -= lr * direction``.

    ``buf`` is None when ``momentum == 0``; otherwise an array shaped like ``p``
    (its contents are ignored when ``first_step`` is True).
    """
    p, g, buf = _views(p, g, buf)
    lr = float(lr)
    momentum = float(momentum)
    d = _direction(xp, p, g, float(weight_decay), maximize)
    if momentum != 0:
        if first_step:
            buf[...] = d
        else:
            buf *= momentum
            buf += xp.multiply(d, 1.0 - float(dampening))
        if nesterov:
            nest = xp.multiply(buf, momentum)
            d = xp.add(d, nest, out=nest)
        else:
            d = buf
    update = xp.multiply(d, lr)
    p -= update


def adagrad_(
    xp,
    p,
    g,
    state_sum,
    *,
    lr,
    lr_decay,
    weight_decay,
    eps,
    step,
    maximize,
) -> None:
    """Adagrad: ``d = (-g if maximize else g) + weight_decay * p``,
    ``clr = lr / (1 + (step - 1) * lr_decay)``, ``state_sum += d * d``,
    ``p -= clr * d / (sqrt(state_sum) + eps)``.

    ``state_sum`` is shaped like ``p``; ``step`` is the 1-based count of this update.
    """
    p, g, state_sum = _views(p, g, state_sum)
    d = _direction(xp, p, g, float(weight_decay), maximize)
    clr = float(lr) / (1 + (step - 1) * float(lr_decay))
    _addcmul_sq_(xp, state_sum, d, 1.0)
    std = xp.sqrt(state_sum)
    std += float(eps)
    xp.divide(d, std, out=std)
    std *= clr
    p -= std


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
) -> None:
    """RMSprop: ``d = (-g if maximize else g) + weight_decay * p``,
    ``square_avg = alpha * square_avg + (1 - alpha) * d * d``; centered:
    ``grad_avg = lerp(grad_avg, d, 1 - alpha)``, ``avg = sqrt(square_avg - grad_avg**2) + eps``,
    else ``avg = sqrt(square_avg) + eps`` (eps after the square root). With momentum:
    ``buf = momentum * buf + d / avg``, ``p -= lr * buf``; else ``p -= lr * d / avg``.

    All state arrays are shaped like ``p``; ``grad_avg`` is None unless ``centered``,
    ``momentum_buffer`` is None unless ``momentum > 0``.
    """
    p, g, square_avg, grad_avg, momentum_buffer = _views(
        p, g, square_avg, grad_avg, momentum_buffer
    )
    alpha = float(alpha)
    d = _direction(xp, p, g, float(weight_decay), maximize)
    square_avg *= alpha
    _addcmul_sq_(xp, square_avg, d, 1.0 - alpha)
    if centered:
        _lerp_(xp, grad_avg, d, 1.0 - alpha)
        avg = xp.multiply(grad_avg, grad_avg)
        xp.subtract(square_avg, avg, out=avg)
        xp.sqrt(avg, out=avg)
    else:
        avg = xp.sqrt(square_avg)
    avg += float(eps)
    xp.divide(d, avg, out=avg)  # avg now holds d / avg
    if momentum > 0:
        momentum_buffer *= float(momentum)
        momentum_buffer += avg
        update = xp.multiply(momentum_buffer, float(lr), out=avg)
    else:
        update = xp.multiply(avg, float(lr), out=avg)
    p -= update


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
) -> None:
    """Adam / AdamW (``decoupled=True``), optionally AMSGrad.

    ``d = -g if maximize else g``; weight decay: AdamW ``p *= 1 - lr * weight_decay``
    before the step, Adam ``d += weight_decay * p``. Then
    ``exp_avg = lerp(exp_avg, d, 1 - beta1)``,
    ``exp_avg_sq = beta2 * exp_avg_sq + (1 - beta2) * d * d``,
    AMSGrad: ``max_exp_avg_sq = max(max_exp_avg_sq, exp_avg_sq)`` (the raw second
    moment) used in place of ``exp_avg_sq`` below;
    ``bc1 = 1 - beta1**step``, ``bc2 = 1 - beta2**step``, ``step_size = lr / bc1``,
    ``denom = sqrt(exp_avg_sq) / sqrt(bc2) + eps``, ``p -= step_size * exp_avg / denom``.

    State arrays are shaped like ``p``; ``max_exp_avg_sq`` is None unless ``amsgrad``;
    ``step`` is the 1-based count of this update.
    """
    p, g, exp_avg, exp_avg_sq, max_exp_avg_sq = _views(p, g, exp_avg, exp_avg_sq, max_exp_avg_sq)
    lr = float(lr)
    beta1 = float(beta1)
    beta2 = float(beta2)
    weight_decay = float(weight_decay)
    if weight_decay != 0 and decoupled:
        p *= 1 - lr * weight_decay
        d = _direction(xp, p, g, 0.0, maximize)
    else:
        d = _direction(xp, p, g, weight_decay, maximize)
    _lerp_(xp, exp_avg, d, 1 - beta1)
    exp_avg_sq *= beta2
    _addcmul_sq_(xp, exp_avg_sq, d, 1 - beta2)

    bias_correction1 = 1 - beta1**step
    bias_correction2 = 1 - beta2**step
    step_size = lr / bias_correction1
    bias_correction2_sqrt = bias_correction2**0.5

    if amsgrad:
        xp.maximum(max_exp_avg_sq, exp_avg_sq, out=max_exp_avg_sq)
        denom = xp.sqrt(max_exp_avg_sq)
    else:
        denom = xp.sqrt(exp_avg_sq)
    denom /= bias_correction2_sqrt
    denom += float(eps)
    xp.divide(exp_avg, denom, out=denom)
    denom *= step_size
    p -= denom
