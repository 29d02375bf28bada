"""Command line: ``gpunet train``, ``gpunet compile``, ``gpunet tune``, ``gpunet info`` and
``gpunet bench``."""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time

import numpy as np

MODES = ("batch", "stochastic", "minibatch")
SCHEDULERS = ("none", "step", "multistep", "exponential", "cosine", "linear", "plateau")
OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop", "adagrad")
DATASETS = ("digits", "mnist1d", "synthetic-classification", "synthetic-regression")


def _positive_int(text: str) -> int:
    """argparse type: an int of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gpunet", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    info = sub.add_parser("info", help="versions, backends and devices")
    info.set_defaults(func=cmd_info)

    comp = sub.add_parser(
        "compile",
        help="compile the CPU kernels now (otherwise the first runs compile them in the "
        "background and use NumPy's ops and the autograd engine meanwhile)",
    )
    comp.add_argument(
        "--dtype",
        nargs="+",
        default=["float32"],
        choices=("float32", "float64"),
        help="the fused epoch kernels' dtypes",
    )
    comp.set_defaults(func=cmd_compile)

    tune = sub.add_parser(
        "tune",
        help="measure from how many rows the fused CPU engine splits a step across its "
        "threads, on this machine, and keep the table for later runs",
    )
    tune.add_argument("--threads", type=_positive_int, help="default: gpunet.get_num_threads()")
    tune.add_argument(
        "--widths", nargs="+", type=_positive_int, help="the benchmark network (784 512 512 10)"
    )
    tune.add_argument("--quick", action="store_true", help="4 batch sizes, 1 repeat")
    tune.add_argument("--dry-run", action="store_true", help="measure, keep nothing")
    tune.set_defaults(func=cmd_tune)

    from gpunet.bench import cli as bench_cli  # noqa: PLC0415  (argparse only, no heavy imports)

    bench = sub.add_parser(
        "bench",
        help="benchmark gpunet against its peers (throughput, time to accuracy, plots)",
        description=bench_cli.DESCRIPTION,
    )
    bench_cli.add_arguments(bench)
    bench.set_defaults(func=bench_cli.run)

    from gpunet.data.recipes import describe as describe_recipes  # noqa: PLC0415

    t = sub.add_parser(
        "train",
        help="train a dense network on a built-in data set",
        formatter_class=RecipeHelpFormatter,
        epilog=describe_recipes(),
    )
    t.add_argument("--dataset", default="digits", choices=DATASETS)
    t.add_argument(
        "--hidden",
        type=int,
        nargs="*",
        default=None,
        help="hidden layer widths (none for a linear model; default: the data set's recipe)",
    )
    t.add_argument("--activation", default="relu", help="relu, leaky_relu, sigmoid, tanh or gelu")
    t.add_argument(
        "--loss",
        default=None,
        help="cross_entropy (classification default) or mse (regression default)",
    )
    t.add_argument("--label-smoothing", type=float, default=0.0)
    t.add_argument("--optimizer", default="adam", help=", ".join(OPTIMIZERS))
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--momentum", type=float, default=0.0, help="SGD / RMSprop momentum")
    t.add_argument("--nesterov", action="store_true")
    t.add_argument(
        "--weight-decay",
        type=float,
        default=None,
        help="L2 penalty (decoupled for adamw; default 0, adamw 0.01)",
    )
    t.add_argument(
        "--dropout",
        type=float,
        default=None,
        metavar="P",
        help="Dropout(P) after each hidden layer (default: the data set's recipe)",
    )
    t.add_argument(
        "--dropconnect",
        type=float,
        default=0.0,
        metavar="P",
        help="DropConnect on the hidden layers' weights (DropConnectDense, drop probability P)",
    )
    t.add_argument(
        "--batchnorm",
        action="store_true",
        help="BatchNorm1d between each hidden layer's linear part and its activation",
    )
    t.add_argument("--l1", type=float, default=0.0, help="L1 penalty on every layer's weights")
    t.add_argument("--l2", type=float, default=0.0, help="L2 penalty on every layer's weights")
    t.add_argument("--betas", type=float, nargs=2, default=(0.9, 0.999))
    t.add_argument("--amsgrad", action="store_true")
    t.add_argument("--scheduler", default="none", choices=SCHEDULERS)
    t.add_argument("--step-size", type=int, default=10, help="StepLR period in epochs")
    t.add_argument("--milestones", type=int, nargs="*", default=[10, 20])
    t.add_argument("--gamma", type=float, default=0.1, help="StepLR/MultiStepLR/ExponentialLR")
    t.add_argument("--factor", type=float, default=0.1, help="ReduceLROnPlateau factor")
    t.add_argument("--lr-patience", type=int, default=5, help="ReduceLROnPlateau patience")
    t.add_argument(
        "--early-stopping",
        type=int,
        default=None,
        metavar="PATIENCE",
        help="stop after PATIENCE epochs without val_loss improvement and restore the best weights",
    )
    t.add_argument("--epochs", type=int, default=None, help="default: the data set's recipe")
    t.add_argument("--batch-size", type=int, default=32)
    t.add_argument(
        "--mode",
        choices=MODES,
        default=None,
        help="batch (full batch), stochastic (batch size 1) or minibatch",
    )
    t.add_argument("--validation-split", type=float, default=0.1)
    t.add_argument(
        "--no-standardize",
        action="store_true",
        help="skip per-feature standardization (fit on the training split)",
    )
    t.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    t.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    t.add_argument("--engine", default="auto", choices=("auto", "autograd", "fused"))
    t.add_argument("--no-flush-denormals", action="store_true")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--output", default=None, help="write the history as JSON here")
    t.add_argument("--save", default=None, help="write the trained weights (safetensors)")
    t.add_argument(
        "--checkpoint",
        default=None,
        metavar="PATH",
        help="write a full checkpoint after every epoch; may name fields such as "
        "{epoch:03d} or {val_loss:.3f}",
    )
    t.add_argument(
        "--keep-last", type=int, default=None, metavar="N", help="keep only N newest checkpoints"
    )
    t.add_argument(
        "--resume",
        default=None,
        metavar="PATH",
        help="continue from a checkpoint written by --checkpoint, up to --epochs",
    )
    t.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    t.set_defaults(func=cmd_train)
    return parser


class RecipeHelpFormatter(
    argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter
):
    """Defaults in the help, the recipes' epilog as written; no "(default: None)" for
    the options a recipe sets."""

    def _get_help_string(self, action):
        if action.default is None:
            return action.help
        return super()._get_help_string(action)


def apply_recipe(args) -> None:
    """Fill the options left unset (None) from the data set's recipe."""
    from gpunet.data.recipes import recipe  # noqa: PLC0415

    for key, value in recipe(args.dataset).items():
        if getattr(args, key) is None:
            setattr(args, key, value)


