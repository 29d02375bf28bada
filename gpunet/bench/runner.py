"""One ``gpunet bench`` run: ceilings, throughput and time to accuracy on every usable
device, then the JSON, Markdown and PNG files.

``Settings.preset("quick" | "default" | "full")`` sizes the run: ``quick`` takes seconds
(tests, development), ``default`` about five minutes on a 2-core laptop, ``full`` the
whole sweep. ``run(settings)`` returns the report (a JSON-serialisable dict, see
``report.SCHEMA``); ``write(report, settings)`` writes the files and returns their paths.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gpunet.bench import (
    accuracy,
    ceilings,
    isolated,
    machine,
    peers,
    report,
    throughput,
    workloads,
)
from gpunet.bench.progress import Progress

ENGINES = ("fused", "autograd")
PEER_KEYS = ("torch", "numpy", "sklearn")
HOST_ONLY = ("numpy", "sklearn")  # peers that run on the CPU only


@dataclass
class Settings:
    """Everything a run measures. ``batch_sizes``: ints, None for the full batch;
    ``networks``: name -> number of synthetic samples (``workloads.NETWORKS``)."""

    out_dir: str = "bench-results"
    name: str | None = None  # file stem; default bench-<device kind>-<machine>-<date>
    preset: str = "default"
    devices: tuple = ("cpu", "cuda")  # those that are usable here run
    networks: dict = field(
        default_factory=lambda: {"mnist-mlp": 4096, "mnist1d-mlp": 4000, "wide-4096": 128}
    )
    batch_sizes: tuple = (1, 32, 512, None)
    wide_batch_sizes: tuple = (32, None)  # the wide network's (it is slow at batch 1)
    wide_optimizers: tuple = ("sgd",)  # the wide network's
    optimizers: tuple = ("sgd", "adam")
    engines: tuple = ENGINES
    peers: tuple = PEER_KEYS
    repeats: int = 3
    target_seconds: float = 0.2
    sgemm_repeats: int = 5
    datasets: tuple = ("digits", "mnist1d")
    regimes: tuple = tuple(accuracy.REGIMES)
    epochs: int = 20
    sweep_epochs: int = 10
    max_train: int | None = None  # keep only this many training samples (quick runs)
    targets: dict = field(default_factory=lambda: dict(accuracy.TARGETS))
    threads: int | None = None  # gpunet's and PyTorch's CPU threads; None: get_num_threads()
    isolate: bool = False  # CPU throughput: each implementation in its own process
    plots: bool = True
    progress: bool = True

    @classmethod
    def preset_of(cls, preset: str, **overrides) -> Settings:
        """The ``quick``, ``default`` or ``full`` sizes, with ``overrides`` on top."""
        sizes = {
            "default": {},
            "quick": dict(
                networks={"mnist-mlp": 256, "mnist1d-mlp": 256},
                batch_sizes=(1, 32, None),
                optimizers=("sgd",),
                repeats=2,
                target_seconds=0.01,
                sgemm_repeats=2,
                epochs=3,
                sweep_epochs=1,
                max_train=300,
                targets={"digits": 0.5, "mnist1d": 0.2},
            ),
            "full": dict(
                networks={"mnist-mlp": 16384, "mnist1d-mlp": 4000, "wide-4096": 2048},
                batch_sizes=(1, 8, 32, 128, 512, 4096, None),
                wide_batch_sizes=(1, 32, 512, None),
                wide_optimizers=("sgd", "adam"),
                repeats=5,
                target_seconds=1.0,
                sgemm_repeats=10,
                epochs=50,
                sweep_epochs=20,
            ),
        }
        if preset not in sizes:
            raise ValueError(f"unknown preset {preset!r}; expected quick, default or full")
        return dataclasses.replace(cls(preset=preset, **sizes[preset]), **overrides)


# ----------------------------------------------------------------------- devices
def usable_devices(requested) -> tuple[list, dict]:
    """``(devices that run, {device: why not})``. The CPU always runs; ``"cuda"`` runs
    when gpunet's backend finds a usable GPU (``cuda_unavailable_reason``)."""
    from gpunet.backend import cuda_unavailable_reason  # noqa: PLC0415

    run, skipped = [], {}
    for device in requested:
        if device == "cpu":
            run.append("cpu")
            continue
        reason = cuda_unavailable_reason()
        if reason is None:
            run.append(device if ":" in device else "cuda:0")
        else:
            skipped[device] = f"not available: {reason}"
    return run, skipped


