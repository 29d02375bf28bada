"""Training engines: how one epoch of steps is executed.

``AutogradEngine`` runs any model through the autograd graph, one Python step per
batch. A fused engine (``gpunet.train.fused``) may run many steps in compiled code for
qualifying dense networks; both expose ``train_epoch`` with the same contract.
"""

from __future__ import annotations

from gpunet.autograd import Tensor
from gpunet.train.metrics import correct_count


class AutogradEngine:
    """Forward, loss, backward and optimizer step per batch through autograd."""

    name = "autograd"

    def __init__(self, model, loss, optimizer, track_accuracy: bool):
        self.model, self.loss, self.optimizer = model, loss, optimizer
        self.track_accuracy = track_accuracy

    def train_epoch(self, X, y, batch_size: int, on_batch_end=None, order=None):
        """One pass over ``X`` (N, ...) / ``y`` (N, ...): batch ``k`` is the rows
        ``order[k*batch_size : (k+1)*batch_size]`` (``order`` (N,) int, a permutation;
        None: the rows in order), gathered batch by batch, so a shuffled epoch never
        copies the whole data set.

        Returns ``(loss_sum, correct)``: the sample-weighted loss sum and the number of
        correct predictions (None when accuracy is not tracked), as Python numbers.
        """
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
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            loss_sum = loss_sum + loss.data * xb.shape[0]
            if correct is not None:
                correct = correct + correct_count(out.data, yb.data, self.loss)
            if on_batch_end is not None:
                on_batch_end(iteration, {"loss": float(loss.data)})
        return float(loss_sum), (None if correct is None else int(correct))

    def model_backend(self):
        return next(self.model.parameters()).backend
