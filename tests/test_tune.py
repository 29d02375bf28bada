"""``gpunet tune``: the route table measured on this machine and kept per T."""

import numpy as np
import pytest

from gpunet import cli
from gpunet.backend import jit_cache
from gpunet.kernels.cpu import routes
from gpunet.train import tune
from gpunet.train.engines import routes as route_tables

ONE, MODEL, DATA = routes.ROUTE_ONE, routes.ROUTE_MODEL, routes.ROUTE_DATA


@pytest.mark.parametrize(
    ("winners", "expected"),
    [
        ({8: ONE, 32: MODEL, 128: MODEL, 512: DATA}, (32, 512)),
        ({8: ONE, 32: ONE, 128: ONE}, (tune.NEVER, tune.NEVER)),
        # a multi-thread win below a loss does not count: from 128 on for good
        ({8: MODEL, 32: ONE, 128: DATA, 512: DATA}, (128, 128)),
        # data-parallel only where it wins at every larger size
        ({8: ONE, 32: DATA, 128: MODEL, 512: DATA}, (32, 512)),
        ({8: DATA, 32: DATA}, (8, 8)),
        ({8: ONE, 32: MODEL, 128: DATA, 512: MODEL}, (32, tune.NEVER)),
    ],
)
def test_thresholds_from_the_winners(winners, expected):
    assert tune.thresholds(winners) == expected


@pytest.mark.parametrize("route", [ONE, MODEL, DATA])
def test_forced_tables_send_every_step_to_their_route(route):
    table = np.array(tune.forced_table(route), np.int64)
    for nb in (4, 32, 4096):
        assert routes.step_route(nb, 4, table) == route


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setattr(jit_cache, "cache_dir", lambda: tmp_path)
    monkeypatch.setattr(route_tables, "_measured", {})
    return tmp_path


def test_tune_keeps_the_table_its_measurements_give(cache):
    record = tune.tune(n_threads=2, widths=(6, 8, 3), ladder=(4, 64), repeats=1)
    rates = record["samples_per_s"]
    assert set(rates) == {"4", "64"}
    assert set(rates["64"]) == {"one-thread", "model-parallel", "data-parallel"}
    winners = {
        int(size): routes.ROUTE_NAMES.index(max(cells, key=cells.get))
        for size, cells in rates.items()
    }
    expected = tune.thresholds(winners)
    assert (record["model_parallel_min_rows"], record["data_parallel_min_rows"]) == expected
    assert list(route_tables.route_table(2)) == list(expected)
    assert list(route_tables.route_table(3)) == list(route_tables.default_routes(3))


def test_one_thread_measures_only_the_calling_thread(cache):
    record = tune.tune(n_threads=1, widths=(6, 3), ladder=(4,), repeats=1, save=False)
    assert set(record["samples_per_s"]["4"]) == {"one-thread"}
    assert not (cache / route_tables.ROUTES_FILE).exists()


def test_cli_tune(cache, capsys):
    assert cli.main(["tune", "--quick", "--threads", "2", "--widths", "6", "5", "3"]) == 0
    err = capsys.readouterr().err
    assert "model-parallel from" in err and "kept for this machine" in err
    assert (cache / route_tables.ROUTES_FILE).exists()
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["tune", "--threads", "0"])
    assert exit_info.value.code == 2
    assert cli.main(["tune", "--widths", "6"]) == 2
