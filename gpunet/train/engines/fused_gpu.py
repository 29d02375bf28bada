"""The GPU fused engine: a dense ``Sequential``'s training steps as CUDA C kernels.

The data moves to the device once per fit (``prepare``). Each epoch copies its
permutation into a device buffer, and every step runs gather -> forward -> loss ->
backward -> update (``gpunet.kernels.cuda.fused_mlp``) with no host synchronisation:
the epoch's loss sum and correct count accumulate on the device and are read once.

Routes (``route``): ``"kernels"`` runs every product in gpunet's own GEMM kernel; on a
GPU each batch shape's step is captured once as a CUDA graph (one for the full batches,
one for the partial last batch) and replayed. ``"blas"`` runs the products through
cuBLAS (``cupy.matmul``) with the same epilogue kernels, eagerly; CuPy cannot capture
cuBLAS. ``None`` picks by batch size (:func:`choose_route`). TF32 stays off unless the
user sets ``CUPY_TF32=1``.

Dropout after a layer's activation and DropConnectDense run in the step (the masked
weight in both products, ``dW`` through the mask): each mask's seed, counter,
threshold and scale live in a device table (``dropout_ops.KeyTable``, loaded from the
``Dropout`` modules every epoch), the masks are drawn from it in the kernels and the
step ends by advancing the counters on the device, so a captured graph's replays draw
the masks the autograd layers draw at those steps; ``write_back`` copies the counters
back to the modules.

The same engine runs on the CPU through the host build of the kernels
(``runtime=HostRuntime()``), which is how tests prove its step sequence without a GPU.
"""

from __future__ import annotations

import contextlib
import os

import numpy as np

from gpunet.kernels.cpu.update_rules import N_HYPER, OPTIMIZER_CODES
from gpunet.kernels.cuda import dropout_ops, fused_mlp
from gpunet.losses import CrossEntropyLoss
from gpunet.train.engines.base import Engine
from gpunet.train.engines.qualify import FlatState, dense_layers

#: batches of at least this many rows take the cuBLAS route by default; a first guess
#: until ``benchmarks/gpu_check.sh`` measures the crossover on a GPU
#: (``GPUNET_GPU_ROUTE=kernels|blas`` forces one route)
BLAS_MIN_ROWS = 1024


def choose_route(rows: int, runtime) -> str:
    forced = os.environ.get("GPUNET_GPU_ROUTE")
    if forced:
        if forced not in ("kernels", "blas"):
            raise ValueError(f"GPUNET_GPU_ROUTE must be 'kernels' or 'blas', not {forced!r}")
        return forced
    return "blas" if rows >= BLAS_MIN_ROWS else "kernels"


