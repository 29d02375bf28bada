"""Dense layer kernels for the CPU: BLAS matmuls plus one fused Numba pass each way.

Same contract as :meth:`gpunet.backend.base.Backend.dense_forward` /
``dense_backward``. Shapes: ``x`` (N, in), ``W`` (out, in) as in ``torch.nn.Linear``,
``b`` (out,) or None, ``y``/``saved``/``dy`` (N, out).

* forward: ``z = x @ W.T`` by NumPy's BLAS, then ONE Numba pass over ``z`` adds the
  bias and applies the activation in place (and, for GELU, writes ``z`` to ``saved``
  in the same pass).
* backward: ONE Numba pass computes ``dz = act'(saved) * dy`` and the bias gradient
  ``db = dz.sum(0)`` (accumulated in float64), then ``dW = dz.T @ x`` and
  ``dx = dz @ W`` by the :mod:`blas` products the fused epoch uses (BLAS, except for
  one-row batches, and in row blocks for small ones).

The activation is an integer code (:data:`ACTIVATION_CODES`). The scalar math of each
activation is written once (``_act_forward`` / ``_act_backward``, generic over float32
and float64); each kernel dispatches on the code *outside* its loops to a loop body
inlined with the code as a constant, so every activation gets its own branch-free,
vectorizable loop without copy-paste. ``exp``, ``expm1`` and ``erfc`` are implemented
here in plain arithmetic (libm's scalar calls would block SIMD): <= ~1.5 ulp for exp and
expm1, ~1e-16 relative (float64) / ~1e-7 (float32) for erfc. Nothing compiles at import.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, types
from numba.extending import intrinsic, overload
from numba.np import numpy_support

from gpunet.activations import LEAKY_RELU_SLOPE, get_activation
from gpunet.kernels.cpu import blas

__all__ = [
    "ACTIVATION_CODES",
    "activation_code",
    "dense_backward",
    "dense_forward",
]

LINEAR, RELU, LEAKY_RELU, SIGMOID, TANH, GELU = range(6)
ACTIVATION_CODES = {
    "linear": LINEAR,
    "relu": RELU,
    "leaky_relu": LEAKY_RELU,
    "sigmoid": SIGMOID,
    "tanh": TANH,
    "gelu": GELU,
}
_SQRT1_2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)

_code_cache: dict = {}


def activation_code(act) -> int:
    """Integer code of an activation name (aliases as in :func:`get_activation`)."""
    try:
        return _code_cache[act]
    except (KeyError, TypeError):
        code = ACTIVATION_CODES[get_activation(act).name]
        try:
            _code_cache[act] = code
        except TypeError:
            pass
        return code


# ------------------------------------------------------------------ vector math
# Numba calls libm for math.exp/tanh/erf, one scalar at a time, which blocks SIMD.
# These replacements are plain arithmetic + one bit cast, so LLVM vectorizes the loops
# they sit in. One algorithm for both precisions; only the constants (polynomial
# degree, exponent layout) are chosen per dtype at compile time.
_LOG2E = 1.4426950408889634


@intrinsic
def _bits_to_float(typingctx, bits):
    """Reinterpret int32 bits as float32, int64 bits as float64."""
    ret = {types.int32: types.float32, types.int64: types.float64}.get(bits)
    if ret is None:
        return None

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], context.get_value_type(sig.return_type))

    return ret(bits), codegen


# per dtype: (scalar type, int type of the same width, ln2 split high/low (Cody-Waite),
# smallest argument whose exp is a normal number, exponent bias, mantissa bits,
# number of Taylor terms of expm1 on |r| <= ln2/2 (truncation < 1 ulp))
_EXP_CONSTS = {
    types.float32: (np.float32, np.int32, 0.693359375, -2.12194440e-4, -87.33654, 127, 23, 7),
    types.float64: (
        np.float64,
        np.int64,
        6.93147180369123816490e-01,
        1.90821492927058770002e-10,
        -708.3964185322641,
        1023,
        52,
        13,
    ),
}

# erfc(z) = t * exp(-z*z + h(t)) for z >= 0, t = 2 / (2 + z), with h a Chebyshev series
# in ty = 4t - 2 (the form of Numerical Recipes 3rd ed. 6.2.2; coefficients re-fitted
# with mpmath at 40 digits on 96 Chebyshev nodes). 28 terms: the dropped tail sums to
# < 4e-18, so erfc is relative-accurate to a few ulp; float32 keeps the first 13 (< 7e-9).
_ERFC_CHEB = (
    -1.3026537197817094,
    0.6419697923564902,
    0.019476473204185836,
    -0.009561514786808632,
    -0.0009465953444820369,
    0.00036683949785276145,
    4.252332480690777e-05,
    -2.0278578112534242e-05,
    -1.6242900046470256e-06,
    1.3036558355805232e-06,
    1.5626441722066142e-08,
    -8.523809591492654e-08,
    6.5290544390988515e-09,
    5.059343495551469e-09,
    -9.91364156493033e-10,
    -2.273651222931836e-10,
    9.646791102015527e-11,
    2.3940380830391146e-12,
    -6.886027526497553e-12,
    8.944879273090725e-13,
    3.130921399342958e-13,
    -1.1270822361367252e-13,
    3.810905255189232e-16,
    7.106097613609237e-15,
    -1.5230282014571043e-15,
    -9.457494571291233e-17,
    1.210237189224279e-16,
    -2.816663087747177e-17,
)
_ERFC_TERMS = {types.float32: 13, types.float64: 28}


def _exp_parts(x):
    """(s, p) with exp(x) = s * (1 + p) = s + s * p, s = 2**k (Numba only; x <= ~88)."""
    raise NotImplementedError


def _unrolled(name, params, lines, namespace):
    """Build a Numba overload ``impl`` from straight-line source (loops over constant
    tuples trip a Numba IR warning when inlined, so polynomials are unrolled here)."""
    src = f"def {name}({params}):\n" + "".join(f"    {line}\n" for line in lines)
    exec(compile(src, f"<gpunet.kernels.cpu.dense.{name}>", "exec"), namespace)  # noqa: S102
    return namespace[name]


@overload(_exp_parts, inline="always")
def _ol_exp_parts(x):
    cast, ibits, ln2_hi, ln2_lo, lo, bias, shift, terms = _EXP_CONSTS[x]
    ns = {
        "np": np,
        "ibits": ibits,
        "_bits_to_float": _bits_to_float,
        "shift": shift,
        "log2e": cast(_LOG2E),
        "half": cast(0.5),
        "hi": cast(ln2_hi),
        "lo_part": cast(ln2_lo),
        "lowest": cast(lo),
        "fbias": cast(bias),
    }
    # expm1(r) = r * (1 + r/2! + r^2/3! + ...), Horner from the highest term
    lines = [
        "xc = max(x, lowest)",  # keeps 2**k normal; callers select below it
        "kf = np.floor(xc * log2e + half)",
        "r = (xc - kf * hi) - kf * lo_part",
        f"p = c{terms}",
    ]
    for n in range(terms, 0, -1):
        ns[f"c{n}"] = cast(1.0 / math.factorial(n))
    lines += [f"p = p * r + c{n}" for n in range(terms - 1, 0, -1)]
    lines += [
        "p = p * r",
        "s = _bits_to_float(ibits(ibits(kf + fbias) << shift))",
        "return s, p",
    ]
    return _unrolled("impl", "x", lines, ns)


def _exp_lowest(x):
    """The smallest argument with a normal exp, in x's type (Numba only)."""
    raise NotImplementedError


