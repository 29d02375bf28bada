"""The ``gpunet bench`` command line (also ``python -m gpunet.bench`` and, in a source
checkout, ``python -m benchmarks``)."""

from __future__ import annotations

import argparse
import sys

DESCRIPTION = (
    "Benchmark gpunet against PyTorch, scikit-learn and a NumPy MLP on every usable "
    "device: throughput from batch 1 to full batch, time to accuracy for batch, "
    "stochastic and mini-batch training, and the machine's ceilings. Writes JSON, "
    "Markdown and PNG plots."
)


def positive_int(text: str) -> int:
    """An argparse type: an int >= 1."""
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive int")
    return n


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``gpunet bench``."""
    size = p.add_mutually_exclusive_group()
    size.add_argument(
        "--quick", action="store_true", help="tiny sizes, seconds: a smoke test of the whole run"
    )
    size.add_argument(
        "--full",
        action="store_true",
        help="the whole sweep: more samples, batch sizes 1-4096 and full, 5 repeats, "
        "50 epochs (tens of minutes)",
    )
    p.add_argument("--out-dir", default="bench-results", help="where the files go")
    p.add_argument("--name", default=None, help="file stem [bench-<cpu|cuda>-<machine>-<date>]")
    p.add_argument(
        "--devices", nargs="+", default=["cpu", "cuda"], help="cpu, cuda or cuda:N (if usable)"
    )
    p.add_argument("--optimizers", nargs="+", choices=("sgd", "adam"), default=None)
    p.add_argument(
        "--peers",
        nargs="*",
        choices=("torch", "numpy", "sklearn"),
        default=None,
        help="frameworks to compare with (missing ones are skipped with a note)",
    )
    p.add_argument("--repeats", type=int, default=None, help="timed repeats per measurement")
    p.add_argument("--epochs", type=int, default=None, help="time-to-accuracy epoch budget")
    p.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        help="CPU threads of gpunet (gpunet.set_num_threads) and PyTorch "
        "(torch.set_num_threads) [gpunet.get_num_threads()]",
    )
    p.add_argument(
        "--isolate",
        action="store_true",
        help="CPU throughput: each implementation in a process of its own "
        "(gpunet/bench/isolated.py; slower to start, no shared thread pools)",
    )
    p.add_argument("--skip-throughput", action="store_true")
    p.add_argument("--skip-accuracy", action="store_true")
    p.add_argument("--no-plots", action="store_true", help="JSON and Markdown only")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument(
        "--compare",
        nargs=2,
        metavar=("A.json", "B.json"),
        default=None,
        help="print what changed from A to B (ratios B / A) and exit; runs nothing",
    )


def settings_from(args):
    """``runner.Settings`` of the parsed options."""
    from gpunet.bench.runner import Settings  # noqa: PLC0415

    preset = "quick" if args.quick else "full" if args.full else "default"
    overrides = {
        "out_dir": args.out_dir,
        "name": args.name,
        "devices": tuple(args.devices),
        "plots": not args.no_plots,
        "progress": not args.no_progress,
        "isolate": args.isolate,
    }
    for key in ("optimizers", "peers"):
        if getattr(args, key) is not None:
            overrides[key] = tuple(getattr(args, key))
    for key in ("repeats", "epochs", "threads"):
        if getattr(args, key) is not None:
            overrides[key] = getattr(args, key)
    if args.skip_throughput:
        overrides["networks"] = {}
    if args.skip_accuracy:
        overrides["datasets"] = ()
    return Settings.preset_of(preset, **overrides)


def run(args) -> int:
    """Run the benchmark (or the comparison) the options ask for; an exit status."""
    if args.compare:
        from gpunet.bench.compare import compare_files  # noqa: PLC0415

        print(compare_files(*args.compare), end="")
        return 0
    from gpunet.bench import runner  # noqa: PLC0415

    settings = settings_from(args)
    rep = runner.run(settings)
    written = runner.write(rep, settings)
    for device, state in rep["meta"]["devices"].items():
        if state != "ran":
            print(f"gpunet bench: {device}: {state}", file=sys.stderr)
    if written["plots_skipped"]:
        print(f"gpunet bench: plots skipped: {written['plots_skipped']}", file=sys.stderr)
    for path in [written["json"], written["markdown"], *written["plots"]]:
        print(f"wrote {path}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="gpunet bench", description=DESCRIPTION)
    add_arguments(parser)
    return run(parser.parse_args(argv))
