"""Per-element optimizer update rules, the scalar core of the CPU update kernels.

Each rule follows ``torch.optim``'s documented algorithm (the array reference is
``gpunet.optim.functional``) rewritten as branch-free arithmetic over per-step
coefficients, so a loop applying it vectorizes:

- the options (maximize, weight decay, first momentum step, nesterov, decoupled decay,
  amsgrad, centered, momentum on/off) become coefficients computed once per step by
  :func:`coefficients` (e.g. ``buf = mb * buf + md * d`` with ``mb = 0, md = 1`` on the
  first SGD step). Every substitution is exact: it multiplies by 0 or 1 or adds 0;
- the caller casts the coefficients to the parameter dtype before its loop, so float32
  parameters are updated in float32 like the reference;
- the most common settings (SGD with plain momentum, Adam without weight decay, amsgrad
  or maximize) run a shorter rule, :data:`SGD_MOMENTUM` / :data:`ADAM_PLAIN`, chosen
  per step by :func:`rule_of` when the general rule's extra terms are exact no-ops: the
  sweeps are memory- or divider-bound and the dropped operations cost 20-50% of them.

Hyperparameter rows ``h`` (float64, length :data:`N_HYPER`), built by :func:`hyper_row`:
- SGD:     lr, momentum, dampening, nesterov, weight_decay, maximize
- Adam:    lr, beta1, beta2, eps, weight_decay, decoupled, amsgrad, maximize
- RMSprop: lr, alpha, eps, weight_decay, momentum, centered, maximize
- Adagrad: lr, lr_decay, weight_decay, eps, maximize

State slots: SGD s1 = momentum buffer; Adam s1 = exp_avg, s2 = exp_avg_sq,
s3 = max_exp_avg_sq; RMSprop s1 = square_avg, s2 = grad_avg, s3 = momentum buffer;
Adagrad s1 = sum of squared gradients.
"""

from __future__ import annotations

import inspect
import math

import numpy as np
from numba import njit
from numba.extending import overload

from gpunet.kernels.cpu.dense import _like

SGD, ADAM, RMSPROP, ADAGRAD = range(4)
OPTIMIZER_CODES = {"sgd": SGD, "adam": ADAM, "rmsprop": RMSPROP, "adagrad": ADAGRAD}
#: internal rule: SGD whose coefficients reduce it to ``buf = momentum*buf + g;
#: p -= lr*buf`` (momentum, no dampening, weight decay, nesterov or maximize); chosen
#: per step by :func:`rule_of`, it skips the general rule's no-op terms (about 20% of a
#: memory-bound sweep)
SGD_MOMENTUM = 4
#: internal rule: Adam with no weight decay, amsgrad or maximize (see :func:`rule_of`)
ADAM_PLAIN = 5
N_HYPER = 8


@njit(cache=True, error_model="numpy")
def coefficients(kind, h, step, first):
    """Per-step coefficients ``(c0..c10)`` of a rule, from ``h``, the 1-based ``step``
    count and ``first`` (SGD: no momentum buffer exists yet)."""
    if kind == SGD:
        lr, momentum, dampening, nesterov, wd, maximize = h[0], h[1], h[2], h[3], h[4], h[5]
        if momentum == 0.0:
            mb, md, n1, n2 = 0.0, 0.0, 1.0, 0.0
        else:
            mb, md = (0.0, 1.0) if first else (momentum, 1.0 - dampening)
            n1, n2 = (1.0, momentum) if nesterov != 0.0 else (0.0, 1.0)
        sign = -1.0 if maximize != 0.0 else 1.0
        return sign, wd, mb, md, n1, n2, lr, 0.0, 0.0, 0.0, 0.0
    if kind == ADAM:
        lr, beta1, beta2, eps, wd = h[0], h[1], h[2], h[3], h[4]
        decoupled, amsgrad, maximize = h[5], h[6], h[7]
        sign = -1.0 if maximize != 0.0 else 1.0
        l2 = 0.0 if decoupled != 0.0 else wd
        decay = 1.0 - lr * wd if decoupled != 0.0 else 1.0
        # float exponents and ** 0.5: the same libm calls as the Python reference
        step_size = lr / (1.0 - beta1 ** float(step))
        bc2_sqrt = (1.0 - beta2 ** float(step)) ** 0.5
        w = 1.0 - beta1  # exp_avg.lerp_(grad, 1 - beta1)
        return sign, l2, decay, w, 1.0 - w, beta2, 1.0 - beta2, step_size, bc2_sqrt, eps, amsgrad
    if kind == RMSPROP:
        lr, alpha, eps, wd, momentum, centered, maximize = h[0], h[1], h[2], h[3], h[4], h[5], h[6]
        sign = -1.0 if maximize != 0.0 else 1.0
        w = 1.0 - alpha  # grad_avg.lerp_(grad, 1 - alpha)
        return sign, wd, alpha, w, 1.0 - w, eps, momentum, centered, lr, 0.0, 0.0
    lr, lr_decay, wd, eps, maximize = h[0], h[1], h[2], h[3], h[4]
    sign = -1.0 if maximize != 0.0 else 1.0
    clr = lr / (1.0 + (step - 1) * lr_decay)
    return sign, wd, clr, eps, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0


