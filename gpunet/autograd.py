"""``Tensor``: an array on a device plus define-by-run reverse-mode autograd.

Each op that involves a tensor requiring grad records one node: the parent tensors and
a closure mapping the output gradient to one gradient per parent. ``backward()`` walks
the recorded graph in reverse topological order, summing gradients, and stores them in
``.grad`` of the leaves that require grad (accumulating, like PyTorch).
"""

from __future__ import annotations

import contextlib
import functools
import numbers
import threading

import numpy as np

from gpunet.backend import Backend, backend_of_array, get_backend
from gpunet.dtypes import get_default_dtype

_state = threading.local()


def is_grad_enabled() -> bool:
    """Whether ops currently record the autograd graph."""
    return getattr(_state, "grad_enabled", True)


class _GradMode(contextlib.ContextDecorator):
    def __init__(self, enabled: bool):
        self.enabled = enabled

    def __enter__(self):
        self.prev = is_grad_enabled()
        _state.grad_enabled = self.enabled

    def __exit__(self, *exc):
        _state.grad_enabled = self.prev
        return False


def no_grad():
    """Context manager / decorator that disables graph recording."""
    return _GradMode(False)


def enable_grad():
    """Context manager / decorator that enables graph recording."""
    return _GradMode(True)


class _Node:
    """One recorded op: its parents and ``backward(grad) -> tuple of parent grads``."""

    __slots__ = ("parents", "backward", "name")

    def __init__(self, parents, backward, name):
        self.parents = parents
        self.backward = backward
        self.name = name


def _to_array(data, backend: Backend | None, dtype):
    """Convert user data to an array; floats default to the global dtype unless the
    input is already a float32/float64 array."""
    if isinstance(data, Tensor):
        data = data.data
    if backend is None:
        backend = backend_of_array(data) if type(data).__module__.startswith("cupy") else None
        backend = backend or get_backend("cpu")
    if dtype is None:
        probe = data if hasattr(data, "dtype") else np.asarray(data)
        if probe.dtype.kind == "f":
            if not hasattr(data, "dtype") or probe.dtype not in (np.float32, np.float64):
                dtype = get_default_dtype()
        elif probe.dtype.kind == "b":
            dtype = None
        elif probe.dtype.kind in "iu":
            dtype = np.int64 if not hasattr(data, "dtype") else None
        else:
            raise TypeError(f"unsupported data type {probe.dtype} for a Tensor")
    if not backend.is_native(data) and type(data).__module__.startswith("cupy"):
        data = data.get()
    return backend, backend.asarray(data, dtype=dtype)


def _unbroadcast(grad, shape):
    """Sum ``grad`` down to ``shape`` (reverse of NumPy broadcasting)."""
    if grad.shape == shape:
        return grad
    extra = grad.ndim - len(shape)
    if extra:
        grad = grad.sum(axis=tuple(range(extra)))
    axes = tuple(i for i, n in enumerate(shape) if n == 1 and grad.shape[i] != 1)
    if axes:
        grad = grad.sum(axis=axes, keepdims=True)
    return grad.reshape(shape)


