"""gpunet.optim against float64 oracles of PyTorch's algorithms (and PyTorch itself)."""

from __future__ import annotations

import copy
import inspect
import itertools
import zlib

import numpy as np
import pytest

import gpunet
from gpunet import optim
from gpunet.backend.numpy_backend import NumpyBackend
from gpunet.optim import functional as F
from tests import optim_oracles as oracle

SHAPES = [(4, 3), (7,), (2, 3, 2), ()]
STEPS = 60
RTOL = 1e-12
ATOL = 1e-14  # parameters are O(1); absolute slack only for entries crossing zero


class Problem:
    """Gradients ``sign * h * (p - c) + noise_t`` (a fixed quadratic plus per-step noise),
    or pure per-step random gradients with ``kind="random"``. ``sign=-1`` makes the
    objective concave, for ``maximize=True`` runs."""

    def __init__(self, seed=0, shapes=SHAPES, kind="quadratic", sign=1.0, steps=STEPS):
        rng = np.random.default_rng(seed)
        self.init = [rng.standard_normal(s) for s in shapes]
        self.h = [rng.uniform(0.5, 2.0, s) for s in shapes]
        self.c = [rng.standard_normal(s) for s in shapes]
        scale = 0.1 if kind == "quadratic" else 1.0
        self.noise = [[scale * rng.standard_normal(s) for s in shapes] for _ in range(steps)]
        self.curv = 1.0 if kind == "quadratic" else 0.0
        self.sign = sign

    def grads(self, t, params):
        return [
            self.sign * self.curv * h * (np.asarray(p, dtype=np.float64) - c) + n
            for p, h, c, n in zip(params, self.h, self.c, self.noise[t - 1])
        ]


def make_params(arrays, dtype=np.float64):
    return [gpunet.Tensor(np.array(a, dtype=dtype), requires_grad=True) for a in arrays]


def set_grads(params, grads):
    """Give each parameter a fresh read-only gradient (so any write to it fails)."""
    for p, g in zip(params, grads):
        p.grad = gpunet.Tensor(np.array(g, dtype=p.data.dtype))
        p.grad.data.flags.writeable = False


def train(opt, params, problem, steps, start=1):
    for t in range(start, start + steps):
        set_grads(params, problem.grads(t, [p.data for p in params]))
        opt.step()


def assert_close(actual, expected, rtol=RTOL, atol=ATOL):
    for a, e in zip(actual, expected):
        np.testing.assert_allclose(a, e, rtol=rtol, atol=atol)


def grid(**axes):
    keys = list(axes)
    return [dict(zip(keys, values)) for values in itertools.product(*axes.values())]


SGD_CASES = [
    c
    for c in grid(
        momentum=(0.0, 0.9),
        dampening=(0.0, 0.3),
        nesterov=(False, True),
        weight_decay=(0.0, 0.05),
        maximize=(False, True),
    )
    if not (c["nesterov"] and (c["momentum"] == 0 or c["dampening"] != 0))
]
ADAGRAD_CASES = grid(
    lr_decay=(0.0, 0.05),
    weight_decay=(0.0, 0.1),
    initial_accumulator_value=(0.0, 0.5),
    maximize=(False, True),
) + [{"eps": 0.1}]
RMSPROP_CASES = grid(
    alpha=(0.99, 0.3),  # 1 - alpha < 0.5 and >= 0.5: both branches of torch's lerp
    momentum=(0.0, 0.8),
    centered=(False, True),
    weight_decay=(0.0, 0.1),
    maximize=(False, True),
)
ADAM_CASES = grid(
    betas=((0.9, 0.999), (0.3, 0.6)),
    weight_decay=(0.0, 0.1),
    amsgrad=(False, True),
    maximize=(False, True),
)

