"""The CUDA C kernels behind the autograd path's fused ops on a GPU.

``CudaOps(rt)`` has the signatures of ``gpunet.backend.base.Backend``'s fused ops;
``CupyBackend`` delegates to it with a ``CupyRuntime``, and tests run it with the host
runtime against the ``xp`` reference. Products go to the vendor BLAS (``rt.matmul``);
the kernels do the epilogues, the loss and the optimizer updates.
"""

from __future__ import annotations

import numpy as np

from gpunet.activations import get_activation
from gpunet.kernels.cuda import dense, loss_ops, optim_update


class CudaOps:
    def __init__(self, rt):
        self.rt, self.xp = rt, rt.xp

    def dense_forward(self, x, W, b, act: str):
        """``(y, saved)`` with ``y = act(x @ W.T + b)``; ``saved`` is ``z`` for GELU."""
        activation = get_activation(act)
        xp = self.xp
        y = xp.empty((x.shape[0], W.shape[0]), dtype=x.dtype)
        self.rt.matmul(x, W.T, y)
        z = xp.empty_like(y) if activation.saves_input else None
        dense.bias_act_forward(self.rt, y, b, activation.name, y, z)
        return y, (z if z is not None else y)

    def dense_backward(self, dy, x, W, saved, act: str, need_dx: bool = True):
        """``(dx or None, dW, db)``; the activation's derivative and ``db`` in one kernel."""
        xp = self.xp
        n, m = dy.shape
        dz = xp.empty_like(dy)
        db = xp.empty(m, dtype=dy.dtype)
        partial = xp.empty((dense.backward_scratch_rows(n), m), dtype=dy.dtype)
        dy = xp.ascontiguousarray(dy)
        saved = xp.ascontiguousarray(saved)
        dense.bias_act_backward(self.rt, dy, saved, get_activation(act).name, dz, db, partial)
        dW = xp.empty(W.shape, dtype=dy.dtype)
        self.rt.matmul(dz.T, x, dW)
        dx = None
        if need_dx:
            dx = xp.empty(x.shape, dtype=dy.dtype)
            self.rt.matmul(dz, W, dx)
        return dx, dW, db

    def softmax_cross_entropy(self, logits, target, label_smoothing=0.0, grad_scale=1.0):
        """``(losses (N,), dlogits (N, C))`` as ``Backend.softmax_cross_entropy``."""
        xp = self.xp
        n = logits.shape[0]
        logits = xp.ascontiguousarray(logits)
        target = xp.ascontiguousarray(target, dtype=np.int64)
        losses = xp.empty(n, dtype=logits.dtype)
        dlogits = xp.empty_like(logits)
        correct = xp.empty(n, dtype=np.int32)
        loss_ops.softmax_xent(
            self.rt, logits, target, label_smoothing, grad_scale, losses, dlogits, correct
        )
        return losses, dlogits

    def fused_update(self, optimizer_name: str):
        return optim_update.fused_update(self.rt, optimizer_name)
