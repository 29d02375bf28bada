"""Central-difference gradient checking in float64 for the tests."""

from __future__ import annotations

import numpy as np

import gpunet
from gpunet import Tensor


def numerical_grad(fn, arrays, index, eps=1e-6):
    """d fn(arrays) / d arrays[index] by central differences; fn returns a float."""
    base = arrays[index]
    grad = np.zeros_like(base)
    it = np.nditer(base, flags=["multi_index"])
    for _ in it:
        idx = it.multi_index
        orig = base[idx]
        base[idx] = orig + eps
        plus = fn(arrays)
        base[idx] = orig - eps
        minus = fn(arrays)
        base[idx] = orig
        grad[idx] = (plus - minus) / (2 * eps)
    return grad


def relative_error(analytic, numeric) -> float:
    scale = max(np.max(np.abs(analytic)), np.max(np.abs(numeric)), 1e-8)
    return float(np.max(np.abs(analytic - numeric)) / scale)


def check_gradients(fn, *arrays, wrt=None, tol=1e-6, seed=0):
    """Compare autograd with central differences for ``fn(*tensors) -> Tensor``.

    Non-scalar outputs are reduced with fixed random weights so every output element
    contributes. ``wrt`` lists the argument indices to check (default: all float ones).
    Returns the worst relative error.
    """
    arrays = [
        np.array(a, dtype=np.float64) if np.asarray(a).dtype.kind == "f" else np.asarray(a)
        for a in arrays
    ]
    wrt = [i for i, a in enumerate(arrays) if a.dtype.kind == "f"] if wrt is None else wrt
    rng = np.random.default_rng(seed)
    weights = {}

    def scalar(out: Tensor) -> Tensor:
        if out.data.size == 1:
            return out.sum()
        if "w" not in weights:
            weights["w"] = rng.standard_normal(out.shape)
        return (out * Tensor(weights["w"])).sum()

    tensors = [Tensor(a, requires_grad=(i in wrt)) for i, a in enumerate(arrays)]
    scalar(fn(*tensors)).backward()

    def value(arrs):
        with gpunet.no_grad():
            return float(scalar(fn(*[Tensor(a) for a in arrs])).item())

    worst = 0.0
    for i in wrt:
        numeric = numerical_grad(value, arrays, i)
        analytic = tensors[i].grad.numpy()
        err = relative_error(analytic, numeric)
        assert err < tol, f"argument {i}: relative error {err:.2e} >= {tol}"
        worst = max(worst, err)
    return worst