@njit(inline="always", error_model="numpy")
def _lerp(a, b, w, rest):
    """``torch.lerp(a, b, w)``: ``a + w (b - a)`` for ``|w| < 0.5``, else
    ``b - (b - a)(1 - w)``; ``rest`` is ``1 - w`` (the branch is loop invariant)."""
    return a + w * (b - a) if abs(w) < 0.5 else b - (b - a) * rest


def apply_rule(kind, p, g, s1, s2, s3, c0, c1, c2, c3, c4, c5, c6, c7, c8, c9, c10):
    """One element's update; returns ``(p, s1, s2, s3)``. ``c0..c10`` come from
    :func:`coefficients`, cast by the caller to the element dtype (so no operation here
    promotes float32 to float64). The operation order is the reference's, so results
    are bitwise equal to ``gpunet.optim.functional``.

    Numba only, and ``kind`` must be a compile-time constant (the sweeps below are
    inlined with literal rules): only that rule's arithmetic is inlined
    (:func:`_ol_apply_rule`)."""
    raise NotImplementedError


@njit(inline="always", error_model="numpy")
def decayed_momentum(buf, momentum):
    """``buf * momentum``: the plain momentum rule's first term (:data:`SGD_MOMENTUM`)."""
    return buf * momentum


@njit(inline="always", error_model="numpy")
def momentum_weight_step(p, buf, lr):
    """``p - buf * lr``: the plain momentum rule's weight update."""
    return p - buf * lr


def _sgd_momentum_rule(kind, p, g, s1, s2, s3, c0, c1, c2, c3, c4, c5, c6, c7, c8, c9, c10):
    # the SGD rule with c0 = c3 = c5 = 1, c1 = c4 = 0; its two halves are also run
    # apart, around a BLAS sum, by fused_mlp._update_weights_folded
    buf = decayed_momentum(s1, c2) + g
    return momentum_weight_step(p, buf, c6), buf, s2, s3


def _adam_plain_rule(kind, p, g, s1, s2, s3, c0, c1, c2, c3, c4, c5, c6, c7, c8, c9, c10):
    # the Adam rule with c0 = c2 = 1, c1 = c10 = 0
    m = _lerp(s1, g, c3, c4)
    v = s2 * c5 + (g * c6) * g
    return p - (m / (math.sqrt(v) / c8 + c9)) * c7, m, v, s3


def _sgd_rule(kind, p, g, s1, s2, s3, c0, c1, c2, c3, c4, c5, c6, c7, c8, c9, c10):
    d = c0 * g + p * c1
    buf = s1 * c2 + d * c3
    return p - (c4 * d + buf * c5) * c6, buf, s2, s3


def _adam_rule(kind, p, g, s1, s2, s3, c0, c1, c2, c3, c4, c5, c6, c7, c8, c9, c10):
    d = c0 * g + p * c1
    m = _lerp(s1, d, c3, c4)
    v = s2 * c5 + (d * c6) * d
    vmax = v if (v > s3 or v != v) else s3  # np.maximum: NaN propagates
    denom = math.sqrt(vmax if c10 != c10 * 0 else v) / c8 + c9
    return p * c2 - (m / denom) * c7, m, v, vmax


def _rmsprop_rule(kind, p, g, s1, s2, s3, c0, c1, c2, c3, c4, c5, c6, c7, c8, c9, c10):
    d = c0 * g + p * c1
    alpha, w, rest, eps, momentum, centered, lr = c2, c3, c4, c5, c6, c7, c8
    sq = s1 * alpha + (d * w) * d
    ga = _lerp(s2, d, w, rest) if centered != centered * 0 else s2
    avg = (math.sqrt(sq - ga * ga) if centered != centered * 0 else math.sqrt(sq)) + eps
    q = d / avg
    with_momentum = momentum > momentum * 0
    buf = s3 * momentum + q if with_momentum else s3
    return p - (buf if with_momentum else q) * lr, sq, ga, buf


