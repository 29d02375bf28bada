"""Training callbacks: hooks the fit loop calls around epochs and iterations.

The fit loop calls, in order: ``set_trainer(trainer)`` once, ``on_train_begin(logs)``,
then per epoch ``on_epoch_begin(epoch, logs)``, ``on_batch_end(iteration, logs)`` after
each optimizer step (when the loop reports batches), ``on_epoch_end(epoch, logs)``, and
finally ``on_train_end(logs)``. ``epoch`` is 0-based; ``logs`` is a dict of Python floats
such as ``{"loss": 0.3, "accuracy": 0.9, "val_loss": 0.35, "val_accuracy": 0.88,
"lr": 0.01}``.

``trainer`` exposes ``.model`` (``state_dict()`` -> {name: ndarray}, ``load_state_dict``),
``.optimizer`` (``param_groups`` with ``"lr"``) and ``.stop_training``, which a callback
sets to True to end training after the current epoch.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import os
import tempfile
import warnings

import numpy as np

__all__ = [
    "Callback",
    "CallbackList",
    "EarlyStopping",
    "LRSchedulerCallback",
    "ModelCheckpoint",
    "atomic_write",
    "wants_batch_hooks",
]


@contextlib.contextmanager
def atomic_write(path):
    """Context manager yielding a temporary path next to ``path``.

    Write the file to the yielded path; on a clean exit it is flushed to disk
    (``fsync``), given the mode a new file gets under the umask (or the mode of the file
    it replaces) and moved over ``path`` with ``os.replace`` (atomic on POSIX and
    Windows), so readers never see a half-written file, even after a crash or
    ``kill -9``. On an exception the temporary file is removed and ``path`` is
    untouched. Missing parent directories are created.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb") as written:
            os.fsync(written.fileno())
        os.chmod(tmp, _mode_for(path))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def _mode_for(path) -> int:
    """Permission bits for a file written at ``path``: those of the file it replaces,
    else what ``open()`` would give a new file (0o666 less the umask; mkstemp's
    temporary files are 0o600)."""
    try:
        return os.stat(path).st_mode & 0o777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def check_writable(path, what: str) -> None:
    """Raise ValueError naming ``what`` and ``path`` unless a file can be written there:
    not a directory, and a file can be created in its folder (the nearest existing one,
    as ``atomic_write`` creates missing ones; probed by creating and removing a
    temporary file, since permission bits do not tell for root or special file
    systems). Called before training, so nothing trained is lost to a bad path
    afterwards."""
    path = os.path.abspath(os.fspath(path))
    if os.path.isdir(path):
        raise ValueError(f"{what} {path!r} is a directory, not a file")
    folder = os.path.dirname(path)
    while not os.path.isdir(folder):
        if os.path.exists(folder):
            raise ValueError(f"{what} {path!r}: {folder!r} is not a directory")
        folder = os.path.dirname(folder)
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".gpunet-write-check.")
    except OSError as error:
        raise ValueError(
            f"{what} {path!r}: cannot write in {folder!r} ({error.strerror})"
        ) from None
    os.close(fd)
    os.remove(probe)


def _as_float(value) -> float:
    """A Python float from a Python/NumPy/CuPy scalar or 0-d array."""
    if hasattr(value, "item"):
        value = value.item()
    return float(value)


def _plain(value):
    """A float for numeric scalars, the value itself otherwise (for formatting/metadata)."""
    try:
        return _as_float(value)
    except (TypeError, ValueError):
        return value


def _copy_state(state: dict) -> dict:
    """Detached copies of a state dict's arrays (the model keeps training in place)."""
    return {k: (v.copy() if hasattr(v, "copy") else v) for k, v in state.items()}


_MAX_METRICS = ("acc", "auc")  # substrings
_MAX_METRIC_NAMES = {"precision", "recall", "f1", "f1_score", "r2", "r2_score"}


