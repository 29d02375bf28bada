"""The CPU fused engine: whole epochs of a dense ``Sequential`` in one compiled call.

Trains the models :func:`gpunet.train.engines.qualify.fused_model_reason` accepts, on the
NumPy backend, with its fused epoch kernel (``Backend.fused_epoch_kernel``:
``gpunet.kernels.cpu.fused_mlp``). Parameters and optimizer state live in the flat
buffers of a :class:`~gpunet.train.engines.qualify.FlatState` during an epoch and are
copied back by ``write_back``.
"""

from __future__ import annotations

import contextlib
import threading

import numpy as np

from gpunet.losses import CrossEntropyLoss
from gpunet.train.engines.base import Engine
from gpunet.train.engines.qualify import FlatState, dense_layers


class FusedCpuEngine(Engine):
    """Runs epochs with ``backend.fused_epoch_kernel()``; see the module docstring."""

    name = "fused"
    whole_epochs = True
    runs_dropout = True
    runs_dropconnect = True
    #: threads of the multi-thread steps (None: ``gpunet.get_num_threads()``); which
    #: steps split, and how, comes from the route table (:mod:`.routes`). 1: every step
    #: on the calling thread (the same results to the last bits of BLAS)
    threads: int | None = None

    def __init__(
        self,
        model,
        loss,
        optimizer,
        track_accuracy: bool,
        flush_denormals: bool = True,
        workspace_cache: dict | None = None,
    ):
        from gpunet.kernels.cpu.update_rules import OPTIMIZER_CODES  # noqa: PLC0415

        self.model, self.loss, self.optimizer = model, loss, optimizer
        self.track_accuracy = track_accuracy
        self.flush_denormals = flush_denormals
        self.dropouts = {}  # layer index -> the Dropout module after it
        self.dropconnects = {}  # layer index -> the layer, a DropConnectDense
        self.layers = dense_layers(model, self.dropouts, self.dropconnects)
        self.backend = next(model.parameters()).backend
        self.kernels = self.backend.fused_epoch_kernel()
        # batch size -> scratch buffer, reused across epochs (and fits, when the caller
        # passes its own dict): fresh memory costs page faults on every epoch
        self._work = {} if workspace_cache is None else workspace_cache
        self.opt_name = optimizer._update_name
        self.opt_code = OPTIMIZER_CODES[self.opt_name]
        self.loss_code = self.kernels.LOSS_CODES[
            "cross_entropy" if isinstance(loss, CrossEntropyLoss) else "mse"
        ]
        self.state = FlatState(model, optimizer, self.layers, np, self.dropouts, self.dropconnects)
        self.params = self.state.params
        self._G_parts = None  # (T - 1, P.size): the workers' dW, allocated on first use
        # where each DropConnect layer's masked weight lies in the step's masked weights
        self._masked_offsets, masked_total = self.kernels.masked_weight_offsets(
            self.state.layer_table
        )
        self._masked_weights = np.empty(int(masked_total), self.state.P.dtype)
        # set by prepare: contiguous X (N, features), labels (N,) int64 for cross-entropy
        # (else empty), targets (N, outputs) for MSE (else (0, 1)), the batch size
        self.X = self.labels = self.targets = None
        self.batch_size = None
        self._steps = None  # the last epoch's step counts until write_back
        self._dropout_steps = 0  # steps the last epoch drew masks for, until write_back

    # ----------------------------------------------------------------- data
    def prepare(self, X, y, batch_size: int) -> None:
        """Contiguous ``X`` (N, features) and the kernel's label or target array, once
        per fit (no copy when the arrays are already in that layout)."""
        X = np.ascontiguousarray(X)
        if self.loss_code == 0:
            labels = np.ascontiguousarray(y, dtype=np.int64)
            targets = np.zeros((0, 1), X.dtype)
        else:
            labels = np.zeros(0, np.int64)
            targets = np.ascontiguousarray(y.reshape(len(y), -1), dtype=X.dtype)
        self.X, self.labels, self.targets, self.batch_size = X, labels, targets, batch_size

    def _workspace(self, rows: int, dtype, gather: bool, workers: int = 0):
        """The kernel's scratch for steps of ``rows`` rows: this thread's (1-D), or with
        ``workers`` the workers' in data-parallel steps ((workers, size)); kept across
        epochs while the batch size stays: fresh memory costs page faults."""
        key = (rows, np.dtype(dtype), gather, workers)
        work = self._work.get(key)
        if work is None:
            for stale in [old for old in self._work if (old[3] == 0) == (workers == 0)]:
                del self._work[stale]
            size = self.kernels.workspace_size(self.state.layer_table, rows, gather)
            work = np.empty((workers, size) if workers else size, dtype)
            self._work[key] = work
        return work

    def _weight_grad_parts(self, workers: int):
        """The workers' ``dW`` buffers (workers, P.size), kept across epochs."""
        if self._G_parts is None or len(self._G_parts) != workers:
            self._G_parts = np.zeros((workers, self.state.G.size), self.state.G.dtype)
        return self._G_parts

    def team_threads(self) -> int:
        """T: :attr:`threads`, else ``gpunet.get_num_threads()``."""
        from gpunet.parallel import get_num_threads  # noqa: PLC0415

        return self.threads if self.threads is not None else get_num_threads()

    # ---------------------------------------------------------------- epoch
    def run_epoch(self, order=None, on_batch_end=None, control=None) -> tuple[float, int | None]:
        """See :meth:`Engine.run_epoch`. Loads the model's parameters and the optimizer's
        state and hyperparameters into the flat buffers, then runs every step in one
        kernel call (``on_batch_end`` is not called: the selector picks this engine only
        when no callback needs every step). With a ``control``, the call runs on its own
        thread while this one waits, so a Ctrl-C reaches the fit loop's handler (which
        sets the stop flag the kernel checks between steps) during the epoch."""
        from gpunet.train.engines.routes import route_table  # noqa: PLC0415

        X, labels, targets, batch_size = self.X, self.labels, self.targets, self.batch_size
        if X is None:
            raise RuntimeError("prepare() must be called before run_epoch()")
        st = self.state
        H, steps, firsts = st.load()
        gather = order is not None
        order = np.ascontiguousarray(order, dtype=np.int64) if gather else np.zeros(0, np.int64)
        k = self.kernels
        n_threads = self.team_threads()
        routes = route_table(n_threads)
        # the workers' scratch has rows only if some step of the epoch is data-parallel
        rows, worker_rows, multi = k.scratch_rows(len(X), batch_size, n_threads, routes)
        n_steps = -(-len(X) // batch_size)
        work = self._workspace(rows, X.dtype, gather)
        data = k.Batches(X, labels, targets, order)
        net = k.Net(st.layer_table, st.param_table)
        buf = k.Buffers(st.P, st.G, *st.S, H, steps, firsts)
        rule = k.make_rule(
            self.opt_code,
            self.loss_code,
            getattr(self.loss, "label_smoothing", 0.0),
            self.loss.reduction == "mean",
            self.flush_denormals and not k.hardware_flush_active(),
        )
        drop = k.Masks(
            *self._dropout_tables(n_steps, X.dtype), self._masked_weights, self._masked_offsets
        )
        if multi:
            workers = n_threads - 1
            team = k.worker_threads(
                n_threads,
                self._weight_grad_parts(workers),
                self._workspace(max(worker_rows, 1), X.dtype, gather, workers),
                work,
                routes,
                data,
                net,
                buf,
                rule,
                drop,
            )
        else:
            team = contextlib.nullcontext(k.one_thread_team(work, routes))
        control_array = np.zeros(4, np.int64) if control is None else control.array
        with team as members:
            loss_sum, correct = _interruptible(
                control is not None,
                k.train_epoch,
                data,
                batch_size,
                net,
                buf,
                work,
                rule,
                members,
                control_array,
                drop,
            )
        self._steps = steps
        self._dropout_steps = n_steps if control is None else control.steps
        return float(loss_sum), (int(correct) if self.track_accuracy else None)

    def _masked_modules(self):
        """``(column, module)`` of each mask the kernel draws: column ``l`` the Dropout
        after layer ``l``, column ``L + l`` layer ``l``'s DropConnect."""
        L = len(self.layers)
        yield from self.dropouts.items()
        yield from ((L + l, m) for l, m in self.dropconnects.items())

    def _dropout_tables(self, n_steps: int, dtype):
        """The kernel's mask arguments for an epoch of ``n_steps`` steps: keys
        (steps, 2L) uint64 from each Dropout's or DropConnectDense's (seed, counter +
        step), thresholds (2L,) uint64 and scales (2L,) (columns: ``_masked_modules``);
        (0, 0) keys when the model has neither."""
        from gpunet import counter_rng  # noqa: PLC0415

        L2 = 2 * len(self.layers)
        if not (self.dropouts or self.dropconnects):
            return np.zeros((0, 0), np.uint64), np.zeros(0, np.uint64), np.zeros(0, dtype)
        keys = np.zeros((n_steps, L2), np.uint64)
        thresholds = np.zeros(L2, np.uint64)
        scales = np.ones(L2, dtype)
        for column, module in self._masked_modules():
            if module.p > 0:
                keys[:, column] = counter_rng.stream_keys(
                    module.seed, module.counter + np.arange(n_steps)
                )
                thresholds[column] = counter_rng.threshold(module.p)
                scales[column] = 1.0 / (1.0 - module.p)
        return keys, thresholds, scales

    def parameters_finite(self) -> bool:
        return bool(np.isfinite(self.state.P).all())

    def write_back(self) -> None:
        """Flat buffers -> the model's parameters and the optimizer's state (after each
        ``run_epoch``); parameter gradients are left None (``G`` is the kernel's scratch,
        not the last batch's gradient)."""
        if self._steps is None:
            return
        self.state.store(self._steps)
        self._steps = None
        for _, module in self._masked_modules():
            if module.p > 0:  # the autograd layer draws no mask (and counts none) at p = 0
                object.__setattr__(module, "counter", module.counter + self._dropout_steps)
        for p in self.params:
            p.grad = None


def _interruptible(wanted: bool, kernel, *args):
    """``kernel(*args)``; when ``wanted`` and on the main thread, on a helper thread
    (with this thread's denormal setting) while the main thread waits in ``join``, where
    Python runs signal handlers. A compiled call holds the main thread otherwise, and a
    handler would run only after the whole epoch."""
    if not wanted or threading.current_thread() is not threading.main_thread():
        return kernel(*args)
    from gpunet.kernels.cpu.denormals import flush_denormals, hardware_flush_active  # noqa: PLC0415

    flush = hardware_flush_active()
    outcome = []

    def run():
        try:
            with flush_denormals(flush):
                outcome.append((True, kernel(*args)))
        except BaseException as error:  # re-raised on the calling thread
            outcome.append((False, error))

    thread = threading.Thread(target=run, name="gpunet-fused-epoch", daemon=True)
    thread.start()
    try:
        while thread.is_alive():
            thread.join(0.5)
    except KeyboardInterrupt:  # a second Ctrl-C: the stop flag is set, the step ends soon
        thread.join()
        raise
    ok, value = outcome[0]
    if not ok:
        raise value
    return value