def _adagrad_rule(kind, p, g, s1, s2, s3, c0, c1, c2, c3, c4, c5, c6, c7, c8, c9, c10):
    d = c0 * g + p * c1
    total = s1 + d * d
    return p - (d / (math.sqrt(total) + c3)) * c2, total, s2, s3


_RULES = {
    SGD_MOMENTUM: _sgd_momentum_rule,
    ADAM_PLAIN: _adam_plain_rule,
    SGD: _sgd_rule,
    ADAM: _adam_rule,
    RMSPROP: _rmsprop_rule,
    ADAGRAD: _adagrad_rule,
}


# Resolved while typing: a literal ``kind`` inlines that rule alone; a kind known only at
# run time finds no implementation. One ``njit(inline="always")`` function branching on
# the kind inlined all six rules at every site, and Numba's IR inliner copies a callee
# once per site and nesting level: the first ``fit`` compiled in about 60 s instead of
# about 38 s (Adam, 64-128-10 network, empty NUMBA_CACHE_DIR, this 2-core VM).
@overload(apply_rule, inline="always", prefer_literal=True)
def _ol_apply_rule(kind, p, g, s1, s2, s3, c0, c1, c2, c3, c4, c5, c6, c7, c8, c9, c10):
    return _RULES.get(getattr(kind, "literal_value", None))


@njit(inline="always", error_model="numpy")
def rule_of(kind, c):
    """The rule to run for optimizer ``kind`` with typed coefficients ``c``:
    :data:`SGD_MOMENTUM` or :data:`ADAM_PLAIN` when the general rule's extra terms are
    exact no-ops (``1 * g``, ``+ p * 0``, ``* 1``, ``0 * d +``, amsgrad's maximum unused;
    they change at most the sign of a zero), else ``kind``."""
    if kind == SGD and c[0] == 1 and c[1] == 0 and c[3] == 1 and c[4] == 0 and c[5] == 1:
        return SGD_MOMENTUM
    if kind == ADAM and c[0] == 1 and c[1] == 0 and c[2] == 1 and c[10] == 0:
        return ADAM_PLAIN
    return kind


@njit(inline="always", error_model="numpy")
def uses_slots_2_3(kind):
    """Whether the rule keeps state in s2/s3 (else the caller skips those arrays)."""
    return kind == ADAM or kind == ADAM_PLAIN or kind == RMSPROP


@njit(inline="always", error_model="numpy")
def flush(value, tiny):
    """``value`` with magnitudes below the smallest normal float (``tiny``) set to 0."""
    return value if abs(value) >= tiny else value - value


@njit(inline="always", error_model="numpy")
def typed_coefficients(kind, h, step, first, like):
    """:func:`coefficients` cast to the scalar type of ``like`` (the parameter dtype),
    as NumPy rounds a Python scalar to an array's dtype."""
    c = coefficients(kind, h, step, first)
    return (
        _like(c[0], like),
        _like(c[1], like),
        _like(c[2], like),
        _like(c[3], like),
        _like(c[4], like),
        _like(c[5], like),
        _like(c[6], like),
        _like(c[7], like),
        _like(c[8], like),
        _like(c[9], like),
        _like(c[10], like),
    )


@njit(inline="always", error_model="numpy")
def _read(array, k, zero):
    """``array[k]``, or ``zero`` for an absent (zero-length) state array."""
    return array[k] if array.shape[0] != 0 else zero


