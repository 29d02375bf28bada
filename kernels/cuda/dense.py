"""Launchers of the dense layer's kernels (``gemm.cu``, ``dense_epilogue.cu``).

Every launcher takes a ``KernelRuntime`` (``rt``) and arrays of ``rt.xp``; outputs are
written into arrays the caller owns, so a training step allocates nothing (a
requirement of CUDA graph capture). Shapes: ``x`` (N, in), ``W`` (out, in), ``b`` (out,),
``y``/``z``/``dy`` (N, out).
"""

from __future__ import annotations

import numpy as np

from gpunet.kernels.cuda import ACTIVATION_CODES

GEMM = "gemm.cu"
EPILOGUE = "dense_epilogue.cu"
EPI_STORE, EPI_BIAS_ACT, EPI_ACT_BACKWARD = 0, 1, 2
#: tile configurations of gemm.cu: name -> (BM, BN, BK for float32, BK for float64, threads)
GEMM_TILES = {"s": (32, 32, 16, 16, 64), "l": (64, 64, 16, 8, 256)}
#: products with at least this many output tiles of the large configuration use it
#: (enough blocks to give every SM of a large GPU one)
LARGE_TILE_MIN_BLOCKS = 128
_BACKWARD_CHUNK_ROWS = 256


def _strides(a) -> tuple[np.int64, np.int64]:
    item = a.dtype.itemsize
    s0, s1 = (s // item for s in a.strides)
    if s0 < 0 or s1 < 0:
        raise ValueError("gemm operands must not have negative strides")
    return np.int64(s0), np.int64(s1)


def choose_tile(m: int, n: int) -> str:
    bm, bn = GEMM_TILES["l"][:2]
    return "l" if -(-m // bm) * -(-n // bn) >= LARGE_TILE_MIN_BLOCKS else "s"


def gemm(
    rt,
    a,
    b,
    out,
    *,
    epilogue: int = EPI_STORE,
    act: str = "linear",
    bias=None,
    z_out=None,
    saved=None,
    rowsum=None,
    tile: str | None = None,
):
    """``out = epilogue(a @ b)`` by gemm.cu. ``a`` (M, K) and ``b`` (K, N) are any 2-D
    views (transposes included, e.g. ``W.T``); ``out`` (M, N) C-contiguous.

    ``EPI_BIAS_ACT``: ``out = act(a @ b + bias)``, and ``z_out`` (M, N) gets the
    pre-activation when given. ``EPI_ACT_BACKWARD``: ``out = (a @ b) * act'`` given
    ``saved`` (M, N), the layer's output (or pre-activation for GELU). ``rowsum`` (M,):
    ``rowsum[i] = sum_k a[i, k]`` (the bias gradient when ``a = dz.T``)."""
    m, k = a.shape
    k2, n = b.shape
    if k != k2 or out.shape != (m, n):
        raise ValueError(f"gemm shapes {a.shape} @ {b.shape} -> {out.shape} do not match")
    if not out.flags.c_contiguous:
        raise ValueError("gemm output must be C-contiguous")
    tile = tile or choose_tile(m, n)
    bm, bn, bk32, bk64, threads = GEMM_TILES[tile]
    bk = bk32 if out.dtype == np.float32 else bk64
    sa = _strides(a)
    sb = _strides(b)
    dummy = out
    args = (
        np.int32(m),
        np.int32(n),
        np.int32(k),
        a,
        *sa,
        b,
        *sb,
        out,
        np.int64(n),
        np.int32(epilogue),
        np.int32(ACTIVATION_CODES[act]),
        dummy if bias is None else bias,
        np.int32(bias is not None),
        dummy if z_out is None else z_out,
        np.int32(z_out is not None),
        dummy if saved is None else saved,
        dummy if rowsum is None else rowsum,
        np.int32(rowsum is not None),
    )
    grid = (-(-n // bn), -(-m // bm), 1)
    rt.launch(
        GEMM,
        rt.kernel_name(f"gemm_{tile}", out.dtype),
        grid,
        (threads, 1, 1),
        args,
        shared_mem=(bm + bn) * bk * out.dtype.itemsize,
    )
    return out


def _blocks(total: int, threads: int = 256, cap: int = 4096) -> int:
    return max(1, min(cap, -(-total // threads)))


def bias_act_forward(rt, xw, bias, act: str, y, z_out=None):
    """``y = act(xw + bias)`` (``bias`` (out,) or None; ``y`` may be ``xw``); ``z_out``
    gets the pre-activation when given."""
    n, m = xw.shape
    rt.launch(
        EPILOGUE,
        rt.kernel_name("bias_act_forward", y.dtype),
        (_blocks(n * m), 1, 1),
        (256, 1, 1),
        (
            np.int32(n),
            np.int32(m),
            xw,
            y if bias is None else bias,
            np.int32(bias is not None),
            np.int32(ACTIVATION_CODES[act]),
            y,
            y if z_out is None else z_out,
            np.int32(z_out is not None),
        ),
    )
    return y


def backward_scratch_rows(n: int) -> int:
    """Rows of the partial-sum scratch ``bias_act_backward`` needs for ``n`` rows."""
    return -(-n // _BACKWARD_CHUNK_ROWS)


def bias_act_backward(rt, dy, saved, act: str, dz, db, partial):
    """``dz = dy * act'(saved)`` (``dz`` may be ``dy``) and ``db = dz.sum(axis=0)``,
    summed per chunk of rows into ``partial`` (``backward_scratch_rows(N)``, out) and
    then in chunk order, so the result never depends on scheduling."""
    n, m = dy.shape
    chunks = backward_scratch_rows(n)
    rt.launch(
        EPILOGUE,
        rt.kernel_name("bias_act_backward", dz.dtype),
        (-(-m // 32), chunks, 1),
        (32, 8, 1),
        (
            np.int32(n),
            np.int32(m),
            dy,
            saved,
            np.int32(ACTIVATION_CODES[act]),
            dz,
            partial,
            np.int32(_BACKWARD_CHUNK_ROWS),
        ),
        shared_mem=32 * 8 * dz.dtype.itemsize,
    )
    rt.launch(
        EPILOGUE,
        rt.kernel_name("column_sum", dz.dtype),
        (-(-m // 128), 1, 1),
        (128, 1, 1),
        (np.int32(chunks), np.int32(m), partial, db),
    )
    return dz, db
