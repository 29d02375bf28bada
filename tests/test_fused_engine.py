"""The fused engine gives the autograd path's numbers (weights, optimizer state, History)
for every supported optimizer, activation and loss, at batch sizes 1, partial and full."""

import numpy as np
import pytest

import gpunet
from gpunet import nn, optim
from gpunet.train import EarlyStopping, Trainer
from gpunet.train.engines import dense_layers, fused_unsupported_reason

N_SAMPLES, N_FEATURES, N_CLASSES = 22, 5, 3
TOLERANCE = {np.float64: 1e-10, np.float32: 1e-5}

OPTIMIZERS = {
    "sgd": lambda p: optim.SGD(p, lr=0.05),
    "sgd_momentum": lambda p: optim.SGD(p, lr=0.05, momentum=0.9),
    "sgd_momentum_dampening": lambda p: optim.SGD(p, lr=0.05, momentum=0.9, dampening=0.3),
    "sgd_nesterov_wd_maximize": lambda p: optim.SGD(
        p, lr=0.002, momentum=0.8, nesterov=True, weight_decay=0.01, maximize=True
    ),
    "adam": lambda p: optim.Adam(p, lr=0.01),
    "adam_amsgrad_wd": lambda p: optim.Adam(p, lr=0.01, amsgrad=True, weight_decay=0.05),
    "adam_maximize": lambda p: optim.Adam(p, lr=0.001, maximize=True),
    "adamw": lambda p: optim.AdamW(p, lr=0.01, weight_decay=0.1),
    "rmsprop": lambda p: optim.RMSprop(p, lr=0.005),
    "rmsprop_centered_momentum_wd": lambda p: optim.RMSprop(
        p, lr=0.002, centered=True, momentum=0.5, weight_decay=0.01
    ),
    "adagrad_decay_wd": lambda p: optim.Adagrad(p, lr=0.05, lr_decay=0.01, weight_decay=0.01),
}
LOSSES = {
    "ce_mean": lambda: nn.CrossEntropyLoss(),
    "ce_sum_smoothing": lambda: nn.CrossEntropyLoss(reduction="sum", label_smoothing=0.1),
    "mse_mean": lambda: nn.MSELoss(),
    "mse_sum": lambda: nn.MSELoss(reduction="sum"),
}
BATCH_SIZES = {"stochastic": 1, "partial": 8, "full": N_SAMPLES}


def make_model(dtype):
    """Every activation, as fused Dense layers and as separate modules."""
    gpunet.manual_seed(42)
    model = nn.Sequential(
        nn.Dense(N_FEATURES, 7, "relu"),
        nn.Linear(7, 6),
        nn.Tanh(),
        nn.Dense(6, 6, "gelu"),
        nn.Dense(6, 5, "sigmoid"),
        nn.Linear(5, 5),
        nn.LeakyReLU(),
        nn.Dense(5, N_CLASSES),
    )
    return model.to(dtype=dtype)


def make_data(dtype, loss_name):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((N_SAMPLES, N_FEATURES)).astype(dtype)
    if loss_name.startswith("ce"):
        y = rng.integers(0, N_CLASSES, N_SAMPLES)
    else:
        y = rng.standard_normal((N_SAMPLES, N_CLASSES)).astype(dtype)
    return X, y


def train(engine, opt_name, loss_name, batch_size, dtype, epochs=2, callbacks=None):
    model = make_model(dtype)
    opt = OPTIMIZERS[opt_name](model.parameters())
    trainer = Trainer(
        model,
        LOSSES[loss_name](),
        opt,
        engine=engine,
        progress=False,
        verbose=0,
        callbacks=callbacks,
    )
    X, y = make_data(dtype, loss_name)
    history = trainer.fit(X, y, epochs=epochs, batch_size=batch_size, seed=3)
    assert trainer.engine_name == engine
    return model, opt, history


