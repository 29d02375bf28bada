"""The matrix products of the dense layer, shared by every CPU path.

Both the autograd path (``dense.dense_forward`` / ``dense_backward``) and the fused epoch
(``fused_mlp``) call these, so they compute the same gradients (bit for bit in most
cases): the same BLAS (the one Numba's ``np.dot`` binds to, called on the same blocks)
and, for batches of a few rows, the same loops.

Shapes: ``a`` (N, in), ``W`` (out, in), ``dz`` (N, out).
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

try:  # the helpers behind Numba's own np.dot (in numba.np.linalg for many releases)
    from numba.np.linalg import check_blas_return, ensure_blas, get_blas_kind
except ImportError:  # pragma: no cover (a Numba that moved them: see gemm_view)
    check_blas_return = ensure_blas = get_blas_kind = None

#: batches of up to this many rows: ``dW = dz.T @ a`` goes through BLAS in blocks of
#: :data:`WEIGHT_GRAD_BLOCK_ROWS` rows of ``dW`` (:func:`weight_grad_block`), so the
#: fused epoch updates each block while it is still in cache (2-16 rows: 25-35% faster
#: than one product and then one sweep; from 32 rows one product wins)
BLOCKED_DW_MAX_ROWS = 16
WEIGHT_GRAD_BLOCK_ROWS = 32
#: training with batches of up to this many rows runs BLAS on one thread
#: (:func:`one_blas_thread`): such products are too small to split (2-core EPYC VM,
#: batch 8-16: one thread 5-10% faster, and 2x faster while the VM's threads contend)
ONE_BLAS_THREAD_MAX_ROWS = 16

#: batches of ``SKINNY_MIN_ROWS`` to ``SKINNY_MAX_ROWS`` rows multiply ``a @ W.T`` and
#: ``dz @ W`` by the loops below (:func:`skinny_nt`, :func:`skinny_nn`), not BLAS: a BLAS
#: GEMM packs the whole weight matrix on every call, which at a few rows costs as much
#: as the products (2-core EPYC VM, one thread, 8 rows: 784->512 forward 184 -> 111 µs,
#: 512->512 dx 117 -> 70 µs; 16 rows: 10-20% faster). One or two rows stay with BLAS,
#: whose small-matrix kernels skip the packing.
SKINNY_MIN_ROWS = 3
SKINNY_MAX_ROWS = 16
#: batches of more than ``SKINNY_MAX_ROWS`` and up to ``TRANSPOSED_NT_MAX_ROWS`` rows
#: multiply ``a @ W.T`` as ``(W @ a.T).T`` (:func:`matmul_nt`) when ``W`` has at least
#: ``TRANSPOSED_NT_MIN_OUT`` rows: OpenBLAS runs the product with the weight matrix on
#: the left much faster at these shapes, more than paying for the transposing copy
#: (2-core EPYC VM, 2 threads, 784->512 / 512->512 forward: 17 rows 88 -> 116-122 GFLOP/s,
#: 32 rows 125-131 -> 142-157, 48 rows 155 -> 170; one thread 11-29% faster too; 64 rows
#: +1-3%, 96-128 rows slower; a 10-wide output gains nothing)
TRANSPOSED_NT_MAX_ROWS = 48
TRANSPOSED_NT_MIN_OUT = 64
#: batches of more than ``BLOCKED_DW_MAX_ROWS`` and up to this many rows, trained by SGD
#: with plain momentum, accumulate ``dW`` into the momentum buffer by BLAS
#: (:func:`gemm_view` with ``beta`` 1): no gradient array is zeroed, written and read back
#: (2-core EPYC VM, 784->512 layer, gradient + update, ``benchmarks/bench_kernels.py -k
#: weight_grad_and_momentum``: 32 rows 259 -> 237 µs, 128 rows 632 -> 617 µs). Up to here
#: a BLAS sums all rows in one pass (OpenBLAS splits the sum only from 385 rows), so the
#: result is bit-identical to computing ``dW`` and adding it.
FOLDED_MOMENTUM_MAX_ROWS = 256
# the forward's dot products may be summed in any order, so their reductions vectorize;
# both CPU paths call the same compiled loop, so they still agree bit for bit
_REASSOC = {"reassoc", "contract"}

_controller = []


def blas_controller():
    """A ``threadpoolctl.ThreadpoolController`` of the libraries loaded now, SciPy's
    OpenBLAS (the BLAS that Numba's ``np.dot`` calls) loaded first; scanned once."""
    if not _controller:
        import scipy.linalg.cython_blas  # noqa: F401, PLC0415 (load it before the scan)
        from threadpoolctl import ThreadpoolController  # noqa: PLC0415

        _controller.append(ThreadpoolController())  # scanning the libraries takes ~1 ms
    return _controller[0]


def one_blas_thread():
    """Context manager: the BLAS that Numba's ``np.dot`` calls (SciPy's OpenBLAS) runs on
    one thread inside it; the previous thread counts are restored on exit."""
    return blas_controller().limit(limits=1, user_api="blas")


@njit(inline="always", error_model="numpy")
def accumulate_dx(dz, w_row, i, out):
    """Add term ``i`` of ``dz @ W`` for a one-row ``dz`` (1, out) to ``out`` (1, in):
    ``out[0, :] += dz[0, i] * w_row`` (assigned when ``i == 0``), ``w_row`` (in,) being
    row ``i`` of ``W``."""
    d = dz[0, i]
    if i == 0:
        for j in range(w_row.shape[0]):
            out[0, j] = d * w_row[j]
    else:
        for j in range(w_row.shape[0]):
            out[0, j] += d * w_row[j]


@intrinsic
def _gemm_strided_blas(typingctx, a, b, out, beta, trans_a, ld_a, trans_b, ld_b, ld_out):
    """``out = a @ b + beta * out`` on views: a (m, k), b (k, n), out (m, n), each with a
    unit stride in one dimension (``trans_*`` 0: along rows, with ``ld_*`` elements
    between rows; 1: along columns), ``out`` along rows. Numba's ``np.dot`` copies
    such views first."""
    if not all(isinstance(t, types.Array) and t.ndim == 2 for t in (a, b, out)):
        return None
    if not a.dtype == b.dtype == out.dtype or a.dtype not in (types.float32, types.float64):
        return None
    dtype = out.dtype
    char, char_p, intp = ir.IntType(8), ir.IntType(8).as_pointer(), cgutils.intp_t
    fn_type = ir.FunctionType(
        ir.IntType(32),
        [char, char, char, intp, intp, intp]  # kind, transa, transb, m, n, k
        + [char_p, char_p, intp, char_p, intp, char_p, char_p, intp],  # alpha .. ldc
    )

    def codegen(context, builder, sig, args):
        ensure_blas()
        views = [context.make_array(t)(context, builder, v) for t, v in zip(sig.args, args[:3])]
        m, k = cgutils.unpack_tuple(builder, views[0].shape, 2)
        n = cgutils.unpack_tuple(builder, views[2].shape, 2)[1]
        one = cgutils.alloca_once_value(builder, context.get_constant(dtype, 1.0))
        beta = context.cast(builder, args[3], sig.args[3], dtype)
        beta = cgutils.alloca_once_value(builder, beta)
        ints = [context.cast(builder, v, t, types.intp) for v, t in zip(args[4:], sig.args[4:])]
        trans_a, ld_a, trans_b, ld_b, ld_out = ints

        def op(trans):
            # BLAS is column-major: a view along rows is its transpose, unmoved
            along_rows = builder.icmp_signed("==", trans, ir.Constant(intp, 0))
            return builder.select(
                along_rows, ir.Constant(char, ord("n")), ir.Constant(char, ord("t"))
            )

        def data(view):
            return builder.bitcast(view.data, char_p)

        fn = cgutils.get_or_insert_function(builder.module, fn_type, "numba_xxgemm")
        kind = ir.Constant(char, ord(get_blas_kind(dtype)))
        # out.T = b.T @ a.T in column-major terms
        status = builder.call(
            fn,
            (
                kind,
                op(trans_b),
                op(trans_a),
                n,
                m,
                k,
                builder.bitcast(one, char_p),
                data(views[1]),
                ld_b,
                data(views[0]),
                ld_a,
                builder.bitcast(beta, char_p),
                data(views[2]),
                ld_out,
            ),
        )
        check_blas_return(context, builder, status)
        return context.get_dummy_value()

    sig = types.void(a, b, out, beta, trans_a, ld_a, trans_b, ld_b, ld_out)
    return sig, codegen


@njit(inline="always", error_model="numpy")
def _unit_stride_layout(x):
    """``(trans, ld)`` of a 2-D view for :func:`_gemm_strided_blas`: 0 and the row
    stride when its elements are consecutive along rows, else 1 and the column stride
    (in elements; at least the BLAS minimum, which a dimension of one leaves free)."""
    item = x.itemsize
    if x.shape[1] == 1 or x.strides[1] == item:
        return 0, max(x.strides[0] // item, x.shape[1], 1)
    if x.shape[0] == 1 or x.strides[0] == item:
        return 1, max(x.strides[1] // item, x.shape[0], 1)
    raise ValueError("gemm_view: an operand has no unit stride")


@njit(cache=True, nogil=True, error_model="numpy")
def _gemm_view_blas(a, b, out, beta):
    """``out = a @ b + beta * out`` by BLAS without copying views: a (m, k), b (k, n),
    out (m, n), each a 2-D view with a unit stride in one dimension (a block of columns
    or rows of a C-contiguous array, or its transpose); ``beta`` 0 ignores ``out``'s
    contents. The same BLAS products as Numba's ``np.dot`` of contiguous copies, and
    with ``beta`` 1 no separate pass over ``out``."""
    m, n = out.shape
    if m == 0 or n == 0:
        return
    if a.shape[1] == 0:
        for i in range(m):
            for j in range(n):
                out[i, j] = beta * out[i, j] if beta != 0 else 0.0
        return
    trans_out, ld_out = _unit_stride_layout(out)
    if trans_out == 0:
        trans_a, ld_a = _unit_stride_layout(a)
        trans_b, ld_b = _unit_stride_layout(b)
        _gemm_strided_blas(a, b, out, beta, trans_a, ld_a, trans_b, ld_b, ld_out)
    else:  # out.T = b.T @ a.T, with out.T along rows
        out_t, a_t, b_t = out.T, b.T, a.T
        trans_a, ld_a = _unit_stride_layout(a_t)
        trans_b, ld_b = _unit_stride_layout(b_t)
        _gemm_strided_blas(a_t, b_t, out_t, beta, trans_a, ld_a, trans_b, ld_b, ld_out)


@njit(inline="always", error_model="numpy")
def weight_grad_block(dzT, a, out, r0, r1):
    """Rows ``r0:r1`` of ``dW = dz.T @ a`` by BLAS: ``dzT`` (out, N) is ``dz.T`` made
    contiguous, ``a`` (N, in), ``out`` (out, in)."""
    np.dot(dzT[r0:r1], a, out[r0:r1])


@njit(cache=True, error_model="numpy", fastmath=_REASSOC)
def _dots_4x2(x0, x1, x2, x3, w0, w1):
    """The eight dot products of the rows ``x0``..``x3`` with ``w0`` and ``w1`` (all
    (n,), n >= 1), each with its own accumulator: ``(x0.w0, x1.w0, x2.w0, x3.w0, x0.w1,
    ..., x3.w1)``. Each ``w`` element is loaded once for four rows."""
    a, b = w0[0], w1[0]
    s00, s10, s20, s30 = x0[0] * a, x1[0] * a, x2[0] * a, x3[0] * a
    s01, s11, s21, s31 = x0[0] * b, x1[0] * b, x2[0] * b, x3[0] * b
    for j in range(1, w0.shape[0]):
        a, b = w0[j], w1[j]
        y0, y1, y2, y3 = x0[j], x1[j], x2[j], x3[j]
        s00 += y0 * a
        s10 += y1 * a
        s20 += y2 * a
        s30 += y3 * a
        s01 += y0 * b
        s11 += y1 * b
        s21 += y2 * b
        s31 += y3 * b
    return s00, s10, s20, s30, s01, s11, s21, s31


@njit(cache=True, error_model="numpy")
def skinny_nt(a, W, out):
    """``out = a @ W.T`` for a few rows: a (N, in), W (out, in) -> out (N, out). Two rows
    of ``W`` at a time against blocks of four rows of ``a`` (a block past the last row
    repeats it; the copies are not stored), so ``W`` is read once."""
    nb, n_out = a.shape[0], W.shape[0]
    for i in range(0, n_out, 2):
        i1 = min(i + 1, n_out - 1)
        for r in range(0, nb, 4):
            r1, r2, r3 = min(r + 1, nb - 1), min(r + 2, nb - 1), min(r + 3, nb - 1)
            s = _dots_4x2(a[r], a[r1], a[r2], a[r3], W[i], W[i1])
            for k in range(min(4, nb - r)):
                out[r + k, i] = s[k]
                out[r + k, i1] = s[4 + k]


@njit(inline="always", error_model="numpy")
def _axpy_rows_4(o, d0, d1, d2, d3, w0, w1, w2, w3):
    """``o += d0*w0 + d1*w1 + d2*w2 + d3*w3``, left to right (all rows (n,))."""
    for j in range(o.shape[0]):
        o[j] = o[j] + d0 * w0[j] + d1 * w1[j] + d2 * w2[j] + d3 * w3[j]


@njit(cache=True, error_model="numpy")
def skinny_nn(dz, W, out):
    """``out = dz @ W`` for a few rows: dz (N, out), W (out, in) -> out (N, in). Four
    rows of ``W`` at a time are added to every row of ``out`` (all in L1), so ``W`` is
    read once; no sum is reordered, so the loops vectorize across columns."""
    nb, n_out = dz.shape
    out[:] = 0
    n4 = n_out - n_out % 4
    for i in range(0, n4, 4):
        w0, w1, w2, w3 = W[i], W[i + 1], W[i + 2], W[i + 3]
        for r in range(nb):
            _axpy_rows_4(out[r], dz[r, i], dz[r, i + 1], dz[r, i + 2], dz[r, i + 3], w0, w1, w2, w3)
    for i in range(n4, n_out):
        for r in range(nb):
            d, o, w = dz[r, i], out[r], W[i]
            for j in range(o.shape[0]):
                o[j] = o[j] + d * w[j]


@njit(cache=True, error_model="numpy")
def matmul_nt(a, W, out):
    """``out = a @ W.T``: a (N, in), W (out, in) -> out (N, out); :func:`skinny_nt` for
    ``SKINNY_MIN_ROWS`` to ``SKINNY_MAX_ROWS`` rows; BLAS as ``(W @ a.T).T`` up to
    ``TRANSPOSED_NT_MAX_ROWS`` rows (for ``W`` of at least ``TRANSPOSED_NT_MIN_OUT``
    rows); else BLAS as written."""
    n, n_out = out.shape
    if SKINNY_MIN_ROWS <= n <= SKINNY_MAX_ROWS:
        skinny_nt(a, W, out)
    elif SKINNY_MAX_ROWS < n <= TRANSPOSED_NT_MAX_ROWS and n_out >= TRANSPOSED_NT_MIN_OUT:
        out_t = np.empty((n_out, n), out.dtype)
        np.dot(W, a.T, out_t)
        for r in range(n):
            for j in range(n_out):
                out[r, j] = out_t[j, r]
    else:
        np.dot(a, W.T, out)


@njit(cache=True, error_model="numpy")
def matmul_nn(dz, W, out):
    """``out = dz @ W``: dz (N, out), W (out, in) -> out (N, in); for one row, one row of
    ``W`` at a time (:func:`accumulate_dx`, the order the fused epoch's weight sweep
    uses); :func:`skinny_nn` for ``SKINNY_MIN_ROWS`` to ``SKINNY_MAX_ROWS`` rows; else
    BLAS."""
    nb = dz.shape[0]
    if nb == 1:
        for i in range(W.shape[0]):
            accumulate_dx(dz, W[i], i, out)
    elif SKINNY_MIN_ROWS <= nb <= SKINNY_MAX_ROWS:
        skinny_nn(dz, W, out)
    else:
        np.dot(dz, W, out)


@njit(cache=True, error_model="numpy")
def weight_grad(dz, a, out):
    """``out = dz.T @ a``: dz (N, out), a (N, in) -> out (out, in), by
    :func:`weight_grad_piece` (a data-parallel step of the fused epoch sums one piece per
    thread)."""
    weight_grad_piece(dz, a, out)


@njit(cache=True, error_model="numpy")
def weight_grad_piece(dz, a, out):
    """``out = dz.T @ a`` in one piece: dz (N, out), a (N, in) -> out (out, in). One row:
    ``out[i] = dz[0, i] * a[0]`` (the fused epoch forms the same products inside its
    update); up to ``BLOCKED_DW_MAX_ROWS`` rows: BLAS in blocks of
    ``WEIGHT_GRAD_BLOCK_ROWS`` rows of ``out``; else one BLAS product."""
    nb, n_out = dz.shape
    if nb == 1:
        for i in range(n_out):
            d = dz[0, i]
            for j in range(a.shape[1]):
                out[i, j] = a[0, j] * d
    elif nb <= BLOCKED_DW_MAX_ROWS:
        dzT = np.ascontiguousarray(dz.T)
        for r0 in range(0, n_out, WEIGHT_GRAD_BLOCK_ROWS):
            weight_grad_block(dzT, a, out, r0, min(n_out, r0 + WEIGHT_GRAD_BLOCK_ROWS))
    else:
        np.dot(dz.T, a, out)


@njit(cache=True, nogil=True, error_model="numpy")
def gemm_view_via_copies(a, b, out, beta):
    """:func:`_gemm_view_blas` through contiguous copies and ``np.dot``, for a Numba
    without the helpers it calls BLAS with (the same products, rounded, then added)."""
    product = np.empty(out.shape, out.dtype)
    np.dot(np.ascontiguousarray(a), np.ascontiguousarray(b), product)
    for i in range(out.shape[0]):
        for j in range(out.shape[1]):
            out[i, j] = product[i, j] + beta * out[i, j] if beta != 0 else product[i, j]


gemm_view = _gemm_view_blas if ensure_blas else gemm_view_via_copies