class Tensor:
    """An n-dimensional array on a device, optionally tracked by autograd.

    ``Tensor(data, requires_grad=False, dtype=None, device=None)``: ``data`` is a
    NumPy/CuPy array, a Tensor, a nested list or a number. Python floats become the
    default dtype (float32); float32/float64 arrays keep their dtype.
    """

    __array_priority__ = 100  # make ndarray (op) Tensor defer to Tensor

    def __init__(self, data, requires_grad: bool = False, dtype=None, device=None):
        backend = get_backend(device) if device is not None else None
        self.backend, self.data = _to_array(data, backend, dtype)
        if requires_grad and self.data.dtype.kind != "f":
            raise TypeError(f"only floating tensors can require grad, got dtype {self.data.dtype}")
        self.requires_grad = bool(requires_grad)
        self.grad: Tensor | None = None
        self._node: _Node | None = None

    # ---------------------------------------------------------------- basics
    @classmethod
    def _wrap(cls, data, backend: Backend, node: _Node | None = None) -> Tensor:
        t = cls.__new__(cls)
        t.backend, t.data, t.grad, t._node = backend, data, None, node
        t.requires_grad = node is not None
        return t

    @property
    def shape(self) -> tuple:
        return tuple(self.data.shape)

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def ndim(self) -> int:
        return self.data.ndim

    @property
    def device(self) -> str:
        return self.backend.device

    @property
    def is_leaf(self) -> bool:
        return self._node is None

    def size(self, dim: int | None = None):
        return self.shape if dim is None else self.shape[dim]

    def __len__(self) -> int:
        return self.shape[0]

    def numel(self) -> int:
        return int(self.data.size)

    def __repr__(self) -> str:
        body = np.array2string(self.backend.to_numpy(self.data), precision=4, separator=", ")
        extra = f", device='{self.device}'" if self.device != "cpu" else ""
        grad = ", requires_grad=True" if self.requires_grad else ""
        return f"tensor({body}, dtype={self.dtype}{extra}{grad})"

    def numpy(self) -> np.ndarray:
        """The values as a host NumPy array (shares memory on CPU, like torch)."""
        if self.requires_grad:
            raise RuntimeError(
                "can't call numpy() on a tensor that requires grad; use .detach().numpy()"
            )
        return self.backend.to_numpy(self.data)

    def item(self):
        if self.data.size != 1:
            raise ValueError(f"item() needs a one-element tensor, got shape {self.shape}")
        return self.backend.to_numpy(self.data).reshape(()).item()

    def tolist(self):
        return self.backend.to_numpy(self.data).tolist()

    def detach(self) -> Tensor:
        """A tensor sharing this data, cut from the graph."""
        return Tensor._wrap(self.data, self.backend)

    def to(self, device=None, dtype=None) -> Tensor:
        """Copy to another device and/or dtype (returns self if nothing changes).

        The result is a new leaf; ``requires_grad`` is carried over for leaves."""
        target = get_backend(device) if device is not None else self.backend
        if target is self.backend and (dtype is None or np.dtype(dtype) == self.dtype):
            return self
        host = self.backend.to_numpy(self.data)
        out = Tensor(host, dtype=dtype or self.dtype, device=target.device)
        out.requires_grad = self.requires_grad and out.dtype.kind == "f"
        return out

    def cpu(self) -> Tensor:
        return self.to("cpu")

    def float(self) -> Tensor:
        return self.to(dtype=np.float32)

    def double(self) -> Tensor:
        return self.to(dtype=np.float64)

    def requires_grad_(self, flag: bool = True) -> Tensor:
        if flag and self.data.dtype.kind != "f":
            raise TypeError(f"only floating tensors can require grad, got {self.dtype}")
        self.requires_grad = flag
        return self

    def zero_(self) -> Tensor:
        self.data[...] = 0
        return self

    # -------------------------------------------------------------- autograd
    def backward(self, gradient=None) -> None:
        """Accumulate d(self)/d(leaf) into ``leaf.grad`` for every leaf requiring grad.

        ``gradient`` (same shape as self) is required unless self has one element.
        """
        if not self.requires_grad:
            raise RuntimeError("backward() on a tensor that does not require grad")
        xp = self.backend.xp
        if gradient is None:
            if self.data.size != 1:
                raise RuntimeError(
                    f"grad can be implicitly created only for scalar outputs, got shape "
                    f"{self.shape}; pass gradient="
                )
            seed = xp.ones_like(self.data)
        else:
            seed = gradient.data if isinstance(gradient, Tensor) else self.backend.asarray(gradient)
            if seed.shape != self.data.shape:
                raise ValueError(f"gradient shape {seed.shape} != tensor shape {self.shape}")
            seed = seed.astype(self.dtype, copy=False)

        order = _topological_order(self)
        grads = {id(self): seed}
        for tensor in order:
            g = grads.pop(id(tensor), None)
            if g is None:
                continue
            node = tensor._node
            if node is None:
                if tensor.requires_grad:
                    if tensor.grad is None:
                        # own, contiguous, writable storage: g may be a broadcast view
                        tensor.grad = Tensor._wrap(g.copy(), tensor.backend)
                    else:
                        tensor.grad.data = tensor.grad.data + g
                continue
            parent_grads = node.backward(g)
            for parent, pg in zip(node.parents, parent_grads):
                if pg is None or not parent.requires_grad:
                    continue
                key = id(parent)
                grads[key] = pg if key not in grads else grads[key] + pg

    # --------------------------------------------------------- operator sugar
    def __add__(self, other):
        return add(self, other)

    def __radd__(self, other):
        return add(other, self)

    def __sub__(self, other):
        return sub(self, other)

    def __rsub__(self, other):
        return sub(other, self)

    def __mul__(self, other):
        return mul(self, other)

    def __rmul__(self, other):
        return mul(other, self)

    def __truediv__(self, other):
        return div(self, other)

    def __rtruediv__(self, other):
        return div(other, self)

    def __neg__(self):
        return neg(self)

    def __pow__(self, exponent):
        return pow(self, exponent)

    def __matmul__(self, other):
        return matmul(self, other)

    def __rmatmul__(self, other):
        return matmul(other, self)

    def __getitem__(self, index):
        return getitem(self, index)

    def _compare(self, other, op):
        other = other.data if isinstance(other, Tensor) else other
        return Tensor._wrap(op(self.data, other), self.backend)

    def __eq__(self, other):  # elementwise, like torch
        return self._compare(other, lambda a, b: a == b)

    def __ne__(self, other):
        return self._compare(other, lambda a, b: a != b)

    def __lt__(self, other):
        return self._compare(other, lambda a, b: a < b)

    def __le__(self, other):
        return self._compare(other, lambda a, b: a <= b)

    def __gt__(self, other):
        return self._compare(other, lambda a, b: a > b)

    def __ge__(self, other):
        return self._compare(other, lambda a, b: a >= b)

    __hash__ = object.__hash__

    @property
    def T(self):
        return transpose(self)

    def sum(self, axis=None, keepdims=False):
        return sum(self, axis, keepdims)

    def mean(self, axis=None, keepdims=False):
        return mean(self, axis, keepdims)

    def max(self, axis=None, keepdims=False):
        return max(self, axis, keepdims)

    def exp(self):
        return exp(self)

    def log(self):
        return log(self)

    def sqrt(self):
        return sqrt(self)

    def reshape(self, *shape):
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        return reshape(self, shape)

    def transpose(self, *axes):
        if len(axes) == 1 and isinstance(axes[0], (tuple, list)):
            axes = tuple(axes[0])
        return transpose(self, axes or None)

    def argmax(self, axis=None):
        return Tensor._wrap(self.data.argmax(axis=axis), self.backend)