def assert_close(a: dict, b: dict, tol: float, what: str):
    for key in a:
        x, y = np.asarray(a[key], np.float64), np.asarray(b[key], np.float64)
        scale = max(np.max(np.abs(x)), 1e-30)
        err = np.max(np.abs(x - y)) / scale
        assert err <= tol, f"{what} {key}: relative difference {err:.3e} > {tol}"


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("batch", list(BATCH_SIZES))
@pytest.mark.parametrize("loss_name", list(LOSSES))
@pytest.mark.parametrize("opt_name", list(OPTIMIZERS))
def test_fused_matches_autograd(opt_name, loss_name, batch, dtype):
    ref_model, ref_opt, ref_hist = train("autograd", opt_name, loss_name, BATCH_SIZES[batch], dtype)
    model, opt, hist = train("fused", opt_name, loss_name, BATCH_SIZES[batch], dtype)
    tol = TOLERANCE[dtype]
    assert_close(ref_model.state_dict(), model.state_dict(), tol, "weight")
    # optimizer state has the same keys and values (so training can switch paths)
    for p_ref, p in zip(ref_model.parameters(), model.parameters()):
        s_ref, s = ref_opt.state[p_ref], opt.state[p]
        assert set(s_ref) == set(s), f"state keys {set(s_ref)} != {set(s)}"
        assert_close({k: v for k, v in s_ref.items()}, s, max(tol, 1e-9), "optimizer state")
    np.testing.assert_allclose(hist.history["loss"], ref_hist.history["loss"], rtol=100 * tol)
    assert hist.iterations == ref_hist.iterations
    if "accuracy" in ref_hist.history:
        assert hist.history["accuracy"] == ref_hist.history["accuracy"]


@pytest.mark.parametrize("loss_name", ["ce_mean", "mse_mean"])
@pytest.mark.parametrize("engine", ["autograd", "fused"])
def test_shuffled_epoch_trains_on_the_permuted_rows(engine, loss_name):
    """Engines gather each batch's rows of the epoch's permutation (no shuffled copy of
    the data set): the same weights as training on the permuted arrays in order."""
    dtype = np.float64
    X, y = make_data(dtype, loss_name)
    perm = np.random.default_rng(3).permutation(N_SAMPLES)  # fit(seed=3)'s first epoch
    weights = []
    for args in ((X, y, True), (X[perm], y[perm], False)):
        model = make_model(dtype)
        trainer = Trainer(
            model,
            LOSSES[loss_name](),
            OPTIMIZERS["sgd_momentum"](model.parameters()),
            engine=engine,
            progress=False,
            verbose=0,
        )
        trainer.fit(args[0], args[1], epochs=1, batch_size=5, shuffle=args[2], seed=3)
        weights.append(model.state_dict())
    for key in weights[0]:
        np.testing.assert_array_equal(weights[0][key], weights[1][key])


