"""The ``Optimizer`` base class: parameter groups, per-parameter state, state dicts.

Bookkeeping lives here, the math in :mod:`gpunet.optim.functional`. A subclass names
its update (``_update_name``, the key for ``Backend.fused_update``), its reference
function, how to validate hyperparameters, and how one parameter's state and kernel
arguments are built; the base class runs the loop over groups and parameters.

A parameter ``p`` is a :class:`gpunet.Tensor` (or anything shaped like one): ``p.data``
is its array (NumPy or CuPy, any shape), updated in place and never rebound;
``p.grad`` is None or a tensor whose ``.data`` has ``p.data``'s shape.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Callable, Iterator, MutableMapping
from typing import Any, ClassVar

import numpy as np

from gpunet.backend import backend_of_array

__all__ = ["Optimizer", "required"]


class _RequiredParameter:
    """Marks a hyperparameter with no default (every group must give it)."""

    def __repr__(self) -> str:
        return "<required parameter>"


required = _RequiredParameter()


def _is_array(value) -> bool:
    """True for NumPy and CuPy arrays."""
    module = type(value).__module__
    return (module == "numpy" or module.startswith("cupy")) and hasattr(value, "shape")


def _grad_array(grad):
    """The gradient array of ``p.grad`` (a tensor, or a bare array)."""
    return grad if _is_array(grad) else grad.data


def _deepcopy(value):
    """Deep copy; arrays are copied on their own device."""
    if _is_array(value):
        return value.copy()
    if isinstance(value, dict):
        return {k: _deepcopy(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_deepcopy(v) for v in value)
    return copy.deepcopy(value)


_LABELS = {"lr": "learning rate", "eps": "epsilon value"}


def check_nonnegative(group: dict[str, Any], *names: str) -> None:
    """Raise ``ValueError("Invalid <name> value: <value>")`` (torch's wording) for the
    first of ``names`` whose value in ``group`` is negative or NaN."""
    for name in names:
        value = group[name]
        if not 0.0 <= value:
            raise ValueError(f"Invalid {_LABELS.get(name, name + ' value')}: {value}")


def _is_step_count(value) -> bool:
    """A non-negative integer count: int, NumPy integer, or an integral 0-d array (as
    torch keeps ``step``)."""
    if isinstance(value, bool):
        return False
    if _is_array(value):
        if value.ndim != 0:
            return False
        value = value.item()
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        value = int(value)
    return isinstance(value, (int, np.integer)) and value >= 0


def _check_option_type(index: int, key: str, value, default) -> None:
    """Raise TypeError unless ``value`` has the kind of ``default`` (bool, real number,
    tuple of numbers); a ``required`` or None default accepts anything."""
    where = f"loaded param_groups[{index}]['{key}']"
    if default is required or default is None:
        return
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise TypeError(f"{where} must be a bool, got {value!r}")
    elif isinstance(default, (int, float)):
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise TypeError(f"{where} must be a number, got {value!r}")
    elif isinstance(default, (tuple, list)):
        if not isinstance(value, (tuple, list)) or len(value) != len(default):
            raise TypeError(f"{where} must be a sequence of {len(default)} numbers, got {value!r}")
        for v in value:
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise TypeError(f"{where} must hold numbers, got {value!r}")


def _typename(obj) -> str:
    cls = type(obj)
    return cls.__name__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__name__}"


def _enable_grad():
    """``gpunet.enable_grad()`` when autograd provides it, else a no-op context."""
    try:
        import gpunet  # noqa: PLC0415
    except ImportError:  # pragma: no cover
        return contextlib.nullcontext()
    enable = getattr(gpunet, "enable_grad", None)
    return enable() if enable is not None else contextlib.nullcontext()


def _rebuild_state(items):
    state = _ParamState()
    for param, value in items:
        state[param] = value
    return state


class _ParamState(MutableMapping):
    """Per-parameter state: a ``defaultdict(dict)`` keyed by parameter *identity*.

    Like ``torch.optim.Optimizer.state`` (tensors hash by ``id``), but independent of
    how the tensor class defines ``__eq__``/``__hash__``. Reading a missing parameter
    creates its empty state dict.
    """

    def __init__(self):
        self._entries: dict[int, tuple[Any, dict]] = {}

    def __getitem__(self, param) -> dict:
        entry = self._entries.get(id(param))
        if entry is None:
            entry = self._entries[id(param)] = (param, {})
        return entry[1]

    def get(self, param, default=None):
        entry = self._entries.get(id(param))
        return default if entry is None else entry[1]

    def __setitem__(self, param, value: dict) -> None:
        self._entries[id(param)] = (param, value)

    def __delitem__(self, param) -> None:
        del self._entries[id(param)]

    def __contains__(self, param) -> bool:
        return id(param) in self._entries

    def __iter__(self) -> Iterator:
        return (param for param, _ in list(self._entries.values()))

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"{{{', '.join(f'<param {id(p):#x}>: {s!r}' for p, s in self._entries.values())}}}"

    def __reduce__(self):
        return _rebuild_state, (list(self._entries.values()),)


class Optimizer:
    """Base class of all optimizers (``torch.optim.Optimizer``'s interface).

    Args:
        params: an iterable of parameters, or of dicts defining parameter groups
            (``{"params": [...], "lr": ...}``); options a group omits come from
            ``defaults``.
        defaults: the default hyperparameters of every group.

    Attributes:
        param_groups: list of dicts; each holds ``"params"`` (a list of parameters)
            and every hyperparameter. Schedulers edit ``group["lr"]`` and set
            ``group["initial_lr"]``.
        defaults: the constructor's hyperparameters.
        state: per-parameter state dicts (arrays shaped like the parameter, and
            ``"step"`` counts), keyed by parameter.
    """

    #: ``Backend.fused_update`` key of this optimizer's update.
    _update_name: ClassVar[str | None] = None
    #: The ``xp`` reference update from :mod:`gpunet.optim.functional`.
    _reference: ClassVar[Callable | None] = None
    #: Every key a parameter's state may hold (``load_state_dict`` refuses others).
    _state_keys: ClassVar[frozenset] = frozenset()
    #: Group options besides ``defaults`` that a loaded group may carry (set by schedulers).
    _extra_group_keys: ClassVar[frozenset] = frozenset({"initial_lr"})

    def __init__(self, params, defaults: dict[str, Any]):
        self.defaults = defaults
        self._check_hyperparameters(defaults)
        if _is_array(params) or hasattr(params, "grad"):
            raise TypeError(
                "params argument given to the optimizer should be an iterable of "
                "Tensors or dicts, but got " + _typename(params)
            )
        self.state: MutableMapping = _ParamState()
        self.param_groups: list[dict[str, Any]] = []
        param_groups = list(params)
        if len(param_groups) == 0:
            raise ValueError("optimizer got an empty parameter list")
        if not isinstance(param_groups[0], dict):
            param_groups = [{"params": param_groups}]
        for param_group in param_groups:
            self.add_param_group(param_group)

    # ------------------------------------------------------------ subclass hooks
    def _check_hyperparameters(self, group: dict[str, Any]) -> None:
        """Raise ValueError naming the first invalid hyperparameter of ``group``."""

    def _init_state(self, group: dict[str, Any], xp, p) -> dict[str, Any]:
        """Fresh state for the parameter array ``p`` (created on its first update)."""
        return {}

    def _kernel_args(self, group: dict[str, Any], state: dict[str, Any], xp, p) -> tuple:
        """Advance ``state`` bookkeeping (step counts, lazily created buffers) and
        return ``(state_arrays, kwargs)`` for the update kernel of parameter ``p``."""
        raise NotImplementedError

    @staticmethod
    def _buffer(state: dict[str, Any], key: str, xp, p):
        """``state[key]``, created as zeros shaped like ``p`` if missing or None (an
        option such as momentum may be switched on after the state was created)."""
        array = state.get(key)
        if array is None:
            array = state[key] = xp.zeros_like(p)
        return array

    # ---------------------------------------------------------------- interface
    def __repr__(self) -> str:
        lines = [f"{type(self).__name__} ("]
        for i, group in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            lines.extend(f"    {k}: {group[k]}" for k in sorted(group) if k != "params")
        lines.append(")")
        return "\n".join(lines)

    def __getstate__(self) -> dict[str, Any]:
        return {"defaults": self.defaults, "state": self.state, "param_groups": self.param_groups}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group (``{"params": ..., **options}``); missing options come from
        ``defaults``. Raises ValueError if a parameter already belongs to a group."""
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group must be a dict, but got {_typename(param_group)}")
        param_group = dict(param_group)
        params = param_group["params"]
        if _is_array(params) or hasattr(params, "grad"):
            param_group["params"] = [params]
        elif isinstance(params, (set, frozenset)):
            raise TypeError(
                "optimizer parameters need to be organized in ordered collections, but "
                "the ordering of tensors in sets will change between runs. "
                "Please use a list instead."
            )
        else:
            param_group["params"] = list(params)

        for param in param_group["params"]:
            if _is_array(param) or not (hasattr(param, "data") and hasattr(param, "grad")):
                raise TypeError(
                    "optimizer can only optimize Tensors, but one of the params is "
                    + _typename(param)
                )
            if getattr(param, "is_leaf", True) is False:
                raise ValueError("can't optimize a non-leaf Tensor")

        for name, default in self.defaults.items():
            if default is required and name not in param_group:
                raise ValueError(
                    "parameter group didn't specify a value of required optimization "
                    f"parameter {name}"
                )
            param_group.setdefault(name, default)
        self._check_hyperparameters(param_group)

        ids = [id(p) for p in param_group["params"]]
        if len(ids) != len(set(ids)):
            warnings.warn(
                "optimizer contains a parameter group with duplicate parameters; "
                "in future, this will cause an error",
                stacklevel=3,
            )
        existing = {id(p) for group in self.param_groups for p in group["params"]}
        if not existing.isdisjoint(ids):
            raise ValueError("some parameters appear in more than one parameter group")
        self.param_groups.append(param_group)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Reset gradients: ``p.grad = None`` (default), or fill them with zeros in
        place when ``set_to_none`` is False."""
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if set_to_none:
                    p.grad = None
                else:
                    _grad_array(p.grad)[...] = 0

    def step(self, closure: Callable[[], Any] | None = None):
        """One update of every parameter that has a gradient.

        ``closure`` (optional) re-evaluates the model and returns the loss; it runs
        first, with gradients enabled. Returns its loss (or None).
        """
        loss = None
        if closure is not None:
            with _enable_grad():
                loss = closure()
        reference = type(self)._reference
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                data = p.data
                grad = _grad_array(p.grad)
                backend = backend_of_array(data)
                xp = backend.xp
                state = self.state[p]
                if not state:
                    state.update(self._init_state(group, xp, data))
                arrays, kwargs = self._kernel_args(group, state, xp, data)
                kernel = backend.fused_update(self._update_name) or reference
                kernel(xp, data, grad, *arrays, **kwargs)
        return loss

    # --------------------------------------------------------------- state dict
    def state_dict(self) -> dict[str, Any]:
        """``{"state": {index: {...}}, "param_groups": [{..., "params": [indices]}]}``.

        Parameters are numbered in group order; arrays are deep copies (on the
        parameter's device), so later steps do not change the returned dict.
        """
        index: dict[int, int] = {}
        groups = []
        for group in self.param_groups:
            packed = {k: _deepcopy(v) for k, v in group.items() if k != "params"}
            for p in group["params"]:
                index.setdefault(id(p), len(index))
            packed["params"] = [index[id(p)] for p in group["params"]]
            groups.append(packed)
        state = {index[id(p)]: _deepcopy(s) for p, s in self.state.items() if id(p) in index}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a :meth:`state_dict`: group hyperparameters and per-parameter state.

        Arrays are copied onto each parameter's device and cast to its dtype. Everything
        is checked before anything changes; a ValueError (TypeError for a wrong type)
        names the first problem: missing or unknown keys, a group count or size, a
        parameter index, an option this optimizer does not have or a value out of its
        range, state keys of another optimizer, a missing buffer, a step that is not a
        non-negative integer, an array's shape, or a non-finite buffer.
        """
        new_groups, new_state = self._validated_load(state_dict)
        self.state = new_state
        self.param_groups = new_groups

    def _validated_load(self, state_dict) -> tuple[list[dict[str, Any]], _ParamState]:
        """The param_groups and state :meth:`load_state_dict` would install (nothing is
        changed here)."""
        name = type(self).__name__
        if not isinstance(state_dict, dict):
            raise TypeError(f"{name} state dict must be a dict, got {_typename(state_dict)}")
        missing = {"state", "param_groups"} - set(state_dict)
        if missing:
            raise ValueError(
                f"{name} state dict is missing {sorted(missing)} (it has {sorted(state_dict)})"
            )
        groups = self.param_groups
        saved_groups = state_dict["param_groups"]
        if not isinstance(saved_groups, (list, tuple)) or not all(
            isinstance(g, dict) and "params" in g for g in saved_groups
        ):
            raise ValueError(
                f"{name} state dict's param_groups must be a list of dicts with 'params'"
            )
        if len(groups) != len(saved_groups):
            raise ValueError(
                "loaded state dict has a different number of parameter groups "
                f"({len(saved_groups)}) than the optimizer ({len(groups)})"
            )
        for i, (group, saved) in enumerate(zip(groups, saved_groups)):
            if len(group["params"]) != len(saved["params"]):
                raise ValueError(
                    f"loaded state dict contains a parameter group (index {i}, "
                    f"{len(saved['params'])} params) that doesn't match the size of "
                    f"optimizer's group ({len(group['params'])} params)"
                )
        id_map = {}
        for group, saved in zip(groups, saved_groups):
            id_map.update(zip(saved["params"], group["params"]))

        new_groups = []
        for i, (group, saved) in enumerate(zip(groups, saved_groups)):
            new_group = {k: _deepcopy(v) for k, v in saved.items() if k != "params"}
            unknown = set(new_group) - set(self.defaults) - self._extra_group_keys
            if unknown:
                raise ValueError(
                    f"loaded param_groups[{i}] has options {sorted(unknown)} that {name} "
                    f"does not have (its options: {sorted(self.defaults)})"
                )
            for k, v in group.items():
                new_group.setdefault(k, v)
            for key, default in self.defaults.items():
                _check_option_type(i, key, new_group[key], default)
            try:
                self._check_hyperparameters(new_group)
            except (ValueError, TypeError) as error:
                raise ValueError(f"loaded param_groups[{i}]: {error}") from None
            new_group["params"] = group["params"]
            new_groups.append(new_group)

        group_of = {id(p): g for g in new_groups for p in g["params"]}
        saved_state = state_dict["state"]
        if not isinstance(saved_state, dict):
            raise ValueError(f"{name} state dict's 'state' must be a dict of per-parameter dicts")
        new_state = _ParamState()
        for key, one in saved_state.items():
            if key not in id_map:
                raise ValueError(
                    f"loaded state dict has state for parameter index {key!r}, which is "
                    f"not in its param_groups (indices {sorted(id_map)})"
                )
            param = id_map[key]
            self._check_param_state(key, param, group_of[id(param)], one)
            new_state[param] = self._cast_state(key, param, one)
        return new_groups, new_state

    def _check_param_state(self, index, param, group: dict[str, Any], saved: dict) -> None:
        """Raise unless ``saved`` holds this optimizer's state for ``param`` under
        ``group``: known keys, the buffers a fresh state has, a non-negative integer
        ``step``, finite arrays shaped like the parameter."""
        name = type(self).__name__
        if not isinstance(saved, dict):
            raise ValueError(f"loaded state of parameter {index} must be a dict")
        unknown = set(saved) - self._state_keys
        if unknown:
            raise ValueError(
                f"loaded state of parameter {index} has {sorted(unknown)}, which {name} does "
                f"not keep (its state: {sorted(self._state_keys)}); is it another optimizer's?"
            )
        fresh = self._init_state(group, np, np.zeros((1,)))
        missing = set(fresh) - set(saved)
        if missing:
            raise ValueError(f"loaded state of parameter {index} is missing {sorted(missing)}")
        for key, value in saved.items():
            if key == "step":
                if not _is_step_count(value):
                    raise ValueError(
                        f"loaded state of parameter {index} has step={value!r}; expected a "
                        "non-negative integer"
                    )
            elif value is None:
                if key in fresh:
                    raise ValueError(f"loaded state of parameter {index} has {key}=None")
            elif not _is_array(value):
                raise ValueError(
                    f"loaded state of parameter {index} has {key} of type "
                    f"{_typename(value)}; expected an array"
                )
            elif not bool(backend_of_array(value).xp.isfinite(value).all()):
                raise ValueError(f"loaded state of parameter {index} has non-finite {key}")

    @staticmethod
    def _cast_state(index, param, saved_state: dict[str, Any]) -> dict[str, Any]:
        """Copy one parameter's saved state onto its device and dtype (validating shapes)."""
        data = param.data
        backend = backend_of_array(data)
        out = {}
        for key, value in saved_state.items():
            if _is_array(value) and key != "step":
                if value.ndim != 0 and tuple(value.shape) != tuple(data.shape):
                    raise ValueError(
                        f"loaded state dict has '{key}' of shape {tuple(value.shape)} for "
                        f"parameter {index}, which has shape {tuple(data.shape)}"
                    )
                source = backend_of_array(value)
                host = value if source is backend else source.to_numpy(value)
                array = backend.asarray(host, dtype=data.dtype)
                out[key] = array.copy() if array is value else array
            else:
                out[key] = _deepcopy(value)
        return out
