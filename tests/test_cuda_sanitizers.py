"""Tier T2's sanitizer builds can fail: AddressSanitizer reports a kernel writing past
its buffer and ThreadSanitizer a missing ``__syncthreads`` (the sanitized runs of the
kernel tests in ``.ci/run`` are only worth something if these are caught)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.cudahost

FAULTS = Path(__file__).with_name("cuda_faults") / "faults.cu"
SCRIPT = """
import sys
import numpy as np
from gpunet.kernels.cuda.runtime import HostRuntime
rt = HostRuntime(sanitizer=sys.argv[1])
source = sys.argv[2]
if sys.argv[3] == "write_past":
    x = np.zeros(int(sys.argv[4]), np.float32)
    rt.launch(source, "write_past_f32", (1,), (int(sys.argv[5]),), (x, np.int32(x.size)))
else:
    out = np.zeros(64, np.float32)
    rt.launch(source, "neighbour_f32", (1,), (64,), (out, np.int32(int(sys.argv[4]))), 256)
    assert out[0] == 1.0 or sys.argv[4] == "0"
print("finished")
"""


def _runtime_library(name: str) -> str:
    cxx = os.environ.get("CXX") or "g++"
    path = subprocess.run(
        [cxx, f"-print-file-name={name}"], capture_output=True, text=True
    ).stdout.strip()
    if not os.path.isabs(path):
        pytest.fail(f"{cxx} has no {name}: the sanitizer builds of tier T2 need it")
    return path


def _run(sanitizer, *args):
    env = dict(os.environ)
    env.pop("GPUNET_CUDAHOST_SANITIZER", None)
    if sanitizer == "address":
        env.update(
            LD_PRELOAD=_runtime_library("libasan.so"),
            ASAN_OPTIONS="detect_leaks=0",
            PYTHONMALLOC="malloc",
        )
    else:
        env.update(LD_PRELOAD=_runtime_library("libtsan.so"), TSAN_OPTIONS="exitcode=66")
    return subprocess.run(
        [sys.executable, "-c", SCRIPT, sanitizer, str(FAULTS), *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def test_address_sanitizer_catches_a_write_past_the_buffer(host_runtime):
    ok = _run("address", "write_past", 64, 64)  # threads 0..63 stay inside
    assert ok.returncode == 0 and "finished" in ok.stdout, ok.stderr[-2000:]
    bad = _run("address", "write_past", 64, 65)  # thread 64 writes x[64]
    assert bad.returncode != 0
    assert "heap-buffer-overflow" in bad.stderr, bad.stderr[-2000:]


def test_thread_sanitizer_catches_a_missing_barrier(host_runtime):
    ok = _run("thread", "neighbour", 1)
    assert ok.returncode == 0 and "finished" in ok.stdout, ok.stderr[-2000:]
    assert "data race" not in ok.stderr
    bad = _run("thread", "neighbour", 0)
    assert "data race" in bad.stderr, bad.stderr[-2000:]