def _topological_order(root: Tensor) -> list[Tensor]:
    """Tensors reachable from ``root`` through recorded nodes, outputs before inputs."""
    order, visited = [], set()
    stack = [(root, False)]
    while stack:
        tensor, expanded = stack.pop()
        if expanded:
            order.append(tensor)
            continue
        if id(tensor) in visited:
            continue
        visited.add(id(tensor))
        stack.append((tensor, True))
        if tensor._node is not None:
            for parent in tensor._node.parents:
                if parent.requires_grad and id(parent) not in visited:
                    stack.append((parent, False))
    order.reverse()
    return order


# ------------------------------------------------------------------ op helpers
def _as_tensor(value, like: Tensor) -> Tensor:
    """Wrap numbers/arrays as constants on ``like``'s device and dtype."""
    if isinstance(value, Tensor):
        return value
    if isinstance(value, numbers.Number):
        return Tensor._wrap(like.backend.asarray(value, dtype=like.dtype), like.backend)
    return Tensor(value, device=like.backend.device)


def check_same_device(*tensors: Tensor) -> Backend:
    """The shared backend of ``tensors``; RuntimeError naming both devices if they differ."""
    backend = tensors[0].backend
    for t in tensors[1:]:
        if t.backend is not backend:
            raise RuntimeError(
                f"expected all tensors on the same device, got {backend.device} and "
                f"{t.backend.device}; move them with .to(device)"
            )
    return backend


def record(data, parents: tuple, backward, name: str) -> Tensor:
    """Wrap an op's output; record a graph node if grad mode is on and a parent needs it."""
    backend = parents[0].backend
    if is_grad_enabled() and any(p.requires_grad for p in parents):
        return Tensor._wrap(data, backend, _Node(parents, backward, name))
    return Tensor._wrap(data, backend)


def _binary(fn):
    @functools.wraps(fn)
    def wrapper(a, b):
        if not isinstance(a, Tensor):
            a = _as_tensor(a, b)
        if not isinstance(b, Tensor):
            b = _as_tensor(b, a)
        check_same_device(a, b)
        return fn(a, b)

    return wrapper