def _resolve_mode(mode: str, monitor: str, owner: str) -> str:
    """``"min"`` or ``"max"`` for ``mode`` (``"auto"`` infers it from ``monitor``).

    Auto: maximize when the metric name (without ``val_``) contains ``acc`` or ``auc``
    or is one of precision, recall, f1, r2; minimize otherwise (losses, errors).
    An unknown mode warns and falls back to auto, as in Keras.
    """
    if mode not in ("auto", "min", "max"):
        warnings.warn(f"{owner} mode {mode} is unknown, fallback to auto mode.", stacklevel=3)
        mode = "auto"
    if mode != "auto":
        return mode
    name = monitor.removeprefix("val_").lower()
    if any(s in name for s in _MAX_METRICS) or name in _MAX_METRIC_NAMES:
        return "max"
    return "min"


class Callback:
    """Base class: every hook is a no-op; subclasses override the ones they need.

    ``self.trainer`` is set by :meth:`set_trainer`; ``self.model`` and ``self.optimizer``
    are shortcuts to the trainer's.
    """

    def __init__(self):
        self.trainer = None

    def set_trainer(self, trainer) -> None:
        self.trainer = trainer

    @property
    def model(self):
        return getattr(self.trainer, "model", None)

    @property
    def optimizer(self):
        return getattr(self.trainer, "optimizer", None)

    def on_train_begin(self, logs=None) -> None:
        """Before the first epoch."""

    def on_train_end(self, logs=None) -> None:
        """After the last epoch (also after an early stop)."""

    def on_epoch_begin(self, epoch: int, logs=None) -> None:
        """Before epoch ``epoch`` (0-based)."""

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        """After epoch ``epoch`` (0-based); ``logs`` holds its metrics."""

    def on_batch_begin(self, iteration: int, logs=None) -> None:
        """Before an optimizer step."""

    def on_batch_end(self, iteration: int, logs=None) -> None:
        """After the optimizer step number ``iteration``."""


class CallbackList(Callback):
    """Dispatches each hook to its callbacks, in order. ``None`` entries are skipped."""

    def __init__(self, callbacks=None):
        super().__init__()
        self.callbacks = [cb for cb in (callbacks or []) if cb is not None]
        for cb in self.callbacks:
            if not isinstance(cb, Callback):
                raise TypeError(f"callbacks must be Callback instances, got {type(cb).__name__}")

    def __iter__(self):
        return iter(self.callbacks)

    def __len__(self) -> int:
        return len(self.callbacks)

    def __repr__(self) -> str:
        return f"CallbackList({[type(cb).__name__ for cb in self.callbacks]})"

    def append(self, callback: Callback) -> None:
        if not isinstance(callback, Callback):
            raise TypeError(f"callbacks must be Callback instances, got {type(callback).__name__}")
        self.callbacks.append(callback)
        if self.trainer is not None:
            callback.set_trainer(self.trainer)

    def set_trainer(self, trainer) -> None:
        self.trainer = trainer
        for cb in self.callbacks:
            cb.set_trainer(trainer)

    def on_train_begin(self, logs=None) -> None:
        for cb in self.callbacks:
            cb.on_train_begin(logs)

    def on_train_end(self, logs=None) -> None:
        for cb in self.callbacks:
            cb.on_train_end(logs)

    def on_epoch_begin(self, epoch, logs=None) -> None:
        for cb in self.callbacks:
            cb.on_epoch_begin(epoch, logs)

    def on_epoch_end(self, epoch, logs=None) -> None:
        for cb in self.callbacks:
            cb.on_epoch_end(epoch, logs)

    def on_batch_begin(self, iteration, logs=None) -> None:
        for cb in self.callbacks:
            cb.on_batch_begin(iteration, logs)

    def on_batch_end(self, iteration, logs=None) -> None:
        for cb in self.callbacks:
            cb.on_batch_end(iteration, logs)


