"""What a fused engine can train, and the flat buffers it trains in.

A model qualifies when it is a ``Sequential`` of ``Linear``/``Dense`` layers, each
optionally followed by one activation module, trained with ``CrossEntropyLoss`` or
``MSELoss`` (reduction mean or sum) by SGD, Adam, AdamW, RMSprop or Adagrad over exactly
the model's parameters, with no callback that needs a hook after every step
(:func:`fused_model_reason`; whether the device has a fused engine is the selector's
question, ``gpunet.train.engines.select_engine``).

:class:`FlatState` copies parameters and optimizer state into flat buffers at the start
of each epoch and back at its end, so between epochs the model, the optimizer's
``state`` and its ``state_dict`` are exactly what the autograd path would have left
(tests prove the weights match to float tolerance). It is generic over the array module:
NumPy buffers for the CPU engine, CuPy for a GPU one.
"""

from __future__ import annotations

import numpy as np

from gpunet.activations import get_activation
from gpunet.losses import CrossEntropyLoss, MSELoss
from gpunet.nn import (
    GELU,
    BatchNorm1d,
    DropConnectDense,
    Dropout,
    Identity,
    LeakyReLU,
    Linear,
    ReLU,
    Sequential,
    Sigmoid,
    Tanh,
)
from gpunet.train.callbacks import wants_batch_hooks

ACTIVATION_MODULES = (ReLU, Sigmoid, Tanh, GELU, LeakyReLU)
# layers the fused kernels do not run yet: the reason a fused engine gives for each
UNFUSED_LAYERS = (
    (BatchNorm1d, "BatchNorm1d is trained by the autograd engine only"),
    (Dropout, "Dropout is trained by the autograd engine only"),
    (DropConnectDense, "DropConnectDense is not run by this engine"),
)
# optimizer update name -> state keys held in the flat buffers S[0], S[1], S[2]
STATE_SLOTS = {
    "sgd": ("momentum_buffer", None, None),
    "adam": ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"),
    "rmsprop": ("square_avg", "grad_avg", "momentum_buffer"),
    "adagrad": ("sum", None, None),
}


def dense_layers(model, dropouts: dict | None = None, dropconnects: dict | None = None):
    """``[(linear_module, activation_name)]`` for a fusable Sequential, else a reason str.

    ``dropouts``: a dict to fill with ``{layer index: Dropout module}`` for a ``Dropout``
    after a layer's activation (an engine that runs dropout passes one; without it a
    ``Dropout`` makes the model unfusable). ``dropconnects``: likewise, ``{layer index:
    DropConnectDense module}`` (without it a ``DropConnectDense`` is refused)."""
    if not isinstance(model, Sequential):
        return f"the model is a {type(model).__name__}, not a Sequential"
    layers = []
    for module in model:
        if isinstance(module, Identity):
            continue
        if dropouts is not None and type(module) is Dropout:
            if not layers:
                return "Dropout on the input is trained by the autograd engine only"
            if len(layers) - 1 in dropouts:
                return "two Dropout layers in a row are trained by the autograd engine only"
            dropouts[len(layers) - 1] = module
            continue
        if dropconnects is not None and isinstance(module, DropConnectDense):
            dropconnects[len(layers)] = module
        else:
            for kind, reason in UNFUSED_LAYERS:
                if isinstance(module, kind):
                    return reason
        if getattr(module, "kernel_regularizer", None) or getattr(module, "bias_regularizer", None):
            return f"{module!r} has a weight penalty (kernel/bias_regularizer), not fused yet"
        if isinstance(module, Linear):
            layers.append([module, module.activation])
        elif isinstance(module, ACTIVATION_MODULES):
            name = module.activation
            if name is None:
                return f"{module!r} has a non-default slope"
            if (
                not layers
                or layers[-1][1] != "linear"
                or (dropouts and len(layers) - 1 in dropouts)
            ):
                return f"{module!r} does not directly follow a linear layer"
            layers[-1][1] = get_activation(name).name
        else:
            return f"layer {type(module).__name__} is not supported by the fused engine"
    if not layers:
        return "the model has no dense layers"
    for (prev, _), (nxt, _) in zip(layers, layers[1:]):
        if prev.out_features != nxt.in_features:
            return f"{prev!r} feeds {nxt!r}: widths differ"
    return [tuple(pair) for pair in layers]


