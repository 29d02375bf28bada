"""The fit loop: epochs x iterations over batches, validation, metrics, callbacks.

Batch regimes: ``batch_size >= N`` is batch gradient descent, ``1`` is stochastic
gradient descent, anything between is mini-batch. Each epoch runs ``ceil(N/batch_size)``
iterations; the last batch may be partial.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
import warnings
from collections.abc import Callable

import numpy as np
from tqdm.auto import tqdm

from gpunet.autograd import Tensor, no_grad
from gpunet.losses import get_loss
from gpunet.parallel import get_num_threads
from gpunet.random import draw_seed, epoch_permutation
from gpunet.regularizers import penalty
from gpunet.train import validation as check
from gpunet.train.callbacks import CallbackList, LRSchedulerCallback, wants_batch_hooks
from gpunet.train.checkpoint import load_checkpoint, restore_checkpoint, save_checkpoint
from gpunet.train.engines import AutoCpuEngine, select_engine
from gpunet.train.engines.base import StepControl
from gpunet.train.guard import (
    INTERRUPT_POLICIES,
    NONFINITE_POLICIES,
    NonFiniteError,
    ctrl_c_stops,
)
from gpunet.train.history import History
from gpunet.train.metrics import correct_count, resolve_metrics, uses_class_indices
from gpunet.train.snapshot import restore_snapshot, take_snapshot

MODES = ("batch", "stochastic", "minibatch")
ENGINES = ("auto", "autograd", "fused")


def regime_name(batch_size: int, n_samples: int) -> str:
    """Human name of the gradient-descent regime for a batch size."""
    if batch_size >= n_samples:
        return f"batch gradient descent (full batch of {n_samples})"
    if batch_size == 1:
        return "stochastic gradient descent (batch size 1)"
    return f"mini-batch gradient descent (batch size {batch_size})"


def batch_size_for_mode(mode: str | None, batch_size, n_samples: int) -> int:
    if mode is None:
        return check.check_batch_size(batch_size, n_samples)
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")
    if mode == "batch":
        return n_samples
    if mode == "stochastic":
        return 1
    return check.check_batch_size(batch_size, n_samples)


def engine_label(engine) -> str:
    """How the fit's first line names the engine."""
    if isinstance(engine, AutoCpuEngine):
        return f"auto ({engine.name} first, then the faster)"
    return engine.name