class EarlyStopping(Callback):
    """Stop training when a monitored metric has stopped improving (Keras 3 semantics).

    Args:
        monitor: key of ``logs`` to watch, default ``"val_loss"``.
        min_delta: a change smaller than ``|min_delta|`` is no improvement; improvement
            means ``current - min_delta < best`` (min mode, ``min_delta`` negated) or
            ``current - min_delta > best`` (max mode).
        patience: epochs without improvement after which training stops. Stops at the
            end of the first epoch (> 0) where ``wait >= patience``.
        verbose: 1 prints when it stops and when it restores weights.
        mode: ``"min"``, ``"max"`` or ``"auto"`` (max for names containing ``acc`` or
            ``auc``, or precision/recall/f1/r2; min otherwise).
        baseline: if set, ``wait`` resets only when a value beats both the best so far
            and the baseline, so training stops at the first non-improving epoch once
            ``patience`` epochs have passed without beating the baseline (the best epoch
            is still tracked and restorable). As in Keras 3, an epoch that improves on
            the best never stops training, even if it misses the baseline.
        restore_best_weights: keep a copy of the weights of the best epoch and load it
            in :meth:`on_train_end`, whether or not training was stopped early.
        start_from_epoch: epochs ``< start_from_epoch`` are ignored (warm-up).

    Attributes: ``best``, ``best_epoch`` (0-based), ``wait``, ``stopped_epoch`` (0 if
    training was never stopped), ``best_weights``. A missing ``monitor`` key warns
    (naming the available keys) and the epoch is skipped.
    """

    def __init__(
        self,
        monitor: str = "val_loss",
        min_delta: float = 0,
        patience: int = 0,
        verbose: int = 0,
        mode: str = "auto",
        baseline: float | None = None,
        restore_best_weights: bool = False,
        start_from_epoch: int = 0,
    ):
        super().__init__()
        self.monitor = monitor
        self.patience = patience
        self.verbose = verbose
        self.baseline = baseline
        self.restore_best_weights = restore_best_weights
        self.start_from_epoch = start_from_epoch
        self.mode = _resolve_mode(mode, monitor, "EarlyStopping")
        # Keras: min_delta is stored as |min_delta|, negated in min mode.
        self.min_delta = -abs(min_delta) if self.mode == "min" else abs(min_delta)
        self._reset()

    def __repr__(self) -> str:
        return (
            f"EarlyStopping(monitor={self.monitor!r}, mode={self.mode!r}, "
            f"patience={self.patience}, min_delta={abs(self.min_delta)})"
        )

    def _reset(self) -> None:
        self.wait = 0
        self.stopped_epoch = 0
        self.best_weights = None
        self.best_epoch = 0
        self.best = math.inf if self.mode == "min" else -math.inf

    def monitor_op(self, a: float, b: float) -> bool:
        return a < b if self.mode == "min" else a > b

    def _is_improvement(self, value: float, reference: float) -> bool:
        return self.monitor_op(value - self.min_delta, reference)

    def on_train_begin(self, logs=None) -> None:
        # Instances can be re-used: a new fit starts from scratch.
        self._reset()

    def get_monitor_value(self, logs):
        logs = logs or {}
        value = logs.get(self.monitor)
        if value is None:
            warnings.warn(
                f"Early stopping conditioned on metric `{self.monitor}` which is not "
                f"available. Available metrics are: {','.join(logs.keys())}",
                stacklevel=3,
            )
            return None
        return _as_float(value)

    def get_state(self) -> dict:
        """What a checkpoint keeps to resume (``best_weights`` is not kept)."""
        return {
            "wait": self.wait,
            "stopped_epoch": self.stopped_epoch,
            "best": self.best,
            "best_epoch": self.best_epoch,
        }

    def set_state(self, state: dict) -> None:
        self.wait, self.stopped_epoch = int(state["wait"]), int(state["stopped_epoch"])
        self.best, self.best_epoch = float(state["best"]), int(state["best_epoch"])

    def on_epoch_end(self, epoch, logs=None) -> None:
        current = self.get_monitor_value(logs)
        if current is None or epoch < self.start_from_epoch:
            return
        if not math.isfinite(current):  # never the best; counts as no improvement
            self.wait += 1
            if self.wait >= self.patience and epoch > 0:
                self.stopped_epoch = epoch
                self.trainer.stop_training = True
            return
        if self.restore_best_weights and self.best_weights is None:
            # the first monitored epoch's weights are the best seen so far
            self.best_weights = _copy_state(self.model.state_dict())
            self.best_epoch = epoch

        self.wait += 1
        if self._is_improvement(current, self.best):
            self.best = current
            self.best_epoch = epoch
            if self.restore_best_weights:
                self.best_weights = _copy_state(self.model.state_dict())
            # restart the count only when beating both the best and the baseline
            if self.baseline is None or self._is_improvement(current, self.baseline):
                self.wait = 0
            return

        if self.wait >= self.patience and epoch > 0:
            self.stopped_epoch = epoch
            self.trainer.stop_training = True

    def on_train_end(self, logs=None) -> None:
        if self.stopped_epoch > 0 and self.verbose > 0:
            print(f"Epoch {self.stopped_epoch + 1}: early stopping")
        if self.restore_best_weights and self.best_weights is not None:
            if self.verbose > 0:
                print(
                    "Restoring model weights from the end of the best epoch: "
                    f"{self.best_epoch + 1}."
                )
            self.model.load_state_dict(self.best_weights)


