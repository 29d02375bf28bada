"""The CPU fused engine: whole epochs of a dense ``Sequential`` in one compiled call.

Trains the models :func:`gpunet.train.engines.qualify.fused_model_reason` accepts, on the
NumPy backend, with its fused epoch kernel (``Backend.fused_epoch_kernel``:
``gpunet.kernels.cpu.fused_mlp``). Parameters and optimizer state live in the flat
buffers of a :class:`~gpunet.train.engines.qualify.FlatState` during an epoch and are
copied back by ``write_back``.
"""

from __future__ import annotations

import contextlib
import os
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
    #: run steps of ``blas.MODEL_PARALLEL_MIN_ROWS`` rows or more on two threads where the
    #: process may use two CPUs: model-parallel below ``blas.DATA_PARALLEL_MIN_ROWS``,
    #: data-parallel from there (False: every step on the calling thread, same results)
    two_threads = True

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
        self.G_b = None  # the worker's dW in data-parallel steps, allocated on first use
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

    def _workspace(self, rows: int, dtype, gather: bool, worker: bool = False):
        """The kernel's scratch for steps of ``rows`` rows (this thread's, or the
        ``worker`` thread's in data-parallel steps), kept across epochs while the batch size stays:
        fresh memory costs page faults."""
        key = (rows, np.dtype(dtype), gather, worker)
        work = self._work.get(key)
        if work is None:
            for stale in [old for old in self._work if old[3] == worker]:
                del self._work[stale]
            size = self.kernels.workspace_size(self.state.layer_table, rows, gather)
            work = self._work[key] = np.empty(size, dtype)
        return work

    # ---------------------------------------------------------------- epoch
    def run_epoch(self, order=None, on_batch_end=None, control=None) -> tuple[float, int | None]:
        """See :meth:`Engine.run_epoch`. Loads the model's parameters and the optimizer's
        state and hyperparameters into the flat buffers, then runs every step in one
        kernel call (``on_batch_end`` is not called: the selector picks this engine only
        when no callback needs every step). With a ``control``, the call runs on its own
        thread while this one waits, so a Ctrl-C reaches the fit loop's handler (which
        sets the stop flag the kernel checks between steps) during the epoch."""
        X, labels, targets, batch_size = self.X, self.labels, self.targets, self.batch_size
        if X is None:
            raise RuntimeError("prepare() must be called before run_epoch()")
        st = self.state
        H, steps, firsts = st.load()
        gather = order is not None
        order = np.ascontiguousarray(order, dtype=np.int64) if gather else np.zeros(0, np.int64)
        k = self.kernels
        # the worker's scratch has rows only if some step of the epoch splits
        # dropout runs on every step (each thread of a two-thread step draws its rows
        # or columns of the masks), DropConnect on one-thread steps only
        rows, worker_rows, two_threads = k.scratch_rows(
            len(X), batch_size, self.two_threads and usable_cpus() >= 2 and not self.dropconnects
        )
        n_steps = -(-len(X) // batch_size)
        drop_keys, drop_thresholds, drop_scales = self._dropout_tables(n_steps, X.dtype)
        work = self._workspace(rows, X.dtype, gather)
        smoothing = float(getattr(self.loss, "label_smoothing", 0.0))
        mean = self.loss.reduction == "mean"
        do_flush = self.flush_denormals and not k.hardware_flush_active()
        if two_threads:
            if self.G_b is None:
                self.G_b = np.zeros_like(st.G)
            worker = k.step_worker_thread(
                X,
                labels,
                targets,
                order,
                st.layer_table,
                st.param_table,
                st.P,
                st.G,
                self.G_b,
                *st.S,
                H,
                steps,
                firsts,
                self._workspace(worker_rows, X.dtype, gather, worker=True),
                work,
                self.opt_code,
                self.loss_code,
                smoothing,
                mean,
                do_flush,
                drop_keys,
                drop_thresholds,
                drop_scales,
            )
            G_b = self.G_b
        else:
            worker = contextlib.nullcontext((np.zeros(0, np.int64), np.zeros(0)))
            G_b = st.G[:0]
        control_array = np.zeros(4, np.int64) if control is None else control.array
        with worker as (flags, shared):
            loss_sum, correct = _interruptible(
                control is not None,
                k.train_epoch,
                X,
                labels,
                targets,
                order,
                batch_size,
                st.layer_table,
                st.param_table,
                st.P,
                st.G,
                *st.S,
                H,
                steps,
                firsts,
                work,
                self.opt_code,
                self.loss_code,
                smoothing,
                mean,
                do_flush,
                flags,
                shared,
                G_b,
                control_array,
                drop_keys,
                drop_thresholds,
                drop_scales,
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


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1
