"""Full training checkpoints: one safetensors file holding everything a run needs to
continue exactly where it stopped.

Arrays go into the file's tensors: ``model/<name>`` (the model's ``state_dict``) and
``optimizer/<index>/<key>`` (each parameter's optimizer buffers). Everything else is one
JSON document in the file's metadata under ``gpunet.checkpoint``: the format version,
the epochs completed, the fit's shuffle seed, gpunet's global generator, the optimizer's
class, groups and scalar state (step counts), each scheduler's state, callback state
and the History. The file is written atomically (``atomic_write``): a crash or a
``kill -9`` leaves the previous file whole.

``restore_checkpoint`` checks the whole checkpoint against the model, optimizer and
schedulers before changing any of them.
"""

from __future__ import annotations

import collections
import json
import math
import os
from dataclasses import dataclass, field

import numpy as np

from gpunet.train.callbacks import atomic_write
from gpunet.train.files import read_safetensors

FORMAT = "gpunet.checkpoint"
FORMAT_VERSION = 1
_META_KEY = "gpunet.checkpoint"

__all__ = [
    "FORMAT_VERSION",
    "Checkpoint",
    "is_checkpoint",
    "load_checkpoint",
    "restore_checkpoint",
    "save_checkpoint",
]


@dataclass
class Checkpoint:
    """A checkpoint read back: ``model_state`` {name: ndarray}; ``optimizer_state`` an
    ``Optimizer.state_dict()`` (or None); ``optimizer_class`` its class name;
    ``schedulers`` the schedulers' state dicts in order; ``epochs_done``; ``seed`` the
    fit's shuffle seed; ``rng_state`` gpunet's global generator; ``history`` a
    ``History.to_dict()``; ``callbacks`` {"<index>:<class>": state}."""

    path: str
    model_state: dict
    optimizer_state: dict | None
    optimizer_class: str | None
    schedulers: list = field(default_factory=list)
    epochs_done: int = 0
    seed: int | None = None
    rng_state: dict | None = None
    history: dict | None = None
    callbacks: dict = field(default_factory=dict)
    masks: dict = field(default_factory=dict)


# ------------------------------------------------------------------------- JSON
def _encode(value):
    """JSON-ready form of state values: tuples and Counters are tagged so they come back
    as they were; NumPy scalars become Python numbers; non-finite floats stay floats
    (written as NaN/Infinity, which Python's json reads back)."""
    if isinstance(value, collections.Counter):
        return {"__counter__": [[_encode(k), v] for k, v in value.items()]}
    if isinstance(value, dict):
        return {"__dict__": [[_encode(k), _encode(v)] for k, v in value.items()]}
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(v) for v in value]}
    if isinstance(value, list):
        return [_encode(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray) and value.ndim == 0:
        return value.item()
    return value


def _decode(value):
    if isinstance(value, list):
        return [_decode(v) for v in value]
    if isinstance(value, dict):
        if "__counter__" in value:
            return collections.Counter({_decode(k): v for k, v in value["__counter__"]})
        if "__dict__" in value:
            return {_decode(k): _decode(v) for k, v in value["__dict__"]}
        if "__tuple__" in value:
            return tuple(_decode(v) for v in value["__tuple__"])
    return value


def _clean_history(data: dict) -> dict:
    data = dict(data)
    data["history"] = {
        k: [None if isinstance(x, float) and not math.isfinite(x) else x for x in v]
        for k, v in data["history"].items()
    }
    return data


# ----------------------------------------------------------------- mask counters
def mask_state(model) -> dict:
    """{module name: [seed, counter]} of the layers that draw a mask per training
    forward (Dropout, DropConnect): what makes their next masks."""
    return {
        name: [int(m.seed), int(m.counter)]
        for name, m in model.named_modules()
        if hasattr(m, "counter") and hasattr(m, "seed")
    }


def set_mask_state(model, state: dict) -> None:
    modules = dict(model.named_modules())
    for name, (seed, counter) in state.items():
        object.__setattr__(modules[name], "seed", int(seed))
        object.__setattr__(modules[name], "counter", int(counter))


# ------------------------------------------------------------------------- save
def _to_host(array) -> np.ndarray:
    """A contiguous host copy of the same shape (ascontiguousarray alone makes 0-d 1-d)."""
    get = getattr(array, "get", None)  # CuPy
    host = get() if get is not None else np.asarray(array)
    return np.ascontiguousarray(host).reshape(host.shape)


def save_checkpoint(
    path,
    model,
    optimizer=None,
    schedulers=(),
    *,
    epochs_done: int,
    seed: int | None = None,
    history=None,
    callbacks: dict | None = None,
) -> None:
    """Write a full checkpoint to ``path`` atomically (see the module docstring).

    ``schedulers``: objects with ``state_dict()``; ``history``: a ``History`` or its
    ``to_dict()``; ``callbacks``: {"<index>:<class>": JSON-ready state}."""
    from safetensors.numpy import save_file  # noqa: PLC0415

    from gpunet.random import default_generator  # noqa: PLC0415

    tensors = {f"model/{k}": _to_host(v) for k, v in model.state_dict().items()}
    meta = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "epochs_done": int(epochs_done),
        "seed": None if seed is None else int(seed),
        "rng_state": _encode(default_generator().bit_generator.state),
        "optimizer": None,
        "schedulers": [_encode(s.state_dict()) for s in schedulers],
        "callbacks": _encode(callbacks or {}),
        "history": None,
        "masks": mask_state(model),
    }
    if optimizer is not None:
        state = optimizer.state_dict()
        scalars = {}
        for index, one in state["state"].items():
            kept = {}
            for key, value in one.items():
                if hasattr(value, "shape") and getattr(value, "ndim", 0) > 0:
                    tensors[f"optimizer/{index}/{key}"] = _to_host(value)
                else:
                    kept[key] = _encode(value)
            scalars[str(index)] = kept
        meta["optimizer"] = {
            "class": type(optimizer).__name__,
            "param_groups": _encode(state["param_groups"]),
            "scalars": scalars,
        }
    if history is not None:
        data = history.to_dict() if hasattr(history, "to_dict") else dict(history)
        meta["history"] = _clean_history(data)
    text = json.dumps(meta)
    with atomic_write(path) as tmp:
        save_file(tensors, tmp, metadata={_META_KEY: text})


