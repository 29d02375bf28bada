"""The fused engine: whole epochs of a dense ``Sequential`` in one compiled call.

A model qualifies when it is a ``Sequential`` of ``Linear``/``Dense`` layers, each
optionally followed by one activation module, trained with ``CrossEntropyLoss`` or
``MSELoss`` (reduction mean or sum) by SGD, Adam, AdamW, RMSprop or Adagrad over exactly
the model's parameters, on a backend that provides a fused epoch kernel
(``Backend.fused_epoch_kernel``), with no callback that needs a hook after every step.

Parameters and optimizer state are copied into flat buffers at the start of each epoch
and back at its end, so between epochs the model, the optimizer's ``state`` and its
``state_dict`` are exactly what the autograd path would have left (tests prove the
weights match to float tolerance).
"""

from __future__ import annotations

import contextlib
import os

import numpy as np

from gpunet.activations import get_activation
from gpunet.losses import CrossEntropyLoss, MSELoss
from gpunet.nn import GELU, Identity, LeakyReLU, Linear, ReLU, Sequential, Sigmoid, Tanh

ACTIVATION_MODULES = (ReLU, Sigmoid, Tanh, GELU, LeakyReLU)
# optimizer update name -> state keys held in the flat buffers S1, S2, S3
STATE_SLOTS = {
    "sgd": ("momentum_buffer", None, None),
    "adam": ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"),
    "rmsprop": ("square_avg", "grad_avg", "momentum_buffer"),
    "adagrad": ("sum", None, None),
}


def dense_layers(model):
    """``[(linear_module, activation_name)]`` for a fusable Sequential, else a reason str."""
    if not isinstance(model, Sequential):
        return f"the model is a {type(model).__name__}, not a Sequential"
    layers = []
    for module in model:
        if isinstance(module, Identity):
            continue
        if isinstance(module, Linear):
            layers.append([module, module.activation])
        elif isinstance(module, ACTIVATION_MODULES):
            name = module.activation
            if name is None:
                return f"{module!r} has a non-default slope"
            if not layers or layers[-1][1] != "linear":
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


def fused_unsupported_reason(model, loss, optimizer, backend, callbacks) -> str | None:
    """None if the fused engine can train this setup, else why not (for messages)."""
    from gpunet.train.loop import wants_batch_hooks  # noqa: PLC0415

    if backend.fused_epoch_kernel() is None:
        return f"backend {backend.name} ({backend.device}) has no fused epoch kernel"
    layers = dense_layers(model)
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


