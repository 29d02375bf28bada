"""Adagrad (``torch.optim.Adagrad``)."""

from __future__ import annotations

from typing import Any

from gpunet.backend import backend_of_array
from gpunet.optim import functional as F
from gpunet.optim.optimizer import Optimizer, check_nonnegative

__all__ = ["Adagrad"]


class Adagrad(Optimizer):
    """Adagrad (see :func:`gpunet.optim.functional.adagrad_`).

    Args:
        params: parameters or parameter-group dicts.
        lr: learning rate (default 1e-2).
        lr_decay: learning-rate decay, ``clr = lr / (1 + (step - 1) * lr_decay)``.
        weight_decay: L2 penalty added to the gradient (default 0).
        initial_accumulator_value: starting value of the squared-gradient sum.
        eps: added to the square root of the sum (default 1e-10).
        maximize: maximize the objective instead of minimizing (default False).

    State per parameter: ``"step"`` (int) and ``"sum"`` (shaped like the parameter),
    created at construction as in PyTorch. Unlike PyTorch, a group's own
    ``initial_accumulator_value`` is honoured (PyTorch always uses the default's).
    """

    _update_name = "adagrad"
    _state_keys = frozenset({"step", "sum"})
    _reference = staticmethod(F.adagrad_)

    def __init__(
        self,
        params,
        lr: float = 1e-2,
        lr_decay: float = 0,
        weight_decay: float = 0,
        initial_accumulator_value: float = 0,
        eps: float = 1e-10,
        *,
        maximize: bool = False,
    ):
        defaults = {
            "lr": lr,
            "lr_decay": lr_decay,
            "eps": eps,
            "weight_decay": weight_decay,
            "initial_accumulator_value": initial_accumulator_value,
            "maximize": maximize,
        }
        super().__init__(params, defaults)
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state[p]
                if not state:
                    state.update(self._init_state(group, backend_of_array(p.data).xp, p.data))

    def _check_hyperparameters(self, group: dict[str, Any]) -> None:
        check_nonnegative(
            group, "lr", "lr_decay", "weight_decay", "initial_accumulator_value", "eps"
        )

    def _init_state(self, group, xp, p):
        return {"step": 0, "sum": xp.full_like(p, group["initial_accumulator_value"])}

    def _kernel_args(self, group, state, xp, p):
        state["step"] += 1
        kwargs = {
            "lr": group["lr"],
            "lr_decay": group["lr_decay"],
            "weight_decay": group["weight_decay"],
            "eps": group["eps"],
            "step": state["step"],
            "maximize": bool(group["maximize"]),
        }
        return (state["sum"],), kwargs
