"""Time to accuracy: the batch, stochastic and mini-batch regimes on a real data set.

Each regime trains the same network (``workloads.DATASET_WIDTHS``) with SGD (momentum
0.9) for the same number of epochs, at a learning rate chosen per regime by a small
sweep: gpunet trains ``sweep_epochs`` epochs at every rate of the regime's
``LR_GRIDS`` entry and the rate with the best validation accuracy after them wins (ties:
the larger rate; a run whose loss is not finite loses). Every implementation then
trains the full budget at that rate, evaluated on the validation split after each
epoch; its curve holds validation loss and accuracy against epochs and against
training seconds (the evaluations are not timed).
``time_to_target`` reads off the seconds at which a curve first reaches the target.
"""

from __future__ import annotations

import math
import time

import numpy as np

from gpunet.bench.throughput import PAUSE_S

REGIMES = {"batch": None, "stochastic": 1, "minibatch": 32}  # name -> batch size (None: N)
# per regime, four rates around where each regime trains well with momentum 0.9 on
# standardised inputs (a first 7-rate grid from 1 to 0.001, 20 epochs, picked 1.0 for
# full batches, 0.03 for 32-row batches, 0.003 and 0.001 for single rows)
LR_GRIDS = {
    "batch": (3.0, 1.0, 0.3, 0.1),
    "minibatch": (0.3, 0.1, 0.03, 0.01),
    "stochastic": (0.01, 0.003, 0.001, 0.0003),
}
OPTIMIZER = "sgd"  # momentum 0.9 (peers.OPTIMIZERS), the learning rate from the sweep
TARGETS = {"digits": 0.95, "mnist1d": 0.6}  # validation accuracy to reach


def time_to_target(seconds, accuracy, target: float):
    """``(seconds, epoch)`` at the first epoch whose accuracy is >= ``target``, or
    ``(None, None)`` when none is. ``seconds[i]`` / ``accuracy[i]``: training seconds
    so far and validation accuracy after epoch ``i + 1`` (no interpolation between
    epochs: accuracy is only known at their ends)."""
    for i, (t, acc) in enumerate(zip(seconds, accuracy)):
        if acc is not None and not math.isnan(acc) and acc >= target:
            return t, i + 1
    return None, None


def batch_size_of(regime: str, n_train: int) -> int:
    """The batch size of a regime on ``n_train`` training samples."""
    size = REGIMES[regime]
    return n_train if size is None else size


def sweep_lr(make_peer, data, regime: str, epochs: int, grid=None) -> dict:
    """Validation accuracy after ``epochs`` epochs for every rate of ``grid`` (default
    ``LR_GRIDS[regime]``), trained by ``make_peer()`` (gpunet) on ``data`` = (X_train,
    y_train, X_val, y_val); ``{"grid": {lr: accuracy or None (diverged)}, "lr": the
    chosen rate}``."""
    X, y, X_val, y_val = data
    batch = batch_size_of(regime, len(y))
    grid = LR_GRIDS[regime] if grid is None else grid
    scores = {}
    for lr in grid:
        peer = make_peer()
        peer.setup(OPTIMIZER, np.float32, lr=lr)
        try:
            curve = peer.train_curve(X, y, X_val, y_val, batch, epochs)
            acc, loss = curve["val_accuracy"][-1], curve["val_loss"][-1]
            scores[lr] = acc if math.isfinite(loss) else None
        except (ArithmeticError, ValueError, RuntimeError):  # a non-finite loss
            scores[lr] = None
    finite = {lr: a for lr, a in scores.items() if a is not None}
    chosen = max(finite, key=lambda lr: (finite[lr], lr)) if finite else min(grid)
    return {"grid": {str(lr): a for lr, a in scores.items()}, "lr": chosen}


def run_curve(peer, data, regime: str, lr: float, epochs: int, target: float) -> dict:
    """One implementation's curve at the chosen rate, with the time to ``target``."""
    X, y, X_val, y_val = data
    batch = batch_size_of(regime, len(y))
    peer.setup(OPTIMIZER, np.float32, lr=lr)
    time.sleep(PAUSE_S)  # the previous run's pool threads go to sleep
    peer.train(X[: 2 * batch], y[: 2 * batch], batch)  # compiles / allocates, untimed
    peer.setup(OPTIMIZER, np.float32, lr=lr)
    curve = peer.train_curve(X, y, X_val, y_val, batch, epochs)
    seconds, epoch = time_to_target(curve["seconds"], curve["val_accuracy"], target)
    return {
        "framework": peer.key,
        "label": peer.label,
        "batch_size": batch,
        "lr": lr,
        "epochs": epochs,
        "target": target,
        "curve": curve,
        "seconds_to_target": seconds,
        "epochs_to_target": epoch,
        "final_val_accuracy": curve["val_accuracy"][-1],
        "seconds_total": curve["seconds"][-1],
        "samples_per_s": len(y) * epochs / curve["seconds"][-1],
        "info": peer.info(),
    }
