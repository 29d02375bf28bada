"""gpunet.optim.lr_scheduler against closed forms, scripted plateaus and PyTorch."""

from __future__ import annotations

import math

import numpy as np
import pytest

import gpunet
from gpunet import optim
from gpunet.optim import lr_scheduler as S
from tests import optim_oracles as oracle

BASE_LRS = [0.1, 0.03]
EPOCHS = 60


def make_optimizer(lrs=BASE_LRS):
    groups = [{"params": [gpunet.Tensor(np.ones(2), requires_grad=True)], "lr": lr} for lr in lrs]
    return optim.SGD(groups, lr=lrs[0], momentum=0.9)


def run(scheduler, epochs=EPOCHS):
    """Learning rates at epochs 0..epochs (one optimizer + scheduler step per epoch)."""
    optimizer = scheduler.optimizer
    history = [scheduler.get_last_lr()]
    for _ in range(epochs):
        optimizer.step()
        scheduler.step()
        lrs = scheduler.get_last_lr()
        assert lrs == [g["lr"] for g in optimizer.param_groups]
        history.append(lrs)
    return np.array(history)


def expected(formula, epochs=EPOCHS, lrs=BASE_LRS, **kw):
    return np.array([[formula(base, t, **kw) for base in lrs] for t in range(epochs + 1)])


CLOSED_FORMS = [
    (S.StepLR, oracle.step_lr, dict(step_size=1)),
    (S.StepLR, oracle.step_lr, dict(step_size=7, gamma=0.5)),
    (S.MultiStepLR, oracle.multistep_lr, dict(milestones=[5, 20, 33], gamma=0.3)),
    (S.MultiStepLR, oracle.multistep_lr, dict(milestones=[33, 20, 5, 20])),  # unsorted, repeated
    (S.ExponentialLR, oracle.exponential_lr, dict(gamma=0.95)),
    (S.ExponentialLR, oracle.exponential_lr, dict(gamma=1.0)),
    (S.CosineAnnealingLR, oracle.cosine_annealing_lr, dict(T_max=60)),
    (S.CosineAnnealingLR, oracle.cosine_annealing_lr, dict(T_max=25, eta_min=0.001)),
    (S.CosineAnnealingLR, oracle.cosine_annealing_lr, dict(T_max=10)),  # several periods
    (S.CosineAnnealingLR, oracle.cosine_annealing_lr, dict(T_max=1, eta_min=0.01)),
    (S.LinearLR, oracle.linear_lr, dict()),
    (S.LinearLR, oracle.linear_lr, dict(start_factor=1.0, end_factor=0.1, total_iters=20)),
    (S.LinearLR, oracle.linear_lr, dict(start_factor=0.5, end_factor=0.0, total_iters=10)),
    (S.LinearLR, oracle.linear_lr, dict(start_factor=0.25, end_factor=1.0, total_iters=60)),
]


def _id(case):
    cls, _, kw = case
    return cls.__name__ + "-" + ",".join(f"{k}={v}" for k, v in kw.items())


@pytest.mark.parametrize("case", CLOSED_FORMS, ids=[_id(c) for c in CLOSED_FORMS])
def test_schedule_matches_closed_form(case):
    cls, formula, kw = case
    optimizer = make_optimizer()
    scheduler = cls(optimizer, **kw)
    assert [g["initial_lr"] for g in optimizer.param_groups] == BASE_LRS
    assert scheduler.base_lrs == BASE_LRS and scheduler.last_epoch == 0
    got = run(scheduler)
    np.testing.assert_allclose(got, expected(formula, **kw), rtol=1e-12, atol=1e-17)
    assert scheduler.last_epoch == EPOCHS


@pytest.mark.parametrize("case", CLOSED_FORMS, ids=[_id(c) for c in CLOSED_FORMS])
def test_step_with_epoch_uses_closed_form(case):
    cls, formula, kw = case
    scheduler = cls(make_optimizer(), **kw)
    for epoch in (3, 17, 40):
        with pytest.warns(UserWarning, match="epoch parameter"):
            scheduler.step(epoch)
        want = [formula(base, epoch, **kw) for base in BASE_LRS]
        np.testing.assert_allclose(scheduler.get_last_lr(), want, rtol=1e-12, atol=1e-17)