def build_model(
    n_in: int,
    hidden: list[int],
    n_out: int,
    activation: str,
    dtype,
    device,
    *,
    dropout: float = 0.0,
    dropconnect: float = 0.0,
    batchnorm: bool = False,
    l1: float = 0.0,
    l2: float = 0.0,
):
    """``Dense(act)`` hidden layers then a linear output layer. Per hidden layer:
    ``DropConnectDense`` when ``dropconnect`` > 0; with ``batchnorm`` the layer is
    linear, then ``BatchNorm1d``, then the activation; then ``Dropout(dropout)`` when
    ``dropout`` > 0. ``l1``/``l2``: an ``L1L2`` kernel penalty on every layer."""
    from gpunet import nn  # noqa: PLC0415
    from gpunet.activations import get_activation  # noqa: PLC0415
    from gpunet.regularizers import L1L2  # noqa: PLC0415

    penalty = L1L2(l1, l2) if (l1 or l2) else None
    modules = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "gelu": nn.GELU}
    modules["leaky_relu"] = nn.LeakyReLU
    act = get_activation(activation).name
    common = dict(dtype=dtype, device=device, kernel_regularizer=penalty)
    layers, width = [], n_in
    for h in hidden:
        fused_act = "linear" if batchnorm else act
        if dropconnect:
            layers.append(nn.DropConnectDense(width, h, fused_act, p=dropconnect, **common))
        else:
            layers.append(nn.Dense(width, h, fused_act, **common))
        if batchnorm:
            layers.append(nn.BatchNorm1d(h, dtype=dtype, device=device))
            if act != "linear":
                layers.append(modules[act]())
        if dropout:
            layers.append(nn.Dropout(dropout))
        width = h
    layers.append(nn.Dense(width, n_out, "linear", **common))
    return nn.Sequential(*layers)