CASES = (
    [("SGD", dict(lr=0.05, **c)) for c in SGD_CASES]
    + [("Adagrad", dict(lr=0.1, **c)) for c in ADAGRAD_CASES]
    + [("RMSprop", dict(lr=0.01, **c)) for c in RMSPROP_CASES]
    + [("Adam", dict(lr=0.02, **c)) for c in ADAM_CASES]
    + [("AdamW", dict(lr=0.02, **c)) for c in ADAM_CASES]
)
ORACLES = {
    "SGD": oracle.sgd,
    "Adagrad": oracle.adagrad,
    "RMSprop": oracle.rmsprop,
    "Adam": oracle.adam,
    "AdamW": oracle.adamw,
}


def case_id(case):
    name, kw = case
    return name + "-" + ",".join(f"{k}={v}" for k, v in kw.items() if k != "lr")


@pytest.mark.parametrize("kind", ["quadratic", "random"])
@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
def test_trajectory_matches_oracle(case, kind):
    name, kw = case
    problem = Problem(
        seed=zlib.crc32(case_id(case).encode()), kind=kind, sign=-1 if kw.get("maximize") else 1
    )
    params = make_params(problem.init)
    arrays = [p.data for p in params]
    opt = getattr(optim, name)(params, **kw)
    train(opt, params, problem, STEPS)
    expected = ORACLES[name](problem.init, problem.grads, STEPS, **kw)
    assert_close([p.data for p in params], expected)
    assert all(p.data is a for p, a in zip(params, arrays)), "p.data must be updated in place"


FLOAT32_CASES = [
    ("SGD", dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.05)),
    ("SGD", dict(lr=0.05, momentum=0.9, dampening=0.2, maximize=True)),
    ("Adagrad", dict(lr=0.1, lr_decay=0.01, weight_decay=0.1, initial_accumulator_value=0.1)),
    ("RMSprop", dict(lr=0.01, momentum=0.5, centered=True, weight_decay=0.1)),
    ("Adam", dict(lr=0.02, amsgrad=True, weight_decay=0.1)),
    ("AdamW", dict(lr=0.02, amsgrad=True, maximize=True)),
]


@pytest.mark.parametrize("case", FLOAT32_CASES, ids=[case_id(c) for c in FLOAT32_CASES])
def test_float32_stays_float32(case):
    name, kw = case
    problem = Problem(seed=3, sign=-1 if kw.get("maximize") else 1)
    params = make_params(problem.init, dtype=np.float32)
    opt = getattr(optim, name)(
        params, **{k: np.float64(v) if k == "lr" else v for k, v in kw.items()}
    )
    train(opt, params, problem, STEPS)
    for p in params:
        assert p.data.dtype == np.float32
        for value in opt.state[p].values():
            if isinstance(value, np.ndarray):
                assert value.dtype == np.float32
    expected = ORACLES[name](problem.init, problem.grads, STEPS, **kw)
    assert_close([p.data for p in params], expected, rtol=2e-4, atol=2e-4)


# ------------------------------------------------------------- the functional API
SIGNATURES = {
    "sgd_": "xp, p, g, buf, *, lr, momentum, dampening, nesterov, weight_decay, maximize, "
    "first_step",
    "adagrad_": "xp, p, g, state_sum, *, lr, lr_decay, weight_decay, eps, step, maximize",
    "rmsprop_": "xp, p, g, square_avg, grad_avg, momentum_buffer, *, lr, alpha, eps, "
    "weight_decay, momentum, centered, maximize",
    "adam_": "xp, p, g, exp_avg, exp_avg_sq, max_exp_avg_sq, *, lr, beta1, beta2, eps, "
    "weight_decay, decoupled, amsgrad, step, maximize",
}


@pytest.mark.parametrize("name", sorted(SIGNATURES))
def test_functional_signature_is_the_kernel_contract(name):
    params = inspect.signature(getattr(F, name)).parameters.values()
    text = []
    for param in params:
        if param.kind is param.KEYWORD_ONLY and "*" not in text:
            text.append("*")
        text.append(param.name)
    assert ", ".join(text) == SIGNATURES[name]


class _Spy:
    def __init__(self, reference):
        self.reference = reference
        self.calls = []

    def __call__(self, *args, **kwargs):
        self.calls.append((args, kwargs))
        return self.reference(*args, **kwargs)