def _is_plateau_scheduler(scheduler) -> bool:
    """True for schedulers stepped with a metric (torch's ``ReduceLROnPlateau.step(m)``)."""
    if any(cls.__name__ == "ReduceLROnPlateau" for cls in type(scheduler).__mro__):
        return True
    try:
        params = list(inspect.signature(scheduler.step).parameters.values())
    except (TypeError, ValueError):
        return False
    if not params:
        return False
    first = params[0]
    if first.kind not in (first.POSITIONAL_ONLY, first.POSITIONAL_OR_KEYWORD):
        return False
    return first.name in ("metrics", "metric") or first.default is inspect.Parameter.empty


class LRSchedulerCallback(Callback):
    """Steps a learning-rate scheduler from the fit loop.

    Args:
        scheduler: any object with ``step()`` (a ``gpunet.optim.lr_scheduler`` or
            torch-like scheduler). A plateau scheduler (class named
            ``ReduceLROnPlateau``, or whose ``step`` takes a required first argument /
            one named ``metrics``) is stepped with ``logs[monitor]``.
        monitor: metric passed to a plateau scheduler. Default ``"val_loss"``, falling
            back to ``"loss"`` (with a one-time warning) when no validation metric is
            logged; an explicitly chosen monitor that is missing warns and skips the
            step. Ignored for other schedulers.
        interval: ``"epoch"`` steps in :meth:`on_epoch_end`, ``"batch"`` after every
            optimizer step (:meth:`on_batch_end`).

    Attribute ``steps`` counts the scheduler steps taken.
    """

    def __init__(self, scheduler, monitor: str | None = None, interval: str = "epoch"):
        super().__init__()
        if not callable(getattr(scheduler, "step", None)):
            raise TypeError(f"scheduler must have a step() method, got {type(scheduler).__name__}")
        if interval not in ("epoch", "batch"):
            raise ValueError(f"interval must be 'epoch' or 'batch', got {interval!r}")
        self.scheduler = scheduler
        self.interval = interval
        self.needs_metric = _is_plateau_scheduler(scheduler)
        self._explicit_monitor = monitor is not None
        self.monitor = monitor if monitor is not None else "val_loss"
        self.steps = 0
        self._warned = False

    def __repr__(self) -> str:
        monitor = f", monitor={self.monitor!r}" if self.needs_metric else ""
        return (
            f"LRSchedulerCallback({type(self.scheduler).__name__}{monitor}, "
            f"interval={self.interval!r})"
        )

    def _warn_once(self, message: str) -> None:
        if not self._warned:
            warnings.warn(message, stacklevel=4)
            self._warned = True

    def _metric(self, logs):
        logs = logs or {}
        if self.monitor in logs:
            return _as_float(logs[self.monitor])
        available = ", ".join(logs.keys())
        if not self._explicit_monitor and "loss" in logs:
            self._warn_once(
                f"LRSchedulerCallback: {self.monitor!r} is not in the logs (available: "
                f"{available}); stepping {type(self.scheduler).__name__} on 'loss' instead"
            )
            return _as_float(logs["loss"])
        self._warn_once(
            f"LRSchedulerCallback: {self.monitor!r} is not in the logs (available: "
            f"{available}); the scheduler was not stepped"
        )
        return None

    def _step(self, logs) -> None:
        if self.needs_metric:
            value = self._metric(logs)
            if value is None:
                return
            self.scheduler.step(value)
        else:
            self.scheduler.step()
        self.steps += 1

    def on_train_begin(self, logs=None) -> None:
        self._warned = False

    def on_epoch_end(self, epoch, logs=None) -> None:
        if self.interval == "epoch":
            self._step(logs)

    def on_batch_end(self, iteration, logs=None) -> None:
        if self.interval == "batch":
            self._step(logs)