def fused_model_reason(
    model, loss, optimizer, callbacks, dropout: bool = False, dropconnect: bool = False
) -> str | None:
    """None if a fused engine can train this model, loss, optimizer and callbacks on any
    device that has one (``dropout``: one that runs ``Dropout`` layers; ``dropconnect``:
    one that runs ``DropConnectDense``), else why not (for messages)."""
    layers = dense_layers(model, {} if dropout else None, {} if dropconnect else None)
    if isinstance(layers, str):
        return layers
    if not isinstance(loss, (CrossEntropyLoss, MSELoss)):
        return f"loss {type(loss).__name__} is not fused (CrossEntropyLoss, MSELoss are)"
    if loss.reduction not in ("mean", "sum"):
        return "loss reduction 'none' is not fused"
    name = getattr(optimizer, "_update_name", None)
    if name not in STATE_SLOTS:
        return f"optimizer {type(optimizer).__name__} is not fused"
    model_params = list(model.parameters())
    opt_params = [p for g in optimizer.param_groups for p in g["params"]]
    if {id(p) for p in opt_params} != {id(p) for p in model_params} or len(opt_params) != len(
        model_params
    ):
        return "the optimizer does not hold exactly the model's parameters"
    if any(not p.requires_grad for p in model_params):
        return "some parameters are frozen (requires_grad=False)"
    if len({p.dtype for p in model_params}) != 1:
        return "parameters have mixed dtypes"
    if wants_batch_hooks(callbacks):
        return "a callback needs a hook after every step"
    return None


def state_kept(opt_name: str, key: str, group: dict) -> bool:
    """Whether the optimizer would hold state ``key`` after a step (torch's layout)."""
    if opt_name == "sgd":
        return group["momentum"] != 0
    if key == "max_exp_avg_sq":
        return bool(group["amsgrad"])
    if opt_name == "rmsprop" and key == "grad_avg":
        return bool(group["centered"])
    if opt_name == "rmsprop" and key == "momentum_buffer":
        return group["momentum"] > 0
    return True


