"""Differentiable functions on tensors: activations, the fused dense layer, softmax and
the losses. Each function here is one autograd node whose math comes from the backend
(the dense layer and cross-entropy) or from ``gpunet.activations``.
"""

from __future__ import annotations

import numpy as np

from gpunet.activations import LEAKY_RELU_SLOPE, get_activation
from gpunet.autograd import Tensor, _as_tensor, check_same_device, record

REDUCTIONS = ("mean", "sum", "none")


# ------------------------------------------------------------------ activations
def activation(x: Tensor, name: str) -> Tensor:
    """Apply the named activation elementwise (see ``gpunet.activations``)."""
    act = get_activation(name)
    xp = x.backend.xp
    y = act.forward(xp, x.data)
    saved = x.data if act.saves_input else y
    return record(y, (x,), lambda g: (act.backward(xp, g, saved),), act.name)


def relu(x: Tensor) -> Tensor:
    return activation(x, "relu")


def leaky_relu(x: Tensor, negative_slope: float = LEAKY_RELU_SLOPE) -> Tensor:
    if negative_slope == LEAKY_RELU_SLOPE:
        return activation(x, "leaky_relu")
    xp = x.backend.xp
    slope = x.dtype.type(negative_slope)
    positive = x.data > 0
    out = xp.where(positive, x.data, x.data * slope)
    return record(out, (x,), lambda g: (xp.where(positive, g, g * slope),), "leaky_relu")


def sigmoid(x: Tensor) -> Tensor:
    return activation(x, "sigmoid")


def tanh(x: Tensor) -> Tensor:
    return activation(x, "tanh")


def gelu(x: Tensor) -> Tensor:
    return activation(x, "gelu")


def softmax(x: Tensor, axis: int = -1) -> Tensor:
    xp = x.backend.xp
    e = xp.exp(x.data - x.data.max(axis=axis, keepdims=True))
    y = e / e.sum(axis=axis, keepdims=True)

    def backward(g):
        return (y * (g - (g * y).sum(axis=axis, keepdims=True)),)

    return record(y, (x,), backward, "softmax")


def log_softmax(x: Tensor, axis: int = -1) -> Tensor:
    xp = x.backend.xp
    shifted = x.data - x.data.max(axis=axis, keepdims=True)
    out = shifted - xp.log(xp.exp(shifted).sum(axis=axis, keepdims=True))

    def backward(g):
        return (g - xp.exp(out) * g.sum(axis=axis, keepdims=True),)

    return record(out, (x,), backward, "log_softmax")


# ---------------------------------------------------------------- dense layer
def dense(x: Tensor, weight: Tensor, bias: Tensor | None = None, activation="linear") -> Tensor:
    """Fused ``act(x @ weight.T + bias)``: one autograd node calling the backend's
    ``dense_forward`` / ``dense_backward``.

    Shapes: x (N, in), weight (out, in), bias (out,) or None; returns (N, out).
    """
    act = get_activation(activation).name
    parents = (x, weight) if bias is None else (x, weight, bias)
    backend = check_same_device(*parents)
    if x.ndim != 2:
        raise ValueError(f"dense layer expects a 2-D input (batch, features), got shape {x.shape}")
    if x.shape[1] != weight.shape[1]:
        raise ValueError(
            f"dense layer expects {weight.shape[1]} input features, got {x.shape[1]} "
            f"(input shape {x.shape})"
        )
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and t.dtype != x.dtype:
            raise TypeError(
                f"dtype mismatch: input is {x.dtype} but {name} is {t.dtype}; "
                f"convert the input with .to(dtype=...) or the model with .to(dtype=...)"
            )
    y, saved = backend.dense_forward(x.data, weight.data, None if bias is None else bias.data, act)

    def backward(g):
        dx, dW, db = backend.dense_backward(
            g, x.data, weight.data, saved, act, need_dx=x.requires_grad
        )
        return (dx, dW) if bias is None else (dx, dW, db)

    return record(y, parents, backward, f"dense[{act}]")


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    return dense(x, weight, bias, "linear")


# ---------------------------------------------------------------------- losses
def _check_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def _check_class_targets(logits: Tensor, target: Tensor, what: str) -> None:
    if logits.ndim != 2:
        raise ValueError(f"{what} expects input of shape (N, C), got {logits.shape}")
    if target.dtype.kind not in "iu":
        raise TypeError(f"{what} expects integer class-index targets, got dtype {target.dtype}")
    if target.shape != (logits.shape[0],):
        raise ValueError(
            f"{what}: target shape {target.shape} does not match batch size "
            f"{logits.shape[0]} (expected ({logits.shape[0]},))"
        )
    if target.data.size:
        lo, hi = int(target.data.min()), int(target.data.max())
        if lo < 0 or hi >= logits.shape[1]:
            bad = lo if lo < 0 else hi
            raise ValueError(
                f"{what}: label {bad} out of range for {logits.shape[1]} classes "
                f"(labels must be in [0, {logits.shape[1] - 1}])"
            )