def wants_batch_hooks(callbacks) -> bool:
    """True if any callback acts after each optimizer step (then every step must
    return to Python, which rules out running many steps in one compiled call)."""
    for cb in callbacks:
        if isinstance(cb, LRSchedulerCallback):
            if cb.interval == "batch":
                return True
        elif type(cb).on_batch_end is not Callback.on_batch_end:
            return True
    return False


class ModelCheckpoint(Callback):
    """Save a checkpoint after epochs (Keras's ``ModelCheckpoint``).

    Args:
        filepath: target path; may hold ``str.format`` fields filled with ``epoch``
            (1-based, as Keras) and the logs, e.g.
            ``"ckpt/w-{epoch:03d}-{val_loss:.3f}.safetensors"``. Checked when training
            begins (fields the logs will not have, an unwritable folder), before any
            epoch runs.
        monitor: metric compared when ``save_best_only``.
        mode: ``"min"``, ``"max"`` or ``"auto"`` (as :class:`EarlyStopping`).
        save_best_only: save only when ``monitor`` improves on the best so far; a missing
            or non-finite ``monitor`` warns and saves nothing (NaN is never the best).
        save_weights_only: False (default): a full checkpoint (model, optimizer,
            schedulers, generator, shuffle seed, epoch, History; see
            :mod:`gpunet.train.checkpoint`), which ``Trainer.fit(resume_from=path)``
            continues exactly. True: the model's weights only, a plain safetensors file
            ``model.load_state_dict(safetensors.numpy.load_file(path))`` reads.
        keep_last: keep only the newest ``keep_last`` files this callback wrote (None:
            all of them).
        verbose: 1 prints each save.

    Files are written to a temporary file in the same directory and moved into place
    with ``os.replace``: a crash (even ``kill -9``) never leaves a half-written
    checkpoint, and the previous one stays whole. ``gpunet.io.load_weights`` reads the
    weights of either kind.

    Attributes: ``best`` (monitored value of the last save when ``save_best_only``),
    ``last_saved`` (path of the last file written, or None), ``saved`` (the paths
    written, oldest first, that still exist).
    """

    def __init__(
        self,
        filepath,
        monitor: str = "val_loss",
        mode: str = "auto",
        save_best_only: bool = False,
        save_weights_only: bool = False,
        keep_last: int | None = None,
        verbose: int = 0,
    ):
        super().__init__()
        if keep_last is not None and (
            isinstance(keep_last, bool) or not isinstance(keep_last, int) or keep_last < 1
        ):
            raise ValueError(f"keep_last must be a positive int or None, got {keep_last!r}")
        self.filepath = os.fspath(filepath)
        self.monitor = monitor
        self.save_best_only = save_best_only
        self.save_weights_only = save_weights_only
        self.keep_last = keep_last
        self.verbose = verbose
        self.mode = _resolve_mode(mode, monitor, "ModelCheckpoint")
        self.best = math.inf if self.mode == "min" else -math.inf
        self.last_saved = None
        self.saved: list[str] = []

    def __repr__(self) -> str:
        return (
            f"ModelCheckpoint({self.filepath!r}, monitor={self.monitor!r}, "
            f"mode={self.mode!r}, save_best_only={self.save_best_only})"
        )

    def check_config(self, log_keys) -> None:
        """Raise ValueError unless the path template formats with the keys every
        epoch's logs will hold and its folder can be written (called by the fit loop
        before training)."""
        check_path_template(self.filepath, log_keys, "ModelCheckpoint filepath")

    def get_state(self) -> dict:
        return {"best": self.best, "saved": list(self.saved)}

    def set_state(self, state: dict) -> None:
        self.best = float(state["best"])
        self.saved = [p for p in state.get("saved", []) if os.path.exists(p)]

    def on_train_begin(self, logs=None) -> None:
        self.best = math.inf if self.mode == "min" else -math.inf
        self.saved = []

    def _format_path(self, epoch: int, logs: dict) -> str:
        fields = {k: _plain(v) for k, v in logs.items() if k != "epoch"}
        try:
            return self.filepath.format(epoch=epoch + 1, **fields)
        except KeyError as exc:
            raise KeyError(
                f"ModelCheckpoint filepath {self.filepath!r} names {exc} which is not in "
                f"the logs (available: epoch, {', '.join(logs.keys())})"
            ) from None

    def on_epoch_end(self, epoch, logs=None) -> None:
        logs = logs or {}
        if self.save_best_only:
            if self.monitor not in logs:
                warnings.warn(
                    f"Can save best model only with {self.monitor} available; available "
                    f"metrics are: {','.join(logs.keys())}. Skipping.",
                    stacklevel=2,
                )
                return
            current = _as_float(logs[self.monitor])
            if not math.isfinite(current):
                warnings.warn(
                    f"ModelCheckpoint: {self.monitor} is {current} at epoch {epoch + 1}; "
                    "not saved (a non-finite value is never the best)",
                    stacklevel=2,
                )
                return
            better = current < self.best if self.mode == "min" else current > self.best
            if not better:
                return
            self.best = current
        path = self._format_path(epoch, logs)
        if self.save_weights_only or self.trainer is None:
            metadata = {"epoch": str(epoch + 1)}
            metadata.update({str(k): str(_plain(v)) for k, v in logs.items() if k != "epoch"})
            self.save(path, metadata)
        else:
            self.trainer.save_checkpoint(path)
            self.last_saved = os.fspath(path)
        self._rotate(path)
        if self.verbose > 0:
            print(f"Epoch {epoch + 1}: saved checkpoint to {path}")

    def _rotate(self, path) -> None:
        path = os.fspath(path)
        if path in self.saved:
            self.saved.remove(path)
        self.saved.append(path)
        if self.keep_last is None:
            return
        while len(self.saved) > self.keep_last:
            old = self.saved.pop(0)
            with contextlib.suppress(FileNotFoundError):
                os.remove(old)

    def save(self, path, metadata=None) -> None:
        """Write the model's ``state_dict`` to ``path`` atomically (safetensors)."""
        from safetensors.numpy import save_file

        tensors = {
            str(k): np.ascontiguousarray(np.asarray(v)) for k, v in self.model.state_dict().items()
        }
        with atomic_write(path) as tmp:
            save_file(tensors, tmp, metadata=metadata)
        self.last_saved = os.fspath(path)


def check_path_template(template, log_keys, what: str) -> str:
    """The path ``template`` gives for epoch 1 with every key of ``log_keys``; raises
    ValueError naming ``what`` when a field is unknown or malformed, or the folder
    cannot be written."""
    template = os.fspath(template)
    sample = {k: 0.5 for k in log_keys if k != "epoch"}
    try:
        path = template.format(epoch=1, **sample)
    except KeyError as exc:
        raise ValueError(
            f"{what} {template!r} names {exc}, which the logs will not have (available: "
            f"epoch, {', '.join(k for k in log_keys if k != 'epoch')})"
        ) from None
    except (ValueError, IndexError) as exc:
        raise ValueError(f"{what} {template!r} is not a valid format string: {exc}") from None
    check_writable(path, what)
    return path
