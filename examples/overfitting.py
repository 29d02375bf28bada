"""Overfitting and the techniques that reduce it, on scikit-learn's digits.

A wide network (64 -> 512 -> 512 -> 10, ReLU) is trained on 10% of the digits (about
180 images) and validated on the other 90%. Without regularization it learns its
training images perfectly and stops improving on the others; the same network is then
trained with one technique each: an L1 or L2 weight penalty, Dropout, DropConnect,
Batch Normalization. Every run starts from the same seed and sees the same batches.

Run ``python examples/overfitting.py`` (needs ``pip install "gpunet[examples]"``); it
writes ``overfitting.png`` (train and validation accuracy per epoch, each technique
against the baseline) and ``overfitting.md`` (final accuracies) next to itself, or to
``--out DIR``.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

import gpunet
from gpunet import nn, optim
from gpunet.data import Standardizer, load_digits
from gpunet.regularizers import L1, L2
from gpunet.train import Callback, Trainer

HIDDEN = 512
TECHNIQUES = ("baseline", "L2 1e-3", "L1 1e-4", "Dropout 0.5", "DropConnect 0.5", "BatchNorm")


def build(technique: str, n_in: int = 64, n_out: int = 10) -> nn.Sequential:
    """The wide network with ``technique`` (one of :data:`TECHNIQUES`), float64."""
    reg = {"L2 1e-3": L2(1e-3), "L1 1e-4": L1(1e-4)}.get(technique)
    dense = nn.DropConnectDense if technique == "DropConnect 0.5" else nn.Dense
    extra = {"p": 0.5} if dense is nn.DropConnectDense else {}
    layers, width = [], n_in
    for _ in range(2):
        if technique == "BatchNorm":
            layers += [nn.Dense(width, HIDDEN), nn.BatchNorm1d(HIDDEN), nn.ReLU()]
        else:
            layers.append(dense(width, HIDDEN, "relu", kernel_regularizer=reg, **extra))
        if technique == "Dropout 0.5":
            layers.append(nn.Dropout(0.5))
        width = HIDDEN
    layers.append(nn.Dense(width, n_out, kernel_regularizer=reg))
    return nn.Sequential(*layers).double()


class Curves(Callback):
    """After each epoch, the accuracy and the cross-entropy (without penalties) on the
    training and validation sets, in eval mode (no dropout masks, BatchNorm's running
    statistics): ``curves["train"|"val"|"train_loss"|"val_loss"]``."""

    def __init__(self, train, val):
        super().__init__()
        self.data = {"train": train, "val": val}
        self.curves = {"train": [], "val": [], "train_loss": [], "val_loss": []}

    def on_epoch_end(self, epoch, logs=None):
        for name, (x, y) in self.data.items():
            logits = self.trainer.predict(x)
            shifted = logits - logits.max(axis=1, keepdims=True)
            log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
            self.curves[name].append(float((logits.argmax(axis=1) == y).mean()))
            self.curves[f"{name}_loss"].append(float(-log_p[np.arange(len(y)), y].mean()))


def load(seed: int = 0):
    """10% of the digits for training, 90% for validation, standardized on the training
    part: ((x_train, y_train), (x_val, y_val)), float64."""
    data = load_digits(seed=seed, test_size=0.9, dtype=np.float64)
    scaler = Standardizer().fit(data.X_train)
    return (scaler.transform(data.X_train), data.y_train), (
        scaler.transform(data.X_test),
        data.y_test,
    )


def run(techniques=TECHNIQUES, epochs: int = 100, seed: int = 0) -> dict:
    """Train one network per technique; returns ``{technique: Curves.curves}``, the
    per-epoch accuracies and losses."""
    train, val = load(seed)
    results = {}
    for technique in techniques:
        gpunet.manual_seed(seed)
        model = build(technique)
        tracker = Curves(train, val)
        trainer = Trainer(
            model,
            "cross_entropy",
            optim.Adam(model.parameters(), lr=1e-3),
            callbacks=[tracker],
            progress=False,
            verbose=0,
        )
        trainer.fit(*train, epochs=epochs, batch_size=32, seed=seed)
        results[technique] = tracker.curves
        print(
            f"{technique:16s} train {tracker.curves['train'][-1]:.3f} "
            f"val {tracker.curves['val'][-1]:.3f} val loss {tracker.curves['val_loss'][-1]:.3f}",
            file=sys.stderr,
        )
    return results


def table(results: dict) -> str:
    """Markdown table of the final accuracies, their gap and the final losses."""
    lines = [
        "| technique | train accuracy | validation accuracy | gap | train loss | validation loss |",
        "|---|---|---|---|---|---|",
    ]
    for technique, c in results.items():
        train, val = c["train"][-1], c["val"][-1]
        lines.append(
            f"| {technique} | {train:.3f} | {val:.3f} | {train - val:.3f} | "
            f"{c['train_loss'][-1]:.3f} | {c['val_loss'][-1]:.3f} |"
        )
    return "\n".join(lines) + "\n"


def plot(results: dict, path: str) -> None:
    """One column per technique: its train (dashed) and validation accuracy (top) and
    cross-entropy (bottom) against the baseline's (grey), as a PNG at ``path``."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    others = [t for t in results if t != "baseline"] or ["baseline"]
    fig, axes = plt.subplots(2, len(others), figsize=(3.3 * len(others), 5.6), squeeze=False)
    base = results.get("baseline")
    for col, technique in enumerate(others):
        for row, (key, label) in enumerate((("", "accuracy"), ("_loss", "cross-entropy"))):
            ax = axes[row, col]
            if base is not None:
                ax.plot(base["train" + key], color="0.6", ls="--", label="baseline train")
                ax.plot(base["val" + key], color="0.6", label="baseline validation")
            ax.plot(results[technique]["train" + key], color="C0", ls="--", label="train")
            ax.plot(results[technique]["val" + key], color="C3", label="validation")
            ax.set_xlabel("epoch")
            ax.set_ylabel(label)
            ax.grid(alpha=0.3)
            if row == 0:
                ax.set_title(technique)
                ax.set_ylim(0.8, 1.005)
            else:
                ax.set_yscale("log")
        axes[0, col].legend(fontsize=6, loc="lower right")
    fig.suptitle("digits, 10% training split, 64-512-512-10 ReLU network, Adam")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=os.path.dirname(os.path.abspath(__file__)))
    args = parser.parse_args(argv)
    results = run(epochs=args.epochs, seed=args.seed)
    os.makedirs(args.out, exist_ok=True)
    plot(results, os.path.join(args.out, "overfitting.png"))
    header = (
        f"Final accuracies after {args.epochs} epochs (seed {args.seed}; "
        "`python examples/overfitting.py`). Gap = train - validation.\n\n"
    )
    with open(os.path.join(args.out, "overfitting.md"), "w") as fh:
        fh.write("# Overfitting on digits: final accuracies\n\n" + header + table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