@overload(_exp_lowest, inline="always")
def _ol_exp_lowest(x):
    lowest = _EXP_CONSTS[x][0](_EXP_CONSTS[x][4])
    return lambda x: lowest


@njit(inline="always", error_model="numpy")
def _vexp(x):
    """exp(x) for x <= 0 (<= ~1.2 ulp; 0 below the normal range; NaN propagates)."""
    s, p = _exp_parts(x)
    res = s + s * p
    if x < _exp_lowest(x):
        res = res - res
    return x if x != x else res


@njit(inline="always", error_model="numpy")
def _vexpm1(x):
    """expm1(x) for x <= 0, accurate relative to the result (<= ~1.5 ulp)."""
    s, p = _exp_parts(x)
    one = _like(1.0, x)
    res = (s - one) + s * p
    if x < _exp_lowest(x):
        res = -one
    return x if x != x else res


def _erfc_series(ty):
    """Clenshaw sum of the erfc Chebyshev series at ``ty`` (Numba only)."""
    raise NotImplementedError


@overload(_erfc_series, inline="always")
def _ol_erfc_series(ty):
    cast = _EXP_CONSTS[ty][0]
    n = _ERFC_TERMS[ty]
    ns = {f"c{j}": cast(_ERFC_CHEB[j]) for j in range(n)}
    ns["half"] = cast(0.5)
    lines = [f"d = c{n - 1}", "dd = half - half"]
    for j in range(n - 2, 0, -1):
        lines += ["tmp = d", f"d = ty * d - dd + c{j}", "dd = tmp"]
    lines.append("return half * (c0 + ty * d) - dd")
    return _unrolled("impl", "ty", lines, ns)