def test_switching_paths_mid_training_continues_the_same_trajectory():
    dtype = np.float64
    X, y = make_data(dtype, "ce_mean")
    ref = make_model(dtype)
    ref_opt = optim.Adam(ref.parameters(), lr=0.01, amsgrad=True)
    Trainer(ref, nn.CrossEntropyLoss(), ref_opt, engine="autograd", progress=False, verbose=0).fit(
        X, y, epochs=2, batch_size=4, shuffle=False
    )
    mixed = make_model(dtype)
    opt = optim.Adam(mixed.parameters(), lr=0.01, amsgrad=True)
    Trainer(mixed, nn.CrossEntropyLoss(), opt, engine="fused", progress=False, verbose=0).fit(
        X, y, epochs=1, batch_size=4, shuffle=False
    )
    Trainer(mixed, nn.CrossEntropyLoss(), opt, engine="autograd", progress=False, verbose=0).fit(
        X, y, epochs=1, batch_size=4, shuffle=False
    )
    assert_close(ref.state_dict(), mixed.state_dict(), 1e-10, "weight")


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("batch_size", [1, 5, 16, 22])
@pytest.mark.parametrize("opt_name", ["sgd_momentum", "adam", "adam_amsgrad_wd"])
def test_wide_layers_match_autograd(opt_name, batch_size, dtype):
    """Layers wider than one block of the blocked weight gradient (32 rows), with a
    partial last block, on every weight-update regime (1 row, 2-16 rows, more)."""
    X, y = make_data(dtype, "ce_mean")
    results = []
    for engine in ("autograd", "fused"):
        gpunet.manual_seed(7)
        model = nn.Sequential(
            nn.Dense(N_FEATURES, 70, "relu"), nn.Dense(70, 33, "tanh"), nn.Dense(33, N_CLASSES)
        ).to(dtype=dtype)
        opt = OPTIMIZERS[opt_name](model.parameters())
        trainer = Trainer(
            model, nn.CrossEntropyLoss(), opt, engine=engine, progress=False, verbose=0
        )
        trainer.fit(X, y, epochs=2, batch_size=batch_size, seed=3)
        assert trainer.engine_name == engine
        results.append(model.state_dict())
    assert_close(results[0], results[1], TOLERANCE[dtype], "weight")


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize(
    ("n_samples", "batch_size"),
    [(70, 20), (80, 20), (53, 17), (40, 256)],
    ids=["folded-then-blocked", "all-folded", "17-rows-then-one", "full-batch"],
)
def test_momentum_folded_into_the_weight_gradient_matches_autograd(n_samples, batch_size, dtype):
    """SGD with plain momentum, 17-256 rows: the fused epoch accumulates ``dW`` into the
    momentum buffer (scaled by the previous step's sweep), with several such steps per
    epoch, a last batch that takes another path (10 or 2 rows) or not, the first step
    (no buffer yet) and epoch boundaries (the stored buffer is unscaled)."""
    rng = np.random.default_rng(5)
    X = rng.standard_normal((n_samples, N_FEATURES)).astype(dtype)
    y = rng.integers(0, N_CLASSES, n_samples)
    results = []
    for engine in ("autograd", "fused"):
        gpunet.manual_seed(11)
        model = nn.Sequential(nn.Dense(N_FEATURES, 40, "relu"), nn.Dense(40, N_CLASSES)).to(
            dtype=dtype
        )
        opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        trainer = Trainer(
            model, nn.CrossEntropyLoss(), opt, engine=engine, progress=False, verbose=0
        )
        trainer.fit(X, y, epochs=3, batch_size=batch_size, seed=2)
        assert trainer.engine_name == engine
        buffers = {
            f"buf{k}": opt.state[p]["momentum_buffer"] for k, p in enumerate(model.parameters())
        }
        results.append((model.state_dict(), buffers))
    (w_ref, b_ref), (w, b) = results
    assert_close(w_ref, w, TOLERANCE[dtype], "weight")
    assert_close(b_ref, b, TOLERANCE[dtype], "momentum buffer")


def test_hyperparameters_changed_between_fits_reach_the_fused_engine():
    """Turning amsgrad on between fits makes the fused engine keep max_exp_avg_sq (a state
    slot it leaves empty while no group needs it), as the autograd path does."""
    X, y = make_data(np.float64, "ce_mean")
    models = []
    for engine in ("autograd", "fused"):
        model = make_model(np.float64)
        opt = optim.Adam(model.parameters(), lr=0.01)
        trainer = Trainer(
            model, nn.CrossEntropyLoss(), opt, engine=engine, progress=False, verbose=0
        )
        trainer.fit(X, y, epochs=1, batch_size=4, shuffle=False)
        assert all("max_exp_avg_sq" not in opt.state[p] for p in model.parameters())
        for group in opt.param_groups:
            group["amsgrad"] = True
        trainer.fit(X, y, epochs=2, batch_size=4, shuffle=False)
        assert all("max_exp_avg_sq" in opt.state[p] for p in model.parameters())
        models.append((model, opt))
    (ref, ref_opt), (fused, opt) = models
    assert_close(ref.state_dict(), fused.state_dict(), 1e-10, "weight")
    for p_ref, p in zip(ref.parameters(), fused.parameters()):
        assert_close(dict(ref_opt.state[p_ref]), dict(opt.state[p]), 1e-9, "optimizer state")