# ------------------------------------------------------------------------- load
def is_checkpoint(metadata: dict | None) -> bool:
    return bool(metadata) and _META_KEY in metadata


def model_tensors(tensors: dict) -> dict:
    """The model's ``state_dict`` part of a checkpoint's tensors (``model/<name>``)."""
    return {k[len("model/") :]: v for k, v in tensors.items() if k.startswith("model/")}


def load_checkpoint(path) -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint`; every error names the file
    (missing, a directory, truncated or not safetensors, not a gpunet checkpoint, a
    newer format)."""
    path = os.fspath(path)
    tensors, metadata = read_safetensors(path)
    if not is_checkpoint(metadata):
        raise ValueError(
            f"{path!r} is a weights file, not a gpunet checkpoint (no {_META_KEY!r} metadata); "
            "load it with gpunet.io.load_weights"
        )
    try:
        meta = json.loads(metadata[_META_KEY])
    except json.JSONDecodeError as error:
        raise ValueError(
            f"{path!r}: the checkpoint's metadata is not valid JSON: {error}"
        ) from None
    if meta.get("format") != FORMAT or not isinstance(meta.get("version"), int):
        raise ValueError(f"{path!r} is not a gpunet checkpoint (format {meta.get('format')!r})")
    if meta["version"] > FORMAT_VERSION:
        raise ValueError(
            f"{path!r} is checkpoint format {meta['version']}; this gpunet reads up to "
            f"{FORMAT_VERSION} (upgrade gpunet)"
        )
    model_state = model_tensors(tensors)
    optimizer_state = optimizer_class = None
    if meta.get("optimizer") is not None:
        opt = meta["optimizer"]
        optimizer_class = opt["class"]
        state = {}
        for index, scalars in opt["scalars"].items():
            state[int(index)] = {k: _decode(v) for k, v in scalars.items()}
        for key, array in tensors.items():
            if key.startswith("optimizer/"):
                _, index, name = key.split("/", 2)
                state.setdefault(int(index), {})[name] = array
        groups = _decode(opt["param_groups"])
        optimizer_state = {"state": state, "param_groups": groups}
    rng = meta.get("rng_state")
    return Checkpoint(
        path=path,
        model_state=model_state,
        optimizer_state=optimizer_state,
        optimizer_class=optimizer_class,
        schedulers=[_decode(s) for s in meta.get("schedulers", [])],
        epochs_done=int(meta["epochs_done"]),
        seed=meta.get("seed"),
        rng_state=None if rng is None else _decode(rng),
        history=meta.get("history"),
        callbacks=_decode(meta.get("callbacks") or {}),
        masks=meta.get("masks") or {},
    )


def restore_checkpoint(checkpoint: Checkpoint, model, optimizer=None, schedulers=()) -> None:
    """Load ``checkpoint`` into ``model``, ``optimizer`` and ``schedulers``, after
    checking all of it against them: nothing changes if anything does not match (a
    ValueError names the file and the problem)."""
    where = checkpoint.path
    try:
        model.check_state_dict(checkpoint.model_state)
        if set(checkpoint.masks) != set(mask_state(model)):
            raise ValueError(
                f"it holds mask counters of layers {sorted(checkpoint.masks)}, the model has "
                f"{sorted(mask_state(model))}"
            )
        new_groups = new_state = None
        if optimizer is not None:
            if checkpoint.optimizer_state is None:
                raise ValueError("it holds no optimizer state")
            if checkpoint.optimizer_class != type(optimizer).__name__:
                raise ValueError(
                    f"it holds {checkpoint.optimizer_class} state, the optimizer is "
                    f"{type(optimizer).__name__}"
                )
            new_groups, new_state = optimizer._validated_load(checkpoint.optimizer_state)
        schedulers = list(schedulers)
        if len(schedulers) != len(checkpoint.schedulers):
            raise ValueError(
                f"it holds {len(checkpoint.schedulers)} scheduler states for "
                f"{len(schedulers)} schedulers"
            )
        for scheduler, state in zip(schedulers, checkpoint.schedulers):
            validate = getattr(scheduler, "validate_state_dict", None)
            if validate is not None:
                validate(state)
    except (ValueError, TypeError, KeyError) as error:
        raise ValueError(f"cannot resume from {where!r}: {error}") from None
    model.load_state_dict(checkpoint.model_state)
    set_mask_state(model, checkpoint.masks)
    if optimizer is not None:
        optimizer.state, optimizer.param_groups = new_state, new_groups
    for scheduler, state in zip(schedulers, checkpoint.schedulers):
        scheduler.load_state_dict(state)
    if checkpoint.rng_state is not None:
        from gpunet.random import default_generator  # noqa: PLC0415

        default_generator().bit_generator.state = checkpoint.rng_state