@njit(inline="always", error_model="numpy")
def _verfc_pos(a):
    """erfc(a) for a >= 0, accurate relative to the result."""
    two = _like(2.0, a)
    t = two / (two + a)
    return t * _vexp(_erfc_series(_like(4.0, a) * t - two) - a * a)


@njit(inline="always", error_model="numpy")
def _normal_cdf(z):
    """Phi(z) = (1 + erf(z / sqrt 2)) / 2, without cancellation in the lower tail."""
    half_tail = _like(0.5, z) * _verfc_pos(abs(z) * _like(_SQRT1_2, z))
    return half_tail if z < 0 else _like(1.0, z) - half_tail


# ------------------------------------------------------------------ scalar math
def _like(value, ref):
    """``value`` converted to the scalar type of ``ref`` (Numba only)."""
    raise NotImplementedError


@overload(_like, inline="always")
def _ol_like(value, ref):
    cast = numpy_support.as_dtype(ref).type

    def impl(value, ref):
        return cast(value)

    return impl


@njit(inline="always", error_model="numpy")
def _act_forward(z, code):
    """y = f(z) for one scalar, in z's precision."""
    if code == RELU:
        return _like(0.0, z) if z <= 0 else z
    if code == LEAKY_RELU:
        return z if z > 0 else z * _like(LEAKY_RELU_SLOPE, z)
    if code == SIGMOID:
        e = _vexp(-abs(z))
        one = _like(1.0, z)
        return one / (one + e) if z >= 0 else e / (one + e)
    if code == TANH:
        t = _vexpm1(_like(-2.0, z) * abs(z))  # tanh|z| = -t / (2 + t)
        return math.copysign(-t / (_like(2.0, z) + t), z)
    if code == GELU:
        return z * _normal_cdf(z)
    return z


@njit(inline="always", error_model="numpy")
def _act_backward(dy, s, code):
    """dz for one scalar given dy and the saved value s (y, or z for GELU)."""
    if code == RELU:
        return dy if s > 0 else _like(0.0, dy)
    if code == LEAKY_RELU:
        return dy if s > 0 else dy * _like(LEAKY_RELU_SLOPE, dy)
    if code == SIGMOID:
        return dy * s * (_like(1.0, s) - s)
    if code == TANH:
        return dy * (_like(1.0, s) - s * s)
    if code == GELU:
        pdf = _vexp(_like(-0.5, s) * s * s) * _like(_INV_SQRT_2PI, s)
        return dy * (_normal_cdf(s) + s * pdf)
    return dy