@njit(inline="always", error_model="numpy")
def update_span(kind, p_, g_, g_scale, s1_, s2_, s3_, c, do_flush, tiny):
    """Apply the rule to every element of the 1-D views ``p_`` (n,) with gradient
    ``g_[k] * g_scale`` (``g_`` (n,); ``g_scale`` 1 for a stored gradient, or ``dz`` of
    one row when ``g_`` is that row's input: the single-sample weight gradient, formed
    where it is used) and the state views ``s1_``..``s3_`` (n,, or 0 when the state is
    absent) with typed coefficients ``c``. The index comes from ``range(n)`` (provably
    >= 0, no wraparound checks) and every option is a coefficient, so the loop
    vectorizes."""
    c0, c1, c2, c3, c4, c5, c6, c7, c8, c9, c10 = c
    zero = p_[0] - p_[0] if p_.shape[0] else c0 - c0
    for k in range(p_.shape[0]):
        p, s1, s2, s3 = apply_rule(
            kind,
            p_[k],
            g_[k] * g_scale,
            _read(s1_, k, zero),
            _read(s2_, k, zero),
            _read(s3_, k, zero),
            c0,
            c1,
            c2,
            c3,
            c4,
            c5,
            c6,
            c7,
            c8,
            c9,
            c10,
        )
        p_[k] = p
        if s1_.shape[0] != 0:
            s1_[k] = flush(s1, tiny) if do_flush else s1
        if uses_slots_2_3(kind):
            if s2_.shape[0] != 0:
                s2_[k] = flush(s2, tiny) if do_flush else s2
            if s3_.shape[0] != 0 and kind != ADAM_PLAIN:
                s3_[k] = flush(s3, tiny) if do_flush else s3


@njit(cache=True, error_model="numpy")
def update_array(kind, p, g, s1, s2, s3, h, step, first, do_flush):
    """One optimizer step over flat arrays: ``p``, ``g`` (n,), state ``s1``..``s3`` (n,)
    or zero-length when absent (see the module docstring for their meaning)."""
    like = p[0] if p.shape[0] else g.dtype.type(0)
    c = typed_coefficients(kind, h, step, first, like)
    one, tiny = _like(1.0, like), _like(np.finfo(p.dtype).tiny, like)
    # each branch passes a literal rule, so each sweep is compiled for its rule alone
    rule = rule_of(kind, c)
    if rule == SGD_MOMENTUM:
        update_span(SGD_MOMENTUM, p, g, one, s1, s2, s3, c, do_flush, tiny)
    elif rule == SGD:
        update_span(SGD, p, g, one, s1, s2, s3, c, do_flush, tiny)
    elif rule == ADAM_PLAIN:
        update_span(ADAM_PLAIN, p, g, one, s1, s2, s3, c, do_flush, tiny)
    elif rule == ADAM:
        update_span(ADAM, p, g, one, s1, s2, s3, c, do_flush, tiny)
    elif rule == RMSPROP:
        update_span(RMSPROP, p, g, one, s1, s2, s3, c, do_flush, tiny)
    else:
        update_span(ADAGRAD, p, g, one, s1, s2, s3, c, do_flush, tiny)


def hyper_row(name: str, group: dict) -> np.ndarray:
    """The float64 row ``h`` for an optimizer name and a torch-style param group
    (``"adam"`` follows the group's ``decoupled_weight_decay``; ``"adamw"`` forces it)."""
    h = np.zeros(N_HYPER)
    if name == "sgd":
        vals = [
            group["lr"],
            group["momentum"],
            group["dampening"],
            group["nesterov"],
            group["weight_decay"],
            group.get("maximize", False),
        ]
    elif name in ("adam", "adamw"):
        beta1, beta2 = group["betas"]
        decoupled = name == "adamw" or group.get("decoupled_weight_decay", False)
        vals = [
            group["lr"],
            beta1,
            beta2,
            group["eps"],
            group["weight_decay"],
            decoupled,
            group["amsgrad"],
            group.get("maximize", False),
        ]
    elif name == "rmsprop":
        vals = [
            group["lr"],
            group["alpha"],
            group["eps"],
            group["weight_decay"],
            group["momentum"],
            group["centered"],
            group.get("maximize", False),
        ]
    elif name == "adagrad":
        vals = [
            group["lr"],
            group["lr_decay"],
            group["weight_decay"],
            group["eps"],
            group.get("maximize", False),
        ]
    else:
        raise ValueError(f"no update rule for optimizer {name!r}")
    h[: len(vals)] = [float(v) for v in vals]
    return h


#: each optimizer's state arguments in ``gpunet.optim.functional``'s signatures
STATE_ARGUMENTS = {
    "sgd": ("buf",),
    "adagrad": ("state_sum",),
    "rmsprop": ("square_avg", "grad_avg", "momentum_buffer"),
    "adam": ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"),
}
#: each optimizer's keyword arguments in ``gpunet.optim.functional``'s signatures
HYPER_ARGUMENTS = {
    "sgd": ("lr", "momentum", "dampening", "nesterov", "weight_decay", "maximize", "first_step"),
    "adagrad": ("lr", "lr_decay", "weight_decay", "eps", "step", "maximize"),
    "rmsprop": ("lr", "alpha", "eps", "weight_decay", "momentum", "centered", "maximize"),
    "adam": (
        "lr",
        "beta1",
        "beta2",
        "eps",
        "weight_decay",
        "decoupled",
        "amsgrad",
        "step",
        "maximize",
    ),  # fmt: skip
}