def _reduce(losses, grad, input: Tensor, reduction: str, name: str) -> Tensor:
    """Wrap a loss: ``losses`` per sample (N,) or per element (input's shape), and
    ``grad``, the gradient of each loss w.r.t. ``input`` (input's shape), reduced by
    ``reduction``. An upstream gradient of ``losses``' shape ('none') is broadcast over
    ``grad``'s trailing axes."""
    n = losses.size
    if reduction == "mean":
        return record(losses.mean(), (input,), lambda g: (grad * (g / max(n, 1)),), name)
    if reduction == "sum":
        return record(losses.sum(), (input,), lambda g: (grad * g,), name)
    trailing = (1,) * (grad.ndim - losses.ndim)
    return record(losses, (input,), lambda g: (grad * g.reshape(g.shape + trailing),), name)


def cross_entropy(
    logits: Tensor, target, reduction: str = "mean", label_smoothing: float = 0.0
) -> Tensor:
    """Softmax cross-entropy with class-index targets; softmax and log fused.

    logits (N, C) float, target (N,) int in [0, C). Matches ``torch.nn.functional.
    cross_entropy`` (no class weights, no ignore_index).
    """
    _check_reduction(reduction)
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
    target = _as_target(target, logits)
    _check_class_targets(logits, target, "cross_entropy")
    losses, dlogits = logits.backend.softmax_cross_entropy(
        logits.data, target.data, label_smoothing=label_smoothing
    )
    return _reduce(losses, dlogits, logits, reduction, "cross_entropy")


def nll_loss(log_probs: Tensor, target, reduction: str = "mean") -> Tensor:
    """Negative log-likelihood of class-index targets given log-probabilities (N, C)."""
    _check_reduction(reduction)
    target = _as_target(target, log_probs)
    _check_class_targets(log_probs, target, "nll_loss")
    xp = log_probs.backend.xp
    rows = xp.arange(log_probs.shape[0])
    losses = -log_probs.data[rows, target.data]
    grad = xp.zeros_like(log_probs.data)
    grad[rows, target.data] = -1
    return _reduce(losses, grad, log_probs, reduction, "nll_loss")


def _check_same_shape(input: Tensor, target: Tensor, what: str) -> None:
    if input.shape != target.shape:
        raise ValueError(
            f"{what}: input shape {input.shape} and target shape {target.shape} differ"
        )


def mse_loss(input: Tensor, target, reduction: str = "mean") -> Tensor:
    """Mean squared error; input and target have the same shape."""
    _check_reduction(reduction)
    target = _as_tensor(target, input)
    _check_same_shape(input, target, "mse_loss")
    check_same_device(input, target)
    diff = input - target
    sq = diff * diff
    if reduction == "mean":
        return sq.mean()
    if reduction == "sum":
        return sq.sum()
    return sq


def binary_cross_entropy_with_logits(input: Tensor, target, reduction: str = "mean") -> Tensor:
    """``-(t log sigmoid(x) + (1-t) log(1-sigmoid(x)))`` computed stably from logits."""
    _check_reduction(reduction)
    target = _as_tensor(target, input)
    _check_same_shape(input, target, "binary_cross_entropy_with_logits")
    xp = input.backend.xp
    x, t = input.data, target.data.astype(input.dtype, copy=False)
    losses = xp.maximum(x, 0) - x * t + xp.log1p(xp.exp(-xp.abs(x)))
    grad = get_activation("sigmoid").forward(xp, x) - t
    return _reduce(losses, grad, input, reduction, "bce_with_logits")


def binary_cross_entropy(input: Tensor, target, reduction: str = "mean") -> Tensor:
    """BCE on probabilities in [0, 1]; logs are clamped at -100 like PyTorch."""
    _check_reduction(reduction)
    target = _as_tensor(target, input)
    _check_same_shape(input, target, "binary_cross_entropy")
    xp = input.backend.xp
    p, t = input.data, target.data.astype(input.dtype, copy=False)
    if p.size and (float(p.min()) < 0 or float(p.max()) > 1):
        raise ValueError("binary_cross_entropy: input probabilities must lie in [0, 1]")
    with np.errstate(divide="ignore"):
        log_p = xp.maximum(xp.log(p), -100)
        log_1p = xp.maximum(xp.log1p(-p), -100)
    losses = -(t * log_p + (1 - t) * log_1p)
    grad = (p - t) / xp.maximum(p * (1 - p), p.dtype.type(1e-12))
    return _reduce(losses, grad, input, reduction, "bce")


def _as_target(target, like: Tensor) -> Tensor:
    if isinstance(target, Tensor):
        check_same_device(like, target)
        return target
    array = like.backend.asarray(target)
    return Tensor._wrap(array, like.backend)


# --------------------------------------------------------------- regularization
def dropout_with_mask(x: Tensor, scale) -> Tensor:
    """``x * scale``: inverted dropout given its multiplier ``scale`` (an array of x's
    shape, dtype and device: ``keep / (1 - p)``); the gradient is ``g * scale``."""
    if tuple(scale.shape) != x.shape:
        raise ValueError(f"dropout mask shape {tuple(scale.shape)} != input shape {x.shape}")
    return record(x.data * scale, (x,), lambda g: (g * scale,), "dropout")