# ------------------------------------------------------------------ loop bodies
# The loops take a block of columns ``c0:c1`` of whole-width arrays rather than a column
# view: a view's rows have a stride Numba cannot prove to be one element, so its loops do
# not vectorize (128 x 256 half of a 128 x 512 ReLU backward: 19 -> 7 us hot in cache).
@njit(inline="always", error_model="numpy")
def _forward_loop(y, b, saved, code, c0, c1):
    for i in range(y.shape[0]):
        y_row, saved_row = y[i, c0:c1], saved[i, c0:c1]  # contiguous 1-D, as Numba knows
        for j in range(c1 - c0):
            z = y_row[j] + b[j]
            if code == GELU:
                saved_row[j] = z
            y_row[j] = _act_forward(z, code)


@njit(inline="always", error_model="numpy")
def _backward_row(dy_row, saved_row, dz_row, acc, code):
    for j in range(dy_row.shape[0]):
        d = _act_backward(dy_row[j], saved_row[j], code)
        if code != LINEAR:
            dz_row[j] = d
        acc[j] += d


@njit(inline="always", error_model="numpy")
def _backward_loop(dy, saved, dz, acc, code, c0, c1, in_place):
    for i in range(dy.shape[0]):
        dy_row = dy[i, c0:c1]
        if in_place:
            # one row view read and written: LLVM then knows the two are the same
            # memory; two pointers to it fail its runtime overlap check and run the
            # scalar loop, 3-4x slower
            _backward_row(dy_row, saved[i, c0:c1], dy_row, acc, code)
        else:
            _backward_row(dy_row, saved[i, c0:c1], dz[i, c0:c1], acc, code)


@njit(cache=True, error_model="numpy")
def _forward_epilogue_columns(y, b, saved, code, c0, c1):
    """In place on the columns ``c0:c1`` of ``y`` (N, M): ``z`` on entry, ``act(z + b)``
    on exit; ``b`` (c1 - c0,); for GELU those columns of ``saved`` (N, M) receive
    ``z + b`` (else it is ignored)."""
    if code == RELU:
        _forward_loop(y, b, saved, RELU, c0, c1)
    elif code == LEAKY_RELU:
        _forward_loop(y, b, saved, LEAKY_RELU, c0, c1)
    elif code == SIGMOID:
        _forward_loop(y, b, saved, SIGMOID, c0, c1)
    elif code == TANH:
        _forward_loop(y, b, saved, TANH, c0, c1)
    elif code == GELU:
        _forward_loop(y, b, saved, GELU, c0, c1)
    else:
        _forward_loop(y, b, saved, LINEAR, c0, c1)


@njit(cache=True, error_model="numpy")
def _forward_epilogue(y, b, saved, code):
    """In place: ``y`` (N, M) holds ``z`` on entry and ``act(z + b)`` on exit; ``b`` (M,);
    for GELU ``saved`` (N, M) receives ``z + b`` (else it is ignored)."""
    _forward_epilogue_columns(y, b, saved, code, 0, y.shape[1])


@njit(inline="always", error_model="numpy")
def _backward_dispatch(dy, saved, dz, acc, code, c0, c1, in_place):
    if code == RELU:
        _backward_loop(dy, saved, dz, acc, RELU, c0, c1, in_place)
    elif code == LEAKY_RELU:
        _backward_loop(dy, saved, dz, acc, LEAKY_RELU, c0, c1, in_place)
    elif code == SIGMOID:
        _backward_loop(dy, saved, dz, acc, SIGMOID, c0, c1, in_place)
    elif code == TANH:
        _backward_loop(dy, saved, dz, acc, TANH, c0, c1, in_place)
    elif code == GELU:
        _backward_loop(dy, saved, dz, acc, GELU, c0, c1, in_place)
    else:
        _backward_loop(dy, saved, dz, acc, LINEAR, c0, c1, in_place)


@njit(cache=True, error_model="numpy")
def _backward_columns_sums(dy, saved, dz, acc, code, c0, c1):
    """On the columns ``c0:c1`` of (N, M) arrays: ``dz = act'(saved) * dy`` in one pass
    that also adds those columns' sums to the float64 ``acc`` (c1 - c0,), row after row.
    For LINEAR ``dz`` is not written (the caller uses ``dy``). ``dz`` may be ``dy``
    itself (in place)."""
    _backward_dispatch(dy, saved, dz, acc, code, c0, c1, dz.ctypes.data == dy.ctypes.data)


