#!/usr/bin/env python
"""Training throughput on a CUDA GPU: gpunet's GPU engine vs PyTorch eager CUDA (and
``torch.compile(mode="reduce-overhead")`` where it works offline), in the same run.

    python benchmarks/gpu_throughput.py --out benchmarks/results/gpu-<device>-<date>

784-512-512-10 ReLU network, softmax cross-entropy, float32 MNIST-shaped data, SGD with
momentum and Adam, per batch size: samples/s (median of ``--repeats`` epoch slices after
a warm-up slice, timed with CUDA events), gpunet on both routes (own kernels in CUDA
graphs; cuBLAS eagerly), and at 1024 rows and up the cuBLAS time of the step's matmuls
alone. TF32 is off for both. Writes ``<out>.json`` and ``<out>.md``; without a GPU it
writes a report that says so and exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.train_throughput import make_data  # noqa: E402
from gpunet.bench.timing import seconds_of  # noqa: E402

WIDTHS = (784, 512, 512, 10)
BATCHES = (1, 8, 32, 128, 256, 1024, 4096)


def gpunet_runner(X, y, batch, opt_name, route):
    import gpunet  # noqa: PLC0415
    from gpunet import nn, optim  # noqa: PLC0415
    from gpunet.losses import CrossEntropyLoss  # noqa: PLC0415
    from gpunet.train import Trainer  # noqa: PLC0415
    from gpunet.train.engines.fused_gpu import FusedGpuEngine  # noqa: PLC0415

    gpunet.manual_seed(0)
    layers = []
    for a, b in zip(WIDTHS, WIDTHS[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    model = nn.Sequential(*layers[:-1]).to("cuda")
    opt = (
        optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        if opt_name == "sgd"
        else optim.Adam(model.parameters(), lr=1e-3)
    )

    def factory(m, lo, o, track):
        return FusedGpuEngine(m, lo, o, track, route=route)

    trainer = Trainer(model, CrossEntropyLoss(), opt, engine=factory, progress=False, verbose=0)
    return lambda: trainer.fit(X, y, epochs=1, batch_size=batch, shuffle=True, seed=1)


def torch_runner(X, y, batch, opt_name, compiled):
    import torch  # noqa: PLC0415

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.manual_seed(0)
    layers = []
    for a, b in zip(WIDTHS, WIDTHS[1:]):
        layers += [torch.nn.Linear(a, b), torch.nn.ReLU()]
    model = torch.nn.Sequential(*layers[:-1]).cuda()
    opt = (
        torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        if opt_name == "sgd"
        else torch.optim.Adam(model.parameters(), lr=1e-3)
    )
    Xd, yd = torch.as_tensor(X, device="cuda"), torch.as_tensor(y, device="cuda")
    loss_fn = torch.nn.CrossEntropyLoss()

    def step(xb, yb):
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(xb), yb)
        loss.backward()
        opt.step()
        return loss

    if compiled:
        step = torch.compile(step, mode="reduce-overhead")

    def epoch():
        perm = torch.randperm(len(Xd), device="cuda")
        for s in range(0, len(Xd), batch):
            idx = perm[s : s + batch]
            step(Xd[idx], yd[idx])

    return epoch


def matmul_seconds(cupy, batch, repeats=20) -> float:
    """cuBLAS time of one step's products alone (forward, dW and dx), event-timed."""
    rng = np.random.default_rng(0)
    ops = []
    for a, b in zip(WIDTHS, WIDTHS[1:]):
        x = cupy.asarray(rng.random((batch, a), dtype=np.float32))
        W = cupy.asarray(rng.random((b, a), dtype=np.float32))
        dz = cupy.asarray(rng.random((batch, b), dtype=np.float32))
        ops.append((x, W, dz))

    def products():
        for x, W, dz in ops:
            x @ W.T
            dz.T @ x
            dz @ W

    products()
    return statistics.median(seconds_of(products, "cuda") for _ in range(repeats))


