"""A dense network's training step as a sequence of CUDA C kernel launches, written once
for any ``KernelRuntime`` (a GPU through CuPy, or the CPU through the host build).

One step over a batch of ``rows`` rows (nothing allocated, nothing read back, so the
step can be captured once into a CUDA graph and replayed):

1. ``gather_batch``: the batch's rows of ``X`` and their labels/targets, the rows
   ``order[cursor : cursor + rows]`` (``cursor`` lives on the device);
2. per layer (a DropConnectDense layer's ``W`` being its masked copy ``W * mask``, drawn
   by ``dropout_keyed`` at the step's start): ``y = act(a @ W.T + b)`` (``gemm`` with
   the bias/activation epilogue; or ``rt.matmul`` and ``bias_act_forward`` on the cuBLAS
   route); a layer a Dropout follows then writes ``out = y * mask`` (``dropout_keyed``,
   the key read from the device), keeping ``y`` for the activation's derivative;
3. the loss and its gradient (``softmax_xent`` / ``mse``), then ``accumulate_loss`` adds
   the batch's term to the epoch's device-side loss sum and correct count and moves the
   cursor on;
4. per layer, last first: ``dW = dz.T @ a`` with ``db`` folded into the same pass (then
   through the DropConnect mask), and ``dx = dz @ W`` whose epilogue turns it into the
   layer below's ``dz``; the output gradient of a layer a Dropout follows goes through
   the same mask (on the cuBLAS route and for the last layer before the activation's
   derivative, on the gemm route after its epilogue: the same products in another
   order);
5. ``update_all``: every parameter's optimizer update in one launch, then the step
   counters; with masks, ``dropout_advance`` moves every mask counter on (so a captured
   step's replays draw the autograd layers' masks of step after step).

Routes: ``"kernels"`` runs every product in gemm.cu (the only route a CUDA graph can
hold, since CuPy cannot capture cuBLAS); ``"blas"`` runs them through ``rt.matmul``
(cuBLAS) with the same epilogue kernels, eagerly.

Shapes: ``X`` (N, F) and ``targets`` (N, C) in the parameters' dtype, ``labels`` (N,)
int64; ``P``/``G``/``S*`` flat (T,) buffers laid out by ``param_table`` (K, 2:
offset, size); ``layers``: L ``Layer``s ``(in, out, weight index, bias index or -1, act,
dropout, dropconnect)``; ``keys``: a ``dropout_ops.KeyTable`` of 2L rows (row ``l``: the
Dropout after layer ``l``; row ``L + l``: layer ``l``'s DropConnect) when some layer has
either.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gpunet.kernels.cuda import dense, dropout_ops, loss_ops, optim_update

CROSS_ENTROPY, MSE = "cross_entropy", "mse"


@dataclass(frozen=True)
class Layer:
    n_in: int
    n_out: int
    weight: int  # parameter index of W (out, in)
    bias: int  # parameter index of b (out,), or -1
    act: str  # activation name
    dropout: bool = False  # a Dropout follows the layer
    dropconnect: bool = False  # the layer is a DropConnectDense


@dataclass(frozen=True)
class LossSpec:
    kind: str  # CROSS_ENTROPY or MSE
    mean: bool  # reduction "mean" (else "sum")
    smoothing: float = 0.0


@dataclass
class Optimizer:
    """The multi-tensor update's inputs on the device."""

    kind: int  # update_rules.OPTIMIZER_CODES
    param_table: object  # (K, 2) int64
    H: object  # (K, N_HYPER) float64 hyper rows
    steps: object  # (K,) int64
    firsts: object  # (K,) int64