@njit(cache=True, error_model="numpy")
def _backward_epilogue_sums(dy, saved, dz, acc, code):
    """``dz = act'(saved) * dy`` (N, M) in one pass that also adds ``dz.sum(0)`` to the
    float64 column sums ``acc`` (M,), row after row. For LINEAR ``dz`` is not written
    (the caller uses ``dy``). ``dz`` may be ``dy`` itself (in place)."""
    _backward_columns_sums(dy, saved, dz, acc, code, 0, dy.shape[1])


@njit(cache=True, error_model="numpy")
def _backward_epilogue_columns(dy, saved, dz, db, code, c0, c1):
    """On the columns ``c0:c1`` of (N, M) arrays: ``dz = act'(saved) * dy`` and ``db``
    (c1 - c0,) their column sums, in one pass; the sums accumulate in float64.
    For LINEAR ``dz`` is not written (the caller uses ``dy``). ``dz`` may be ``dy``
    itself (in place)."""
    acc = np.zeros(c1 - c0, np.float64)
    _backward_columns_sums(dy, saved, dz, acc, code, c0, c1)
    for j in range(acc.shape[0]):
        db[j] = acc[j]


@njit(cache=True, error_model="numpy")
def _backward_epilogue(dy, saved, dz, db, code):
    """``dz = act'(saved) * dy`` (N, M) and ``db = dz.sum(0)`` (M,) in one pass; the column
    sums accumulate in float64. For LINEAR ``dz`` is not written (the
    caller uses ``dy``). ``dz`` may be ``dy`` itself (in place)."""
    _backward_epilogue_columns(dy, saved, dz, db, code, 0, dy.shape[1])


# ------------------------------------------------------------------ public API
def dense_forward(x, W, b, act):
    """``y = act(x @ W.T + b)``; returns ``(y, saved)``.

    ``x`` (N, in), ``W`` (out, in), ``b`` (out,) or None -> ``y`` (N, out) and ``saved``
    (N, out): ``y`` itself, or for GELU a separate array holding the pre-activation.
    The matmul is :func:`blas.matmul_nt`, the one the fused epoch uses.
    """
    code = activation_code(act)
    x = np.ascontiguousarray(x)
    W = np.ascontiguousarray(W)
    y = np.empty((x.shape[0], W.shape[0]), dtype=np.result_type(x, W))
    blas.matmul_nt(x, W, y)
    if b is None:
        b = np.zeros(y.shape[1], dtype=y.dtype)
    saved = np.empty_like(y) if code == GELU else y
    _forward_epilogue(y, b, saved, code)
    return y, saved


def dense_backward(dy, x, W, saved, act, need_dx=True):
    """Gradients of :func:`dense_forward`; returns ``(dx, dW, db)``.

    ``dy`` (N, out), ``x`` (N, in), ``W`` (out, in), ``saved`` (N, out) as returned by the
    forward -> ``dx`` (N, in) or None when ``need_dx`` is False, ``dW`` (out, in),
    ``db`` (out,). ``dy`` is not modified. The products are those of :mod:`blas`, the
    ones the fused epoch uses, so both paths compute the same gradients.
    """
    code = activation_code(act)
    dy = np.ascontiguousarray(dy)
    x = np.ascontiguousarray(x)
    W = np.ascontiguousarray(W)
    db = np.empty(dy.shape[1], dtype=dy.dtype)
    if code == LINEAR:
        dz = dy
        _backward_epilogue(dy, dy, dy, db, LINEAR)
    else:
        dz = np.empty_like(dy)
        _backward_epilogue(dy, np.ascontiguousarray(saved), dz, db, code)
    dW = np.empty((dz.shape[1], x.shape[1]), dtype=np.result_type(dz, x))
    blas.weight_grad(dz, x, dW)
    dx = None
    if need_dx:
        dx = np.empty((dz.shape[0], W.shape[1]), dtype=np.result_type(dz, W))
        blas.matmul_nn(dz, W, dx)
    return dx, dW, db