def measure(cupy, fn, n, repeats) -> dict:
    fn()  # warm-up: compiles, captures graphs, autotunes
    cupy.cuda.Device().synchronize()
    times = [seconds_of(fn, "cuda") for _ in range(repeats)]
    med = statistics.median(times)
    return {"samples_per_s": n / med, "min_s": min(times), "max_s": max(times), "median_s": med}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="benchmarks/results/gpu-throughput")
    p.add_argument("--samples", type=int, default=8192)
    p.add_argument("--stochastic-samples", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--batches", type=int, nargs="+", default=list(BATCHES))
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    args = p.parse_args(argv)
    os.environ.setdefault("NVIDIA_TF32_OVERRIDE", "0")
    from gpunet.backend import cuda_unavailable_reason  # noqa: PLC0415

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    reason = cuda_unavailable_reason()
    report = {"widths": WIDTHS, "started": time.strftime("%Y-%m-%d %H:%M:%S"), "rows": []}
    if reason is not None:
        report["skipped"] = reason
        out.with_suffix(".json").write_text(json.dumps(report, indent=1))
        out.with_suffix(".md").write_text(f"# GPU throughput\n\nNot run: {reason}\n")
        print(f"gpu_throughput: no GPU ({reason}); wrote {out}.md")
        return 0
    import cupy  # noqa: PLC0415

    props = cupy.cuda.runtime.getDeviceProperties(0)
    report["device"] = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
    try:
        import torch  # noqa: PLC0415

        report["torch"] = torch.__version__
    except ImportError:
        torch = None
    lines = [
        f"# GPU training throughput: {report['device']}",
        "",
        "784-512-512-10 ReLU, float32, TF32 off; samples/s, median of "
        f"{args.repeats} event-timed epochs after a warm-up.",
        "",
        "| optimizer | batch | gpunet kernels+graphs | gpunet cuBLAS | PyTorch eager "
        "| torch.compile | best gpunet / eager | cuBLAS products alone (ms) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for opt_name in ("sgd", "adam"):
        for batch in args.batches:
            n = args.stochastic_samples if batch == 1 else max(args.samples, batch * 4)
            X, y = make_data(n, WIDTHS[0], WIDTHS[-1], "mnist-like")
            row = {"optimizer": opt_name, "batch": batch, "samples": n}
            for route in ("kernels", "blas"):
                try:
                    row[f"gpunet_{route}"] = measure(
                        cupy, gpunet_runner(X, y, batch, opt_name, route), n, args.repeats
                    )
                except Exception as exc:  # report, keep going
                    row[f"gpunet_{route}"] = {"error": f"{type(exc).__name__}: {exc}"}
            if torch is not None:
                row["torch_eager"] = measure(
                    cupy, torch_runner(X, y, batch, opt_name, False), n, args.repeats
                )
                if not args.no_compile:
                    try:
                        row["torch_compile"] = measure(
                            cupy, torch_runner(X, y, batch, opt_name, True), n, args.repeats
                        )
                    except Exception as exc:
                        row["torch_compile"] = {"error": f"{type(exc).__name__}: {exc}"[:200]}
            if batch >= 1024:
                row["cublas_products_ms"] = matmul_seconds(cupy, batch) * 1e3
            report["rows"].append(row)

            def rate(key, row=row):
                return row.get(key, {}).get("samples_per_s")

            best = max(filter(None, [rate("gpunet_kernels"), rate("gpunet_blas")]), default=None)
            eager = rate("torch_eager")

            def cell(v):
                return "-" if v is None else f"{v:,.0f}"

            ratio = f"{best / eager:.2f}x" if best and eager else "-"
            ms = row.get("cublas_products_ms")
            lines.append(
                f"| {opt_name} | {batch} | {cell(rate('gpunet_kernels'))} | "
                f"{cell(rate('gpunet_blas'))} | {cell(eager)} | "
                f"{cell(rate('torch_compile'))} | {ratio} | {'-' if ms is None else f'{ms:.3f}'} |"
            )
            print(lines[-1], flush=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=1))
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
