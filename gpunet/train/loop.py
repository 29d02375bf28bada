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
from collections.abc import Callable

import numpy as np
from tqdm.auto import tqdm

from gpunet.autograd import Tensor, no_grad
from gpunet.losses import get_loss
from gpunet.random import default_generator
from gpunet.regularizers import penalty
from gpunet.train import validation as check
from gpunet.train.callbacks import CallbackList, LRSchedulerCallback, wants_batch_hooks
from gpunet.train.engines import select_engine
from gpunet.train.history import History
from gpunet.train.metrics import correct_count, resolve_metrics, uses_class_indices

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


class Trainer:
    """Trains ``model`` with ``loss`` and ``optimizer``.

    ``engine``: "auto" (the fused engine when the model qualifies, else autograd),
    "autograd", "fused" (error if the model does not qualify), or a callable
    ``factory(model, loss, optimizer, track_accuracy)`` returning a
    ``gpunet.train.engines.Engine``.
    ``flush_denormals``: on CPU, treat subnormal floats as zero during training (they
    slow small-batch training several-fold); results differ only below 1e-38.
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
    ):
        if isinstance(loss, str):
            loss = get_loss(loss)
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
        self.stop_training = False
        self.engine_name = None
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
        # dropout mask drawn, no batch statistics of one row)
        with no_grad(), eval_mode(self.model):
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
    ) -> History:
        """Train for ``epochs`` epochs; returns the History of per-epoch values."""
        if isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or epochs < 1:
            raise ValueError(f"epochs must be a positive int, got {epochs!r}")
        if not 0.0 <= validation_split < 1.0:
            raise ValueError(f"validation_split must be in [0, 1), got {validation_split}")
        if validation_split and validation_data is not None:
            raise ValueError("give validation_data or validation_split, not both")
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
        rng = default_generator() if seed is None else np.random.default_rng(seed)
        engine = self._select_engine()
        engine.prepare(X, Y, batch_size)  # once per fit: the data in the engine's layout
        self.engine_name = engine.name
        history = History()
        history.iterations_per_epoch = iterations
        if self.verbose:
            print(
                f"gpunet: {regime_name(batch_size, n)}, {iterations} iterations/epoch, "
                f"{engine.name} engine on {self.backend.device}",
                file=sys.stderr,
            )

        self.stop_training = False
        self.callbacks.set_trainer(self)
        xp = self.backend.xp
        # bars only on a terminal (a log file or pipe gets one line per epoch); a fused
        # engine's epoch is one call, so its bar counts epochs
        interactive = self.progress and _is_terminal(sys.stderr)
        epoch_bar = tqdm(
            total=epochs,
            desc="training",
            unit="epoch",
            disable=not (interactive and engine.whole_epochs),
            leave=False,
            file=sys.stderr,
        )
        with self.backend.training_context(self.flush_denormals), epoch_bar:
            self.callbacks.on_train_begin({})
            for epoch in range(epochs):
                self.callbacks.on_epoch_begin(epoch, {})
                lr = self.optimizer.param_groups[0]["lr"]
                # a full batch is one step whatever the order; otherwise the engine
                # gathers each batch's rows (no shuffled copy of the data set)
                order = xp.asarray(rng.permutation(n)) if shuffle and batch_size < n else None
                self.model.train()
                start = time.perf_counter()
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
                        loss_sum, correct = engine.run_epoch(order, on_batch)
                        # model and optimizer as autograd leaves them, before validation,
                        # History and callbacks read them
                        engine.write_back()
                    bar.update(n - bar.n)
                epoch_bar.update(1)
                logs = {"loss": loss_sum / n}
                if correct is not None:
                    logs["accuracy"] = correct / n
                if val is not None:
                    logs.update({f"val_{k}": v for k, v in self._evaluate_arrays(*val).items()})
                logs["lr"] = lr
                logs["time"] = time.perf_counter() - start
                history.record(epoch, logs, iterations)
                self.callbacks.on_epoch_end(epoch, logs)
                if self.verbose:
                    tqdm.write(self._epoch_line(epoch, epochs, logs), file=sys.stderr)
                if self.stop_training:
                    break
            self.callbacks.on_train_end(logs)
        return history

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
    )


def evaluate(model, x, y, *, loss, batch_size: int = 1024, metrics=None) -> dict:
    """Loss and metrics of ``model`` on (x, y) without training."""
    trainer = Trainer(model, loss, optimizer=None, metrics=metrics, progress=False, verbose=0)
    return trainer.evaluate(x, y, batch_size)