# ----------------------------------------------------------------- arithmetic
@_binary
def add(a: Tensor, b: Tensor) -> Tensor:
    def backward(g):
        return _unbroadcast(g, a.data.shape), _unbroadcast(g, b.data.shape)

    return record(a.data + b.data, (a, b), backward, "add")


@_binary
def sub(a: Tensor, b: Tensor) -> Tensor:
    def backward(g):
        return _unbroadcast(g, a.data.shape), _unbroadcast(-g, b.data.shape)

    return record(a.data - b.data, (a, b), backward, "sub")


@_binary
def mul(a: Tensor, b: Tensor) -> Tensor:
    def backward(g):
        ga = _unbroadcast(g * b.data, a.data.shape) if a.requires_grad else None
        gb = _unbroadcast(g * a.data, b.data.shape) if b.requires_grad else None
        return ga, gb

    return record(a.data * b.data, (a, b), backward, "mul")


@_binary
def div(a: Tensor, b: Tensor) -> Tensor:
    out = a.data / b.data

    def backward(g):
        ga = _unbroadcast(g / b.data, a.data.shape) if a.requires_grad else None
        gb = _unbroadcast(-g * out / b.data, b.data.shape) if b.requires_grad else None
        return ga, gb

    return record(out, (a, b), backward, "div")


def neg(a: Tensor) -> Tensor:
    return record(-a.data, (a,), lambda g: (-g,), "neg")


def pow(a: Tensor, exponent) -> Tensor:
    """``a ** exponent`` for a number or a tensor exponent (broadcast)."""
    if isinstance(exponent, Tensor):
        return _pow_tensor(a, exponent)
    p = exponent
    out = a.data**p

    def backward(g):
        return (g * p * a.data ** (p - 1),)

    return record(out, (a,), backward, "pow")


@_binary
def _pow_tensor(a: Tensor, b: Tensor) -> Tensor:
    xp = a.backend.xp
    out = a.data**b.data

    def backward(g):
        ga = _unbroadcast(g * b.data * a.data ** (b.data - 1), a.data.shape)
        gb = _unbroadcast(g * out * xp.log(a.data), b.data.shape) if b.requires_grad else None
        return ga, gb

    return record(out, (a, b), backward, "pow")


@_binary
def matmul(a: Tensor, b: Tensor) -> Tensor:
    """Matrix product of 2-D tensors (or a 1-D vector with a 2-D matrix)."""
    if a.ndim < 1 or b.ndim < 1 or a.ndim > 2 or b.ndim > 2:
        raise ValueError(f"matmul supports 1-D and 2-D tensors, got {a.shape} @ {b.shape}")
    if a.shape[-1] != b.shape[0]:
        raise ValueError(f"matmul shape mismatch: {a.shape} @ {b.shape}")
    A = a.data if a.ndim == 2 else a.data[None, :]
    B = b.data if b.ndim == 2 else b.data[:, None]
    out = A @ B

    def backward(g):
        g2 = g.reshape(out.shape)
        ga = (g2 @ B.T).reshape(a.data.shape) if a.requires_grad else None
        gb = (A.T @ g2).reshape(b.data.shape) if b.requires_grad else None
        return ga, gb

    shape = out.shape
    if a.ndim == 1:
        shape = shape[1:]
    if b.ndim == 1:
        shape = shape[:-1]
    return record(out.reshape(shape), (a, b), backward, "matmul")


# ------------------------------------------------------------- elementwise math
def exp(a: Tensor) -> Tensor:
    out = a.backend.xp.exp(a.data)
    return record(out, (a,), lambda g: (g * out,), "exp")


def log(a: Tensor) -> Tensor:
    return record(a.backend.xp.log(a.data), (a,), lambda g: (g / a.data,), "log")


def sqrt(a: Tensor) -> Tensor:
    out = a.backend.xp.sqrt(a.data)
    return record(out, (a,), lambda g: (g / (2 * out),), "sqrt")


def abs(a: Tensor) -> Tensor:
    xp = a.backend.xp
    return record(xp.abs(a.data), (a,), lambda g: (g * xp.sign(a.data),), "abs")


def clip(a: Tensor, min=None, max=None) -> Tensor:
    xp = a.backend.xp
    out = xp.clip(a.data, min, max)

    def backward(g):
        mask = xp.ones_like(a.data, dtype=bool)
        if min is not None:
            mask &= a.data >= min
        if max is not None:
            mask &= a.data <= max
        return (g * mask,)

    return record(out, (a,), backward, "clip")