def dropout(
    x: Tensor, p: float = 0.5, training: bool = True, *, seed: int | None = None, counter: int = 0
) -> Tensor:
    """Inverted dropout (``torch.nn.functional.dropout``): in training each element is
    zeroed with probability ``p`` and the survivors scaled by ``1 / (1 - p)``; otherwise
    (or with ``p == 0``) ``x`` itself. The mask is
    ``gpunet.counter_rng.keep_mask(shape, p, seed, counter)``; ``seed`` None draws one
    from gpunet's global generator. Shapes: any; returns x's shape."""
    from gpunet import counter_rng  # noqa: PLC0415

    p = counter_rng.check_probability(p)
    if not training or p == 0.0:
        return x
    if seed is None:
        seed = counter_rng.new_seed()
    xp = x.backend.xp
    return dropout_with_mask(x, counter_rng.scaled_mask(xp, x.shape, p, seed, counter, x.dtype))


def _batch_norm_axes(x: Tensor, num_features: int | None = None) -> tuple:
    """Reduction axes of batch normalization for x (N, C) or (N, C, L); checks C."""
    if x.ndim not in (2, 3):
        raise ValueError(f"batch_norm expects a 2-D (N, C) or 3-D (N, C, L) input, got {x.shape}")
    if num_features is not None and x.shape[1] != num_features:
        raise ValueError(
            f"batch_norm expects {num_features} features (channels) in dim 1, got "
            f"{x.shape[1]} (input shape {x.shape})"
        )
    return (0,) if x.ndim == 2 else (0, 2)


def batch_norm(
    x: Tensor,
    running_mean=None,
    running_var=None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    training: bool = False,
    momentum: float | None = 0.1,
    eps: float = 1e-5,
    num_batches_tracked=None,
) -> Tensor:
    """Batch normalization over x (N, C) or (N, C, L), per channel C (like
    ``torch.nn.functional.batch_norm``).

    ``training`` (or no running statistics): normalize by the batch's mean and biased
    variance over N (and L), and update ``running_mean``/``running_var`` (arrays (C,),
    in place) to ``(1 - momentum) * running + momentum * batch`` with the *unbiased*
    batch variance; ``momentum`` None uses the cumulative average
    ``1 / num_batches_tracked`` (``num_batches_tracked``, a 0-d int array, is
    incremented in place). Otherwise normalize by the running statistics. Then
    ``y = weight * x_hat + bias`` (weight, bias (C,) or None). Raises ValueError in
    training when a channel has a single value (PyTorch's rule)."""
    axes = _batch_norm_axes(x)
    xp = x.backend.xp
    shape = (1, x.shape[1]) + (1,) * (x.ndim - 2)  # broadcasts a (C,) array over x
    parents = tuple(t for t in (x, weight, bias) if t is not None)
    check_same_device(*parents)
    for name, t in (("weight", weight), ("bias", bias), ("running_mean", running_mean)):
        if t is not None and t.dtype != x.dtype:
            raise TypeError(
                f"dtype mismatch: input is {x.dtype} but {name} is {t.dtype}; convert the "
                f"input or the model with .to(dtype=...)"
            )
    use_batch = training or running_mean is None
    count = x.data.size // x.shape[1]
    if training and count <= 1:
        raise ValueError(
            f"Expected more than 1 value per channel when training, got input size {x.shape}"
        )
    if use_batch:
        mean = x.data.mean(axis=axes)
        centered = x.data - mean.reshape(shape)
        var = (centered * centered).mean(axis=axes)
        if training and running_mean is not None:
            if num_batches_tracked is not None:
                num_batches_tracked[...] += 1
            factor = momentum if momentum is not None else 1.0 / float(num_batches_tracked.item())
            running_mean[...] = (1 - factor) * running_mean + factor * mean
            running_var[...] = (1 - factor) * running_var + factor * var * (count / (count - 1))
    else:
        mean, var = running_mean, running_var
        centered = x.data - mean.reshape(shape)
    invstd = (1 / xp.sqrt(var + x.dtype.type(eps))).astype(x.dtype, copy=False)
    x_hat = centered * invstd.reshape(shape)
    y = x_hat if weight is None else x_hat * weight.data.reshape(shape)
    if bias is not None:
        y = y + bias.data.reshape(shape)

    def backward(g):
        dx_hat = g if weight is None else g * weight.data.reshape(shape)
        if use_batch:  # x_hat depends on x through the batch mean and variance too
            mean_dx_hat = dx_hat.mean(axis=axes).reshape(shape)
            mean_dx_hat_x_hat = (dx_hat * x_hat).mean(axis=axes).reshape(shape)
            dx = (dx_hat - mean_dx_hat - x_hat * mean_dx_hat_x_hat) * invstd.reshape(shape)
        else:
            dx = dx_hat * invstd.reshape(shape)
        grads = [dx]
        if weight is not None:
            grads.append((g * x_hat).sum(axis=axes))
        if bias is not None:
            grads.append(g.sum(axis=axes))
        return tuple(grads)

    return record(y, parents, backward, "batch_norm")
