"""The array layer: a ``Backend`` carries ``xp``, the device and the fused ops.

Every op here is the *reference*: written once against ``xp`` so it runs on NumPy and
CuPy alike. Subclasses override an op only where a hand-written kernel is faster
(thinc's ``Ops``/``NumpyOps``/``CupyOps`` pattern); tests compare each override with
the reference and with a float64 NumPy oracle.

Shapes: ``x`` (N, in), ``W`` (out, in) as in ``torch.nn.Linear``, ``b`` (out,) or None,
``y`` (N, out).
"""

from __future__ import annotations

import contextlib

import numpy as np

from gpunet.activations import get_activation


class Backend:
    """Base class; use :func:`gpunet.backend.get_backend` to obtain an instance."""

    name = "abstract"
    xp = np

    def __init__(self, device: str):
        self.device = device

    def __repr__(self) -> str:
        return f"{type(self).__name__}(device={self.device!r})"

    # ------------------------------------------------------------------ arrays
    def asarray(self, data, dtype=None):
        """Array on this device (copying only when needed)."""
        return self.xp.asarray(data, dtype=dtype)

    def to_numpy(self, array) -> np.ndarray:
        """A host NumPy array holding ``array``'s values."""
        return np.asarray(array)

    def is_native(self, array) -> bool:
        """True if ``array`` lives on this backend's device."""
        return isinstance(array, self.xp.ndarray)

    def synchronize(self) -> None:
        """Block until queued device work finishes (no-op on CPU)."""

    def training_context(self, flush_denormals: bool = True):
        """Context entered around a training run (denormal handling on CPU)."""
        return contextlib.nullcontext()

    def reference_ops(self):
        """Context within which this thread's ops run the ``xp`` reference math below, not
        compiled kernels: for a one-off computation too small to be worth loading them
        (such as the one-row shape probe before a fit)."""
        return contextlib.nullcontext()

    # ------------------------------------------------------------- fused ops
    def dense_forward(self, x, W, b, act: str):
        """``y = act(x @ W.T + b)``. Returns ``(y, saved)``; ``saved`` is what
        :meth:`dense_backward` needs (``y`` itself, or the pre-activation for GELU)."""
        activation = get_activation(act)
        z = x @ W.T
        if b is not None:
            z += b
        y = activation.forward(self.xp, z)
        return y, (z if activation.saves_input else y)

    def dense_backward(self, dy, x, W, saved, act: str, need_dx: bool = True):
        """Gradients of the dense layer. Returns ``(dx, dW, db)``: dx (N, in) or None
        when ``need_dx`` is False, dW (out, in), db (out,)."""
        dz = get_activation(act).backward(self.xp, dy, saved)
        db = dz.sum(axis=0)
        dW = dz.T @ x
        dx = dz @ W if need_dx else None
        return dx, dW, db

    def softmax_cross_entropy(
        self, logits, target, label_smoothing: float = 0.0, grad_scale: float = 1.0
    ):
        """Per-sample cross-entropy and its gradient in one pass.

        ``logits`` (N, C) float, ``target`` (N,) int class indices in [0, C).
        Returns ``(losses (N,), dlogits (N, C))`` with
        ``dlogits = grad_scale * (softmax(logits) - q)`` and
        ``q = (1 - s) * onehot(target) + s / C`` for smoothing ``s``.
        """
        xp = self.xp
        n, c = logits.shape
        shifted = logits - logits.max(axis=1, keepdims=True)
        exp = xp.exp(shifted)
        sumexp = exp.sum(axis=1, keepdims=True)
        logp = shifted - xp.log(sumexp)
        rows = xp.arange(n)
        nll = -logp[rows, target]
        if label_smoothing:
            s = label_smoothing
            losses = (1 - s) * nll - (s / c) * logp.sum(axis=1)
        else:
            losses = nll
        dlogits = exp / sumexp
        if label_smoothing:
            dlogits -= label_smoothing / c
            dlogits[rows, target] -= 1 - label_smoothing
        else:
            dlogits[rows, target] -= 1
        if grad_scale != 1.0:
            dlogits *= grad_scale
        return losses.astype(logits.dtype, copy=False), dlogits.astype(logits.dtype, copy=False)

    def epoch_context(self, batch_size: int):
        """Context manager around one training epoch in batches of ``batch_size`` (the
        CPU backend runs the small products of small batches on one BLAS thread)."""
        return contextlib.nullcontext()

    def fused_epoch_kernel(self):
        """The module of a compiled whole-epoch trainer for dense networks (with
        ``train_epoch``, ``workspace_size``, ``LOSS_CODES`` and ``hardware_flush_active``; see
        ``gpunet.train.fused``), or None when this backend has none."""
        return None

    def fused_update(self, optimizer_name: str):
        """A fast in-place update kernel for the named optimizer, or None to use the
        optimizer's ``xp`` reference. Kernels take the reference's exact signature."""
        return None