def check_regularization_args(args) -> None:
    """ValueError naming the flag when --dropout/--dropconnect/--l1/--l2 are out of range
    (before any data is loaded)."""
    import math  # noqa: PLC0415

    for flag in ("dropout", "dropconnect"):
        p = getattr(args, flag)
        if not 0.0 <= p < 1.0:
            raise ValueError(f"--{flag} must be in [0, 1), got {p}")
    for flag in ("l1", "l2"):
        x = getattr(args, flag)
        if not (math.isfinite(x) and x >= 0):
            raise ValueError(f"--{flag} must be a finite number >= 0, got {x}")


def build_optimizer(args, params):
    from gpunet import optim  # noqa: PLC0415

    name = args.optimizer.lower()
    wd = args.weight_decay
    if name == "sgd":
        return optim.SGD(
            params,
            lr=args.lr,
            momentum=args.momentum,
            nesterov=args.nesterov,
            weight_decay=wd or 0.0,
        )
    if name == "adam":
        return optim.Adam(
            params,
            lr=args.lr,
            betas=tuple(args.betas),
            weight_decay=wd or 0.0,
            amsgrad=args.amsgrad,
        )
    if name == "adamw":
        return optim.AdamW(
            params,
            lr=args.lr,
            betas=tuple(args.betas),
            weight_decay=0.01 if wd is None else wd,
            amsgrad=args.amsgrad,
        )
    if name == "rmsprop":
        return optim.RMSprop(params, lr=args.lr, momentum=args.momentum, weight_decay=wd or 0.0)
    if name == "adagrad":
        return optim.Adagrad(params, lr=args.lr, weight_decay=wd or 0.0)
    raise ValueError(f"unknown optimizer {args.optimizer!r}; expected one of {OPTIMIZERS}")


