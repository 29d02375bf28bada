"""The autograd engine: any model, one Python step per batch through the graph."""

from __future__ import annotations

from gpunet.autograd import Tensor
from gpunet.regularizers import penalty
from gpunet.train.engines.base import Engine
from gpunet.train.metrics import correct_count


class AutogradEngine(Engine):
    """Forward, loss (plus the layers' penalties, ``gpunet.regularizers.penalty``),
    backward and optimizer step per batch through autograd. Trains the model's own
    arrays, so ``write_back`` has nothing to do."""

    name = "autograd"
    trains_in_place = True

    def __init__(self, model, loss, optimizer, track_accuracy: bool):
        self.model, self.loss, self.optimizer = model, loss, optimizer
        self.track_accuracy = track_accuracy
        self.X = self.y = None
        self.batch_size = None

    def prepare(self, X, y, batch_size: int) -> None:
        """Keeps references to ``X`` (N, ...) and ``y`` (N, ...): each batch's rows are
        gathered as the epoch goes, so a shuffled epoch never copies the data set."""
        self.X, self.y, self.batch_size = X, y, batch_size

    def run_epoch(self, order=None, on_batch_end=None, control=None) -> tuple[float, int | None]:
        """See :meth:`Engine.run_epoch`; ``on_batch_end(iteration, {"loss": float})`` is
        called after every optimizer step. A stop request is honoured between steps, so
        every parameter has had the same number of updates."""
        X, y, batch_size = self.X, self.y, self.batch_size
        if X is None:
            raise RuntimeError("prepare() must be called before run_epoch()")
        backend = self.model_backend()
        xp = backend.xp
        n = X.shape[0]
        loss_sum = xp.zeros((), dtype=X.dtype)
        correct = xp.zeros((), dtype="int64") if self.track_accuracy else None
        for iteration, start in enumerate(range(0, n, batch_size)):
            rows = (
                slice(start, start + batch_size)
                if order is None
                else order[start : start + batch_size]
            )
            xb = Tensor._wrap(X[rows], backend)
            yb = Tensor._wrap(y[rows], backend)
            out = self.model(xb)
            loss = self.loss(out, yb)
            reg = penalty(self.model)  # Keras: layer penalties join the loss
            if reg is not None:
                loss = loss + reg
            if control is not None and control.skip_nonfinite(bool(xp.isfinite(loss.data))):
                break
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            loss_sum = loss_sum + loss.data * xb.shape[0]
            if correct is not None:
                correct = correct + correct_count(out.data, yb.data, self.loss)
            if on_batch_end is not None:
                on_batch_end(iteration, {"loss": float(loss.data)})
            if control is not None and control.step_done():
                break
        return float(loss_sum), (None if correct is None else int(correct))

    def write_back(self) -> None:
        """Nothing to do: the steps updated the model and the optimizer in place."""

    def model_backend(self):
        return next(self.model.parameters()).backend