@pytest.mark.parametrize(
    "name, kernel, kw",
    [
        ("SGD", "sgd", dict(lr=0.05, momentum=0.9)),
        ("Adagrad", "adagrad", dict(lr=0.1)),
        ("RMSprop", "rmsprop", dict(lr=0.01, centered=True, momentum=0.5)),
        ("Adam", "adam", dict(lr=0.02, amsgrad=True)),
        ("AdamW", "adam", dict(lr=0.02)),
    ],
)
def test_backend_fused_update_is_used(monkeypatch, name, kernel, kw):
    spy = _Spy(getattr(F, kernel + "_"))
    asked = []

    def fused_update(self, optimizer_name):
        asked.append(optimizer_name)
        return spy if optimizer_name == kernel else None

    monkeypatch.setattr(NumpyBackend, "fused_update", fused_update)
    problem = Problem(seed=5)
    params = make_params(problem.init)
    opt = getattr(optim, name)(params, **kw)
    train(opt, params, problem, 10)
    assert set(asked) == {kernel}
    assert len(spy.calls) == 10 * len(params)
    signature = inspect.signature(getattr(F, kernel + "_"))
    for args, kwargs in spy.calls:
        signature.bind(*args, **kwargs)  # exactly the reference's signature
        assert args[0] is np
    expected = ORACLES[name](problem.init, problem.grads, 10, **kw)
    assert_close([p.data for p in params], expected)


# ---------------------------------------------------------------- bookkeeping
def test_param_groups_with_different_options():
    problem = Problem(seed=11)
    params = make_params(problem.init)
    groups = [
        {"params": params[:2], "momentum": 0.9, "nesterov": True},
        {"params": params[2:], "lr": 0.02, "weight_decay": 0.1, "dampening": 0.5, "momentum": 0.5},
    ]
    opt = optim.SGD(groups, lr=0.05)
    assert opt.param_groups[0]["lr"] == 0.05 and opt.param_groups[1]["lr"] == 0.02
    assert opt.param_groups[0]["weight_decay"] == 0 and opt.param_groups[1]["nesterov"] is False
    train(opt, params, problem, STEPS)
    # each parameter's gradient depends only on that parameter: groups run independently
    e0 = oracle.sgd(
        problem.init[:2],
        lambda t, ps: problem.grads(t, ps + problem.init[2:])[:2],
        STEPS,
        lr=0.05,
        momentum=0.9,
        nesterov=True,
    )
    e1 = oracle.sgd(
        problem.init[2:],
        lambda t, ps: problem.grads(t, problem.init[:2] + ps)[2:],
        STEPS,
        lr=0.02,
        weight_decay=0.1,
        dampening=0.5,
        momentum=0.5,
    )
    assert_close([p.data for p in params], e0 + e1)


def test_param_groups_match_oracle_per_group():
    problem = Problem(seed=12)
    params = make_params(problem.init)
    opt = optim.Adam(
        [{"params": params[:2]}, {"params": params[2:], "lr": 0.05, "amsgrad": True}], lr=0.01
    )
    train(opt, params, problem, STEPS)
    e0 = oracle.adam(
        problem.init[:2], lambda t, ps: problem.grads(t, ps + problem.init[2:])[:2], STEPS, lr=0.01
    )
    e1 = oracle.adam(
        problem.init[2:],
        lambda t, ps: problem.grads(t, problem.init[:2] + ps)[2:],
        STEPS,
        lr=0.05,
        amsgrad=True,
    )
    assert_close([p.data for p in params], e0 + e1)


def test_params_without_grad_are_skipped():
    problem = Problem(seed=2)
    params = make_params(problem.init)
    frozen = gpunet.Tensor(np.ones(3), requires_grad=True)
    opt = optim.Adam(params + [frozen], lr=0.1)
    train(opt, params, problem, 5)
    np.testing.assert_array_equal(frozen.data, np.ones(3))
    assert frozen not in opt.state
    assert all(opt.state[p]["step"] == 5 for p in params)


