"""Compile every CUDA C source for the GPU without a GPU (tier T1).

``compile_cubin(source, arch)`` runs ``nvcc -cubin -Xptxas -v,-warn-spills,-Werror`` and
returns each kernel's registers, shared memory and spills from ptxas's report; a spill
is a compile error. ``python -m gpunet.kernels.cuda.compile_check`` prints the table.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from gpunet.kernels.cuda import SOURCE_DIR, SOURCES, kernel_names

ARCHS = ("sm_80", "sm_90")
_ENTRY = re.compile(r"Compiling entry function '(\w+)'")
_FUNCTION = re.compile(r"Function properties for (\w+)")
_REGISTERS = re.compile(r"Used (\d+) registers")
_SPILLS = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")


def nvcc_path() -> str | None:
    found = shutil.which("nvcc")
    if found is None and Path("/usr/local/cuda/bin/nvcc").exists():
        found = "/usr/local/cuda/bin/nvcc"
    return found


def compile_cubin(source: str, arch: str) -> dict[str, dict]:
    """``{kernel: {"registers": int, "spill_stores": int, "spill_loads": int}}`` for
    every entry point ptxas reports (called device functions such as libdevice's
    ``__internal_accurate_pow`` report spills too and are folded into their caller's
    entry); RuntimeError with nvcc's output on failure."""
    nvcc = nvcc_path()
    if nvcc is None:
        raise RuntimeError("nvcc not found on PATH (install the CUDA toolkit's nvcc)")
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            nvcc,
            "-cubin",
            f"-arch={arch}",
            "-std=c++17",
            "-Xptxas",
            "-v,-warn-spills,-Werror",
            "-I",
            str(SOURCE_DIR),
            str(SOURCE_DIR / source),
            "-o",
            str(Path(tmp) / "out.cubin"),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
    report = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise RuntimeError(f"nvcc failed for {source} ({arch}):\n{report}")
    kernels: dict[str, dict] = {}
    current = None
    entry = None
    for line in report.splitlines():
        if m := _ENTRY.search(line):
            entry = kernels.setdefault(m.group(1), {"spill_stores": 0, "spill_loads": 0})
        elif m := _FUNCTION.search(line):
            current = entry if m.group(1) not in kernels else kernels[m.group(1)]
        elif current is not None and (m := _SPILLS.search(line)):
            current["spill_stores"] += int(m.group(1))
            current["spill_loads"] += int(m.group(2))
        elif current is not None and (m := _REGISTERS.search(line)):
            current["registers"] = int(m.group(1))
    return kernels


def check_all(archs=ARCHS) -> dict[tuple[str, str], dict[str, dict]]:
    """Compile every source for every arch (in parallel); each result also lists the
    entry points the loader needs and the binary lacks under ``"missing"``."""
    jobs = [(source, arch) for source in SOURCES for arch in archs]
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda job: compile_cubin(*job), jobs))
    out = {}
    for (source, arch), kernels in zip(jobs, results):
        missing = [k for k in kernel_names(source) if k not in kernels]
        out[(source, arch)] = {"kernels": kernels, "missing": missing}
    return out


def main() -> int:
    results = check_all()
    print(f"{'source':<20} {'arch':<6} {'kernel':<28} registers  spills")
    bad = False
    for (source, arch), result in results.items():
        for name, info in sorted(result["kernels"].items()):
            spills = info.get("spill_stores", 0) + info.get("spill_loads", 0)
            print(f"{source:<20} {arch:<6} {name:<28} {info.get('registers', '?'):>9}  {spills}")
        for name in result["missing"]:
            bad = True
            print(f"{source:<20} {arch:<6} {name:<28} MISSING")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
