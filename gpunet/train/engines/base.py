"""The interface every training engine implements.

The fit loop drives an engine in three calls (see ``gpunet.train.loop.Trainer.fit``)::

    engine.prepare(X, y, batch_size)             # once per fit
    for epoch in ...:
        loss_sum, correct = engine.run_epoch(order, on_batch_end)
        engine.write_back()                      # before validation and callbacks

Shapes: ``X`` (N, features...) floating, ``y`` (N,) int class labels or (N, outputs...)
regression targets in the model's dtype, both already validated and on the model's
device (``Trainer._prepare``); ``order`` (N,) int, a permutation of ``range(N)`` on the
same device, or None for the rows in order.
"""

from __future__ import annotations

import abc

import numpy as np


class StepControl:
    """What the fit loop and a running epoch tell each other, in one int64 array that a
    compiled epoch reads and writes between steps (``array`` (4,)):

    - ``STOP``: set by the fit loop (Ctrl-C); the engine ends the epoch at the next
      step boundary, every step before it complete.
    - ``STEPS``: steps the engine completed this epoch.
    - ``NONFINITE``: the 0-based step whose loss was NaN or infinite (-1: none). With
      ``stop_on_nonfinite`` the engine ends the epoch there, before that step's update
      (an engine that trains copies may have applied it to the copies).
    - ``HALT``: 1 when ``stop_on_nonfinite``.
    """

    STOP, STEPS, NONFINITE, HALT = 0, 1, 2, 3

    def __init__(self, stop_on_nonfinite: bool = True):
        self.array = np.zeros(4, np.int64)
        self.array[self.HALT] = int(stop_on_nonfinite)
        self.reset()

    @property
    def stop_on_nonfinite(self) -> bool:
        return bool(self.array[self.HALT])

    def reset(self) -> None:
        """Before each epoch: no steps, no bad step (a stop request stays)."""
        self.array[self.STEPS] = 0
        self.array[self.NONFINITE] = -1

    def request_stop(self) -> None:
        self.array[self.STOP] = 1

    @property
    def stop_requested(self) -> bool:
        return bool(self.array[self.STOP])

    @property
    def steps(self) -> int:
        return int(self.array[self.STEPS])

    @property
    def nonfinite_step(self) -> int:
        return int(self.array[self.NONFINITE])

    def skip_nonfinite(self, loss_is_finite: bool) -> bool:
        """Before a step's update (a Python engine's loop): record a non-finite loss;
        True when the update must not run and the epoch ends here."""
        if not loss_is_finite and self.array[self.NONFINITE] < 0:
            self.array[self.NONFINITE] = self.array[self.STEPS]
        return not loss_is_finite and self.stop_on_nonfinite

    def step_done(self) -> bool:
        """After a step's update: count it; True when a stop was requested."""
        self.array[self.STEPS] += 1
        return self.stop_requested


class Engine(abc.ABC):
    """Runs epochs of training steps for one (model, loss, optimizer), kept as the
    attributes ``model``, ``loss``, ``optimizer``.

    Between ``write_back`` and the next ``run_epoch`` the model's parameters and the
    optimizer's ``state`` / ``param_groups`` belong to the caller (callbacks, LR
    schedulers, another engine may read or change them); an engine that keeps its own
    copies reads them again at the start of each epoch.
    """

    #: short name reported as ``Trainer.engine_name`` ("autograd", "fused", ...)
    name: str
    #: True when ``run_epoch`` reports no progress within the epoch (a fused engine runs
    #: it as one call): the fit loop's progress bar then counts epochs, not samples
    whole_epochs: bool = False

    @abc.abstractmethod
    def prepare(self, X, y, batch_size: int) -> None:
        """Bind the training arrays and the batch size for the coming epochs.

        ``X`` (N, ...) and ``y`` (N,) labels or (N, ...) targets are validated arrays on
        the model's device; ``batch_size`` in [1, N]. Converts or moves data and
        allocates scratch as the engine needs; may be called again with new data (the
        next fit), which replaces the old.
        """

    @abc.abstractmethod
    def run_epoch(
        self, order=None, on_batch_end=None, control: StepControl | None = None
    ) -> tuple[float, int | None]:
        """One epoch over the prepared data.

        Batch ``k`` is the rows ``order[k*batch_size : (k+1)*batch_size]`` (``order``:
        (N,) int permutation on the data's device; None: the rows in order); the last
        batch may be partial. ``on_batch_end(iteration, logs)``, if given, is called
        after optimizer steps (every step by engines that return to Python per batch; an
        engine that runs the epoch in one compiled call may call it less often or not at
        all: the selector only picks such an engine when no callback needs every step).

        ``control`` (optional): checked between steps; the epoch ends early on a stop
        request, or at a step whose loss is not finite when ``control.stop_on_nonfinite``
        (that step's update is not applied; the engine records it in ``control``).

        Returns ``(loss_sum, correct)``: the sample-weighted sum of the batch losses
        (Python float) and the number of correct predictions (Python int; None when
        accuracy is not tracked). Call :meth:`write_back` before anything reads the
        model or the optimizer again.
        """

    @abc.abstractmethod
    def write_back(self) -> None:
        """Leave the model's parameters and the optimizer's state exactly as the
        autograd path leaves them after the epoch (no-op for engines that train the
        model's own arrays). Calling it again without a new epoch changes nothing."""

    #: True when the engine runs ``Dropout`` layers (``qualify.dense_layers``)
    runs_dropout: bool = False
    #: True when the engine runs ``DropConnectDense`` layers
    runs_dropconnect: bool = False
    #: True when the steps update the model's own arrays (the fit loop then keeps a copy
    #: of the last good epoch's state to restore after a non-finite step); an engine
    #: training copies simply does not write back
    trains_in_place: bool = False

    def plan(self, epochs: int) -> None:
        """Told by the fit loop, before ``prepare``: how many epochs this fit will run
        (an engine that adapts uses it; the rest ignore it)."""
        return None

    def parameters_finite(self) -> bool:
        """True when every trained parameter is finite (after ``run_epoch``, before
        ``write_back``)."""
        for p in self.model.parameters():
            if not bool(p.backend.xp.isfinite(p.data).all()):
                return False
        return True

    def train_epoch(self, X, y, batch_size: int, on_batch_end=None, order=None):
        """``prepare`` + ``run_epoch`` + ``write_back``: one epoch over ``X`` / ``y``;
        returns ``run_epoch``'s ``(loss_sum, correct)``."""
        self.prepare(X, y, batch_size)
        result = self.run_epoch(order, on_batch_end)
        self.write_back()
        return result