def test_zero_grad():
    params = make_params([np.ones(3), np.ones((2, 2))])
    opt = optim.SGD(params, lr=0.1)
    for p in params:
        p.grad = gpunet.Tensor(np.full(p.shape, 2.0))
    arrays = [p.grad.data for p in params]
    opt.zero_grad(set_to_none=False)
    for p, a in zip(params, arrays):
        assert p.grad.data is a
        np.testing.assert_array_equal(a, 0.0)
    opt.zero_grad()
    assert all(p.grad is None for p in params)
    opt.zero_grad()  # no grads: nothing to do


def test_step_with_closure_computes_loss_and_grads():
    w = gpunet.Tensor(np.array([1.0, -2.0, 3.0]), requires_grad=True)
    target = np.array([0.5, 0.5, 0.5])
    opt = optim.SGD([w], lr=0.1)
    calls = []

    def closure():
        calls.append(gpunet.is_grad_enabled())
        opt.zero_grad()
        loss = ((w - gpunet.Tensor(target)) ** 2).sum()
        loss.backward()
        return loss

    with gpunet.no_grad():
        loss = opt.step(closure)
    assert calls == [True]  # evaluated once, with grad enabled
    np.testing.assert_allclose(loss.item(), ((np.array([1.0, -2.0, 3.0]) - target) ** 2).sum())
    expected = np.array([1.0, -2.0, 3.0]) - 0.1 * 2 * (np.array([1.0, -2.0, 3.0]) - target)
    np.testing.assert_allclose(w.data, expected, rtol=1e-15)
    assert opt.step() is None


def test_add_param_group_uses_defaults():
    a, b = make_params([np.ones(2), np.ones(3)])
    opt = optim.RMSprop([a], lr=0.01, momentum=0.5)
    opt.add_param_group({"params": b, "centered": True})
    group = opt.param_groups[1]
    assert group["params"] == [b] or group["params"][0] is b
    assert group["lr"] == 0.01 and group["momentum"] == 0.5 and group["centered"] is True
    set_grads([a, b], [np.ones(2), np.ones(3)])
    opt.step()
    assert set(opt.state[b]) == {"step", "square_avg", "momentum_buffer", "grad_avg"}
    assert set(opt.state[a]) == {"step", "square_avg", "momentum_buffer"}
    with pytest.raises(ValueError, match="more than one parameter group"):
        opt.add_param_group({"params": [a]})


def test_option_switched_on_later_creates_buffer():
    problem = Problem(seed=4)
    params = make_params(problem.init)
    opt = optim.SGD(params, lr=0.05)
    train(opt, params, problem, 3)
    assert all(not opt.state[p] for p in params)
    opt.param_groups[0]["momentum"] = 0.9
    train(opt, params, problem, 3, start=4)
    assert all("momentum_buffer" in opt.state[p] for p in params)


def test_repr_and_copy():
    params = make_params([np.ones(2)])
    opt = optim.Adam(params, lr=0.1)
    text = repr(opt)
    assert text.startswith("Adam (") and "lr: 0.1" in text and "betas: (0.9, 0.999)" in text
    set_grads(params, [np.ones(2)])
    opt.step()
    clone = copy.deepcopy(opt)
    p2 = clone.param_groups[0]["params"][0]
    assert p2 is not params[0]
    assert clone.state[p2]["step"] == 1 and params[0] not in clone.state


# ----------------------------------------------------------------- state dicts
STATEFUL_CASES = [
    ("SGD", dict(lr=0.05, momentum=0.9, nesterov=True)),
    ("Adagrad", dict(lr=0.1, lr_decay=0.01, initial_accumulator_value=0.1)),
    ("RMSprop", dict(lr=0.01, momentum=0.5, centered=True)),
    ("Adam", dict(lr=0.02, amsgrad=True, weight_decay=0.1)),
    ("AdamW", dict(lr=0.02)),
]


