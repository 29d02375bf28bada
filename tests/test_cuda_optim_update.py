"""Tier T2: the optimizer update kernels of ``kernels/cuda/optim_update.cu``, compiled for
the CPU (``HostRuntime``) and run there.

- ``update_all`` on a model in flat buffers (parameters of sizes 1, 7, 300 and 1025 with
  gaps between them) against the CPU epoch's update (``fused_step.update_parameter_span``
  with ``train_epoch``'s step bookkeeping: ``steps[k] += 1`` before the update,
  ``firsts[k] = 0`` after), bit for bit, and against the float64 oracles of
  ``tests/oracles.py``; every option combination of every optimizer, float32 and float64.
  Elements outside the parameters (gaps, and a guard region past both ends of the
  buffers) and unused state slots must never change.
- per-parameter hyperparameter rows, step counts and first-step flags;
- ``fused_update(rt, name)``, one parameter at a time, against
  ``gpunet.optim.functional`` and the CPU kernels of ``optim_updates``, bit for bit.

Bitwise agreement holds on the host build: glibc's ``pow`` computes the bias corrections,
as in NumPy and Numba. Oracle tolerances: float64 rtol 1e-12, float32 1e-5 (float32 from
the kernel's own state each step), with an absolute term of rtol times the largest entry
for the rounding of differences that cancel.
"""

from __future__ import annotations

import inspect
import zlib

import numpy as np
import pytest

from gpunet.kernels.cpu import optim_updates
from gpunet.kernels.cpu.fused_step import update_parameter_span
from gpunet.kernels.cpu.update_rules import OPTIMIZER_CODES, hyper_row
from gpunet.kernels.cuda import optim_update
from gpunet.kernels.cuda.runtime import HostRuntime
from gpunet.optim import functional as F
from tests import oracles
from tests.optim_oracles import FUNCTIONAL_CASES, functional_case_id

pytestmark = pytest.mark.cudahost

DTYPES = [np.float32, np.float64]
DTYPE_IDS = ["f32", "f64"]
RTOL = {np.float32: 1e-5, np.float64: 1e-12}
SIZES = (1, 7, 300, 1025)  # one element, fewer than a warp, several blocks of 256
GAP = 3  # elements between (and before / after) the parameters, inside the buffers
GUARD = 5  # elements past either end of the buffers handed to the kernel
SENTINEL = 1234.5  # what every element outside a parameter holds, before and after
STEPS = 4


@pytest.fixture(scope="module")
def rt():
    return HostRuntime()


CASES = FUNCTIONAL_CASES
CASE_IDS = [functional_case_id(c) for c in CASES]


def _seed(*parts) -> int:
    return zlib.crc32(repr(parts).encode())