def per_parameter_update(name: str, run, extra_keywords: dict | None = None):
    """A per-parameter update function for optimizer ``name`` with exactly the signature
    of ``gpunet.optim.functional.<name>_`` (plus ``extra_keywords``, name -> default),
    which maps its call through :func:`rule_inputs` and calls
    ``run(kind, p, g, (s1, s2, s3), h, step, first, **extras)``. The one front end of
    the CPU and CUDA per-parameter kernels."""
    states_expected = len(STATE_ARGUMENTS[name])
    hyper_expected = frozenset(HYPER_ARGUMENTS[name])
    extra_keywords = dict(extra_keywords or {})

    def update(xp, p, g, *states, **keywords):
        extras = {k: keywords.pop(k, default) for k, default in extra_keywords.items()}
        if len(states) != states_expected or keywords.keys() != hyper_expected:
            raise TypeError(f"{name}_{update.__signature__} got {len(states)} state arrays "
                            f"and keywords {sorted(keywords)}")  # fmt: skip
        kind, slots, h, step, first = rule_inputs(name, states, keywords)
        run(kind, p, g, slots, h, step, first, **extras)

    P = inspect.Parameter
    update.__signature__ = inspect.Signature(
        [P(a, P.POSITIONAL_OR_KEYWORD) for a in ("xp", "p", "g", *STATE_ARGUMENTS[name])]
        + [P(k, P.KEYWORD_ONLY) for k in HYPER_ARGUMENTS[name]]
        + [P(k, P.KEYWORD_ONLY, default=v) for k, v in extra_keywords.items()],
        return_annotation="None",
    )
    update.__name__ = update.__qualname__ = f"{name}_"
    update.__doc__ = (
        f"In-place {name} step of one parameter; see ``gpunet.optim.functional.{name}_``. "
        "``p``, ``g`` and the state arrays share one shape and dtype (C-contiguous); a "
        "state the options do not use may be None."
    )
    return update


def rule_inputs(name: str, states: tuple, hyper: dict):
    """A call of ``gpunet.optim.functional.<name>_`` as a rule's inputs.

    ``states``: the call's state arrays in signature order; ``hyper``: its keyword
    hyperparameters. Returns ``(kind, (s1, s2, s3), h, step, first)``: the rule, its
    state slots (None where the call keeps no such state), the float64 row ``h``, the
    1-based ``step`` of this update and SGD's first-step flag. Shared by every
    per-parameter kernel (CPU and CUDA), so the mapping exists once."""
    h = np.zeros(N_HYPER)

    def row(*values):
        h[: len(values)] = [float(v) for v in values]
        return h

    if name == "sgd":
        (buf,) = states
        momentum = float(hyper["momentum"])
        row(hyper["lr"], momentum, hyper["dampening"],
            hyper["nesterov"], hyper["weight_decay"], hyper["maximize"])  # fmt: skip
        return SGD, (buf if momentum != 0 else None, None, None), h, 1, hyper["first_step"]
    if name == "adagrad":
        row(hyper["lr"], hyper["lr_decay"], hyper["weight_decay"], hyper["eps"],
            hyper["maximize"])  # fmt: skip
        return ADAGRAD, (states[0], None, None), h, hyper["step"], False
    if name == "rmsprop":
        square_avg, grad_avg, buf = states
        row(hyper["lr"], hyper["alpha"], hyper["eps"], hyper["weight_decay"],
            hyper["momentum"], hyper["centered"], hyper["maximize"])  # fmt: skip
        slots = (
            square_avg,
            grad_avg if hyper["centered"] else None,
            buf if float(hyper["momentum"]) > 0 else None,
        )
        return RMSPROP, slots, h, 1, False
    if name == "adam":
        exp_avg, exp_avg_sq, max_sq = states
        row(hyper["lr"], hyper["beta1"], hyper["beta2"], hyper["eps"], hyper["weight_decay"],
            hyper["decoupled"], hyper["amsgrad"], hyper["maximize"])  # fmt: skip
        slots = (exp_avg, exp_avg_sq, max_sq if hyper["amsgrad"] else None)
        return ADAM, slots, h, hyper["step"], False
    raise ValueError(f"no update rule for optimizer {name!r}")