@pytest.mark.parametrize("case", STATEFUL_CASES, ids=[case_id(c) for c in STATEFUL_CASES])
def test_state_dict_round_trip_continues_identically(case):
    name, kw = case
    cls = getattr(optim, name)
    problem = Problem(seed=21)
    params = make_params(problem.init)
    opt = cls(params, **kw)
    train(opt, params, problem, 20)
    snapshot = [p.data.copy() for p in params]
    sd = opt.state_dict()
    saved = copy.deepcopy(sd)
    train(opt, params, problem, 30, start=21)

    # the state dict is a deep copy: later steps did not change it
    for idx, st in sd["state"].items():
        for key, value in st.items():
            np.testing.assert_array_equal(value, saved["state"][idx][key])

    params2 = make_params(snapshot)
    opt2 = cls(params2, lr=123.0)  # hyperparameters come from the state dict
    opt2.load_state_dict(sd)
    assert opt2.param_groups[0]["lr"] == kw["lr"]
    for st in sd["state"].values():  # loading copied the arrays
        for value in st.values():
            if isinstance(value, np.ndarray):
                value[...] = np.nan
    train(opt2, params2, problem, 30, start=21)
    for a, b in zip(params, params2):
        np.testing.assert_array_equal(a.data, b.data)


def test_state_dict_layout():
    params = make_params([np.ones(2), np.ones(3), np.ones((2, 2))])
    opt = optim.Adam([{"params": params[:1]}, {"params": params[1:], "lr": 0.5}])
    set_grads(params, [np.ones(2), np.ones(3), np.ones((2, 2))])
    opt.step()
    sd = opt.state_dict()
    assert set(sd) == {"state", "param_groups"}
    assert [g["params"] for g in sd["param_groups"]] == [[0], [1, 2]]
    assert sd["param_groups"][1]["lr"] == 0.5
    assert sorted(sd["state"]) == [0, 1, 2]
    assert set(sd["state"][2]) == {"step", "exp_avg", "exp_avg_sq"}
    assert sd["state"][2]["exp_avg"].shape == (2, 2)
    assert sd["state"][2]["exp_avg"] is not opt.state[params[2]]["exp_avg"]


def test_load_state_dict_casts_to_param_dtype():
    params = make_params([np.ones(3)])
    opt = optim.Adam(params)
    set_grads(params, [np.ones(3)])
    opt.step()
    sd = opt.state_dict()
    params32 = make_params([np.ones(3)], dtype=np.float32)
    opt32 = optim.Adam(params32)
    opt32.load_state_dict(sd)
    assert opt32.state[params32[0]]["exp_avg"].dtype == np.float32
    assert opt32.state[params32[0]]["step"] == 1


def _two_group_adam():
    params = make_params([np.ones(2), np.ones(3), np.ones((2, 2))])
    opt = optim.Adam([{"params": params[:1]}, {"params": params[1:]}], lr=0.1)
    set_grads(params, [np.ones(2), np.ones(3), np.ones((2, 2))])
    opt.step()
    return opt


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (lambda sd: sd["param_groups"].pop(), "different number of parameter groups"),
        (lambda sd: sd["param_groups"][1]["params"].pop(), "doesn't match the size"),
        (
            lambda sd: sd["state"][1].__setitem__("exp_avg", np.zeros(4)),
            r"'exp_avg' of shape \(4,\) for parameter 1, which has shape \(3,\)",
        ),
        (lambda sd: sd["state"].__setitem__(7, {"step": 1}), "parameter index 7"),
    ],
)
def test_load_invalid_state_dict_raises_and_changes_nothing(corrupt, message):
    opt = _two_group_adam()
    before = opt.state_dict()
    bad = opt.state_dict()
    bad["param_groups"][0]["lr"] = 99.0
    corrupt(bad)
    with pytest.raises(ValueError, match=message):
        opt.load_state_dict(bad)
    after = opt.state_dict()
    assert [g["lr"] for g in after["param_groups"]] == [0.1, 0.1]
    for idx, st in before["state"].items():
        for key, value in st.items():
            np.testing.assert_array_equal(after["state"][idx][key], value)


