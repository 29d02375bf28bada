"""Per-epoch training record, Keras-like (``history.history["val_loss"][epoch]``)."""

from __future__ import annotations

import json
import math

from gpunet.train.callbacks import Callback, _plain, atomic_write

__all__ = ["History"]


class History(Callback):
    """Metrics of every epoch, as returned by ``fit``.

    Attributes:
        history: ``{key: [value per epoch]}`` for every key ever logged (``loss``,
            ``accuracy``, ``val_loss``, ``val_accuracy``, ``lr``, ...). All lists have
            ``len(epoch)`` entries: an epoch that did not log a key holds NaN there.
        epoch: the 0-based indices of the recorded epochs.
        iterations: optimizer steps taken in total.
        iterations_per_epoch: optimizer steps in the last recorded epoch (None until
            known).
        interrupted: True when Ctrl-C ended the fit (``interrupted_at``: the 1-based
            epoch and the steps of it that ran; that partial epoch is not recorded).
        stop_reason: why training stopped early on its own (a non-finite loss with
            ``on_nonfinite="stop"``), else None.

    As a callback it records ``on_epoch_end`` and counts ``on_batch_end`` calls. A fit
    loop that does not report batches calls ``record(epoch, logs, iterations=n)``
    itself. Values are stored as Python floats (non-numeric values as given).
    """

    def __init__(self):
        super().__init__()
        self.history: dict[str, list] = {}
        self.epoch: list[int] = []
        self.iterations = 0
        self.iterations_per_epoch: int | None = None
        self.interrupted = False
        self.interrupted_at: dict | None = None
        self.stop_reason: str | None = None
        self._epoch_batches = 0

    # ---------------------------------------------------------------- recording
    def record(self, epoch: int, logs=None, iterations: int | None = None) -> None:
        """Append epoch ``epoch``'s ``logs``; ``iterations`` steps are added to the total."""
        n_before = len(self.epoch)
        self.epoch.append(int(epoch))
        for key, value in (logs or {}).items():
            series = self.history.setdefault(key, [math.nan] * n_before)
            series.append(_plain(value))
        for series in self.history.values():
            if len(series) == n_before:
                series.append(math.nan)
        if iterations is not None:
            self.iterations += int(iterations)
            self.iterations_per_epoch = int(iterations)

    def on_epoch_begin(self, epoch, logs=None) -> None:
        self._epoch_batches = 0

    def on_batch_end(self, iteration, logs=None) -> None:
        self._epoch_batches += 1

    def on_epoch_end(self, epoch, logs=None) -> None:
        self.record(epoch, logs, iterations=self._epoch_batches or None)
        self._epoch_batches = 0

    # ------------------------------------------------------------------ access
    def __len__(self) -> int:
        return len(self.epoch)

    def __getitem__(self, key: str) -> list:
        return self.history[key]

    def __contains__(self, key: str) -> bool:
        return key in self.history

    def keys(self):
        return self.history.keys()

    def __repr__(self) -> str:
        last = {k: v[-1] for k, v in self.history.items() if v}
        shown = ", ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v!r}" for k, v in last.items()
        )
        return (
            f"History(epochs={len(self.epoch)}, iterations={self.iterations}, "
            f"iterations_per_epoch={self.iterations_per_epoch}, last: {{{shown}}})"
        )

    # ----------------------------------------------------------- serialization
    def to_dict(self) -> dict:
        """A JSON-ready copy: ``{"history", "epoch", "iterations", "iterations_per_epoch"}``."""
        return {
            "history": {k: list(v) for k, v in self.history.items()},
            "epoch": list(self.epoch),
            "iterations": self.iterations,
            "iterations_per_epoch": self.iterations_per_epoch,
            "interrupted": self.interrupted,
            "interrupted_at": self.interrupted_at,
            "stop_reason": self.stop_reason,
        }

    @classmethod
    def from_dict(cls, data: dict) -> History:
        """Inverse of :meth:`to_dict` (``None`` values read back as NaN)."""
        h = cls()
        h.history = {
            k: [math.nan if x is None else x for x in v] for k, v in data["history"].items()
        }
        h.epoch = [int(e) for e in data["epoch"]]
        h.iterations = int(data.get("iterations", 0))
        per_epoch = data.get("iterations_per_epoch")
        h.iterations_per_epoch = None if per_epoch is None else int(per_epoch)
        h.interrupted = bool(data.get("interrupted", False))
        h.interrupted_at = data.get("interrupted_at")
        h.stop_reason = data.get("stop_reason")
        return h

    def to_json(self, path, indent: int | None = 2) -> None:
        """Write :meth:`to_dict` to ``path`` as strict JSON (NaN/inf become ``null``),
        atomically: a temporary file in the same directory, then ``os.replace``."""

        def clean(x):
            return None if isinstance(x, float) and not math.isfinite(x) else x

        data = self.to_dict()
        data["history"] = {k: [clean(x) for x in v] for k, v in data["history"].items()}
        text = json.dumps(data, indent=indent, allow_nan=False)
        with atomic_write(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.write("\n")

    @classmethod
    def from_json(cls, path) -> History:
        """Read a file written by :meth:`to_json`."""
        with open(path, encoding="utf-8") as f:
            return cls.from_dict(json.load(f))
