"""Adam and AdamW (``torch.optim.Adam``, ``torch.optim.AdamW``)."""

from __future__ import annotations

from typing import Any

from gpunet.optim import functional as F
from gpunet.optim.optimizer import Optimizer, check_nonnegative

__all__ = ["Adam", "AdamW"]


class Adam(Optimizer):
    """Adam (see :func:`gpunet.optim.functional.adam_`), optionally AMSGrad.

    Args:
        params: parameters or parameter-group dicts.
        lr: learning rate (default 1e-3).
        betas: ``(beta1, beta2)``, decay rates of the first and second moment
            averages (default ``(0.9, 0.999)``), each in [0, 1).
        eps: added to the bias-corrected root of the second moment (default 1e-8).
        weight_decay: L2 penalty added to the gradient (default 0), or, with
            ``decoupled_weight_decay``, decoupled decay ``p *= 1 - lr * weight_decay``
            applied before the step (AdamW).
        amsgrad: use the running maximum of the raw second moment ``exp_avg_sq``.
        maximize: maximize the objective instead of minimizing (default False).
        decoupled_weight_decay: AdamW's decay (default False).

    State per parameter (arrays shaped like the parameter): ``"step"`` (int),
    ``"exp_avg"``, ``"exp_avg_sq"``, ``"max_exp_avg_sq"`` (amsgrad only).
    """

    _update_name = "adam"
    _state_keys = frozenset({"step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"})
    _reference = staticmethod(F.adam_)

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
        decoupled_weight_decay: bool = False,
    ):
        defaults = {
            "lr": lr,
            "betas": tuple(betas),
            "eps": eps,
            "weight_decay": weight_decay,
            "amsgrad": amsgrad,
            "maximize": maximize,
            "decoupled_weight_decay": decoupled_weight_decay,
        }
        super().__init__(params, defaults)

    def _check_hyperparameters(self, group: dict[str, Any]) -> None:
        check_nonnegative(group, "lr", "eps")
        betas = group["betas"]
        if len(betas) != 2:
            raise ValueError(f"Invalid betas: {betas}; expected (beta1, beta2)")
        for i, beta in enumerate(betas):
            if not 0.0 <= beta < 1.0:
                raise ValueError(f"Invalid beta parameter at index {i}: {beta}")
        check_nonnegative(group, "weight_decay")

    def _init_state(self, group, xp, p):
        state = {"step": 0, "exp_avg": xp.zeros_like(p), "exp_avg_sq": xp.zeros_like(p)}
        if group["amsgrad"]:
            state["max_exp_avg_sq"] = xp.zeros_like(p)
        return state

    def _kernel_args(self, group, state, xp, p):
        state["step"] += 1
        amsgrad = bool(group["amsgrad"])
        max_sq = self._buffer(state, "max_exp_avg_sq", xp, p) if amsgrad else None
        beta1, beta2 = group["betas"]
        kwargs = {
            "lr": group["lr"],
            "beta1": beta1,
            "beta2": beta2,
            "eps": group["eps"],
            "weight_decay": group["weight_decay"],
            "decoupled": bool(group["decoupled_weight_decay"]),
            "amsgrad": amsgrad,
            "step": state["step"],
            "maximize": bool(group["maximize"]),
        }
        return (state["exp_avg"], state["exp_avg_sq"], max_sq), kwargs


class AdamW(Adam):
    """AdamW: Adam with decoupled weight decay ``p *= 1 - lr * weight_decay`` before
    each step (default ``weight_decay=1e-2``). Arguments and state as :class:`Adam`."""

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
    ):
        super().__init__(
            params,
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            amsgrad=amsgrad,
            maximize=maximize,
            decoupled_weight_decay=True,
        )

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        for group in self.param_groups:  # AdamW's decay stays decoupled, as in PyTorch
            group["decoupled_weight_decay"] = True