# -------------------------------------------------------------- argument checks
INVALID = [
    (optim.SGD, dict(lr=-1), "Invalid learning rate: -1"),
    (optim.SGD, dict(momentum=-0.5), "Invalid momentum value: -0.5"),
    (optim.SGD, dict(weight_decay=-1e-4), "Invalid weight_decay value: -0.0001"),
    (optim.SGD, dict(nesterov=True), "Nesterov momentum requires a momentum and zero dampening"),
    (optim.SGD, dict(nesterov=True, momentum=0.9, dampening=0.1), "Nesterov momentum requires"),
    (optim.Adagrad, dict(lr=-0.1), "Invalid learning rate: -0.1"),
    (optim.Adagrad, dict(lr_decay=-1), "Invalid lr_decay value: -1"),
    (optim.Adagrad, dict(weight_decay=-1), "Invalid weight_decay value: -1"),
    (optim.Adagrad, dict(initial_accumulator_value=-1), "Invalid initial_accumulator_value"),
    (optim.Adagrad, dict(eps=-1), "Invalid epsilon value: -1"),
    (optim.RMSprop, dict(lr=-1), "Invalid learning rate"),
    (optim.RMSprop, dict(eps=-1), "Invalid epsilon value: -1"),
    (optim.RMSprop, dict(momentum=-1), "Invalid momentum value: -1"),
    (optim.RMSprop, dict(weight_decay=-1), "Invalid weight_decay value: -1"),
    (optim.RMSprop, dict(alpha=-1), "Invalid alpha value: -1"),
    (optim.Adam, dict(lr=float("nan")), "Invalid learning rate: nan"),
    (optim.Adam, dict(eps=-1), "Invalid epsilon value: -1"),
    (optim.Adam, dict(betas=(1.0, 0.999)), "Invalid beta parameter at index 0: 1.0"),
    (optim.Adam, dict(betas=(0.9, -0.1)), "Invalid beta parameter at index 1: -0.1"),
    (optim.Adam, dict(weight_decay=-1), "Invalid weight_decay value: -1"),
    (optim.AdamW, dict(betas=(0.9, 1.5)), "Invalid beta parameter at index 1: 1.5"),
    (optim.AdamW, dict(lr=-1e-3), "Invalid learning rate: -0.001"),
]


@pytest.mark.parametrize("cls, kw, message", INVALID)
def test_invalid_arguments(cls, kw, message):
    params = make_params([np.ones(2)])
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        cls(params, **kw)


def test_invalid_group_option_and_params():
    (p,) = make_params([np.ones(2)])
    with pytest.raises(ValueError, match="Invalid learning rate: -1"):
        optim.SGD([{"params": [p], "lr": -1}])
    with pytest.raises(ValueError, match="empty parameter list"):
        optim.SGD([])
    with pytest.raises(TypeError, match="iterable of Tensors or dicts"):
        optim.SGD(p)
    with pytest.raises(TypeError, match="can only optimize Tensors"):
        optim.SGD([np.ones(2)])
    with pytest.raises(TypeError, match="ordered collections"):
        optim.SGD([{"params": {p}}])
    with pytest.raises(ValueError, match="more than one parameter group"):
        optim.SGD([{"params": [p]}, {"params": [p]}])
    y = p * 2.0
    with pytest.raises(ValueError, match="non-leaf"):
        optim.SGD([y])


def test_defaults_match_torch_signatures():
    expected = {
        optim.SGD: dict(
            lr=1e-3, momentum=0, dampening=0, weight_decay=0, nesterov=False, maximize=False
        ),
        optim.Adagrad: dict(
            lr=1e-2,
            lr_decay=0,
            weight_decay=0,
            initial_accumulator_value=0,
            eps=1e-10,
            maximize=False,
        ),
        optim.RMSprop: dict(
            lr=1e-2,
            alpha=0.99,
            eps=1e-8,
            weight_decay=0,
            momentum=0,
            centered=False,
            maximize=False,
        ),
        optim.Adam: dict(
            lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, amsgrad=False, maximize=False
        ),
        optim.AdamW: dict(
            lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False, maximize=False
        ),
    }
    for cls, defaults in expected.items():
        opt = cls(make_params([np.ones(1)]))
        for key, value in defaults.items():
            assert opt.defaults[key] == value, (cls.__name__, key)
    assert optim.AdamW(make_params([np.ones(1)])).defaults["decoupled_weight_decay"] is True