def test_chained_schedulers_multiply():
    optimizer = make_optimizer()
    exp = S.ExponentialLR(optimizer, gamma=0.9)
    step = S.StepLR(optimizer, step_size=4, gamma=0.5)
    history = [step.get_last_lr()]
    for _ in range(EPOCHS):
        optimizer.step()
        exp.step()
        step.step()
        history.append(step.get_last_lr())
    want = [[b * 0.9**t * 0.5 ** (t // 4) for b in BASE_LRS] for t in range(EPOCHS + 1)]
    np.testing.assert_allclose(history, want, rtol=1e-12)


def test_schedule_drives_optimizer_lr():
    w = gpunet.Tensor(np.zeros(1), requires_grad=True)
    optimizer = optim.SGD([w], lr=1.0)
    scheduler = S.StepLR(optimizer, step_size=1, gamma=0.5)
    for _ in range(3):
        w.grad = gpunet.Tensor(np.ones(1))
        optimizer.step()
        scheduler.step()
    np.testing.assert_allclose(w.data, [-(1.0 + 0.5 + 0.25)])


@pytest.mark.parametrize(
    "make",
    [
        lambda o: S.StepLR(o, step_size=3, gamma=0.5),
        lambda o: S.MultiStepLR(o, milestones=[4, 9, 30]),
        lambda o: S.ExponentialLR(o, gamma=0.9),
        lambda o: S.CosineAnnealingLR(o, T_max=12, eta_min=0.001),
        lambda o: S.LinearLR(o, start_factor=0.2, total_iters=25),
    ],
    ids=["step", "multistep", "exponential", "cosine", "linear"],
)
def test_state_dict_round_trip(make):
    optimizer = make_optimizer()
    scheduler = make(optimizer)
    run(scheduler, 15)
    opt_state, sched_state = optimizer.state_dict(), scheduler.state_dict()
    assert "optimizer" not in sched_state
    rest = run(scheduler, 30)

    optimizer2 = make_optimizer([1.0, 1.0])
    scheduler2 = make(optimizer2)  # construct first, then load (as in PyTorch)
    optimizer2.load_state_dict(opt_state)
    scheduler2.load_state_dict(sched_state)
    assert scheduler2.optimizer is optimizer2
    np.testing.assert_array_equal(run(scheduler2, 30), rest)


def test_resume_with_last_epoch():
    optimizer = make_optimizer()
    with pytest.raises(KeyError, match="initial_lr"):
        S.StepLR(optimizer, step_size=2, last_epoch=5)
    for group in optimizer.param_groups:
        group["initial_lr"] = 1.0
    scheduler = S.ExponentialLR(optimizer, gamma=0.5, last_epoch=5)
    assert scheduler.base_lrs == [1.0, 1.0]
    assert scheduler.last_epoch == 6 and scheduler.get_last_lr() == BASE_LRS  # lr kept


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda o: S.StepLR(o, step_size=0), "step_size"),
        (lambda o: S.CosineAnnealingLR(o, T_max=0), "T_max"),
        (lambda o: S.LinearLR(o, start_factor=0), "Starting multiplicative factor"),
        (lambda o: S.LinearLR(o, start_factor=1.5), "Starting multiplicative factor"),
        (lambda o: S.LinearLR(o, end_factor=1.5), "Ending multiplicative factor"),
        (lambda o: S.LinearLR(o, total_iters=0), "total_iters"),
        (lambda o: S.ReduceLROnPlateau(o, factor=1.0), "Factor should be < 1.0"),
        (lambda o: S.ReduceLROnPlateau(o, mode="avg"), "mode avg is unknown"),
        (lambda o: S.ReduceLROnPlateau(o, threshold_mode="pct"), "threshold mode pct is unknown"),
        (lambda o: S.ReduceLROnPlateau(o, min_lr=[0.1]), "expected 2 min_lrs, got 1"),
        (lambda o: S.ReduceLROnPlateau(o, patience=-1), "patience"),
    ],
)
def test_invalid_arguments(make, message):
    with pytest.raises(ValueError, match=message):
        make(make_optimizer())


def test_not_an_optimizer():
    with pytest.raises(TypeError, match="is not an Optimizer"):
        S.StepLR(object(), step_size=1)
    with pytest.raises(TypeError, match="is not an Optimizer"):
        S.ReduceLROnPlateau(object())


# ------------------------------------------------------------- ReduceLROnPlateau
def plateau_run(scheduler, metrics):
    """Per epoch: (lrs, num_bad_epochs, cooldown_counter, in_cooldown)."""
    out = []
    for m in metrics:
        scheduler.step(m)
        lrs = scheduler.get_last_lr()
        assert lrs == [g["lr"] for g in scheduler.optimizer.param_groups]
        out.append(
            (lrs, scheduler.num_bad_epochs, scheduler.cooldown_counter, scheduler.in_cooldown)
        )
    return out


def lrs_of(trace, group=0):
    return [t[0][group] for t in trace]


