"""Metrics computed from a batch's model outputs; each returns a *count* (summed over
the batch) so epoch values are exact sample-weighted means."""

from __future__ import annotations

from gpunet.backend import backend_of_array
from gpunet.losses import BCELoss, BCEWithLogitsLoss, CrossEntropyLoss, NLLLoss

CLASSIFICATION_LOSSES = (CrossEntropyLoss, NLLLoss, BCEWithLogitsLoss, BCELoss)


def is_classification(loss) -> bool:
    return isinstance(loss, CLASSIFICATION_LOSSES)


def uses_class_indices(loss) -> bool:
    return isinstance(loss, (CrossEntropyLoss, NLLLoss))


def correct_count(output, target, loss) -> int:
    """Number of correct predictions in a batch.

    output: (N, C) scores for class-index losses (argmax), else the same shape as the
    target: logits for BCEWithLogitsLoss (threshold 0), probabilities for BCELoss (0.5).
    A row of ``output`` holding NaN or an infinity is never correct.
    Returns a device scalar (call ``int()`` when needed) to avoid a sync per batch."""
    xp = backend_of_array(output).xp
    if uses_class_indices(loss):
        finite = xp.isfinite(output).all(axis=1)
        return ((output.argmax(axis=1) == target) & finite).sum()
    threshold = 0.0 if isinstance(loss, BCEWithLogitsLoss) else 0.5
    return (((output > threshold) == (target > 0.5)) & xp.isfinite(output)).sum()


def resolve_metrics(metrics, loss) -> list[str]:
    """``None`` -> ["accuracy"] for classification losses, [] otherwise."""
    if metrics is None:
        return ["accuracy"] if is_classification(loss) else []
    names = [metrics] if isinstance(metrics, str) else list(metrics)
    for name in names:
        if name not in ("accuracy", "acc"):
            raise ValueError(f"unknown metric {name!r}; supported: 'accuracy'")
        if not is_classification(loss):
            raise ValueError(f"metric 'accuracy' needs a classification loss, got {loss!r}")
    return ["accuracy" for _ in names[:1]]