# ---------------------------------------------------------- against PyTorch itself
TORCH_CASES = [
    ("SGD", dict(lr=0.05, momentum=0.9, dampening=0.1, weight_decay=0.05)),
    ("SGD", dict(lr=0.05, momentum=0.9, nesterov=True, maximize=True)),
    ("Adagrad", dict(lr=0.1, lr_decay=0.05, weight_decay=0.1, initial_accumulator_value=0.2)),
    ("RMSprop", dict(lr=0.01, alpha=0.3, momentum=0.8, centered=True, weight_decay=0.1)),
    ("RMSprop", dict(lr=0.01, maximize=True)),
    ("Adam", dict(lr=0.02, betas=(0.3, 0.6), weight_decay=0.1, amsgrad=True)),
    ("Adam", dict(lr=0.02, maximize=True)),
    ("AdamW", dict(lr=0.02, weight_decay=0.1, amsgrad=True)),
]


@pytest.mark.parametrize("case", TORCH_CASES, ids=[case_id(c) for c in TORCH_CASES])
def test_matches_torch(case):
    torch = pytest.importorskip("torch")
    name, kw = case
    problem = Problem(seed=31, sign=-1 if kw.get("maximize") else 1)
    params = make_params(problem.init)
    opt = getattr(optim, name)(params, **kw)
    tparams = [torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in problem.init]
    topt = getattr(torch.optim, name)(tparams, foreach=False, **kw)
    for t in range(1, 51):
        set_grads(params, problem.grads(t, [p.data for p in params]))
        for tp, g in zip(tparams, problem.grads(t, [tp.detach().numpy() for tp in tparams])):
            tp.grad = torch.tensor(np.asarray(g), dtype=torch.float64)
        opt.step()
        topt.step()
    assert_close([p.data for p in params], [tp.detach().numpy() for tp in tparams], rtol=1e-10)
    ours, theirs = opt.state_dict(), topt.state_dict()
    assert set(ours["state"][0]) == set(theirs["state"][0])
    assert set(ours["param_groups"][0]) <= set(theirs["param_groups"][0])
    for key, value in theirs["state"][0].items():
        np.testing.assert_allclose(np.asarray(ours["state"][0][key]), value.numpy(), rtol=1e-9)


# ------------------------------------------------------------------ on a GPU (tier 4)
@pytest.mark.gpu
@pytest.mark.parametrize("case", STATEFUL_CASES, ids=[case_id(c) for c in STATEFUL_CASES])
def test_cupy_matches_numpy_and_state_moves_across_devices(case):
    from gpunet.backend import cuda_unavailable_reason  # noqa: PLC0415

    reason = cuda_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    import cupy  # noqa: PLC0415

    name, kw = case
    cls = getattr(optim, name)
    problem = Problem(seed=41)
    host = make_params(problem.init)
    dev = [gpunet.Tensor(cupy.asarray(a), requires_grad=True) for a in problem.init]
    opt_host, opt_dev = cls(host, **kw), cls(dev, **kw)
    for t in range(1, 31):
        set_grads(host, problem.grads(t, [p.data for p in host]))
        for p, g in zip(dev, problem.grads(t, [cupy.asnumpy(p.data) for p in dev])):
            p.grad = gpunet.Tensor(cupy.asarray(g))
        opt_host.step()
        opt_dev.step()
    assert all(isinstance(p.data, cupy.ndarray) for p in dev)
    assert_close([cupy.asnumpy(p.data) for p in dev], [p.data for p in host], rtol=1e-10)
    # a GPU state dict loads into a CPU optimizer (arrays copied to the host)
    back = make_params([cupy.asnumpy(p.data) for p in dev])
    opt_back = cls(back, **kw)
    opt_back.load_state_dict(opt_dev.state_dict())
    for p in back:
        for value in opt_back.state[p].values():
            assert not isinstance(value, cupy.ndarray)