def peer_specs(settings: Settings, device: str, engines, notes: list) -> list:
    """``[(key, kwargs)]`` of ``peers.PEERS``: gpunet with each engine of ``engines``,
    then every usable peer of ``settings.peers`` for ``device``; a peer that cannot run
    is left out with a line in ``notes``."""
    specs = [
        ("gpunet", {"engine": e, "device": device, "threads": settings.threads}) for e in engines
    ]
    for key in settings.peers:
        if key in HOST_ONLY and device != "cpu":
            continue
        reason = peers.PEERS[key].unavailable()
        if reason:
            note = f"{peers.PEERS[key].label}: skipped ({reason})"
            if note not in notes:
                notes.append(note)
            continue
        kwargs = {}
        if key == "torch":
            kwargs = {"device": device, "threads": settings.threads}
        specs.append((key, kwargs))
    return specs


def make_peers(settings: Settings, widths, device: str, engines, notes: list) -> list:
    """The peers of ``peer_specs``, in this process."""
    return [
        peers.PEERS[key](widths, **kwargs)
        for key, kwargs in peer_specs(settings, device, engines, notes)
    ]


# -------------------------------------------------------------------------- parts
def throughput_rows(settings: Settings, devices) -> list:
    """The sweep's rows, in the order they run."""
    rows = []
    for device in devices:
        for network, samples in settings.networks.items():
            wide = network == "wide-4096"
            sizes = settings.wide_batch_sizes if wide else settings.batch_sizes
            optimizers = settings.wide_optimizers if wide else settings.optimizers
            for optimizer in optimizers:
                for b in sizes:
                    widths = workloads.NETWORKS[network]
                    rows.append(throughput.Row(device, network, widths, optimizer, b, samples))
    return rows


def run_throughput(settings, devices, progress, notes) -> list:
    """Every row of ``throughput_rows``; the peers of a (device, network) are built
    once for its rows (each in its own process with ``settings.isolate`` on the CPU:
    ``isolated.IsolatedPeer``, the data in shared memory)."""
    results, current = [], None
    with contextlib.ExitStack() as stack:
        for row in throughput_rows(settings, devices):
            progress.step(row.label)
            if current != (row.device, row.network):
                stack.close()  # the previous network's workers and shared memory
                current = (row.device, row.network)
                X, y = workloads.make_data(row.samples, row.widths[0], row.widths[-1])
                specs = peer_specs(settings, row.device, settings.engines, notes)
                if settings.isolate and row.device == "cpu":
                    shared = isolated.SharedArrays(X=X, y=y)
                    stack.callback(shared.close)
                    X, y = shared.arrays["X"], shared.arrays["y"]
                    made = []
                    for key, kwargs in specs:
                        made.append(isolated.IsolatedPeer(key, row.widths, shared, **kwargs))
                        stack.callback(made[-1].close)
                else:
                    made = [peers.PEERS[key](row.widths, **kwargs) for key, kwargs in specs]
            flops = workloads.flops_per_sample(row.widths)["total"]
            results += throughput.run_row(
                row, made, X, y, settings.repeats, settings.target_seconds, flops
            )
    return results


def run_accuracy(settings, devices, progress, notes) -> dict:
    """Per device, data set and regime: the learning-rate sweep (gpunet), then every
    implementation's curve at the chosen rate; ``{"optimizer", "sweeps", "runs"}``."""
    sweeps, runs = [], []
    for device in devices:
        for dataset in settings.datasets:
            data = workloads.load_standardized(dataset, max_train=settings.max_train)
            widths = workloads.DATASET_WIDTHS[dataset]
            target = settings.targets[dataset]
            for regime in settings.regimes:
                progress.step(f"time to accuracy {device} {dataset} {regime}")
                sweep = accuracy.sweep_lr(
                    lambda w=widths, d=device: peers.GpunetPeer(w, device=d),
                    data,
                    regime,
                    settings.sweep_epochs,
                )
                sweeps.append({"device": device, "dataset": dataset, "regime": regime, **sweep})
                group = []
                for peer in make_peers(settings, widths, device, (None,), notes):
                    if not peer.supports(
                        accuracy.batch_size_of(regime, len(data[1])), len(data[1])
                    ):
                        continue
                    try:
                        run = accuracy.run_curve(
                            peer, data, regime, sweep["lr"], settings.epochs, target
                        )
                    except Exception as exc:  # one failing peer must not lose the rest
                        notes.append(
                            f"time to accuracy {device} {dataset} {regime} {peer.label}: "
                            f"failed ({type(exc).__name__}: {exc})"
                        )
                        continue
                    group.append({"device": device, "dataset": dataset, "regime": regime, **run})
                add_time_ratios(group)
                runs += group
    return {"optimizer": accuracy.OPTIMIZER, "sweeps": sweeps, "runs": runs}


