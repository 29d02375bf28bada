"""Stochastic gradient descent, with momentum, dampening and Nesterov (``torch.optim.SGD``)."""

from __future__ import annotations

from typing import Any

from gpunet.optim import functional as F
from gpunet.optim.optimizer import Optimizer, check_nonnegative

__all__ = ["SGD"]


class SGD(Optimizer):
    """SGD: ``p -= lr * direction`` (see :func:`gpunet.optim.functional.sgd_`).

    Args:
        params: parameters or parameter-group dicts.
        lr: learning rate (default 1e-3).
        momentum: momentum factor (default 0). The first momentum step sets the
            buffer to the gradient, without dampening.
        dampening: dampening of the momentum (default 0).
        weight_decay: L2 penalty added to the gradient (default 0).
        nesterov: Nesterov momentum; needs ``momentum > 0`` and ``dampening == 0``.
        maximize: maximize the objective instead of minimizing (default False).

    State per parameter: ``"momentum_buffer"`` (shaped like the parameter), present
    once a step with ``momentum != 0`` has run.
    """

    _update_name = "sgd"
    _state_keys = frozenset({"momentum_buffer"})
    _reference = staticmethod(F.sgd_)

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        momentum: float = 0,
        dampening: float = 0,
        weight_decay: float = 0,
        nesterov: bool = False,
        *,
        maximize: bool = False,
    ):
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "dampening": dampening,
            "weight_decay": weight_decay,
            "nesterov": nesterov,
            "maximize": maximize,
        }
        super().__init__(params, defaults)

    def _check_hyperparameters(self, group: dict[str, Any]) -> None:
        check_nonnegative(group, "lr", "momentum", "weight_decay")
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")

    def _kernel_args(self, group, state, xp, p):
        buf, first_step = None, False
        if group["momentum"] != 0:
            buf = state.get("momentum_buffer")
            first_step = buf is None
            if first_step:
                buf = self._buffer(state, "momentum_buffer", xp, p)
        kwargs = {
            "lr": group["lr"],
            "momentum": group["momentum"],
            "dampening": group["dampening"],
            "nesterov": bool(group["nesterov"]),
            "weight_decay": group["weight_decay"],
            "maximize": bool(group["maximize"]),
            "first_step": first_step,
        }
        return (buf,), kwargs