class Workspace:
    """Every buffer of a step of ``rows`` rows, allocated once (before any capture)."""

    def __init__(self, xp, layers, rows: int, dtype, loss: LossSpec):
        self.rows = rows
        self.x = xp.empty((rows, layers[0].n_in), dtype)
        n_out = layers[-1].n_out
        self.labels = xp.empty(rows, np.int64) if loss.kind == CROSS_ENTROPY else None
        self.targets = xp.empty((rows, n_out), dtype) if loss.kind == MSE else None
        self.y = [xp.empty((rows, lay.n_out), dtype) for lay in layers]
        self.z = [
            xp.empty((rows, lay.n_out), dtype) if lay.act == "gelu" else None for lay in layers
        ]
        # what the next layer (or the loss) reads: y, or y through the dropout mask
        self.out = [
            xp.empty((rows, lay.n_out), dtype) if lay.dropout else y
            for lay, y in zip(layers, self.y)
        ]
        self.dz = [xp.empty((rows, lay.n_out), dtype) for lay in layers]
        # a DropConnect layer's weight through this step's mask (out, in)
        self.masked_w = [
            xp.empty((lay.n_out, lay.n_in), dtype) if lay.dropconnect else None for lay in layers
        ]
        self.losses = xp.empty(rows, dtype)
        self.correct = xp.zeros(rows, np.int32)
        widest = max(lay.n_out for lay in layers)
        self._partial = xp.empty(dense.backward_scratch_rows(rows) * widest, dtype)
        self.db_scratch = xp.empty(widest, dtype)  # the bias gradient of a layer without bias
        self._dx = xp.empty(rows * max(lay.n_in for lay in layers), dtype)

    def partial(self, width: int):
        """The bias gradient's per-chunk scratch for a layer ``width`` wide (contiguous)."""
        chunks = dense.backward_scratch_rows(self.rows)
        return self._partial[: chunks * width].reshape(chunks, width)

    def dx(self, width: int):
        """A (rows, width) C-contiguous scratch for ``dz @ W`` on the BLAS route."""
        return self._dx[: self.rows * width].reshape(self.rows, width)

    def saved(self, layer_index: int):
        """What layer ``l``'s backward reads: its pre-activation for GELU, else its output."""
        z = self.z[layer_index]
        return self.y[layer_index] if z is None else z


class EpochState:
    """The device-side counters of an epoch: the batch cursor, the loss sum (float64),
    the correct count and the row offset of the first step whose loss was not finite
    (-1: none)."""

    def __init__(self, xp):
        self.cursor = xp.zeros(1, np.int64)
        self.loss_sum = xp.zeros(1, np.float64)
        self.correct = xp.zeros(1, np.int64)
        self.first_bad = xp.full(1, -1, np.int64)

    def reset(self):
        for a in (self.cursor, self.loss_sum, self.correct):
            a.fill(0)
        self.first_bad.fill(-1)