def add_time_ratios(group: list) -> None:
    """On gpunet's run of a (device, data set, regime): ``ratios[key]`` = gpunet's
    seconds to the target / those of every other implementation that reached it too."""
    ref = next((r for r in group if r["framework"] == "gpunet"), None)
    if ref is None or ref["seconds_to_target"] is None:
        return
    ref["ratios"] = {
        r["framework"]: ref["seconds_to_target"] / r["seconds_to_target"]
        for r in group
        if r is not ref and r["seconds_to_target"]
    }


# ---------------------------------------------------------------------------- run
def run(settings: Settings) -> dict:
    """Measure everything ``settings`` asks for; the report dict (``report.SCHEMA``)."""
    started = time.perf_counter()
    if settings.threads is not None:  # this process's gpunet peers (time to accuracy)
        import gpunet  # noqa: PLC0415

        gpunet.set_num_threads(settings.threads)
    devices, skipped = usable_devices(settings.devices)
    meta = {
        "schema": report.SCHEMA,
        "preset": settings.preset,
        "settings": _plain(dataclasses.asdict(settings)),
        "machine": machine.machine_info(),
        "devices": {d: "ran" for d in devices} | skipped,
        "optimizers": {k: peers.OPTIMIZERS[k] for k in settings.optimizers},
        "notes": [],
    }
    meta["gpus"] = {d: machine.gpu_info(d) for d in devices if d.startswith("cuda")}
    n_items = len(throughput_rows(settings, devices))
    n_items += len(devices) * len(settings.datasets) * len(settings.regimes)
    progress = Progress(n_items + len(devices), enabled=settings.progress)
    try:
        ceiling_rows = []
        for device in devices:
            progress.step(f"ceilings {device}")
            ceiling_rows += ceilings.measure(
                device, workloads.NETWORKS["mnist-mlp"], settings.sgemm_repeats
            )
        rates = run_throughput(settings, devices, progress, meta["notes"])
        acc = run_accuracy(settings, devices, progress, meta["notes"])
        for device in devices:  # did the machine's rate change while the run went on?
            end = ceilings.sgemm(device, workloads.NETWORKS["mnist-mlp"], settings.sgemm_repeats)
            ceiling_rows.append({**end, "kind": "sgemm, end of run"})
    finally:
        progress.close()
    meta["machine"]["loadavg_end"] = machine.load_average()
    meta["machine"]["denormals_end"] = machine.denormal_settings()
    meta["wall_seconds"] = time.perf_counter() - started
    return {"meta": meta, "ceilings": ceiling_rows, "throughput": rates, "time_to_accuracy": acc}


def file_stem(settings: Settings, meta: dict) -> str:
    """``bench-<cpu|cuda>-<machine>-<date>``, ``quick-`` in front of quick runs."""
    if settings.name:
        return settings.name
    kind = (
        "cuda"
        if any(d.startswith("cuda") for d, s in meta["devices"].items() if s == "ran")
        else "cpu"
    )
    date = meta["machine"]["date"][:10]
    prefix = "quick-" if settings.preset == "quick" else ""
    return f"{prefix}bench-{kind}-{machine.machine_slug(meta['machine'])}-{date}"


def write(rep: dict, settings: Settings) -> dict:
    """Write ``<stem>.json``, ``<stem>.md`` and the plots (``<stem>-*.png``, when
    matplotlib is installed and ``settings.plots``) into ``settings.out_dir``;
    ``{"json": path, "markdown": path, "plots": [paths], "plots_skipped": reason}``."""
    from gpunet.bench import plots  # noqa: PLC0415

    out = Path(settings.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = file_stem(settings, rep["meta"])
    json_path = out / f"{stem}.json"
    save = lambda: json_path.write_text(json.dumps(rep, indent=1, default=_default) + "\n")  # noqa: E731
    save()  # the measurements are safe before any plot is drawn
    written = {"plots": [], "plots_skipped": None}
    if not settings.plots:
        written["plots_skipped"] = "plots not asked for (--no-plots)"
    else:
        reason = plots.unavailable()
        if reason:
            written["plots_skipped"] = reason
        else:
            written["plots"] = [str(p) for p in plots.write_all(rep, out, stem)]
    rep["meta"]["plots"] = [Path(p).name for p in written["plots"]]
    rep["meta"]["plots_skipped"] = written["plots_skipped"]
    written["json"] = str(json_path)
    written["markdown"] = str(out / f"{stem}.md")
    save()
    Path(written["markdown"]).write_text(report.markdown(rep))
    return written


def _plain(value):
    """Settings as JSON: tuples as lists, None batch sizes as "full"."""
    return json.loads(json.dumps(value, default=_default))


def _default(value):
    if isinstance(value, np.generic):
        return value.item()
    return str(value)