def test_early_stopping_and_scheduler_behave_the_same_on_both_engines():
    results = []
    for engine in ("autograd", "fused"):
        model = make_model(np.float64)
        opt = optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
        scheduler = optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
        stopper = EarlyStopping(monitor="val_loss", patience=1, restore_best_weights=True)
        X, y = make_data(np.float64, "ce_mean")
        trainer = Trainer(
            model,
            nn.CrossEntropyLoss(),
            opt,
            callbacks=[stopper],
            scheduler=scheduler,
            engine=engine,
            progress=False,
            verbose=0,
        )
        history = trainer.fit(X, y, epochs=30, batch_size=5, validation_split=0.25, seed=1)
        results.append((history, model.state_dict(), stopper.stopped_epoch))
    (h1, w1, s1), (h2, w2, s2) = results
    assert s1 == s2 and len(h1) == len(h2) < 30
    assert h1.history["lr"] == h2.history["lr"]
    np.testing.assert_allclose(h1.history["val_loss"], h2.history["val_loss"], rtol=1e-9)
    assert_close(w1, w2, 1e-9, "restored weight")


def test_auto_measures_on_dense_models_and_takes_autograd_otherwise():
    X, y = make_data(np.float32, "ce_mean")
    model = make_model(np.float32)
    trainer = Trainer(
        model, nn.CrossEntropyLoss(), optim.SGD(model.parameters()), progress=False, verbose=0
    )
    trainer.fit(X, y, epochs=1)
    assert type(trainer._select_engine()).__name__ == "AutoCpuEngine"
    assert trainer.engine_name == "autograd"  # epoch 1 always runs on autograd
    odd = nn.Sequential(nn.Flatten(), nn.Linear(N_FEATURES, N_CLASSES))
    trainer = Trainer(
        odd, nn.CrossEntropyLoss(), optim.SGD(odd.parameters()), progress=False, verbose=0
    )
    trainer.fit(X, y, epochs=1)
    assert type(trainer._select_engine()).__name__ == "AutogradEngine"
    assert trainer.engine_name == "autograd"
    with pytest.raises(ValueError, match="engine='fused' cannot train this model: layer Flatten"):
        Trainer(
            odd,
            nn.CrossEntropyLoss(),
            optim.SGD(odd.parameters()),
            engine="fused",
            progress=False,
            verbose=0,
        ).fit(X, y, epochs=1)


@pytest.mark.parametrize(
    "case,reason",
    [
        ("bce", "loss BCEWithLogitsLoss is not fused"),
        ("double_activation", "does not directly follow a linear layer"),
        ("partial_optimizer", "does not hold exactly the model's parameters"),
        ("leaky_slope", "non-default slope"),
        ("reduction_none", "reduction 'none'"),
    ],
)
def test_unsupported_setups_name_the_reason(case, reason):
    from gpunet.backend import get_backend

    model = nn.Sequential(nn.Dense(3, 4, "relu"), nn.Linear(4, 2))
    loss = nn.CrossEntropyLoss()
    params = list(model.parameters())
    if case == "bce":
        loss = nn.BCEWithLogitsLoss()
    elif case == "double_activation":
        model = nn.Sequential(nn.Dense(3, 4, "relu"), nn.ReLU())
        params = list(model.parameters())
    elif case == "partial_optimizer":
        params = params[:2]
    elif case == "leaky_slope":
        model = nn.Sequential(nn.Linear(3, 4), nn.LeakyReLU(0.2))
        params = list(model.parameters())
    elif case == "reduction_none":
        loss = nn.CrossEntropyLoss(reduction="none")
    message = fused_unsupported_reason(model, loss, optim.SGD(params), get_backend("cpu"), [])
    assert message is not None and reason in message


def test_layer_folding():
    model = nn.Sequential(nn.Linear(3, 4), nn.GELU(), nn.Dense(4, 2, "tanh"))
    layers = dense_layers(model)
    assert [(lin.out_features, act) for lin, act in layers] == [(4, "gelu"), (2, "tanh")]