def test_plateau_min_rel_patience():
    optimizer = make_optimizer([1.0, 0.5])
    sched = S.ReduceLROnPlateau(optimizer, factor=0.5, patience=2)
    trace = plateau_run(sched, [10, 9, 9, 9, 9, 8, 8, 8, 8])
    assert lrs_of(trace) == [1, 1, 1, 1, 0.5, 0.5, 0.5, 0.5, 0.25]
    assert lrs_of(trace, 1) == [0.5, 0.5, 0.5, 0.5, 0.25, 0.25, 0.25, 0.25, 0.125]
    assert [t[1] for t in trace] == [0, 0, 1, 2, 0, 0, 1, 2, 0]
    assert sched.best == 8 and sched.last_epoch == 9


def test_plateau_improvement_resets_bad_epochs():
    sched = S.ReduceLROnPlateau(make_optimizer([1.0, 1.0]), patience=2)
    trace = plateau_run(sched, [5, 6, 6, 4, 6, 6, 3, 7, 7])
    assert lrs_of(trace) == [1.0] * 9
    assert [t[1] for t in trace] == [0, 1, 2, 0, 1, 2, 0, 1, 2]


@pytest.mark.parametrize(
    "mode, threshold_mode, metrics, reduced",
    [
        # best 100; rel needs < 99.99, abs needs < 99.9999
        ("min", "rel", [100, 99.995], True),
        ("min", "abs", [100, 99.995], False),
        ("min", "rel", [100, 99.98], False),
        ("min", "abs", [100, 99.99995], True),
        # best 100; rel needs > 100.01, abs needs > 100.0001
        ("max", "rel", [100, 100.005], True),
        ("max", "abs", [100, 100.005], False),
        ("max", "rel", [100, 100.02], False),
        ("max", "abs", [100, 100.00005], True),
        ("max", "rel", [100, 90], True),
        ("min", "abs", [100, 110], True),
    ],
)
def test_plateau_modes_and_thresholds(mode, threshold_mode, metrics, reduced):
    sched = S.ReduceLROnPlateau(
        make_optimizer([1.0, 1.0]), mode=mode, threshold_mode=threshold_mode, patience=0
    )
    trace = plateau_run(sched, metrics)
    assert lrs_of(trace)[-1] == (0.1 if reduced else 1.0)


def test_plateau_negative_metrics_max_rel():
    # rel threshold multiplies best: for negative values "better" is still "larger enough"
    sched = S.ReduceLROnPlateau(make_optimizer([1.0, 1.0]), mode="max", patience=0)
    trace = plateau_run(sched, [-10.0, -9.0])
    assert lrs_of(trace) == [1.0, 1.0]


def test_plateau_cooldown_ignores_bad_epochs():
    sched = S.ReduceLROnPlateau(make_optimizer([1.0, 1.0]), patience=1, cooldown=2)
    trace = plateau_run(sched, [5.0] * 11)
    np.testing.assert_allclose(
        lrs_of(trace), [1, 1, 0.1, 0.1, 0.1, 0.1, 0.01, 0.01, 0.01, 0.01, 0.001], rtol=1e-15
    )
    assert [t[1] for t in trace] == [0, 1, 0, 0, 0, 1, 0, 0, 0, 1, 0]
    assert [t[2] for t in trace] == [0, 0, 2, 1, 0, 0, 2, 1, 0, 0, 2]
    assert [t[3] for t in trace] == [False, False, True, True, False, False, True, True] + [
        False,
        False,
        True,
    ]


def test_plateau_improvement_during_cooldown_updates_best():
    sched = S.ReduceLROnPlateau(make_optimizer([1.0, 1.0]), patience=0, cooldown=3)
    plateau_run(sched, [5, 5])  # reduction at epoch 2, cooldown 3
    assert sched.cooldown_counter == 3
    plateau_run(sched, [4])
    assert sched.best == 4 and sched.cooldown_counter == 2 and sched.num_bad_epochs == 0


def test_plateau_min_lr_per_group():
    optimizer = make_optimizer([1.0, 0.1])
    sched = S.ReduceLROnPlateau(optimizer, factor=0.1, patience=0, min_lr=[0.05, 0.02])
    trace = plateau_run(sched, [1.0, 1.0, 1.0, 1.0])
    assert lrs_of(trace, 0) == [1.0, 0.1, 0.05, 0.05]
    assert lrs_of(trace, 1) == [0.1, 0.02, 0.02, 0.02]
    assert sched.min_lrs == [0.05, 0.02]


def test_plateau_scalar_min_lr():
    optimizer = make_optimizer([1.0, 0.1])
    sched = S.ReduceLROnPlateau(optimizer, factor=0.5, patience=0, min_lr=0.2)
    trace = plateau_run(sched, [3.0, 3.0, 3.0, 3.0])
    assert lrs_of(trace, 0) == [1.0, 0.5, 0.25, 0.2]
    assert lrs_of(trace, 1) == [0.1, 0.1, 0.1, 0.1]  # already below min_lr: never raised