class FusedDenseEngine:
    """Runs epochs with ``backend.fused_epoch_kernel()``; see the module docstring."""

    name = "fused"
    #: run steps of ``blas.MODEL_PARALLEL_MIN_ROWS`` rows or more on two threads where the
    #: process may use two CPUs: model-parallel below ``blas.DATA_PARALLEL_MIN_ROWS``,
    #: data-parallel from there (False: every step on the calling thread, same results)
    two_threads = True

    def __init__(
        self,
        model,
        loss,
        optimizer,
        track_accuracy: bool,
        flush_denormals: bool = True,
        workspace_cache: dict | None = None,
    ):
        from gpunet.kernels.cpu.update_rules import OPTIMIZER_CODES  # noqa: PLC0415

        self.model, self.loss, self.optimizer = model, loss, optimizer
        self.track_accuracy = track_accuracy
        self.flush_denormals = flush_denormals
        self.layers = dense_layers(model)
        self.backend = next(model.parameters()).backend
        self.kernels = self.backend.fused_epoch_kernel()
        # batch size -> scratch buffer, reused across epochs (and fits, when the caller
        # passes its own dict): fresh memory costs page faults on every epoch
        self._work = {} if workspace_cache is None else workspace_cache
        self.opt_name = optimizer._update_name
        self.opt_code = OPTIMIZER_CODES[self.opt_name]
        self.loss_code = self.kernels.LOSS_CODES[
            "cross_entropy" if isinstance(loss, CrossEntropyLoss) else "mse"
        ]
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
                ]
                for lin, act in self.layers
            ],
            dtype=np.int64,
        )
        self.group_of = {}
        for group in optimizer.param_groups:
            for p in group["params"]:
                self.group_of[id(p)] = group
        dtype = self.params[0].dtype
        total = int(sizes.sum())
        self.P = np.empty(total, dtype)
        self.G = np.zeros(total, dtype)
        self.G_b = None  # the worker's dW in data-parallel steps, allocated on first use
        self.S = [np.zeros(0, dtype) for _ in range(3)]  # sized by _load

    def _slot_used(self, key) -> bool:
        return key is not None and any(
            _state_kept(self.opt_name, key, group) for group in self.optimizer.param_groups
        )

    # ----------------------------------------------------------- state sync
    def _views(self, buffer, k):
        off, size = self.param_table[k]
        return buffer[off : off + size].reshape(self.params[k].shape)

    def _load(self):
        """Model parameters and optimizer state -> flat buffers (epoch start)."""
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
            if (self.S[i].size != 0) != self._slot_used(key):
                self.S[i] = np.zeros(self.P.size if self._slot_used(key) else 0, self.P.dtype)
        for k, p in enumerate(self.params):
            group = self.group_of[id(p)]
            H[k] = hyper_row(self.opt_name, group)  # Adam reads decoupled_weight_decay
            self._views(self.P, k)[...] = p.data
            state = self.optimizer.state[p]
            steps[k] = int(state.get("step", 0))
            for slot, key in zip(self.S, slots):
                if slot.size == 0:
                    continue
                value = state.get(key) if key else None
                if value is None:
                    self._views(slot, k)[...] = 0
                else:
                    self._views(slot, k)[...] = value
            if self.opt_name == "sgd" and state.get("momentum_buffer") is None:
                firsts[k] = 1
            if self.opt_name == "adagrad" and state.get("sum") is None:
                self._views(self.S[0], k)[...] = group["initial_accumulator_value"]
        return H, steps, firsts

    def _store(self, steps):
        """Flat buffers -> model parameters and optimizer state (epoch end)."""
        slots = STATE_SLOTS[self.opt_name]
        for k, p in enumerate(self.params):
            group = self.group_of[id(p)]
            p.data[...] = self._views(self.P, k)
            state = self.optimizer.state[p]
            if self.opt_name != "sgd":
                state["step"] = int(steps[k])
            for slot, key in zip(self.S, slots):
                if slot.size == 0 or not _state_kept(self.opt_name, key, group):
                    continue
                if state.get(key) is not None:
                    state[key][...] = self._views(slot, k)
                else:
                    state[key] = self._views(slot, k).copy()

    # ---------------------------------------------------------------- epoch
    def _workspace(self, rows: int, dtype, gather: bool, worker: bool = False):
        """The kernel's scratch for steps of ``rows`` rows (this thread's, or the
        ``worker`` thread's in data-parallel steps), kept across epochs while the batch size stays:
        fresh memory costs page faults."""
        key = (rows, np.dtype(dtype), gather, worker)
        work = self._work.get(key)
        if work is None:
            for stale in [old for old in self._work if old[3] == worker]:
                del self._work[stale]
            size = self.kernels.workspace_size(self.layer_table, rows, gather)
            work = self._work[key] = np.empty(size, dtype)
        return work

    def train_epoch(self, X, y, batch_size: int, on_batch_end=None, order=None):
        """Same contract as ``AutogradEngine.train_epoch`` (``on_batch_end`` is only used
        to advance a progress bar once per epoch)."""
        H, steps, firsts = self._load()
        X = np.ascontiguousarray(X)
        gather = order is not None
        order = np.ascontiguousarray(order, dtype=np.int64) if gather else np.zeros(0, np.int64)
        if self.loss_code == 0:
            labels = np.ascontiguousarray(y, dtype=np.int64)
            targets = np.zeros((0, 1), X.dtype)
        else:
            labels = np.zeros(0, np.int64)
            targets = np.ascontiguousarray(y.reshape(len(y), -1), dtype=X.dtype)
        k = self.kernels
        # the worker's scratch has rows only if some step of the epoch splits
        rows, worker_rows, two_threads = k.scratch_rows(
            len(X), batch_size, self.two_threads and usable_cpus() >= 2
        )
        work = self._workspace(rows, X.dtype, gather)
        smoothing = float(getattr(self.loss, "label_smoothing", 0.0))
        mean = self.loss.reduction == "mean"
        do_flush = self.flush_denormals and not k.hardware_flush_active()
        if two_threads:
            if self.G_b is None:
                self.G_b = np.zeros_like(self.G)
            worker = k.step_worker_thread(
                X,
                labels,
                targets,
                order,
                self.layer_table,
                self.param_table,
                self.P,
                self.G,
                self.G_b,
                *self.S,
                H,
                steps,
                firsts,
                self._workspace(worker_rows, X.dtype, gather, worker=True),
                work,
                self.opt_code,
                self.loss_code,
                smoothing,
                mean,
                do_flush,
            )
            G_b = self.G_b
        else:
            worker = contextlib.nullcontext((np.zeros(0, np.int64), np.zeros(0)))
            G_b = self.G[:0]
        with worker as (flags, shared):
            loss_sum, correct = k.train_epoch(
                X,
                labels,
                targets,
                order,
                batch_size,
                self.layer_table,
                self.param_table,
                self.P,
                self.G,
                *self.S,
                H,
                steps,
                firsts,
                work,
                self.opt_code,
                self.loss_code,
                smoothing,
                mean,
                do_flush,
                flags,
                shared,
                G_b,
            )
        self._store(steps)
        for p in self.params:
            p.grad = None
        return float(loss_sum), (int(correct) if self.track_accuracy else None)


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def _state_kept(opt_name: str, key: str, group: dict) -> bool:
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


def _act_code(name: str) -> int:
    from gpunet.kernels.cpu.dense import ACTIVATION_CODES  # noqa: PLC0415

    return ACTIVATION_CODES[name]
