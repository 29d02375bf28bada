"""``Module`` and ``Parameter``: the PyTorch-style container of trainable state."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator

import numpy as np

from gpunet.autograd import Tensor
from gpunet.backend import backend_of_array, get_backend
from gpunet.dtypes import check_float_dtype


class Parameter(Tensor):
    """A leaf tensor that requires grad and is registered by the module holding it."""

    def __init__(self, data, requires_grad: bool = True, dtype=None, device=None):
        super().__init__(data, requires_grad=requires_grad, dtype=dtype, device=device)

    def __repr__(self) -> str:
        return "Parameter containing:\n" + super().__repr__()


class Module:
    """Base class of layers and models. Subclasses define ``forward``."""

    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "training", True)

    def __setattr__(self, name, value):
        if "_parameters" not in self.__dict__:
            raise AttributeError("call Module.__init__() before assigning attributes")
        self._parameters.pop(name, None)
        self._modules.pop(name, None)
        if name in self._buffers and not isinstance(value, (Parameter, Module)):
            if value is not None and not isinstance(value, Tensor):
                raise TypeError(f"buffer {name!r} must be a Tensor or None")
            self._buffers[name] = value
        elif isinstance(value, Parameter):
            self._parameters[name] = value
        elif isinstance(value, Module):
            self._modules[name] = value
        object.__setattr__(self, name, value)

    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} does not define forward()")

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    # ---------------------------------------------------------------- traversal
    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, Module]]:
        yield prefix, self
        for name, child in self._modules.items():
            yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

    def modules(self) -> Iterator[Module]:
        for _, m in self.named_modules():
            yield m

    def children(self) -> Iterator[Module]:
        yield from self._modules.values()

    def named_parameters(self, prefix: str = "", recurse: bool = True):
        seen = set()
        modules = self.named_modules(prefix) if recurse else [(prefix, self)]
        for mod_prefix, module in modules:
            for name, p in module._parameters.items():
                if id(p) in seen:
                    continue
                seen.add(id(p))
                yield (f"{mod_prefix}.{name}" if mod_prefix else name), p

    def parameters(self, recurse: bool = True) -> Iterator[Parameter]:
        for _, p in self.named_parameters(recurse=recurse):
            yield p

    def register_buffer(self, name: str, tensor: Tensor | None) -> None:
        """Register non-trainable state (e.g. BatchNorm's running statistics): it moves
        with ``to()`` and is saved and loaded by ``state_dict``/``load_state_dict``
        (and so by ``gpunet.io``), like ``torch.nn.Module.register_buffer``."""
        if not isinstance(name, str) or not name or "." in name:
            raise KeyError(f"buffer name must be a non-empty str without '.', got {name!r}")
        if tensor is not None and not isinstance(tensor, Tensor):
            raise TypeError(f"buffer {name!r} must be a Tensor or None")
        self._parameters.pop(name, None)
        self._modules.pop(name, None)
        self._buffers[name] = tensor
        object.__setattr__(self, name, tensor)

    def named_buffers(self, prefix: str = "") -> Iterator[tuple[str, Tensor]]:
        for mod_prefix, module in self.named_modules(prefix):
            for name, b in module._buffers.items():
                if b is not None:
                    yield (f"{mod_prefix}.{name}" if mod_prefix else name), b

    def buffers(self) -> Iterator[Tensor]:
        for _, b in self.named_buffers():
            yield b

    # ------------------------------------------------------------------- modes
    def train(self, mode: bool = True) -> Module:
        for m in self.modules():
            object.__setattr__(m, "training", bool(mode))
        return self

    def eval(self) -> Module:
        return self.train(False)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.parameters():
            if p.grad is not None:
                if set_to_none:
                    p.grad = None
                else:
                    p.grad.data[...] = 0

    # --------------------------------------------------------- device / dtype
    @property
    def device(self) -> str:
        first = next(self.parameters(), None)
        return "cpu" if first is None else first.device

    @property
    def dtype(self):
        first = next(self.parameters(), None)
        return None if first is None else first.dtype

    def to(self, device=None, dtype=None) -> Module:
        """Move every parameter in place to ``device`` and/or cast to ``dtype``.

        Create optimizers after moving: their state refers to the parameter arrays."""
        backend = get_backend(device) if device is not None else None
        dtype = check_float_dtype(dtype) if dtype is not None else None
        for p in self.parameters():
            target = backend or p.backend
            if target is p.backend and (dtype is None or dtype == p.dtype):
                continue
            host = p.backend.to_numpy(p.data).astype(dtype or p.dtype, copy=False)
            p.backend, p.data = target, target.asarray(host)
            if p.grad is not None:
                p.grad = None
        for b in self.buffers():  # integer buffers (counts) keep their dtype
            cast = dtype if dtype is not None and b.dtype.kind == "f" else b.dtype
            target = backend or b.backend
            if target is not b.backend or cast != b.dtype:
                host = b.backend.to_numpy(b.data).astype(cast, copy=False)
                b.backend, b.data = target, target.asarray(host)
        return self

    def double(self) -> Module:
        return self.to(dtype=np.float64)

    def float(self) -> Module:
        return self.to(dtype=np.float32)

    # ------------------------------------------------------------- state dict
    def _state_tensors(self) -> dict:
        """Name -> tensor of each module's parameters then buffers, module by module
        (PyTorch's order); a shared tensor once."""
        out, seen = {}, set()
        for prefix, module in self.named_modules():
            for name, t in (*module._parameters.items(), *module._buffers.items()):
                if t is not None and id(t) not in seen:
                    seen.add(id(t))
                    out[f"{prefix}.{name}" if prefix else name] = t
        return out

    def state_dict(self) -> OrderedDict:
        """Name -> host NumPy copy of every parameter and buffer."""
        return OrderedDict(
            (name, t.backend.to_numpy(t.data).copy()) for name, t in self._state_tensors().items()
        )

    def load_state_dict(self, state_dict, strict: bool = True):
        """Copy values into the parameters in place. All keys and shapes are checked
        before anything is written (:meth:`check_state_dict`); returns
        ``(missing_keys, unexpected_keys)``."""
        arrays, missing, unexpected = self.check_state_dict(state_dict, strict)
        params = self._state_tensors()
        for name, value in arrays.items():
            p = params[name]
            p.data[...] = p.backend.asarray(value, dtype=p.dtype)
        return missing, unexpected

    def check_state_dict(self, state_dict, strict: bool = True, allow_nonfinite: bool = True):
        """Check ``state_dict`` against the parameters and buffers, changing nothing: returns
        ``(arrays, missing_keys, unexpected_keys)``, ``arrays`` {name: array} for the
        matching keys. Raises KeyError (``strict``: any missing or unexpected key),
        ValueError (a shape mismatch; a NaN or infinite value unless
        ``allow_nonfinite``)."""
        if not hasattr(state_dict, "keys"):
            raise TypeError(f"state_dict must be a mapping, got {type(state_dict).__name__}")
        params = self._state_tensors()
        missing = [k for k in params if k not in state_dict]
        unexpected = [k for k in state_dict if k not in params]
        if strict and (missing or unexpected):
            raise KeyError(
                f"state_dict mismatch: missing keys {missing}, unexpected keys {unexpected}"
            )
        arrays = {}
        for name, p in params.items():
            if name not in state_dict:
                continue
            value = state_dict[name]
            value = value.backend.to_numpy(value.data) if isinstance(value, Tensor) else value
            value = np.asarray(value) if not hasattr(value, "shape") else value
            if tuple(value.shape) != p.shape:
                raise ValueError(
                    f"shape mismatch for {name!r}: checkpoint has {tuple(value.shape)}, "
                    f"model has {p.shape}"
                )
            if not allow_nonfinite and not bool(backend_of_array(value).xp.isfinite(value).all()):
                raise ValueError(f"{name!r} holds NaN or infinite values")
            arrays[name] = value
        return arrays, missing, unexpected

    # ------------------------------------------------------------------- repr
    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        head = f"{type(self).__name__}({self.extra_repr()}"
        if not self._modules:
            return head + ")"
        lines = [head]
        for name, child in self._modules.items():
            child_repr = repr(child).replace("\n", "\n  ")
            lines.append(f"  ({name}): {child_repr}")
        return "\n".join(lines) + "\n)"
