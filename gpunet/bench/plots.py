"""PNG plots of a ``gpunet bench`` report (matplotlib, the ``bench`` extra):

- ``<stem>-throughput-<network>.png``: samples/s against batch size, log-log, one panel
  per optimizer, one line per implementation and device.
- ``<stem>-accuracy-<dataset>.png``: validation accuracy and loss against epochs and
  against training seconds (2 x 2 panels), colour = regime, line style = implementation.
- ``<stem>-time-to-target.png``: samples/s of each regime and seconds to the target
  accuracy as bars, one group per data set and regime, one bar per implementation and
  device; "not reached" marked.
"""

from __future__ import annotations

from pathlib import Path

REGIME_COLOURS = {"batch": "tab:blue", "stochastic": "tab:red", "minibatch": "tab:green"}
STYLES = ("-", "--", ":", "-.")


def unavailable() -> str | None:
    """None when matplotlib can draw here, else why not."""
    try:
        import matplotlib  # noqa: F401, PLC0415
    except ImportError:
        return 'matplotlib is not installed (pip install "gpunet[bench]")'
    return None


def _pyplot():
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    return plt


def throughput(rep: dict, network: str, path: Path) -> Path:
    """samples/s vs batch size for one network."""
    plt = _pyplot()
    rows = [r for r in rep["throughput"] if r["network"] == network]
    optimizers = list(dict.fromkeys(r["optimizer"] for r in rows))
    fig, axes = plt.subplots(1, len(optimizers), figsize=(6 * len(optimizers), 4.5), squeeze=False)
    for ax, opt in zip(axes[0], optimizers):
        mine = [r for r in rows if r["optimizer"] == opt]
        for (device, key), label in {
            (r["device"], r["framework"]): r["label"] for r in mine
        }.items():
            line = sorted(
                (r["batch_size"], r["samples_per_s"]["median"])
                for r in mine
                if (r["device"], r["framework"]) == (device, key)
            )
            xs, ys = zip(*line)
            ax.loglog(xs, ys, marker="o", label=f"{label} ({device})")
        ax.set_title(f"{network} {'-'.join(map(str, rows[0]['widths']))}, {opt}")
        ax.set_xlabel("batch size (samples)")
        ax.set_ylabel("training samples / s")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def accuracy(rep: dict, dataset: str, path: Path) -> Path:
    """Validation accuracy and loss against epochs and seconds for one data set."""
    plt = _pyplot()
    runs = [r for r in rep["time_to_accuracy"]["runs"] if r["dataset"] == dataset]
    keys = list(dict.fromkeys((r["device"], r["framework"]) for r in runs))
    fig, axes = plt.subplots(2, 2, figsize=(14, 8))
    panels = (
        (axes[0, 0], "epoch", "val_accuracy", "validation accuracy", "epoch"),
        (axes[0, 1], "seconds", "val_accuracy", "validation accuracy", "training seconds"),
        (axes[1, 0], "epoch", "val_loss", "validation loss", "epoch"),
        (axes[1, 1], "seconds", "val_loss", "validation loss", "training seconds"),
    )
    for ax, x, y, ylabel, xlabel in panels:
        for r in runs:
            style = STYLES[keys.index((r["device"], r["framework"])) % len(STYLES)]
            ax.plot(
                r["curve"][x],
                r["curve"][y],
                style,
                color=REGIME_COLOURS.get(r["regime"]),
                label=f"{r['regime']} (lr {r['lr']:g}), {r['label']} ({r['device']})",
            )
        if y == "val_accuracy":
            ax.axhline(runs[0]["target"], color="grey", linewidth=0.8, label="target")
        if x == "seconds":
            ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
    axes[1, 1].set_yscale("log")
    axes[1, 0].set_yscale("log")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="center right")
    fig.suptitle(f"{dataset}: batch vs stochastic vs mini-batch (SGD, momentum 0.9)")
    fig.tight_layout(rect=(0, 0, 0.8, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _grouped_bars(ax, runs, groups, bars, key: str, missing: str) -> None:
    """One bar per implementation (``bars``) in each (data set, regime) group of
    ``groups``, of height ``run[key]``; a run without a value gets ``missing`` written
    at the bottom of its place."""
    width = 0.8 / max(len(bars), 1)
    for j, (device, framework, label) in enumerate(bars):
        legend = f"{label} ({device})"  # on the implementation's first bar only
        for i, group in enumerate(groups):
            run = next(
                (
                    r
                    for r in runs
                    if (r["dataset"], r["regime"]) == group
                    and (r["device"], r["framework"]) == (device, framework)
                ),
                None,
            )
            if run is None:
                continue
            x = i - 0.4 + width * (j + 0.5)
            value = run[key]
            if value is None:
                ax.text(
                    x,
                    0.02,
                    missing,
                    rotation=90,
                    ha="center",
                    va="bottom",
                    fontsize=7,
                    transform=ax.get_xaxis_transform(),
                )
                continue
            ax.bar(x, value, width, color=f"C{j}", label=legend)
            legend = None
    ax.set_xticks(range(len(groups)))
    ax.grid(True, axis="y", alpha=0.3)


def time_to_target(rep: dict, path: Path) -> Path:
    """Per data set and regime: training samples/s (top, log scale) and seconds to the
    target accuracy (bottom) as grouped bars, one bar per implementation and device."""
    plt = _pyplot()
    runs = rep["time_to_accuracy"]["runs"]
    groups = list(dict.fromkeys((r["dataset"], r["regime"]) for r in runs))
    bars = list(dict.fromkeys((r["device"], r["framework"], r["label"]) for r in runs))
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(max(9, 1.8 * len(groups)), 8), sharex=True)
    _grouped_bars(top, runs, groups, bars, "samples_per_s", "—")
    top.set_yscale("log")
    top.set_ylabel("training samples / s")
    top.set_title("Throughput of each regime (higher is better)")
    top.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    _grouped_bars(bottom, runs, groups, bars, "seconds_to_target", "not reached")
    bottom.set_yscale("log")
    bottom.set_ylabel(f"training seconds to target (at most {runs[0]['epochs']} epochs)")
    targets = ", ".join(f"{d} {t:.0%}" for d, t in rep["meta"]["settings"]["targets"].items())
    bottom.set_title(f"Time to target validation accuracy ({targets}); lower is better")
    bottom.set_xticklabels([f"{d}\n{g}" for d, g in groups])
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_all(rep: dict, out_dir: Path, stem: str) -> list:
    """Every plot the report has data for; their paths."""
    out_dir = Path(out_dir)
    paths = []
    for network in dict.fromkeys(r["network"] for r in rep["throughput"]):
        paths.append(throughput(rep, network, out_dir / f"{stem}-throughput-{network}.png"))
    runs = rep["time_to_accuracy"]["runs"]
    for dataset in dict.fromkeys(r["dataset"] for r in runs):
        paths.append(accuracy(rep, dataset, out_dir / f"{stem}-accuracy-{dataset}.png"))
    if runs:
        paths.append(time_to_target(rep, out_dir / f"{stem}-time-to-target.png"))
    return paths
