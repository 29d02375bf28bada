"""CUDA C kernels: sources in this folder, launched through CuPy on a GPU or through the
host build on a CPU (``runtime``), each source with its Python launcher module.

Every source is written in the dialect of ``common.cuh``; ``SOURCES`` names each source's
entry points (without their ``_f32`` / ``_f64`` dtype suffix), which the loader asks for
and the compile tests check. Nothing here imports CuPy at import time.
"""

from __future__ import annotations

from pathlib import Path

SOURCE_DIR = Path(__file__).resolve().parent

#: source file -> kernel base names; each is instantiated as ``<name>_f32`` and ``<name>_f64``
SOURCES: dict[str, tuple[str, ...]] = {
    "gemm.cu": ("gemm_s", "gemm_l"),
    "dense_epilogue.cu": ("bias_act_forward", "bias_act_backward", "column_sum"),
    "loss.cu": ("softmax_xent", "mse", "accumulate_loss"),
    "gather.cu": ("gather_batch",),
    "optim_update.cu": ("optimizer_update", "advance_steps"),
    "dropout.cu": ("dropout_apply", "dropout_keyed", "dropout_advance"),
}

#: the codes of ``common.cuh`` (GN_ACT_*), in the CPU kernels' order
ACTIVATION_CODES = {
    "linear": 0,
    "relu": 1,
    "leaky_relu": 2,
    "sigmoid": 3,
    "tanh": 4,
    "gelu": 5,
}

DTYPE_SUFFIXES = {"float32": "f32", "float64": "f64"}


def kernel_names(source: str) -> list[str]:
    """Every entry point of ``source``, dtype suffix included."""
    return [f"{base}_{sfx}" for base in SOURCES[source] for sfx in DTYPE_SUFFIXES.values()]


def dtype_suffix(dtype) -> str:
    """``"f32"`` or ``"f64"`` for an array dtype; TypeError for any other."""
    name = getattr(dtype, "name", str(dtype))
    if name not in DTYPE_SUFFIXES:
        raise TypeError(f"CUDA kernels take float32 or float64 arrays, not {name}")
    return DTYPE_SUFFIXES[name]
