"""Loss modules with PyTorch names and semantics (``reduction`` = mean | sum | none)."""

from __future__ import annotations

from gpunet import functional as F
from gpunet.autograd import Tensor


class _Loss:
    """Base: ``loss(input, target) -> Tensor`` (a scalar unless reduction='none')."""

    name = "loss"

    def __init__(self, reduction: str = "mean"):
        F._check_reduction(reduction)
        self.reduction = reduction

    def __call__(self, input: Tensor, target) -> Tensor:
        return self.forward(input, target)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(reduction={self.reduction!r})"


class MSELoss(_Loss):
    name = "mse"

    def forward(self, input, target):
        return F.mse_loss(input, target, self.reduction)


class CrossEntropyLoss(_Loss):
    """Softmax cross-entropy on logits (N, C) with class-index targets (N,)."""

    name = "cross_entropy"

    def __init__(self, reduction: str = "mean", label_smoothing: float = 0.0):
        super().__init__(reduction)
        if not 0.0 <= label_smoothing <= 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
        self.label_smoothing = label_smoothing

    def forward(self, input, target):
        return F.cross_entropy(input, target, self.reduction, self.label_smoothing)

    def __repr__(self) -> str:
        return (
            f"CrossEntropyLoss(reduction={self.reduction!r}, "
            f"label_smoothing={self.label_smoothing})"
        )


class NLLLoss(_Loss):
    name = "nll"

    def forward(self, input, target):
        return F.nll_loss(input, target, self.reduction)


class BCEWithLogitsLoss(_Loss):
    name = "bce_with_logits"

    def forward(self, input, target):
        return F.binary_cross_entropy_with_logits(input, target, self.reduction)


class BCELoss(_Loss):
    name = "bce"

    def forward(self, input, target):
        return F.binary_cross_entropy(input, target, self.reduction)


LOSSES = {
    "mse": MSELoss,
    "cross_entropy": CrossEntropyLoss,
    "nll": NLLLoss,
    "bce_with_logits": BCEWithLogitsLoss,
    "bce": BCELoss,
}


def get_loss(name: str, **kwargs) -> _Loss:
    """Build a loss by name (``"cross_entropy"``, ``"mse"``, ...)."""
    key = name.lower().replace("-", "_")
    if key not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; expected one of {sorted(LOSSES)}")
    return LOSSES[key](**kwargs)
