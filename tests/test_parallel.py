"""``gpunet.set_num_threads`` / ``get_num_threads`` (``gpunet/parallel.py``): the count, its
sources (the setting, ``GPUNET_NUM_THREADS``, the affinity mask), the BLAS limit, and bad
values refused before anything changes."""

import argparse
import dataclasses
import os
import sys
from pathlib import Path

import pytest
from threadpoolctl import threadpool_info

import gpunet
from gpunet import parallel
from gpunet.bench import cli, peers, runner

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import train_throughput  # noqa: E402


def blas_threads() -> dict:
    """``{library path: threads}`` of the BLAS libraries loaded, read afresh by
    threadpoolctl (SciPy's OpenBLAS, the one Numba's ``np.dot`` calls, among them)."""
    parallel.blas_controller()  # loads SciPy's BLAS, as set_num_threads does
    return {i["filepath"]: i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}


def scipy_blas_threads() -> int:
    (n,) = [n for path, n in blas_threads().items() if "scipy" in os.path.dirname(path)]
    return n


@pytest.fixture(autouse=True)
def restore_threads(monkeypatch):
    """No GPUNET_NUM_THREADS and no count set in a test unless it sets them; afterwards
    the count and every BLAS library's threads are what they were."""
    monkeypatch.delenv(parallel.ENV_VAR, raising=False)
    saved_count, saved_blas = parallel._threads, blas_threads()
    monkeypatch.setattr(parallel, "_threads", None)
    yield
    parallel._threads = saved_count
    for lib in parallel.blas_controller().lib_controllers:
        if lib.filepath in saved_blas:
            lib.set_num_threads(saved_blas[lib.filepath])
    assert blas_threads() == saved_blas


def test_exported():
    assert gpunet.set_num_threads is parallel.set_num_threads
    assert gpunet.get_num_threads is parallel.get_num_threads
    assert {"set_num_threads", "get_num_threads"} <= set(gpunet.__all__)


def test_default_is_the_affinity_mask_and_leaves_blas_alone():
    before = blas_threads()
    expected = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert parallel.usable_cpus() == expected
    assert gpunet.get_num_threads() == expected
    assert blas_threads() == before


def test_usable_cpus_without_sched_getaffinity(monkeypatch):
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 7)
    assert parallel.usable_cpus() == 7
    monkeypatch.setattr(os, "cpu_count", lambda: None)
    assert parallel.usable_cpus() == 1


@pytest.mark.parametrize("n", [1, 3])
def test_set_then_get_and_blas_limit(n):
    """Any count >= 1, more than the CPUs included (3 on a 2-core machine)."""
    gpunet.set_num_threads(n)
    assert gpunet.get_num_threads() == n
    assert scipy_blas_threads() == n
    assert set(blas_threads().values()) == {n}  # NumPy's BLAS too


def test_setting_wins_over_the_environment(monkeypatch):
    monkeypatch.setenv(parallel.ENV_VAR, "3")
    gpunet.set_num_threads(1)
    assert gpunet.get_num_threads() == 1


@pytest.mark.parametrize("raw, n", [("3", 3), (" 1 ", 1)])
def test_environment_variable_is_honoured_at_first_use(monkeypatch, raw, n):
    monkeypatch.setenv(parallel.ENV_VAR, raw)
    assert gpunet.get_num_threads() == n
    assert scipy_blas_threads() == n
    monkeypatch.setenv(parallel.ENV_VAR, "2")  # read once, as torch reads OMP_NUM_THREADS
    assert gpunet.get_num_threads() == n


@pytest.mark.parametrize("raw", ["0", "-1", "two", "", "1.5", "+2", "٣"])
def test_bad_environment_variable_raises_and_changes_nothing(monkeypatch, raw):
    monkeypatch.setenv(parallel.ENV_VAR, raw)
    before = blas_threads()
    for _ in range(2):  # at every use until it is fixed
        with pytest.raises(ValueError, match=parallel.ENV_VAR) as info:
            gpunet.get_num_threads()
        assert repr(raw) in str(info.value)
    assert parallel._threads is None
    assert blas_threads() == before
    monkeypatch.delenv(parallel.ENV_VAR)
    assert gpunet.get_num_threads() == parallel.usable_cpus()


@pytest.mark.parametrize(
    "bad, error, words",
    [
        (0, ValueError, "at least 1, got 0"),
        (-2, ValueError, "at least 1, got -2"),
        (2.0, TypeError, "must be an int, got float"),
        ("2", TypeError, "must be an int, got str"),
        (True, TypeError, "must be an int, got bool"),
        (None, TypeError, "must be an int, got NoneType"),
    ],
)
def test_bad_argument_raises_and_changes_nothing(bad, error, words):
    gpunet.set_num_threads(1)
    before = blas_threads()
    with pytest.raises(error, match="set_num_threads") as info:
        gpunet.set_num_threads(bad)
    assert words in str(info.value)
    assert gpunet.get_num_threads() == 1
    assert blas_threads() == before


def test_numpy_integer_is_accepted():
    np = pytest.importorskip("numpy")
    gpunet.set_num_threads(np.int64(1))
    assert gpunet.get_num_threads() == 1
    assert type(gpunet.get_num_threads()) is int


# ------------------------------------------------ the benchmarks pass the count on
def test_gpunet_bench_threads_option_reaches_gpunet_and_torch():
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    settings = cli.settings_from(parser.parse_args(["--quick", "--threads", "3"]))
    assert settings.threads == 3
    assert cli.settings_from(parser.parse_args(["--quick"])).threads is None
    specs = runner.peer_specs(dataclasses.replace(settings, peers=("torch",)), "cpu", [None], [])
    assert {key: kwargs.get("threads") for key, kwargs in specs}.items() >= {("gpunet", 3)}
    if any(key == "torch" for key, _ in specs):
        assert dict(specs)["torch"]["threads"] == 3
    for bad in ("0", "two"):
        with pytest.raises(SystemExit):
            parser.parse_args(["--threads", bad])


def test_train_throughput_threads_option():
    assert train_throughput.parse_args(["--threads", "1", "2"]).threads == [1, 2]
    assert train_throughput.parse_args(["--torch-threads", "3"]).threads == [3]
    assert train_throughput.parse_args([]).threads == [gpunet.get_num_threads()]
    with pytest.raises(SystemExit):
        train_throughput.parse_args(["--threads", "0"])


def test_gpunet_peer_sets_the_count_in_its_process():
    peer = peers.GpunetPeer([4, 3], threads=1)
    assert gpunet.get_num_threads() == parallel.usable_cpus()  # nothing until it trains
    peer._set_threads()
    assert gpunet.get_num_threads() == 1
    assert peer.info()["gpunet_threads"] == 1
