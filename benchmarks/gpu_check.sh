#!/usr/bin/env bash
# The GPU proof, one prepared script (about 6 minutes on an H100/H200, no network):
#   1. pytest -m gpu: kernels at real sizes, GPU engine vs CPU engine, graph replay vs
#      eager, the out-of-memory message (tests/test_gpu.py, tests/test_optim.py)
#   2. the GPU throughput benchmark against PyTorch (benchmarks/gpu_throughput.py)
#   3. the CPU benchmark, gpunet and PyTorch on as many threads as this machine has cores
#   4. gpunet bench --quick on the GPU alone (its CUDA path: events, device copies, the
#      GPU peers, the copy-bandwidth ceiling), JSON/Markdown/PNG under $OUT
# Results go under $OUT when set, else benchmarks/results/. Without a GPU, step 1 skips,
# step 2 writes a report saying so, and step 3 still runs (GPU-free parts).
#
#   bash benchmarks/gpu_check.sh            # on the GPU machine, from the repository root
#   QUICK=1 bash benchmarks/gpu_check.sh    # a smoke run (smaller sweeps)
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
out="${OUT:-benchmarks/results}"
mkdir -p "${out}"
stamp="$(date +%Y-%m-%d)"
device="$(python -c 'import cupy; p = cupy.cuda.runtime.getDeviceProperties(0); print(p["name"].decode().replace(" ", "-").lower())' 2>/dev/null || echo no-gpu)"
cores="$(python -c 'import os; print(len(os.sched_getaffinity(0)))')"
status=0

# gpunet itself: installed, else installed from this tree without touching the network
python -c 'import gpunet' 2>/dev/null ||
    pip install -q --no-deps --no-build-isolation --no-index -e . ||
    { echo "gpu_check: cannot install gpunet from this tree"; exit 1; }

echo "==> gpu_check: device ${device}, ${cores} CPU cores, results in ${out}"
python -m gpunet.cli info | tee "${out}/gpu-${device}-${stamp}-info.txt"

echo "==> 1. pytest -m gpu"
python -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py tests/test_optim.py \
    2>&1 | tee "${out}/gpu-${device}-${stamp}-pytest.txt"
[[ ${PIPESTATUS[0]} -eq 0 ]] || status=1

echo "==> 2. GPU throughput vs PyTorch"
if [[ -n "${QUICK:-}" ]]; then gpu_args=(--samples 2048 --stochastic-samples 256 --repeats 3 --batches 1 32 1024); else gpu_args=(); fi
timeout 240 python benchmarks/gpu_throughput.py --out "${out}/gpu-${device}-${stamp}-throughput" "${gpu_args[@]}" || status=1

echo "==> 3. CPU engine vs PyTorch, both on ${cores} threads"
if [[ -n "${QUICK:-}" ]]; then cpu_args=(--quick); else cpu_args=(--batch-sizes 1 32 512 4096); fi
timeout 150 python benchmarks/train_throughput.py --threads "${cores}" \
    --out "${out}/cpu-${cores}core-${device}-${stamp}" "${cpu_args[@]}" || status=1

echo "==> 4. gpunet bench --quick on the GPU"
timeout 150 python -m gpunet.cli bench --quick --devices cuda --no-progress \
    --out-dir "${out}" --name "bench-quick-cuda-${device}-${stamp}" || status=1
exit "${status}"