class FlatState:
    """A qualifying model's K parameters and their optimizer state as flat buffers.

    ``FlatState(model, optimizer, layers, xp)``: ``layers`` is :func:`dense_layers`'
    list (L layers), ``xp`` the array module of the buffers (numpy, cupy). Buffers, each
    (T,) of the parameters' dtype, T the parameters' total size, allocated with ``xp``:

    - ``P``: the parameters; parameter k is ``P[off:off+size]`` reshaped to its shape,
      ``(off, size) = param_table[k]``
    - ``G``: the gradients (scratch of the kernels), zeros
    - ``S[0..2]``: the optimizer state of :data:`STATE_SLOTS` ``[opt_name]``, laid out
      like ``P``; a slot no parameter group uses is empty (size 0), and then kernels
      neither read nor write it

    Host tables (NumPy int64): ``param_table`` (K, 2) ``(offset, size)``;
    ``layer_table`` (L, 7) ``(in_features, out_features, weight index, bias index or -1,
    activation code, 1 when a Dropout follows the layer, 1 when the layer is a
    DropConnectDense)``, indices into the model's parameter order.
    """

    def __init__(self, model, optimizer, layers, xp, dropouts=(), dropconnects=()):
        self.xp = xp
        self.optimizer = optimizer
        self.opt_name = optimizer._update_name
        self.params = list(model.parameters())
        index = {id(p): k for k, p in enumerate(self.params)}
        sizes = np.array([p.data.size for p in self.params], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        self.param_table = np.stack([offsets, sizes], axis=1)
        self.layer_table = np.array(
            [
                [
                    lin.in_features,
                    lin.out_features,
                    index[id(lin.weight)],
                    -1 if lin.bias is None else index[id(lin.bias)],
                    _act_code(act),
                    int(i in dropouts),
                    int(i in dropconnects),
                ]
                for i, (lin, act) in enumerate(layers)
            ],
            dtype=np.int64,
        )
        self.dtype = self.params[0].dtype
        total = int(sizes.sum())
        self.P = xp.empty(total, self.dtype)
        self.G = xp.zeros(total, self.dtype)
        self.S = [xp.zeros(0, self.dtype) for _ in range(3)]  # sized by load

    @property
    def group_of(self) -> dict:
        """{id(parameter): its group}, read afresh: ``load_state_dict`` replaces the
        optimizer's group dicts."""
        return {id(p): g for g in self.optimizer.param_groups for p in g["params"]}

    def view(self, buffer, k):
        """Parameter ``k``'s part of a flat ``buffer``, in the parameter's shape."""
        off, size = self.param_table[k]
        return buffer[off : off + size].reshape(self.params[k].shape)

    def slot_used(self, key) -> bool:
        """Whether some parameter group keeps optimizer state ``key``."""
        return key is not None and any(
            state_kept(self.opt_name, key, group) for group in self.optimizer.param_groups
        )

    def load(self):
        """Model parameters and optimizer state -> flat buffers (epoch start).

        Returns host NumPy arrays ``(H, steps, firsts)``: ``H`` (K, N_HYPER) float64 each
        parameter's hyperparameter row (``update_rules.hyper_row``), ``steps`` (K,) int64
        the optimizer's step counts, ``firsts`` (K,) int64 1 where SGD has no momentum
        buffer yet (the first step initialises it).
        """
        from gpunet.kernels.cpu.update_rules import N_HYPER, hyper_row  # noqa: PLC0415

        K = len(self.params)
        H = np.zeros((K, N_HYPER))
        steps = np.zeros(K, np.int64)
        firsts = np.zeros(K, np.int64)
        slots = STATE_SLOTS[self.opt_name]
        # state slots no parameter group uses stay empty: the kernels then neither read
        # nor write them (Adam without amsgrad would otherwise stream a third buffer);
        # checked every epoch, as hyperparameters may change between fits
        for i, key in enumerate(slots):
            if (self.S[i].size != 0) != self.slot_used(key):
                size = self.P.size if self.slot_used(key) else 0
                self.S[i] = self.xp.zeros(size, self.P.dtype)
        group_of = self.group_of
        for k, p in enumerate(self.params):
            group = group_of[id(p)]
            H[k] = hyper_row(self.opt_name, group)  # Adam reads decoupled_weight_decay
            self.view(self.P, k)[...] = p.data
            state = self.optimizer.state[p]
            steps[k] = int(state.get("step", 0))
            for slot, key in zip(self.S, slots):
                if slot.size == 0:
                    continue
                value = state.get(key) if key else None
                if value is None:
                    self.view(slot, k)[...] = 0
                else:
                    self.view(slot, k)[...] = value
            if self.opt_name == "sgd" and state.get("momentum_buffer") is None:
                firsts[k] = 1
            if self.opt_name == "adagrad" and state.get("sum") is None:
                self.view(self.S[0], k)[...] = group["initial_accumulator_value"]
        return H, steps, firsts

    def store(self, steps):
        """Flat buffers -> model parameters and optimizer state (epoch end); ``steps``
        (K,) int64 the step counts the epoch advanced."""
        slots = STATE_SLOTS[self.opt_name]
        group_of = self.group_of
        for k, p in enumerate(self.params):
            group = group_of[id(p)]
            p.data[...] = self.view(self.P, k)
            state = self.optimizer.state[p]
            if self.opt_name != "sgd":
                state["step"] = int(steps[k])
            for slot, key in zip(self.S, slots):
                if slot.size == 0 or not state_kept(self.opt_name, key, group):
                    continue
                if state.get(key) is not None:
                    state[key][...] = self.view(slot, k)
                else:
                    state[key] = self.view(slot, k).copy()


def _act_code(name: str) -> int:
    from gpunet.kernels.cpu.dense import ACTIVATION_CODES  # noqa: PLC0415

    return ACTIVATION_CODES[name]