class Trainer:
    """Trains ``model`` with ``loss`` and ``optimizer``.

    ``engine``: "auto" (the fused engine when the model qualifies, else autograd),
    "autograd", "fused" (error if the model does not qualify), or a callable
    ``factory(model, loss, optimizer, track_accuracy)`` returning a
    ``gpunet.train.engines.Engine``.
    ``flush_denormals``: on CPU, treat subnormal floats as zero during training (they
    slow small-batch training several-fold); results differ only below 1e-38.
    ``on_nonfinite``: what a NaN or infinite loss or parameter does. "raise" (default)
    restores the model and optimizer to the end of the last good epoch and raises
    :class:`~gpunet.train.guard.NonFiniteError` naming the epoch and step; "stop"
    restores the same state, warns and returns the History (Keras's ``TerminateOnNaN``,
    which however keeps the bad weights); "warn" warns once and trains on.
    ``on_interrupt``: Ctrl-C stops training at the next step boundary (every parameter
    updated by the same steps); "stop" (default) returns the History with
    ``history.interrupted = True``, "raise" then raises KeyboardInterrupt. A second
    Ctrl-C raises at once.
    """

    def __init__(
        self,
        model,
        loss,
        optimizer,
        *,
        metrics=None,
        callbacks=None,
        scheduler=None,
        engine: str | Callable = "auto",
        flush_denormals: bool = True,
        progress: bool = True,
        verbose: int = 1,
        on_nonfinite: str = "raise",
        on_interrupt: str = "stop",
    ):
        if isinstance(loss, str):
            loss = get_loss(loss)
        if on_nonfinite not in NONFINITE_POLICIES:
            raise ValueError(
                f"on_nonfinite must be one of {NONFINITE_POLICIES}, got {on_nonfinite!r}"
            )
        if on_interrupt not in INTERRUPT_POLICIES:
            raise ValueError(
                f"on_interrupt must be one of {INTERRUPT_POLICIES}, got {on_interrupt!r}"
            )
        if not (callable(engine) or (isinstance(engine, str) and engine in ENGINES)):
            raise ValueError(
                f"unknown engine {engine!r}; expected one of {ENGINES} or a factory callable"
            )
        if next(model.parameters(), None) is None:
            raise ValueError("the model has no parameters to train")
        self.model, self.loss, self.optimizer = model, loss, optimizer
        self.metrics = resolve_metrics(metrics, loss)
        callbacks = list(callbacks or [])
        if scheduler is not None:
            callbacks.insert(0, LRSchedulerCallback(scheduler))
        self.callbacks = CallbackList(callbacks)
        self.engine_choice = engine
        self.flush_denormals = flush_denormals
        self.progress, self.verbose = progress, verbose
        self.on_nonfinite, self.on_interrupt = on_nonfinite, on_interrupt
        self.stop_training = False
        self.engine_name = None
        self.last_engine = None  # the engine of the last fit
        self._engine_decision = None
        self.history = None  # the running fit's History
        self.seed = None  # the running fit's shuffle seed
        self.epochs_done = 0  # epochs completed by the running fit (resumed ones included)
        self.log_keys = ()  # the keys every epoch's logs will hold (known before epoch 1)
        self.control = None  # the running fit's StepControl (stop requests, steps done)
        self._workspaces = {}  # the fused engine's scratch, kept across fit() calls

    # ------------------------------------------------------------------ data
    @property
    def backend(self):
        return next(self.model.parameters()).backend

    def _prepare(self, x, y, name_x="x", name_y="y"):
        """Validate and move (x, y) to the model's device and dtype; nothing is changed
        in the model or the optimizer if anything is wrong."""
        backend = self.backend
        X = check.as_host_or_device_array(x, name_x, backend)
        X = check.check_features(X, name_x, self.model.dtype)
        Y = check.check_targets(
            check.as_host_or_device_array(y, name_y, backend), name_y, X.shape[0], name_x
        )
        # one-sample probe: shape/dtype errors surface before training (eval mode: no
        # dropout mask drawn, no batch statistics of one row; the reference ops, so that a
        # fused engine's fit never loads the autograd engine's kernels)
        with no_grad(), eval_mode(self.model), backend.reference_ops():
            probe = self.model(Tensor._wrap(backend.asarray(X[:1]), backend))
        if uses_class_indices(self.loss):
            check.check_class_labels(Y, probe.shape[1], name_y)
        else:  # regression targets: the model's dtype and output shape
            Y = Y.astype(self.model.dtype, copy=False)
            if Y.ndim == 1 and probe.ndim == 2 and probe.shape[1] == 1:
                Y = Y.reshape(-1, 1)
            if tuple(Y.shape[1:]) != tuple(probe.shape[1:]):
                raise ValueError(
                    f"{name_y} has per-sample shape {tuple(Y.shape[1:])} but the model "
                    f"outputs {tuple(probe.shape[1:])}"
                )
        return backend.asarray(X), backend.asarray(Y)

    def _select_engine(self):
        return select_engine(
            self.engine_choice,
            self.model,
            self.loss,
            self.optimizer,
            self.backend,
            self.callbacks,
            track_accuracy=bool(self.metrics),
            flush_denormals=self.flush_denormals,
            workspace_cache=self._workspaces,
        )

    # ------------------------------------------------------------------- fit
    @property
    def schedulers(self) -> list:
        """The schedulers the callbacks step, in order."""
        return [cb.scheduler for cb in self.callbacks if isinstance(cb, LRSchedulerCallback)]

    def save_checkpoint(self, path) -> None:
        """Write everything needed to resume this run to ``path`` (model, optimizer,
        schedulers, gpunet's generator, shuffle seed, epochs done, History, callback
        state), atomically; see :mod:`gpunet.train.checkpoint`."""
        states = {}
        for i, cb in enumerate(self.callbacks):
            get_state = getattr(cb, "get_state", None)
            if get_state is not None:
                states[f"{i}:{type(cb).__name__}"] = get_state()
        save_checkpoint(
            path,
            self.model,
            self.optimizer,
            self.schedulers,
            epochs_done=self.epochs_done,
            seed=self.seed,
            history=self.history,
            callbacks=states,
        )

    def fit(
        self,
        x,
        y,
        *,
        epochs: int = 1,
        batch_size: int | None = 32,
        mode: str | None = None,
        shuffle: bool = True,
        seed: int | None = None,
        validation_data=None,
        validation_split: float = 0.0,
        resume_from=None,
    ) -> History:
        """Train until epoch ``epochs``; returns the History of per-epoch values.

        Epoch ``e``'s shuffle is :func:`gpunet.random.epoch_permutation` of (seed, e);
        without a ``seed`` one is drawn from gpunet's global generator.
        ``resume_from``: a checkpoint written by ``ModelCheckpoint`` / ``save_checkpoint``.
        Model, optimizer, schedulers, generator, History and callback state are restored
        from it (after checking all of it: nothing changes if it does not fit), its seed
        is used unless ``seed`` is given, and training continues from the epoch after
        the checkpoint's up to ``epochs`` (the last epoch, as Keras's ``initial_epoch``):
        the same weights, bit for bit, as the run that was never stopped.
        """
        if isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or epochs < 1:
            raise ValueError(f"epochs must be a positive int, got {epochs!r}")
        if not 0.0 <= validation_split < 1.0:
            raise ValueError(f"validation_split must be in [0, 1), got {validation_split}")
        if validation_split and validation_data is not None:
            raise ValueError("give validation_data or validation_split, not both")
        checkpoint = load_checkpoint(resume_from) if resume_from is not None else None
        if validation_split:  # Keras: the last fraction of the samples, before shuffling
            n_all = len(x)
            n_val = int(math.floor(n_all * validation_split))
            if n_val < 1 or n_val >= n_all:
                raise ValueError(
                    f"validation_split={validation_split} leaves no samples for "
                    f"{'validation' if n_val < 1 else 'training'} out of {n_all}"
                )
            validation_data = (x[n_all - n_val :], y[n_all - n_val :])
            x, y = x[: n_all - n_val], y[: n_all - n_val]
        X, Y = self._prepare(x, y)
        val = None
        if validation_data is not None:
            if len(validation_data) != 2:
                raise ValueError("validation_data must be a pair (x_val, y_val)")
            val = self._prepare(*validation_data, name_x="x_val", name_y="y_val")
        n = X.shape[0]
        batch_size = batch_size_for_mode(mode, batch_size if batch_size is not None else n, n)
        iterations = math.ceil(n / batch_size)
        self.log_keys = self._log_keys(val is not None)
        self.callbacks.set_trainer(self)
        for cb in self.callbacks:  # e.g. checkpoint paths, before any state changes
            check_config = getattr(cb, "check_config", None)
            if check_config is not None:
                check_config(self.log_keys)
        get_num_threads()  # reads GPUNET_NUM_THREADS once, limiting BLAS to it
        engine = self.last_engine = self._select_engine()
        history = History()
        first_epoch = 0
        if checkpoint is not None:
            restore_checkpoint(checkpoint, self.model, self.optimizer, self.schedulers)
            if checkpoint.history is not None:
                history = History.from_dict(checkpoint.history)
            first_epoch = checkpoint.epochs_done
            if seed is None:
                seed = checkpoint.seed
        self.seed = draw_seed() if seed is None else int(seed)
        self.history, self.epochs_done = history, first_epoch
        engine.plan(epochs - first_epoch)
        engine.prepare(X, Y, batch_size)  # once per fit: the data in the engine's layout
        self.engine_name = engine.name
        history.iterations_per_epoch = iterations
        history.interrupted = False
        if self.verbose:
            print(
                f"gpunet: {regime_name(batch_size, n)}, {iterations} iterations/epoch, "
                f"{engine_label(engine)} engine on {self.backend.device}",
                file=sys.stderr,
            )

        self.stop_training = False
        control = self.control = StepControl(stop_on_nonfinite=self.on_nonfinite != "warn")
        # bars only on a terminal (a log file or pipe gets one line per epoch); a fused
        # engine's epoch is one call, so its bar counts epochs
        interactive = self.progress and _is_terminal(sys.stderr)
        epoch_bar = tqdm(
            total=epochs,
            initial=first_epoch,
            desc="training",
            unit="epoch",
            disable=not (interactive and engine.whole_epochs),
            leave=False,
            file=sys.stderr,
        )
        logs = {}
        with (
            self.backend.training_context(self.flush_denormals),
            epoch_bar,
            ctrl_c_stops(control),
        ):
            self.callbacks.on_train_begin({})
            if checkpoint is not None:
                self._restore_callback_states(checkpoint.callbacks)
            for epoch in range(first_epoch, epochs):
                if control.stop_requested:
                    self._interrupted(history, epoch, 0, iterations)
                    break
                control.reset()
                self.callbacks.on_epoch_begin(epoch, {})
                lr = self.optimizer.param_groups[0]["lr"]
                start = time.perf_counter()
                logs = self._run_epoch(
                    engine, control, epoch, epochs, n, batch_size, shuffle, interactive
                )
                if logs is None:  # stopped inside the epoch (non-finite "stop", Ctrl-C)
                    break
                if val is not None:
                    logs.update({f"val_{k}": v for k, v in self._evaluate_arrays(*val).items()})
                logs["lr"] = lr
                logs["time"] = time.perf_counter() - start
                history.record(epoch, logs, iterations)
                self.epochs_done = epoch + 1
                self._note_engine(engine)
                self.callbacks.on_epoch_end(epoch, logs)
                if self.verbose:
                    tqdm.write(self._epoch_line(epoch, epochs, logs), file=sys.stderr)
                epoch_bar.update(1)
                if self.stop_training:
                    break
            if not history.interrupted:
                self.callbacks.on_train_end(logs)
        if history.interrupted and self.on_interrupt == "raise":
            raise KeyboardInterrupt
        return history

    def _note_engine(self, engine) -> None:
        """After an epoch: the engine now training (``engine="auto"`` may switch), and
        with ``verbose`` one line when it has just decided."""
        decision = getattr(engine, "decision", None)
        if decision is not None and decision != self._engine_decision:
            self._engine_decision = decision
            if self.verbose:
                tqdm.write(f"gpunet: engine='auto' -> {decision}", file=sys.stderr)
        self.engine_name = engine.name

    def _run_epoch(self, engine, control, epoch, epochs, n, batch_size, shuffle, interactive):
        """One epoch through ``engine``; its logs (loss, and accuracy when tracked), or
        None when training ends inside it."""
        history = self.history
        xp = self.backend.xp
        # a full batch is one step whatever the order; otherwise the engine gathers each
        # batch's rows (no shuffled copy of the data set)
        order = None
        if shuffle and batch_size < n:
            order = xp.asarray(epoch_permutation(self.seed, epoch, n))
        guard = self.on_nonfinite != "warn"
        # an engine training the model's own arrays cannot simply not write back
        snapshot = self._snapshot() if guard and engine.trains_in_place else None
        self.model.train()
        iterations = math.ceil(n / batch_size)
        with tqdm(
            total=n,
            desc=f"epoch {epoch + 1}/{epochs}",
            unit="sample",
            disable=not (interactive and not engine.whole_epochs),
            leave=False,
            file=sys.stderr,
        ) as bar:
            on_batch = self._batch_hook(bar, batch_size, n)
            with self.backend.epoch_context(batch_size):
                loss_sum, correct = engine.run_epoch(order, on_batch, control)
                bad = control.nonfinite_step
                if bad < 0 and not engine.parameters_finite():
                    bad = max(control.steps - 1, 0)
                if bad >= 0 and guard:
                    if snapshot is not None:
                        self._restore(snapshot)
                    return self._nonfinite(epoch, bad, iterations)
                # model and optimizer as autograd leaves them, before validation,
                # History and callbacks read them
                engine.write_back()
            bar.update(n - bar.n)
        if bad >= 0:
            self._warn_nonfinite(epoch, bad, iterations)
        if control.stop_requested and control.steps < iterations:
            self._interrupted(history, epoch, control.steps, iterations)
            return None
        logs = {"loss": loss_sum / n}
        if correct is not None:
            logs["accuracy"] = correct / n
        return logs

    def _log_keys(self, validation: bool) -> tuple:
        keys = ["loss"] + (["accuracy"] if self.metrics else [])
        if validation:
            keys += [f"val_{k}" for k in keys]
        return (*keys, "lr", "time")

    def _snapshot(self):
        return take_snapshot(self.model, self.optimizer)

    def _restore(self, snapshot) -> None:
        restore_snapshot(snapshot, self.model, self.optimizer)

    def _nonfinite(self, epoch, bad, iterations):
        where = f"epoch {epoch + 1}, step {bad + 1} of {iterations}"
        kept = f"end of epoch {epoch}" if epoch > 0 else "start of training"
        message = (
            f"non-finite loss or weights at {where}; the model and "
            f"optimizer are as at the {kept}. Try a lower learning rate, gradient "
            "clipping or float64."
        )
        if self.on_nonfinite == "raise":
            raise NonFiniteError(message, epoch + 1, bad + 1, self.history)
        warnings.warn(message, RuntimeWarning, stacklevel=4)
        self.history.stop_reason = message
        return None

    def _warn_nonfinite(self, epoch, bad, iterations) -> None:
        if not getattr(self, "_warned_nonfinite", False):
            warnings.warn(
                f"non-finite loss or weights at epoch {epoch + 1}, step {bad + 1} of "
                f"{iterations}; training goes on (on_nonfinite='warn')",
                RuntimeWarning,
                stacklevel=4,
            )
            self._warned_nonfinite = True

    def _interrupted(self, history, epoch, steps, iterations) -> None:
        history.interrupted = True
        history.interrupted_at = {"epoch": epoch + 1, "step": steps}
        if self.verbose:
            print(
                f"gpunet: interrupted in epoch {epoch + 1} after {steps} of {iterations} "
                "steps; the model holds the weights after that step",
                file=sys.stderr,
            )

    def _restore_callback_states(self, states: dict) -> None:
        for i, cb in enumerate(self.callbacks):
            state = states.get(f"{i}:{type(cb).__name__}")
            set_state = getattr(cb, "set_state", None)
            if state is not None and set_state is not None:
                set_state(state)

    def _batch_hook(self, bar, batch_size, n):
        wants_batches = wants_batch_hooks(self.callbacks)
        if not wants_batches and bar.disable:
            return None

        def on_batch_end(iteration, logs):
            bar.update(min(batch_size, n - bar.n))
            if wants_batches:
                self.callbacks.on_batch_end(iteration, logs)

        return on_batch_end

    @staticmethod
    def _epoch_line(epoch, epochs, logs) -> str:
        parts = [f"epoch {epoch + 1}/{epochs}"]
        parts += [f"{k}={v:.4g}" for k, v in logs.items() if k != "time"]
        parts.append(f"{logs['time']:.2f}s")
        return " ".join(parts)

    # ----------------------------------------------------------- evaluation
    def _evaluate_arrays(self, X, Y, batch_size: int = 1024) -> dict:
        backend = self.backend
        loss_sum, correct, n = 0.0, 0, X.shape[0]
        with no_grad(), eval_mode(self.model):
            for start in range(0, n, batch_size):
                xb = Tensor._wrap(X[start : start + batch_size], backend)
                yb = Tensor._wrap(Y[start : start + batch_size], backend)
                out = self.model(xb)
                loss_sum += float(self.loss(out, yb).data) * xb.shape[0]
                if self.metrics:
                    correct += int(correct_count(out.data, yb.data, self.loss))
            reg = penalty(self.model)  # Keras: the reported loss includes the penalties
        result = {"loss": loss_sum / n + (0.0 if reg is None else float(reg.data))}
        if self.metrics:
            result["accuracy"] = correct / n
        return result

    def evaluate(self, x, y, batch_size: int = 1024) -> dict:
        """Loss (and accuracy for classification) over (x, y), batch by batch."""
        return self._evaluate_arrays(*self._prepare(x, y), batch_size=batch_size)

    def predict(self, x, batch_size: int = 1024) -> np.ndarray:
        return predict(self.model, x, batch_size)


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # replaced or closed streams
        return False


