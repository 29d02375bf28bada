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


class Engine(abc.ABC):
    """Runs epochs of training steps for one (model, loss, optimizer).

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
    def run_epoch(self, order=None, on_batch_end=None) -> tuple[float, int | None]:
        """One epoch over the prepared data.

        Batch ``k`` is the rows ``order[k*batch_size : (k+1)*batch_size]`` (``order``:
        (N,) int permutation on the data's device; None: the rows in order); the last
        batch may be partial. ``on_batch_end(iteration, logs)``, if given, is called
        after optimizer steps (every step by engines that return to Python per batch; an
        engine that runs the epoch in one compiled call may call it less often or not at
        all: the selector only picks such an engine when no callback needs every step).

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

    def train_epoch(self, X, y, batch_size: int, on_batch_end=None, order=None):
        """``prepare`` + ``run_epoch`` + ``write_back``: one epoch over ``X`` / ``y``;
        returns ``run_epoch``'s ``(loss_sum, correct)``."""
        self.prepare(X, y, batch_size)
        result = self.run_epoch(order, on_batch_end)
        self.write_back()
        return result
