"""Tier T3, on a CUDA GPU (``pytest -m gpu``, run by ``benchmarks/gpu_check.sh``): the
CUDA C kernels at real sizes against float64 oracles, the GPU engine against the CPU
engines, CUDA-graph replay against eager launches, and the out-of-memory message.
Skipped where CuPy finds no GPU."""

from __future__ import annotations

import numpy as np
import pytest

import gpunet
from gpunet import nn, optim
from gpunet.backend import cuda_unavailable_reason
from gpunet.losses import CrossEntropyLoss
from gpunet.train import Trainer
from tests import oracles

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def cupy():
    reason = cuda_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    import cupy  # noqa: PLC0415

    return cupy


@pytest.fixture(scope="module")
def rt(cupy):
    from gpunet.kernels.cuda.runtime import CupyRuntime  # noqa: PLC0415

    return CupyRuntime(0)


@pytest.mark.parametrize("tile", ["s", "l"])
@pytest.mark.parametrize("shape", [(1, 784, 512), (256, 784, 512), (1000, 512, 10)])
def test_gemm_forward_at_real_sizes(cupy, rt, shape, tile):
    from gpunet.kernels.cuda import dense  # noqa: PLC0415

    m, k, n = shape
    rng = np.random.default_rng(0)
    x = rng.standard_normal((m, k)).astype(np.float32)
    W = (rng.standard_normal((n, k)) / np.sqrt(k)).astype(np.float32)
    b = rng.standard_normal(n).astype(np.float32)
    y = cupy.empty((m, n), np.float32)
    dense.gemm(
        rt, cupy.asarray(x), cupy.asarray(W).T, y, epilogue=dense.EPI_BIAS_ACT, act="relu",
        bias=cupy.asarray(b), tile=tile,
    )  # fmt: skip
    want, _ = oracles.dense_forward(x, W, b, "relu")
    np.testing.assert_allclose(cupy.asnumpy(y), want, rtol=1e-4, atol=1e-4)


def _fit(device, engine, batch_size, opt_name, epochs=2, masks=False, **engine_kw):
    from gpunet.train.engines.fused_gpu import FusedGpuEngine  # noqa: PLC0415

    gpunet.manual_seed(0)
    if masks:  # DropConnect and Dropout
        model = nn.Sequential(nn.DropConnectDense(64, 128, "relu", p=0.3), nn.Dropout(0.2),
                              nn.Linear(128, 128), nn.GELU(), nn.Dropout(0.1),
                              nn.Linear(128, 10)).to(device)  # fmt: skip
    else:
        model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.GELU(),
                              nn.Linear(128, 10)).to(device)  # fmt: skip
    opt = (
        optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        if opt_name == "sgd"
        else optim.Adam(model.parameters(), lr=1e-3)
    )
    if engine_kw:

        def engine(m, lo, o, track):
            return FusedGpuEngine(m, lo, o, track, **engine_kw)

    rng = np.random.default_rng(1)
    X = rng.standard_normal((1000, 64)).astype(np.float32)
    y = rng.integers(0, 10, 1000)
    trainer = Trainer(model, CrossEntropyLoss(), opt, engine=engine, progress=False, verbose=0)
    hist = trainer.fit(X, y, epochs=epochs, batch_size=batch_size, seed=7)
    return [np.asarray(p.to("cpu").data) for p in model.parameters()], hist


@pytest.mark.parametrize("opt_name", ["sgd", "adam"])
@pytest.mark.parametrize("batch_size", [1, 96, 1000, 2000])
def test_gpu_engine_matches_cpu_engine(cupy, opt_name, batch_size, monkeypatch):
    monkeypatch.setenv("NVIDIA_TF32_OVERRIDE", "0")
    epochs = 1 if batch_size == 1 else 2
    cpu, _ = _fit("cpu", "fused", min(batch_size, 1000), opt_name, epochs)
    gpu, _ = _fit("cuda", "fused", min(batch_size, 1000), opt_name, epochs)
    for a, b in zip(gpu, cpu):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("batch_size", [1, 96])
def test_graph_replay_equals_eager_bit_for_bit(cupy, batch_size):
    graph, _ = _fit("cuda", None, batch_size, "adam", 1, route="kernels", graphs=True)
    eager, _ = _fit("cuda", None, batch_size, "adam", 1, route="kernels", graphs=False)
    for a, b in zip(graph, eager):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("batch_size", [1, 96])
def test_gpu_engine_masks_match_autograd(cupy, batch_size, monkeypatch):
    """Dropout and DropConnect in captured steps: each graph replay draws the masks the
    autograd layers draw at that step (keys and counters on the device)."""
    monkeypatch.setenv("NVIDIA_TF32_OVERRIDE", "0")
    cpu, _ = _fit("cpu", "autograd", batch_size, "adam", 1, masks=True)
    gpu, _ = _fit("cuda", None, batch_size, "adam", 1, masks=True, route="kernels")
    for a, b in zip(gpu, cpu):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_blas_route_matches_kernels_route(cupy):
    blas, _ = _fit("cuda", None, 96, "sgd", 2, route="blas")
    kern, _ = _fit("cuda", None, 96, "sgd", 2, route="kernels")
    for a, b in zip(blas, kern):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_out_of_memory_names_sizes_and_suggests_smaller_batch(cupy):
    from gpunet.kernels.cuda import fused_mlp  # noqa: PLC0415
    from gpunet.train.engines.fused_gpu import FusedGpuEngine  # noqa: PLC0415

    model = nn.Sequential(nn.Linear(4, 2**16), nn.ReLU(), nn.Linear(2**16, 2)).to("cuda")
    engine = FusedGpuEngine(model, CrossEntropyLoss(), optim.SGD(model.parameters(), lr=0.1), False)
    free, _ = cupy.cuda.runtime.memGetInfo()
    rows = int(free // (2**16 * 4 * 2)) + 1  # y and dz of the wide layer exceed free memory
    X = cupy.zeros((rows, 4), np.float32)
    y = cupy.zeros(rows, np.int64)
    with pytest.raises(MemoryError, match="smaller batch_size"):
        engine.prepare(X, y, rows)
    assert fused_mlp  # the workspace module was imported
