"""End to end: does ``engine="auto"`` finish as early as the faster of its two engines?

Every run is a fresh process timed from launch to exit, so imports, kernel loads and
compiles count, as a user sees them. Cases: the README's ``gpunet train`` on digits and on
MNIST-1D (their recipes), and the 784-512-512-10 benchmark network (SGD with momentum,
float32, random MNIST-shaped data) at batch 1, 32 and 512. Engines take turns within each
repeat; the report gives medians and ``auto ÷ best``.

``--cold`` first times the README's command with an empty Numba cache (a temporary
``NUMBA_CACHE_DIR``; the default background compile mode), waits for the background
compile it starts, and times the command again with that cache warm. Auto's recorded
choices are deleted first: its first run of each case measures, later runs reuse the
choice (both are reported).

    .venv/bin/python benchmarks/auto_engine.py --repeats 3 --cold --out benchmarks/results/x.md

Run it on a quiet machine (see benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ENGINES = ("autograd", "fused", "auto")
BENCH_NET = {1: (4000, 3), 32: (20000, 3), 512: (20000, 6)}  # batch -> (samples, epochs)


def cli(*args) -> list[str]:
    return [sys.executable, "-m", "gpunet.cli", "train", "--no-progress", *args]


def cases() -> dict[str, callable]:
    """name -> engine -> argv."""
    table = {
        "digits (CLI recipe)": lambda e: cli("--dataset", "digits", "--engine", e),
        "mnist1d (CLI recipe)": lambda e: cli("--dataset", "mnist1d", "--engine", e),
    }
    for batch, (n, epochs) in BENCH_NET.items():
        table[f"784-512-512-10, batch {batch}, {n} samples x {epochs} epochs"] = (
            lambda e, b=batch, n=n, ep=epochs: [
                sys.executable,
                __file__,
                "--worker",
                e,
                str(b),
                str(n),
                str(ep),
            ]
        )
    return table


def worker(engine: str, batch: int, n: int, epochs: int) -> None:
    """One fit of the benchmark network (the process being timed)."""
    import numpy as np  # noqa: PLC0415

    from gpunet import manual_seed, nn, optim  # noqa: PLC0415
    from gpunet.train import Trainer  # noqa: PLC0415

    manual_seed(0)
    rng = np.random.default_rng(0)
    X = rng.random((n, 784), dtype=np.float32)
    y = rng.integers(0, 10, n)
    model = nn.Sequential(nn.Dense(784, 512, "relu"), nn.Dense(512, 512, "relu"), nn.Dense(512, 10))
    opt = optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    trainer = Trainer(model, "cross_entropy", opt, engine=engine, verbose=0, progress=False)
    trainer.fit(X, y, epochs=epochs, batch_size=batch, seed=0)
    decision = getattr(trainer.last_engine, "decision", None) or trainer.engine_name
    print(f"engine={trainer.engine_name} decision={decision}")


def timed(argv, env=None) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed:\n{proc.stderr[-2000:]}")
    return seconds, proc.stdout + proc.stderr


def chosen(output: str) -> str:
    for line in output.splitlines():
        if line.startswith("engine="):
            return line.split()[0].removeprefix("engine=")
        if "engine='auto' ->" in line:
            return line.split("->", 1)[1].split(":")[0].strip()
    return "?"


def cold_start(out_lines: list[str]) -> None:
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache, GPUNET_COMPILE="background")
        argv = cli("--dataset", "digits")
        seconds, output = timed(argv, env)
        started = time.perf_counter()
        while not list(Path(cache).glob("*/gpunet-ready-ops-*.json")):
            if time.perf_counter() - started > 1800:
                raise RuntimeError("the background compile did not finish in 30 minutes")
            time.sleep(2)
        while (
            subprocess.run(["pgrep", "-f", "gpunet.train.warmup"], capture_output=True).returncode
            == 0
        ):
            time.sleep(2)
        compiled = time.perf_counter() - started
        warm = [timed(argv, env)[0] for _ in range(3)]
    out_lines += [
        "## The README's command, `gpunet train --dataset digits`",
        "",
        "| Numba cache | wall s |",
        "|---|---|",
        f"| empty (first run on the machine) | {seconds:.1f} |",
        f"| warm (median of 3, after the background compile) | {statistics.median(warm):.1f} |",
        "",
        f"The background compile finished {compiled:.0f} s after the first run ended.",
        "",
    ]
    print("\n".join(out_lines[-9:]), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cold", action="store_true")
    parser.add_argument("--only", default=None, help="run the cases whose name has this")
    parser.add_argument("--out", default=None)
    parser.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        engine, batch, n, epochs = args.worker
        worker(engine, int(batch), int(n), int(epochs))
        return 0
    subprocess.run([sys.executable, "-m", "gpunet.cli", "compile"], check=True)
    from gpunet.backend import jit_cache  # noqa: PLC0415

    # auto measures on its first run of each case and reuses the choice after that
    (jit_cache.cache_dir() / "gpunet-auto-choices.json").unlink(missing_ok=True)
    lines = [
        '# `engine="auto"` end to end',
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}; load average at start "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}. Command: "
        f"`python benchmarks/auto_engine.py {' '.join(sys.argv[1:])}`.",
        "",
    ]
    if args.cold:
        cold_start(lines)
    lines += [
        f"## Wall seconds per run (fresh process, warm cache), median of {args.repeats}",
        "",
        "| case | autograd | fused | auto | auto ÷ best | auto's first run (measuring) "
        "÷ best | auto chose |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, argv_of in cases().items():
        if args.only and args.only not in name:
            continue
        times = {e: [] for e in ENGINES}
        picks = []
        for _ in range(args.repeats):
            for engine in ENGINES:
                seconds, output = timed(argv_of(engine))
                times[engine].append(seconds)
                if engine == "auto":
                    picks.append(chosen(output))
        med = {e: statistics.median(t) for e, t in times.items()}
        best = min(med["autograd"], med["fused"])
        row = (
            f"| {name} | {med['autograd']:.2f} | {med['fused']:.2f} | {med['auto']:.2f} | "
            f"{med['auto'] / best:.2f} | {times['auto'][0] / best:.2f} | "
            f"{', '.join(sorted(set(picks)))} |"
        )
        lines.append(row)
        print(row, flush=True)
    lines.append("")
    lines.append(f"Load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}.")
    text = "\n".join(lines) + "\n"
    if args.out:
        Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