# --------------------------------------------------------------- reductions
def _normalize_axis(axis, ndim):
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    return tuple(ax % ndim for ax in axes)


def _expand_grad(g, axes, keepdims):
    """Reinsert the reduced ``axes`` as size-1 axes so ``g`` broadcasts to the input."""
    if not keepdims:
        for ax in sorted(axes):
            g = g.reshape(g.shape[:ax] + (1,) + g.shape[ax:])
    return g


def sum(a: Tensor, axis=None, keepdims: bool = False) -> Tensor:
    axes = _normalize_axis(axis, a.ndim)
    out = a.data.sum(axis=axes, keepdims=keepdims)

    def backward(g):
        g = _expand_grad(g, axes, keepdims)
        return (a.backend.xp.broadcast_to(g, a.data.shape),)

    return record(out, (a,), backward, "sum")


def mean(a: Tensor, axis=None, keepdims: bool = False) -> Tensor:
    axes = _normalize_axis(axis, a.ndim)
    count = 1
    for ax in axes:
        count *= a.data.shape[ax]
    out = a.data.mean(axis=axes, keepdims=keepdims)

    def backward(g):
        g = _expand_grad(g, axes, keepdims) / count
        return (a.backend.xp.broadcast_to(g, a.data.shape),)

    return record(out, (a,), backward, "mean")


def max(a: Tensor, axis=None, keepdims: bool = False) -> Tensor:
    """Maximum over ``axis``; the gradient is split evenly between tied maxima."""
    axes = _normalize_axis(axis, a.ndim)
    kept = a.data.max(axis=axes, keepdims=True)
    out = kept if keepdims else kept.reshape([n for i, n in enumerate(kept.shape) if i not in axes])

    def backward(g):
        mask = a.data == kept
        counts = mask.sum(axis=axes, keepdims=True)
        g = _expand_grad(g, axes, keepdims)
        return (mask * (g / counts),)

    return record(out, (a,), backward, "max")


# ------------------------------------------------------------------- shapes
def reshape(a: Tensor, shape) -> Tensor:
    return record(a.data.reshape(shape), (a,), lambda g: (g.reshape(a.data.shape),), "reshape")


def transpose(a: Tensor, axes=None) -> Tensor:
    xp = a.backend.xp
    out = xp.transpose(a.data, axes)
    inverse = None if axes is None else tuple(np.argsort(axes))
    return record(out, (a,), lambda g: (xp.transpose(g, inverse),), "transpose")


def getitem(a: Tensor, index) -> Tensor:
    if isinstance(index, Tensor):
        index = index.data
    elif isinstance(index, tuple):
        index = tuple(i.data if isinstance(i, Tensor) else i for i in index)
    out = a.data[index]

    def backward(g):
        xp = a.backend.xp
        full = xp.zeros_like(a.data)
        if xp is np:
            np.add.at(full, index, g)
        else:  # cupyx.scatter_add is CuPy's ufunc.at
            import cupyx  # noqa: PLC0415

            cupyx.scatter_add(full, index, g)
        return (full,)

    return record(out, (a,), backward, "getitem")


def concatenate(tensors, axis: int = 0) -> Tensor:
    tensors = list(tensors)
    backend = check_same_device(*tensors)
    out = backend.xp.concatenate([t.data for t in tensors], axis=axis)
    bounds = np.cumsum([t.data.shape[axis] for t in tensors])[:-1]

    def backward(g):
        return tuple(backend.xp.split(g, bounds, axis=axis))

    return record(out, tuple(tensors), backward, "concatenate")


def tensor(data, requires_grad: bool = False, dtype=None, device=None) -> Tensor:
    """Create a tensor (``torch.tensor`` equivalent)."""
    return Tensor(data, requires_grad=requires_grad, dtype=dtype, device=device)


def zeros(*shape, dtype=None, device=None, requires_grad=False) -> Tensor:
    shape = tuple(shape[0]) if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
    return Tensor(np.zeros(shape, dtype=dtype or get_default_dtype()), requires_grad, None, device)


def ones(*shape, dtype=None, device=None, requires_grad=False) -> Tensor:
    shape = tuple(shape[0]) if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
    return Tensor(np.ones(shape, dtype=dtype or get_default_dtype()), requires_grad, None, device)
