"""RMSprop (``torch.optim.RMSprop``)."""

from __future__ import annotations

from typing import Any

from gpunet.optim import functional as F
from gpunet.optim.optimizer import Optimizer, check_nonnegative

__all__ = ["RMSprop"]


class RMSprop(Optimizer):
    """RMSprop (see :func:`gpunet.optim.functional.rmsprop_`); eps is added after the
    square root, as in PyTorch.

    Args:
        params: parameters or parameter-group dicts.
        lr: learning rate (default 1e-2).
        alpha: smoothing constant of the squared-gradient average (default 0.99).
        eps: added to the root-mean-square (default 1e-8).
        weight_decay: L2 penalty added to the gradient (default 0).
        momentum: momentum factor (default 0).
        centered: normalize by an estimate of the gradient's variance (default False).
        maximize: maximize the objective instead of minimizing (default False).

    State per parameter (arrays shaped like the parameter): ``"step"`` (int),
    ``"square_avg"``, ``"momentum_buffer"`` (momentum > 0), ``"grad_avg"`` (centered).
    """

    _update_name = "rmsprop"
    _state_keys = frozenset({"step", "square_avg", "momentum_buffer", "grad_avg"})
    _reference = staticmethod(F.rmsprop_)

    def __init__(
        self,
        params,
        lr: float = 1e-2,
        alpha: float = 0.99,
        eps: float = 1e-8,
        weight_decay: float = 0,
        momentum: float = 0,
        centered: bool = False,
        *,
        maximize: bool = False,
    ):
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "alpha": alpha,
            "eps": eps,
            "centered": centered,
            "weight_decay": weight_decay,
            "maximize": maximize,
        }
        super().__init__(params, defaults)

    def _check_hyperparameters(self, group: dict[str, Any]) -> None:
        check_nonnegative(group, "lr", "eps", "momentum", "weight_decay", "alpha")

    def _init_state(self, group, xp, p):
        state = {"step": 0, "square_avg": xp.zeros_like(p)}
        if group["momentum"] > 0:
            state["momentum_buffer"] = xp.zeros_like(p)
        if group["centered"]:
            state["grad_avg"] = xp.zeros_like(p)
        return state

    def _kernel_args(self, group, state, xp, p):
        state["step"] += 1
        momentum = group["momentum"]
        centered = bool(group["centered"])
        grad_avg = self._buffer(state, "grad_avg", xp, p) if centered else None
        buf = self._buffer(state, "momentum_buffer", xp, p) if momentum > 0 else None
        kwargs = {
            "lr": group["lr"],
            "alpha": group["alpha"],
            "eps": group["eps"],
            "weight_decay": group["weight_decay"],
            "momentum": momentum,
            "centered": centered,
            "maximize": bool(group["maximize"]),
        }
        return (state["square_avg"], grad_avg, buf), kwargs