@pytest.mark.parametrize("eps, reduced", [(1e-8, False), (1e-10, True)])
def test_plateau_eps_skips_tiny_reductions(eps, reduced):
    optimizer = make_optimizer([1e-8, 1e-8])
    sched = S.ReduceLROnPlateau(optimizer, factor=0.1, patience=0, eps=eps)
    trace = plateau_run(sched, [1.0, 1.0])
    # 1e-8 -> 1e-9 changes the lr by 9e-9: below eps=1e-8, above eps=1e-10
    assert lrs_of(trace)[-1] == pytest.approx(1e-9 if reduced else 1e-8, rel=1e-12)
    assert sched.num_bad_epochs == 0  # the counter resets even when nothing changed


def test_plateau_accepts_tensor_metric_and_state_dict():
    optimizer = make_optimizer([1.0, 1.0])
    sched = S.ReduceLROnPlateau(optimizer, mode="max", patience=1, cooldown=1)
    metrics = [0.5, 0.6, 0.6, 0.6, 0.55, 0.7, 0.7, 0.7, 0.7, 0.7]
    plateau_run(sched, [gpunet.Tensor(np.array(m)) for m in metrics[:4]])
    state = sched.state_dict()
    opt_state = optimizer.state_dict()
    rest = plateau_run(sched, metrics[4:])

    optimizer2 = make_optimizer([1.0, 1.0])
    sched2 = S.ReduceLROnPlateau(optimizer2)
    optimizer2.load_state_dict(opt_state)
    sched2.load_state_dict(state)
    assert sched2.mode == "max" and sched2.optimizer is optimizer2
    assert plateau_run(sched2, metrics[4:]) == rest


def test_plateau_new_group_with_scalar_min_lr():
    optimizer = make_optimizer([1.0, 1.0])
    sched = S.ReduceLROnPlateau(optimizer, patience=0, min_lr=0.0)
    optimizer.add_param_group({"params": [gpunet.Tensor(np.ones(1), requires_grad=True)]})
    plateau_run(sched, [1.0, 1.0])
    assert sched.get_last_lr() == pytest.approx([0.1, 0.1, 0.1])


# ---------------------------------------------------------- against PyTorch itself
TORCH_SCHEDULES = [
    ("StepLR", dict(step_size=7, gamma=0.5)),
    ("MultiStepLR", dict(milestones=[33, 20, 5, 20], gamma=0.3)),
    ("ExponentialLR", dict(gamma=0.95)),
    ("CosineAnnealingLR", dict(T_max=10, eta_min=0.001)),
    ("CosineAnnealingLR", dict(T_max=60)),
    ("LinearLR", dict(start_factor=0.25, end_factor=0.9, total_iters=20)),
]


def _torch_optimizer(torch, lrs=BASE_LRS):
    groups = [{"params": [torch.zeros(2, requires_grad=True)], "lr": lr} for lr in lrs]
    return torch.optim.SGD(groups, lr=lrs[0])


@pytest.mark.parametrize("name, kw", TORCH_SCHEDULES, ids=[n for n, _ in TORCH_SCHEDULES])
def test_matches_torch(name, kw):
    torch = pytest.importorskip("torch")
    ours = getattr(S, name)(make_optimizer(), **kw)
    topt = _torch_optimizer(torch)
    theirs = getattr(torch.optim.lr_scheduler, name)(topt, **kw)
    assert ours.get_last_lr() == theirs.get_last_lr()
    for _ in range(EPOCHS):
        ours.optimizer.step()
        topt.step()
        ours.step()
        theirs.step()
        np.testing.assert_allclose(ours.get_last_lr(), theirs.get_last_lr(), rtol=1e-15, atol=0)


@pytest.mark.parametrize("mode", ["min", "max"])
@pytest.mark.parametrize("threshold_mode", ["rel", "abs"])
def test_plateau_matches_torch(mode, threshold_mode):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(7)
    metrics = rng.integers(0, 6, size=80).astype(float) / 3  # many ties and plateaus
    kw = dict(
        mode=mode,
        factor=0.5,
        patience=2,
        threshold=0.1,
        threshold_mode=threshold_mode,
        cooldown=2,
        min_lr=[0.001, 0.0005],
        eps=1e-4,
    )
    ours = S.ReduceLROnPlateau(make_optimizer(), **kw)
    theirs = torch.optim.lr_scheduler.ReduceLROnPlateau(_torch_optimizer(torch), **kw)
    for m in metrics:
        ours.step(m)
        theirs.step(m)
        assert ours.get_last_lr() == theirs.get_last_lr()
        assert (ours.num_bad_epochs, ours.cooldown_counter, ours.best) == (
            theirs.num_bad_epochs,
            theirs.cooldown_counter,
            theirs.best,
        )
    assert min(ours.get_last_lr()) < max(BASE_LRS) and not math.isnan(ours.best)