class FusedGpuEngine(Engine):
    """See the module docstring. ``runtime``: a ``KernelRuntime`` (default: CuPy on the
    model's device); ``route``: "kernels", "blas" or None (by batch size); ``graphs``:
    capture the "kernels" route into CUDA graphs (only where the runtime can)."""

    name = "fused"
    whole_epochs = True
    runs_dropout = True
    runs_dropconnect = True

    def __init__(
        self,
        model,
        loss,
        optimizer,
        track_accuracy: bool,
        flush_denormals: bool = True,
        workspace_cache=None,
        *,
        runtime=None,
        route: str | None = None,
        graphs: bool = True,
    ):
        self.backend = next(model.parameters()).backend
        if runtime is None:
            from gpunet.kernels.cuda.runtime import CupyRuntime  # noqa: PLC0415

            runtime = CupyRuntime(self.backend.index)
        self.rt, self.xp = runtime, runtime.xp
        self.model, self.loss, self.optimizer = model, loss, optimizer
        self.track_accuracy = track_accuracy
        self.fixed_route, self.use_graphs = route, graphs
        self.dropouts = {}  # layer index -> the Dropout module after it
        self.dropconnects = {}  # layer index -> the layer, a DropConnectDense
        pairs = dense_layers(model, self.dropouts, self.dropconnects)
        self.state = FlatState(model, optimizer, pairs, self.xp, self.dropouts, self.dropconnects)
        table = self.state.layer_table
        self.layers = [
            fused_mlp.Layer(int(r[0]), int(r[1]), int(r[2]), int(r[3]), act, bool(r[5]), bool(r[6]))
            for r, (_, act) in zip(table, pairs)
        ]
        # the key table's rows: l the Dropout after layer l, L + l layer l's DropConnect
        L = len(self.layers)
        self.masked = {**self.dropouts, **{L + l: m for l, m in self.dropconnects.items()}}
        self.keys = dropout_ops.KeyTable(self.xp, 2 * L, self.state.dtype) if self.masked else None
        ce = isinstance(loss, CrossEntropyLoss)
        self.loss_spec = fused_mlp.LossSpec(
            fused_mlp.CROSS_ENTROPY if ce else fused_mlp.MSE,
            loss.reduction == "mean",
            float(getattr(loss, "label_smoothing", 0.0)) if ce else 0.0,
        )
        K = len(self.state.params)
        xp = self.xp
        self.device_opt = fused_mlp.Optimizer(
            OPTIMIZER_CODES[self.state.opt_name],
            xp.asarray(self.state.param_table),
            xp.zeros((K, N_HYPER), np.float64),
            xp.zeros(K, np.int64),
            xp.zeros(K, np.int64),
        )
        self.epoch = fused_mlp.EpochState(xp)
        self._graphs: dict = {}
        self._graph_key = None
        self.data = None

    # ------------------------------------------------------------------ fit
    def prepare(self, X, y, batch_size: int) -> None:
        xp, fm = self.xp, fused_mlp
        n = X.shape[0]
        X = xp.ascontiguousarray(X.reshape(n, -1))
        if self.loss_spec.kind == fm.CROSS_ENTROPY:
            data = (X, xp.ascontiguousarray(y, dtype=np.int64), None)
        else:
            data = (X, None, xp.ascontiguousarray(y.reshape(n, -1), dtype=X.dtype))
        rows = {min(batch_size, n)}
        if n % batch_size and batch_size < n:
            rows.add(n % batch_size)
        self.route = self.fixed_route or choose_route(min(batch_size, n), self.rt)
        with _out_of_memory_hint(self.rt, batch_size):
            self.workspaces = {
                r: fm.Workspace(xp, self.layers, r, self.state.dtype, self.loss_spec) for r in rows
            }
            self.order = xp.empty(n, np.int64)
        self.data, self.batch_size, self.n = data, min(batch_size, n), n
        self._graphs.clear()

    def run_epoch(self, order=None, on_batch_end=None, control=None):
        """See :meth:`Engine.run_epoch`. A stop request is checked between steps (graph
        replays). A non-finite step is found on the device (``EpochState.first_bad``)
        and reported after the epoch, which runs to its end: the flat copies are
        discarded then, as ``write_back`` is not called."""
        if self.data is None:
            raise RuntimeError("call prepare(X, y, batch_size) before run_epoch")
        xp, rt = self.xp, self.rt
        H, steps, firsts = self.state.load()
        opt = self.device_opt
        for device, host in ((opt.H, H), (opt.steps, steps), (opt.firsts, firsts)):
            device[...] = self.backend.asarray(host)
        if order is not None:
            self.order[...] = xp.asarray(order, dtype=np.int64)
        if self.keys is not None:
            self.keys.load(self.masked)
        self.epoch.reset()
        step = fused_mlp.FusedStep(
            rt, self.layers, self.state.P, self.state.G, self.state.S, opt, self.loss_spec,
            self.state.param_table, self.keys,
        )  # fmt: skip
        # graphs hold the buffers' addresses: recapture when the optimizer's state slots
        # were reallocated (hyperparameters changed which slots are used)
        key = tuple(id(s) for s in self.state.S)
        if key != self._graph_key:
            self._graphs.clear()
            self._graph_key = key
        full, rest = divmod(self.n, self.batch_size)
        order_arg = None if order is None else self.order
        done = 0
        for rows, count in ((self.batch_size, full), (rest, 1 if rest else 0)):
            if count:
                run = self._runner(step, rows, order_arg)
                for _ in range(count):
                    if control is not None and control.stop_requested:
                        break
                    run()
                    done += 1
        to_host = self.backend.to_numpy
        if control is not None:
            bad_row = int(to_host(self.epoch.first_bad)[0])
            control.array[control.STEPS] = done
            if bad_row >= 0:
                control.array[control.NONFINITE] = bad_row // self.batch_size
                if control.stop_on_nonfinite:
                    control.array[control.STEPS] = bad_row // self.batch_size
        loss_sum = float(to_host(self.epoch.loss_sum)[0])
        correct = int(to_host(self.epoch.correct)[0]) if self.track_accuracy else None
        if on_batch_end is not None:
            on_batch_end(full + (1 if rest else 0) - 1, {"loss": loss_sum / self.n})
        return loss_sum, correct

    def parameters_finite(self) -> bool:
        return bool(self.xp.isfinite(self.state.P).all())

    def write_back(self) -> None:
        self.state.store(self.backend.to_numpy(self.device_opt.steps))
        if self.keys is not None:  # the counters the steps advanced on the device
            counters = self.keys.counters(self.backend.to_numpy)
            for row, module in self.masked.items():
                object.__setattr__(module, "counter", int(counters[row]))

    # -------------------------------------------------------------- helpers
    def _runner(self, step, rows, order):
        ws = self.workspaces[rows]

        def run():
            step.step(ws, self.data, order, self.epoch, self.route)

        if self.route != "kernels" or not self.use_graphs or not self.rt.captures_graphs:
            return run
        key = (rows, order is None)
        replay = self._graphs.get(key)
        if replay is None:
            self.rt.preload()  # compile and load every module before capture
            replay = self._graphs[key] = self.rt.capture(run)
        return replay


@contextlib.contextmanager
def _out_of_memory_hint(runtime, batch_size):
    """Turn the device allocator's out-of-memory error into one that names the sizes."""
    try:
        yield
    except Exception as exc:
        if type(exc).__name__ != "OutOfMemoryError":  # cupy.cuda.memory's
            raise
        free, total = runtime.memory_info()
        raise MemoryError(
            f"out of GPU memory preparing batches of {batch_size} rows: {exc}; "
            f"{free / 2**20:.0f} MiB of {total / 2**20:.0f} MiB free. Try a smaller batch_size."
        ) from exc