def predict(model, x, batch_size: int = 1024) -> np.ndarray:
    """Model outputs for ``x`` (N, ...) as a host NumPy array, computed in batches."""
    backend = next(model.parameters()).backend
    X = check.check_features(check.as_host_or_device_array(x, "x", backend), "x", model.dtype)
    X = backend.asarray(X)
    outs = []
    with no_grad(), eval_mode(model):
        for start in range(0, X.shape[0], batch_size):
            outs.append(
                backend.to_numpy(model(Tensor._wrap(X[start : start + batch_size], backend)).data)
            )
    return np.concatenate(outs, axis=0)


@contextlib.contextmanager
def eval_mode(model):
    """``model.eval()`` for the block, then the mode each module had (also on error)."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, mode in modes:
            m.training = mode


def fit(
    model,
    x,
    y,
    *,
    loss,
    optimizer,
    epochs: int = 1,
    batch_size: int | None = 32,
    mode: str | None = None,
    shuffle: bool = True,
    seed: int | None = None,
    validation_data=None,
    validation_split: float = 0.0,
    metrics=None,
    callbacks=None,
    scheduler=None,
    engine: str | Callable = "auto",
    flush_denormals: bool = True,
    progress: bool = True,
    verbose: int = 1,
    on_nonfinite: str = "raise",
    on_interrupt: str = "stop",
    resume_from=None,
) -> History:
    """Functional form of :meth:`Trainer.fit` (see there for the arguments)."""
    trainer = Trainer(
        model,
        loss,
        optimizer,
        metrics=metrics,
        callbacks=callbacks,
        scheduler=scheduler,
        engine=engine,
        flush_denormals=flush_denormals,
        progress=progress,
        verbose=verbose,
        on_nonfinite=on_nonfinite,
        on_interrupt=on_interrupt,
    )
    return trainer.fit(
        x,
        y,
        epochs=epochs,
        batch_size=batch_size,
        mode=mode,
        shuffle=shuffle,
        seed=seed,
        validation_data=validation_data,
        validation_split=validation_split,
        resume_from=resume_from,
    )


def evaluate(model, x, y, *, loss, batch_size: int = 1024, metrics=None) -> dict:
    """Loss and metrics of ``model`` on (x, y) without training."""
    trainer = Trainer(model, loss, optimizer=None, metrics=metrics, progress=False, verbose=0)
    return trainer.evaluate(x, y, batch_size)