def build_scheduler(args, optimizer):
    from gpunet.optim import lr_scheduler as S  # noqa: PLC0415

    kind = args.scheduler
    if kind == "none":
        return None
    if kind == "step":
        return S.StepLR(optimizer, step_size=args.step_size, gamma=args.gamma)
    if kind == "multistep":
        return S.MultiStepLR(optimizer, milestones=args.milestones, gamma=args.gamma)
    if kind == "exponential":
        return S.ExponentialLR(optimizer, gamma=args.gamma)
    if kind == "cosine":
        return S.CosineAnnealingLR(optimizer, T_max=args.epochs)
    if kind == "linear":
        return S.LinearLR(optimizer, total_iters=max(args.epochs // 4, 1))
    return S.ReduceLROnPlateau(optimizer, factor=args.factor, patience=args.lr_patience)


def cmd_train(args) -> int:
    import gpunet  # noqa: PLC0415
    from gpunet.data import Standardizer, load_dataset  # noqa: PLC0415
    from gpunet.losses import get_loss  # noqa: PLC0415
    from gpunet.train import EarlyStopping, ModelCheckpoint, Trainer  # noqa: PLC0415
    from gpunet.train.callbacks import atomic_write  # noqa: PLC0415
    from gpunet.train.guard import NonFiniteError  # noqa: PLC0415

    apply_recipe(args)
    check_paths(args)  # before any data is loaded or any epoch runs
    check_regularization_args(args)
    gpunet.manual_seed(args.seed)
    dataset = load_dataset(args.dataset, seed=args.seed)
    X_train, X_test = dataset.X_train, dataset.X_test
    if not args.no_standardize:
        scaler = Standardizer().fit(X_train)
        X_train, X_test = scaler.transform(X_train), scaler.transform(X_test)
    classification = dataset.task == "classification"
    loss_name = args.loss or ("cross_entropy" if classification else "mse")
    loss_kwargs = {"label_smoothing": args.label_smoothing} if loss_name == "cross_entropy" else {}
    loss = get_loss(loss_name, **loss_kwargs)
    n_out = dataset.n_classes if classification else dataset.y_train.shape[1]
    model = build_model(
        dataset.n_features,
        args.hidden,
        n_out,
        args.activation,
        np.dtype(args.dtype),
        args.device,
        dropout=args.dropout,
        dropconnect=args.dropconnect,
        batchnorm=args.batchnorm,
        l1=args.l1,
        l2=args.l2,
    )
    optimizer = build_optimizer(args, model.parameters())
    scheduler = build_scheduler(args, optimizer)
    callbacks = []
    if args.checkpoint:
        callbacks.append(ModelCheckpoint(args.checkpoint, keep_last=args.keep_last))
    if args.early_stopping is not None:
        callbacks.append(
            EarlyStopping(
                monitor="val_loss", patience=args.early_stopping, restore_best_weights=True
            )
        )
    trainer = Trainer(
        model,
        loss,
        optimizer,
        callbacks=callbacks,
        scheduler=scheduler,
        engine=args.engine,
        flush_denormals=not args.no_flush_denormals,
        progress=not args.no_progress,
    )
    print(
        f"gpunet: {dataset.name}: {len(X_train)} train / {len(X_test)} test samples, "
        f"{dataset.n_features} features; model {model}",
        file=sys.stderr,
    )
    start = time.perf_counter()
    try:
        history = trainer.fit(
            X_train,
            dataset.y_train,
            epochs=args.epochs,
            batch_size=args.batch_size,
            mode=args.mode,
            seed=args.seed,
            validation_split=args.validation_split,
            resume_from=args.resume,
        )
    except NonFiniteError as error:
        print(f"gpunet: error: {error}", file=sys.stderr)
        return 1
    train_time = time.perf_counter() - start
    test = trainer.evaluate(X_test, dataset.y_test)
    summary = {
        "dataset": dataset.name,
        "epochs_run": len(history),
        "iterations": history.iterations,
        "train_time_s": train_time,
        "engine": trainer.engine_name,
        "device": model.device,
        **{f"test_{k}": v for k, v in test.items()},
    }
    if args.output:
        with atomic_write(args.output) as tmp, open(tmp, "w") as fh:
            json.dump({"summary": summary, "history": history.to_dict()}, fh, indent=2)
    if args.save:
        from gpunet.io import save_weights  # noqa: PLC0415

        save_weights(model, args.save)
    if history.interrupted:
        at = history.interrupted_at
        saved = [p for p in (args.output, args.save) if p]
        print(
            f"gpunet: interrupted in epoch {at['epoch']} after {at['step']} steps"
            + (f"; saved {', '.join(saved)}" if saved else ""),
            file=sys.stderr,
        )
        return 130
    metric = (
        f"test accuracy {test['accuracy']:.4f}"
        if "accuracy" in test
        else f"test loss {test['loss']:.4g}"
    )
    print(
        f"{metric}  (test loss {test['loss']:.4f}, {len(history)} epochs, "
        f"{history.iterations} iterations, training time {train_time:.2f}s)"
    )
    from gpunet.backend import jit_cache  # noqa: PLC0415

    status = jit_cache.background_status()
    if status is not None:
        print(status, file=sys.stderr)
    return 0


def check_paths(args) -> None:
    """Every path option, before any data is loaded: output files writable, the
    checkpoint template formattable with the keys the logs will hold, the resume file a
    readable checkpoint. Raises ValueError/OSError naming the option."""
    from gpunet.train.callbacks import check_path_template, check_writable  # noqa: PLC0415
    from gpunet.train.files import check_readable_file  # noqa: PLC0415

    for path, what in ((args.output, "--output"), (args.save, "--save")):
        if path:
            check_writable(path, what)
    if args.keep_last is not None and args.keep_last < 1:
        raise ValueError(f"--keep-last must be at least 1, got {args.keep_last}")
    if args.checkpoint:
        keys = ["loss"] + (["accuracy"] if args.dataset != "synthetic-regression" else [])
        if args.validation_split > 0:
            keys += [f"val_{k}" for k in keys]
        check_path_template(args.checkpoint, [*keys, "lr", "time"], "--checkpoint")
    if args.resume:
        check_readable_file(args.resume, "--resume checkpoint")


def cmd_info(args) -> int:
    import numba  # noqa: PLC0415

    import gpunet  # noqa: PLC0415
    from gpunet.backend import cuda_unavailable_reason  # noqa: PLC0415

    print(f"gpunet {gpunet.__version__}")
    print(f"python {platform.python_version()} ({platform.machine()}, {platform.system()})")
    print(f"numpy {np.__version__}, numba {numba.__version__}")
    try:
        import cupy  # noqa: PLC0415

        print(f"cupy {cupy.__version__}")
    except ImportError:
        print("cupy not installed")
    print("backends: numpy (cpu) available")
    reason = cuda_unavailable_reason()
    if reason is None:
        import cupy  # noqa: PLC0415

        runtime = cupy.cuda.runtime
        print(
            f"cuda driver {_cuda_version(runtime.driverGetVersion())}, "
            f"runtime {_cuda_version(runtime.runtimeGetVersion())}"
        )
        for i in range(runtime.getDeviceCount()):
            props = runtime.getDeviceProperties(i)
            name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
            print(
                f"  cuda:{i}: {name}, compute capability {props['major']}.{props['minor']}, "
                f"{props['totalGlobalMem'] / 2**30:.1f} GiB"
            )
        print("backends: cupy (cuda) available")
    else:
        print(f"cuda unavailable: {reason}")
    from gpunet.kernels.cuda.runtime import nvrtc_status  # noqa: PLC0415

    print(f"nvrtc: {nvrtc_status()}")
    return 0


def cmd_compile(args) -> int:
    """Compile the autograd kernels and the fused epoch for each dtype now (a no-op for
    what is cached), and time a fresh process loading each fused set."""
    from gpunet.backend import jit_cache  # noqa: PLC0415
    from gpunet.train.warmup import compile_now, time_load_in_fresh_process  # noqa: PLC0415

    for name in ["ops", *(jit_cache.epoch_set(d) for d in args.dtype)]:
        if jit_cache.is_cached(name):
            print(f"{name}: already compiled ({jit_cache.marker_path(name).parent})")
        else:
            compile_now(name)
        if name != "ops" and jit_cache.recorded_load_seconds(name) is None:
            time_load_in_fresh_process(name)
    return 0


def cmd_tune(args) -> int:
    """Measure the fused CPU engine's route table (:mod:`gpunet.train.tune`)."""
    from gpunet.backend import jit_cache  # noqa: PLC0415
    from gpunet.train import tune  # noqa: PLC0415

    jit_cache.set_compile_mode("foreground")  # time the kernels, not NumPy's fallback
    if args.widths is not None and len(args.widths) < 2:
        raise ValueError("--widths needs at least an input and an output width")
    tune.tune(
        n_threads=args.threads,
        widths=tuple(args.widths) if args.widths else tune.DEFAULT_WIDTHS,
        ladder=tune.QUICK_LADDER if args.quick else tune.LADDER,
        repeats=1 if args.quick else 3,
        save=not args.dry_run,
        log=tune.main_log,
    )
    return 0


def _cuda_version(v: int) -> str:
    return f"{v // 1000}.{(v % 1000) // 10}"


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, TypeError, RuntimeError, ImportError, KeyError, OSError) as exc:
        print(f"gpunet: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # outside training (loading data, compiling): nothing to save
        print("gpunet: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