def assert_close(actual, expected, rtol, scale=0.0):
    """``|actual - expected| <= rtol * (|expected| + scale)`` elementwise."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape
    bound = rtol * (np.abs(expected) + scale)
    err = np.abs(actual - expected)
    bad = ~(err <= bound)  # NaN in actual counts as bad
    assert not bad.any(), (
        f"{bad.sum()} of {bad.size} elements off; worst err {np.nanmax(err):.3g}, "
        f"bound there {bound.flat[np.nanargmax(err - bound)]:.3g}"
    )


def _hyper(name, kw):
    """``hyper_row`` of a case, from its torch-style param group."""
    if name == "adam":
        group = {k: v for k, v in kw.items() if k not in ("beta1", "beta2", "decoupled")}
        group["betas"] = (kw["beta1"], kw["beta2"])
        return hyper_row("adamw" if kw["decoupled"] else "adam", group)
    return hyper_row(name, {k: v for k, v in kw.items() if k != "initial_accumulator_value"})


def _step_kwargs(name, step, first):
    if name == "sgd":
        return dict(first_step=first)
    if name in ("adagrad", "adam"):
        return dict(step=step)
    return {}


def _slots_used(name, kw):
    """Which of S1..S3 the case keeps (the optimizer classes' state layout)."""
    if name == "sgd":
        return (kw["momentum"] != 0, False, False)
    if name == "adagrad":
        return (True, False, False)
    if name == "rmsprop":
        return (True, bool(kw["centered"]), kw["momentum"] > 0)
    return (True, True, bool(kw["amsgrad"]))


def _gradient(rng, n, dtype):
    g = rng.standard_normal(n)
    g[rng.random(n) < 0.1] = 0.0  # exact zeros (dead units)
    return g.astype(dtype)


class FlatModel:
    """Parameters of ``SIZES`` in flat buffers with ``GAP`` elements around each, every
    buffer inside a larger one with ``GUARD`` elements past either end; everything
    outside the parameters holds ``SENTINEL``."""

    def __init__(self, sizes, dtype):
        offsets, pos = [], GAP
        for n in sizes:
            offsets.append(pos)
            pos += n + GAP
        self.total = pos
        self.table = np.array([[o, n] for o, n in zip(offsets, sizes)], dtype=np.int64)
        self.dtype = dtype
        inside = np.zeros(self.total, bool)
        for o, n in self.table:
            inside[o : o + n] = True
        self.outside = np.concatenate([np.ones(GUARD, bool), ~inside, np.ones(GUARD, bool)])

    def buffer(self, fill=0.0):
        """A (GUARD + total + GUARD,) array: sentinels outside the parameters, ``fill``
        inside (an array of the parameters' elements, or a scalar)."""
        full = np.full(self.total + 2 * GUARD, SENTINEL, self.dtype)
        self.view(full)[~self.outside[GUARD:-GUARD]] = fill
        return full

    def view(self, full):
        return full[GUARD : GUARD + self.total]

    def part(self, a, k):
        o, n = self.table[k]
        return a[o : o + n]

    def assert_outside_untouched(self, full, what):
        assert (full[self.outside] == SENTINEL).all(), f"{what}: an element outside was written"


def _run_flat(
    rt, model, name, kws, steps0, firsts0, dtype, n_steps, oracle_check, empty_unused=False
):
    """``n_steps`` of ``update_all`` over ``model`` (parameter k with case kwargs
    ``kws[k]``), next to the CPU epoch's update on copies; compared bit for bit after each
    step, and with the oracles when ``oracle_check``. Unused state slots are passed as
    buffers of sentinels, or with ``empty_unused`` as empty arrays (``FlatState``'s)."""
    K = len(model.table)
    kind = OPTIMIZER_CODES[name]
    rng = np.random.default_rng(_seed(name, [sorted(kw.items()) for kw in kws], dtype.__name__))
    H = np.stack([_hyper(name, kw) for kw in kws])
    # a slot exists when some parameter keeps it (FlatState's rule: SGD's buffer as soon
    # as one parameter has momentum)
    used = [any(_slots_used(name, kw)[j] for kw in kws) for j in range(3)]
    P = model.buffer(rng.standard_normal(model.total)[~model.outside[GUARD:-GUARD]])
    G = model.buffer()
    S = []  # an unused slot holds sentinels throughout: it must never change
    for j in range(3):
        s = model.buffer(0.0) if used[j] else np.full(model.total + 2 * GUARD, SENTINEL, dtype)
        if name == "adagrad" and j == 0:
            for k, kw in enumerate(kws):
                model.part(model.view(s), k)[...] = kw.get("initial_accumulator_value", 0.0)
        S.append(s)
    steps, firsts = np.array(steps0, np.int64), np.array(firsts0, np.int64)
    # the CPU epoch's copies; absent slots empty, as FlatState makes them
    P_c = model.view(P).copy()
    S_c = [model.view(s).copy() if u else np.zeros(0, dtype) for s, u in zip(S, used)]
    steps_c, firsts_c = steps.copy(), firsts.copy()
    # oracle state per parameter (float64 trajectories)
    p_ref = [model.part(P_c, k).astype(np.float64) for k in range(K)]
    s_ref = []
    for k, kw in enumerate(kws):
        slots = _slots_used(name, kw)
        s_ref.append(
            [model.part(S_c[j], k).astype(np.float64) if slots[j] else None for j in range(3)]
        )
        if name == "sgd":
            s_ref[k] = [None]  # the oracle makes the first buffer from d
        elif name == "adagrad":
            s_ref[k] = s_ref[k][:1]
    amsgrad_bit = False
    for _ in range(n_steps):
        g = _gradient(rng, model.total, dtype)
        model.view(G)[~model.outside[GUARD:-GUARD]] = g[~model.outside[GUARD:-GUARD]]
        G_c = model.view(G).copy()
        first_before = firsts.copy()
        step_numbers = steps + 1
        if dtype == np.float32:  # float32: each step from the kernel's own state
            p_ref = [model.part(model.view(P), k).astype(np.float64) for k in range(K)]
            for k in range(K):
                for j, s in enumerate(s_ref[k]):
                    if s is not None:
                        s_ref[k][j] = model.part(model.view(S[j]), k).astype(np.float64)

        state_args = [
            np.zeros(0, dtype) if empty_unused and not u else model.view(s) for s, u in zip(S, used)
        ]
        optim_update.update_all(
            rt,
            kind,
            model.table,
            H,
            steps,
            firsts,
            model.view(P),
            model.view(G),
            *state_args,
            used[1],
            used[2],
        )
        for k in range(K):  # fused_mlp.train_epoch's bookkeeping around each update
            steps_c[k] += 1
            o, n = model.table[k]
            update_parameter_span(kind, P_c, G_c, *S_c, H, steps_c, firsts_c, k, o, o + n, False)
            firsts_c[k] = 0

        np.testing.assert_array_equal(steps, steps_c)
        np.testing.assert_array_equal(firsts, firsts_c)
        np.testing.assert_array_equal(model.view(P), P_c)
        for j in range(3):
            if used[j]:
                np.testing.assert_array_equal(model.view(S[j]), S_c[j], err_msg=f"S{j + 1}")
        model.assert_outside_untouched(P, "P")
        model.assert_outside_untouched(G, "G")
        for j in range(3):
            if used[j]:
                model.assert_outside_untouched(S[j], f"S{j + 1}")
            elif not empty_unused:  # never touched, not even inside the parameters
                assert (S[j] == SENTINEL).all(), f"unused S{j + 1} was written"

        if not oracle_check:
            continue
        rtol = RTOL[dtype]
        for k, kw in enumerate(kws):
            kwargs = {k2: v for k2, v in kw.items() if k2 != "initial_accumulator_value"}
            out = getattr(oracles, name)(
                p_ref[k],
                model.part(g, k),
                *s_ref[k],
                **kwargs,
                **_step_kwargs(name, int(step_numbers[k]), bool(first_before[k])),
            )
            p_ref[k], s_ref[k] = out[0], list(out[1:])
            assert_close(model.part(model.view(P), k), p_ref[k], rtol, np.abs(p_ref[k]).max())
            for j, s in enumerate(s_ref[k]):
                if s is not None:
                    assert_close(model.part(model.view(S[j]), k), s, rtol, np.abs(s).max() + 1e-30)
        if name == "adam" and used[2]:
            amsgrad_bit |= bool((model.view(S[2]) != model.view(S[1])).any())
    return amsgrad_bit


# --------------------------------------------------------------------- update_all
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_update_all_matches_cpu_epoch_and_oracle(rt, case, dtype):
    name, kw = case
    model = FlatModel(SIZES, dtype)
    K = len(SIZES)
    amsgrad_bit = _run_flat(
        rt, model, name, [kw] * K, [0] * K, [int(name == "sgd")] * K, dtype, STEPS, True
    )
    if name == "adam" and kw["amsgrad"] and kw["beta2"] == 0.6:
        assert amsgrad_bit, "test data never made the AMSGrad maximum differ from v"


# each parameter its own hyperparameters (param groups), step count and first-step flag
def _mixed(name, *overrides):
    """Per-parameter kwargs: the first case of ``name`` with each override applied."""
    base = next(kw for n, kw in CASES if n == name)
    return [{**base, **o} for o in overrides]


MIXED = {
    "sgd": _mixed(
        "sgd",
        dict(momentum=0.9),
        dict(lr=0.05, weight_decay=0.1, maximize=True),  # no momentum: S1 left alone
        dict(lr=0.2, momentum=0.5, nesterov=True),
        dict(momentum=0.8, dampening=0.3, weight_decay=0.01),
    ),
    "adam": _mixed(
        "adam",
        dict(amsgrad=True),
        dict(lr=0.01, beta1=0.3, beta2=0.6, eps=1e-6, weight_decay=0.1, maximize=True),
        dict(lr=0.03, beta1=0.8, beta2=0.99, amsgrad=True),
        dict(weight_decay=0.2, decoupled=True),
    ),
    "rmsprop": _mixed(
        "rmsprop",
        dict(centered=True),
        dict(lr=0.02, alpha=0.3, eps=1e-6, weight_decay=0.1, momentum=0.8, maximize=True),
        dict(alpha=0.9, momentum=0.5, centered=True),
        dict(lr=0.005),
    ),
    "adagrad": _mixed(
        "adagrad",
        dict(),
        dict(lr=0.05, lr_decay=0.05, weight_decay=0.1, maximize=True),
        dict(lr=0.2, lr_decay=0.01, eps=0.1, initial_accumulator_value=0.5),
        dict(lr_decay=0.5),
    ),
}


@pytest.mark.parametrize("max_blocks", [None, 1], ids=["grid", "one-block"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("name", list(MIXED))
def test_update_all_per_parameter_rows_and_counts(rt, monkeypatch, name, dtype, max_blocks):
    """Parameters with their own rows, mid-training step counts (the bias corrections
    and Adagrad's decay depend on them) and first-step flags, vs the CPU epoch. With
    one block of 256 threads, the 300- and 1025-element parameters take several turns
    of the grid-stride loop."""
    if max_blocks is not None:
        monkeypatch.setattr(optim_update, "MAX_BLOCKS", max_blocks)
    model = FlatModel(SIZES, dtype)
    steps0 = [0, 5, 2, 10]
    firsts0 = [1, 0, 1, 0] if name == "sgd" else [0, 0, 0, 0]
    _run_flat(rt, model, name, MIXED[name], steps0, firsts0, dtype, 3, False)


def test_update_all_counts_steps_of_every_optimizer(rt):
    """``advance_steps``: every parameter's count + 1 and its first flag cleared after
    each update, for every optimizer (SGD's count too, as the CPU epoch keeps it)."""
    for name, kws in MIXED.items():
        model = FlatModel((2, 3, 4, 5), np.float64)
        _run_flat(rt, model, name, kws, [0, 1, 2, 3], [1, 1, 0, 0], np.float64, 2, False)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_update_all_with_empty_unused_slots(rt, dtype):
    """Slots no parameter uses are empty arrays in ``FlatState`` (SGD without momentum:
    all three; Adam without amsgrad: S3; RMSprop plain: S2 and S3): never touched."""
    K = len(SIZES)
    for name, kw in [
        ("sgd", CASES[0][1]),
        ("adam", next(c[1] for c in CASES if c[0] == "adam" and not c[1]["amsgrad"])),
        ("rmsprop", next(c[1] for c in CASES if c[0] == "rmsprop")),
    ]:
        assert not all(_slots_used(name, kw))
        model = FlatModel(SIZES, dtype)
        firsts = [int(name == "sgd")] * K
        _run_flat(rt, model, name, [kw] * K, [0] * K, firsts, dtype, 2, True, empty_unused=True)


# ---------------------------------------------------------------- fused_update
FUSED_SHAPES = [(), (40, 30)]  # a 0-d array; several blocks
FUSED_STEPS = 3


def _initial_state(name, kw, shape, dtype, garbage):
    """State arrays as the optimizer classes create them; SGD's buffer starts as
    ``garbage``, which the first step must ignore."""
    zeros = np.zeros(shape, dtype)
    if name == "sgd":
        return [np.full(shape, garbage, dtype) if kw["momentum"] else None]
    if name == "adagrad":
        return [np.full(shape, kw["initial_accumulator_value"], dtype)]
    if name == "rmsprop":
        return [
            zeros.copy(),
            zeros.copy() if kw["centered"] else None,
            zeros.copy() if kw["momentum"] > 0 else None,
        ]
    return [zeros.copy(), zeros.copy(), zeros.copy() if kw["amsgrad"] else None]


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_fused_update_matches_reference_and_cpu_kernel(rt, case, dtype):
    name, kw = case
    kernel = optim_update.fused_update(rt, name)
    reference = getattr(F, name + "_")
    cpu = optim_updates.fused_update(name)
    kwargs = {k: v for k, v in kw.items() if k != "initial_accumulator_value"}
    for shape in FUSED_SHAPES:
        rng = np.random.default_rng(_seed(functional_case_id(case), shape, dtype.__name__))
        p = np.array(rng.standard_normal(shape), dtype=dtype)
        p_ref, p_cpu = p.copy(), p.copy()
        # the reference ignores a first-step buffer's contents (NaN here); the CPU rule
        # multiplies it by 0, so it gets a finite stand-in
        state = _initial_state(name, kw, shape, dtype, np.nan)
        state_ref = _initial_state(name, kw, shape, dtype, np.nan)
        state_cpu = _initial_state(name, kw, shape, dtype, 7.0)
        for step in range(1, FUSED_STEPS + 1):
            g = np.array(rng.standard_normal(shape), dtype=dtype)
            g.flags.writeable = False  # the update only reads g
            step_kw = _step_kwargs(name, step, step == 1)
            kernel(np, p, g, *state, **kwargs, **step_kw)
            reference(np, p_ref, g, *state_ref, **kwargs, **step_kw)
            cpu(np, p_cpu, g, *state_cpu, **kwargs, **step_kw, flush_denormals=False)
            assert p.dtype == dtype and p.shape == shape
            np.testing.assert_array_equal(p, p_ref, err_msg=f"{shape} step {step}")
            np.testing.assert_array_equal(p, p_cpu, err_msg=f"{shape} step {step}")
            for i, (s, s_ref, s_cpu) in enumerate(zip(state, state_ref, state_cpu)):
                assert (s is None) == (s_ref is None)
                if s is not None:
                    assert s.dtype == dtype and s.shape == shape
                    np.testing.assert_array_equal(s, s_ref, err_msg=f"state {i}, step {step}")
                    np.testing.assert_array_equal(s, s_cpu, err_msg=f"state {i}, step {step}")


def test_fused_update_leaves_absent_state_alone(rt):
    """A state array the options do not use (passed anyway) is never touched."""
    p, g = np.ones(300), np.full(300, 0.5)
    sentinel = np.full(300, SENTINEL)
    extra = sentinel.copy()
    optim_update.fused_update(rt, "sgd")(
        np,
        p,
        g,
        extra,
        lr=0.1,
        momentum=0.0,
        dampening=0.0,
        nesterov=False,
        weight_decay=0.0,
        maximize=False,
        first_step=True,
    )
    np.testing.assert_array_equal(extra, sentinel)
    np.testing.assert_array_equal(p, np.full(300, 1.0 - 0.1 * 0.5))
    m, v, vmax = np.zeros(300), np.zeros(300), sentinel.copy()
    optim_update.fused_update(rt, "adam")(
        np,
        p,
        g,
        m,
        v,
        vmax,
        lr=0.1,
        beta1=0.9,
        beta2=0.999,
        eps=1e-8,
        weight_decay=0.0,
        decoupled=False,
        amsgrad=False,
        step=1,
        maximize=False,
    )
    np.testing.assert_array_equal(vmax, sentinel)
    ga, buf = sentinel.copy(), sentinel.copy()
    optim_update.fused_update(rt, "rmsprop")(
        np,
        p,
        g,
        np.zeros(300),
        ga,
        buf,
        lr=0.01,
        alpha=0.99,
        eps=1e-8,
        weight_decay=0.0,
        momentum=0.0,
        centered=False,
        maximize=False,
    )
    np.testing.assert_array_equal(ga, sentinel)
    np.testing.assert_array_equal(buf, sentinel)


def test_fused_update_signatures_and_lookup(rt):
    for name in ("sgd", "adam", "rmsprop", "adagrad"):
        kernel = optim_update.fused_update(rt, name)
        reference = getattr(F, name + "_")
        assert kernel.__name__ == reference.__name__
        assert str(inspect.signature(kernel)) == str(inspect.signature(reference))
    assert optim_update.fused_update(rt, "lbfgs") is None


def test_fused_update_rejects_noncontiguous(rt):
    p = np.zeros((4, 6))[:, ::2]
    with pytest.raises(ValueError):
        optim_update.fused_update(rt, "sgd")(
            np,
            p,
            np.zeros_like(p),
            None,
            lr=0.1,
            momentum=0.0,
            dampening=0.0,
            nesterov=False,
            weight_decay=0.0,
            maximize=False,
            first_step=True,
        )