class FusedStep:
    """The step sequence for one network, bound to its flat buffers (module docstring)."""

    def __init__(
        self, rt, layers, P, G, S, optimizer: Optimizer, loss: LossSpec, param_table, keys=None
    ):
        self.rt, self.layers, self.loss, self.keys = rt, list(layers), loss, keys
        if keys is None and any(lay.dropout or lay.dropconnect for lay in self.layers):
            raise ValueError("layers with dropout or DropConnect need a dropout_ops.KeyTable")
        self.P, self.G, self.S, self.opt = P, G, list(S), optimizer
        self.param_table = np.asarray(param_table)

    def _param(self, buffer, k, shape):
        off, size = (int(v) for v in self.param_table[k])
        return buffer[off : off + size].reshape(shape)

    def _weight(self, ws: Workspace, l: int):
        """The weight layer ``l`` multiplies by this step: its own, or the masked copy."""
        lay = self.layers[l]
        if lay.dropconnect:
            return ws.masked_w[l]
        return self._param(self.P, lay.weight, (lay.n_out, lay.n_in))

    def step(self, ws: Workspace, data, order, epoch: EpochState, route: str = "kernels"):
        """Launch one training step of ``ws.rows`` rows (see the module docstring).
        ``data``: ``(X, labels, targets)`` on the device (one of labels/targets None);
        ``order``: (N,) int64 on the device, or None for the rows in order."""
        rt = self.rt
        X, labels, targets = data
        loss_ops.gather_batch(
            rt, X, order, epoch.cursor, ws.x, labels, ws.labels, targets, ws.targets
        )
        n_layers = len(self.layers)
        for l, lay in enumerate(self.layers):
            if lay.dropconnect:
                W = self._param(self.P, lay.weight, (lay.n_out, lay.n_in))
                dropout_ops.dropout_keyed(rt, W, ws.masked_w[l], self.keys, n_layers + l)
        a = ws.x
        for l, lay in enumerate(self.layers):
            W = self._weight(ws, l)
            b = None if lay.bias < 0 else self._param(self.P, lay.bias, (lay.n_out,))
            if route == "kernels":
                dense.gemm(
                    rt, a, W.T, ws.y[l], epilogue=dense.EPI_BIAS_ACT, act=lay.act,
                    bias=b, z_out=ws.z[l],
                )  # fmt: skip
            else:
                rt.matmul(a, W.T, ws.y[l])
                dense.bias_act_forward(rt, ws.y[l], b, lay.act, ws.y[l], ws.z[l])
            if lay.dropout:
                dropout_ops.dropout_keyed(rt, ws.y[l], ws.out[l], self.keys, l)
            a = ws.out[l]
        self._loss(ws, epoch)
        self._backward(ws, route)
        optim_update.update_all(
            rt, self.opt.kind, self.opt.param_table, self.opt.H, self.opt.steps,
            self.opt.firsts, self.P, self.G, *self.S, self.S[1].size != 0, self.S[2].size != 0,
        )  # fmt: skip
        if self.keys is not None:
            dropout_ops.dropout_advance(rt, self.keys)

    def _loss(self, ws: Workspace, epoch: EpochState):
        rt, rows, last = self.rt, ws.rows, len(self.layers) - 1
        out, grad = ws.out[last], ws.dz[last]
        scale, weight = loss_ops.loss_scales(
            self.loss.kind, "mean" if self.loss.mean else "sum", rows, out.shape[1], out.dtype
        )
        if self.loss.kind == CROSS_ENTROPY:
            loss_ops.softmax_xent(
                rt, out, ws.labels, self.loss.smoothing, scale, ws.losses, grad, ws.correct
            )
        else:
            loss_ops.mse(rt, out, ws.targets, scale, ws.losses, grad, ws.correct)
        loss_ops.accumulate_loss(
            rt, ws.losses, ws.correct, weight, epoch.loss_sum, epoch.correct, epoch.cursor, rows,
            epoch.first_bad,
        )  # fmt: skip

    def _backward(self, ws: Workspace, route: str):
        rt, layers = self.rt, self.layers
        last = len(layers) - 1
        lay = layers[last]
        db_last = None if lay.bias < 0 else self._param(self.G, lay.bias, (lay.n_out,))
        if lay.dropout:  # d(loss)/d(masked output) -> d(loss)/dy
            dropout_ops.dropout_keyed(rt, ws.dz[last], ws.dz[last], self.keys, last)
        # the loss gave d(loss)/dy of the last layer; through its activation to dz (the
        # bias gradient comes with it on the BLAS route, or when there is an activation)
        fold_db = route == "kernels" and lay.act == "linear"
        if not fold_db:
            db = db_last if db_last is not None else ws.db_scratch[: lay.n_out]
            dense.bias_act_backward(
                rt, ws.dz[last], ws.saved(last), lay.act, ws.dz[last], db,
                ws.partial(lay.n_out),
            )  # fmt: skip
        for l in range(last, -1, -1):
            lay = layers[l]
            a = ws.x if l == 0 else ws.out[l - 1]
            dW = self._param(self.G, lay.weight, (lay.n_out, lay.n_in))
            db = None if lay.bias < 0 else self._param(self.G, lay.bias, (lay.n_out,))
            W = self._weight(ws, l)
            if route == "kernels":
                rowsum = db if (l < last or fold_db) else None
                dense.gemm(rt, ws.dz[l].T, a, dW, rowsum=rowsum)
                self._mask_weight_grad(dW, l)
                if l > 0:
                    below = layers[l - 1]
                    dense.gemm(
                        rt, ws.dz[l], W, ws.dz[l - 1], epilogue=dense.EPI_ACT_BACKWARD,
                        act=below.act, saved=ws.saved(l - 1),
                    )  # fmt: skip
                    if below.dropout:
                        dz = ws.dz[l - 1]
                        dropout_ops.dropout_keyed(rt, dz, dz, self.keys, l - 1)
            else:
                rt.matmul(ws.dz[l].T, a, dW)
                self._mask_weight_grad(dW, l)
                if l > 0:
                    below = layers[l - 1]
                    dx = ws.dx(below.n_out)
                    rt.matmul(ws.dz[l], W, dx)
                    if below.dropout:
                        dropout_ops.dropout_keyed(rt, dx, dx, self.keys, l - 1)
                    db_below = (
                        ws.db_scratch[: below.n_out]
                        if below.bias < 0
                        else self._param(self.G, below.bias, (below.n_out,))
                    )
                    dense.bias_act_backward(
                        rt, dx, ws.saved(l - 1), below.act, ws.dz[l - 1], db_below,
                        ws.partial(below.n_out),
                    )  # fmt: skip

    def _mask_weight_grad(self, dW, l: int):
        """DropConnect: the gradient reaching layer ``l``'s weight through its mask."""
        if self.layers[l].dropconnect:
            dropout_ops.dropout_keyed(self.rt, dW, dW, self.keys, len(self.layers) + l)
