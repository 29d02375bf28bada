"""Tier T1: every CUDA C source compiles for sm_80 and sm_90 with no register spill, and
holds every entry point the loader asks for."""

from __future__ import annotations

import pytest

from gpunet.kernels.cuda import SOURCE_DIR, SOURCES, kernel_names
from gpunet.kernels.cuda.compile_check import ARCHS, compile_cubin

pytestmark = pytest.mark.nvcc


@pytest.fixture(scope="module")
def cubins(nvcc):
    from gpunet.kernels.cuda.compile_check import check_all  # noqa: PLC0415

    return check_all()


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("source", sorted(SOURCES))
def test_source_compiles_without_spills(cubins, source, arch):
    result = cubins[(source, arch)]
    assert result["missing"] == [], f"{source} lacks entry points {result['missing']}"
    for name, info in result["kernels"].items():
        assert info.get("spill_stores", 0) == 0 and info.get("spill_loads", 0) == 0, name
        assert 0 < info["registers"] <= 255, (name, info)


def test_every_source_file_is_registered():
    on_disk = {p.name for p in SOURCE_DIR.glob("*.cu")}
    assert on_disk == set(SOURCES)


def test_kernel_names_have_both_dtypes():
    assert kernel_names("gemm.cu") == ["gemm_s_f32", "gemm_s_f64", "gemm_l_f32", "gemm_l_f64"]


def test_a_missing_entry_point_is_reported(nvcc, tmp_path, monkeypatch):
    """The check can fail: a registry naming a kernel the source lacks is caught."""
    import gpunet.kernels.cuda.compile_check as cc  # noqa: PLC0415

    monkeypatch.setitem(cc.SOURCES, "dense_epilogue.cu", ("bias_act_forward", "no_such"))
    result = cc.check_all(archs=("sm_90",))
    assert result[("dense_epilogue.cu", "sm_90")]["missing"] == ["no_such_f32", "no_such_f64"]


def test_a_spill_fails_the_compile(nvcc, tmp_path, monkeypatch):
    """-warn-spills,-Werror turns a spill into an error (a kernel forced to spill)."""
    import gpunet.kernels.cuda.compile_check as cc  # noqa: PLC0415

    src = tmp_path / "spill.cu"
    src.write_text(
        '#include "common.cuh"\n'
        'extern "C" __global__ void __launch_bounds__(1024, 2) spill_f32(float* x, int n) {\n'
        "  float v[96];\n"
        "  for (int i = 0; i < 96; ++i) v[i] = x[(threadIdx.x * 7 + i * n) % 4096];\n"
        "  float s = 0; for (int r = 0; r < 8; ++r) for (int i = 0; i < 96; ++i)"
        " s += v[(i * r + n) % 96] * v[i];\n"
        "  x[threadIdx.x] = s;\n}\n"
    )
    monkeypatch.setattr(cc, "SOURCE_DIR", tmp_path)
    (tmp_path / "common.cuh").write_text((SOURCE_DIR / "common.cuh").read_text())
    with pytest.raises(RuntimeError, match="spill"):
        compile_cubin("spill.cu", "sm_90")


CUDA_VERSIONS = ("12", "13")  # the cuda12 and cuda13 extras' CuPy compile with these


@pytest.fixture(scope="module")
def nvrtc():
    from gpunet.kernels.cuda.compile_check import nvrtc_libraries  # noqa: PLC0415

    found = nvrtc_libraries()
    missing = [v for v in CUDA_VERSIONS if v not in found]
    if missing:
        from tests.conftest import _missing  # noqa: PLC0415

        _missing(f"no libnvrtc for CUDA {missing} (the test extra brings the nvrtc wheels)")


@pytest.mark.parametrize("cuda", CUDA_VERSIONS)
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("source", sorted(SOURCES))
def test_source_compiles_with_nvrtc_as_cupy_loads_it(nvrtc, source, arch, cuda):
    """The exact string CuPy's RawModule gets (common.cuh pasted in, no host headers)
    compiles with the NVRTC of CUDA 12 and 13 and holds every entry point."""
    from gpunet.kernels.cuda.compile_check import nvrtc_compile  # noqa: PLC0415

    cubin = nvrtc_compile(source, arch, cuda)
    for name in kernel_names(source):
        assert name.encode() + b"\0" in cubin, name


def test_nvrtc_rejects_a_host_header(nvrtc, monkeypatch):
    """The NVRTC check can fail: a source that includes a host header does not compile."""
    import gpunet.kernels.cuda.runtime as runtime  # noqa: PLC0415
    from gpunet.kernels.cuda.compile_check import nvrtc_compile  # noqa: PLC0415

    monkeypatch.setattr(
        runtime, "device_source", lambda source: "#include <vector>\n" + runtime.source_text(source)
    )
    with pytest.raises(RuntimeError, match="NVRTC failed"):
        nvrtc_compile("gather.cu", "sm_90")
