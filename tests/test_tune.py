"""``gpunet tune``: the route table measured on this machine and kept per T."""

import pytest

from gpunet import cli
from gpunet.backend import jit_cache
from gpunet.kernels.cpu import routes
from gpunet.train import tune
from gpunet.train.engines import routes as route_tables

ONE, MODEL, DATA = "one-thread", "model-parallel", "data-parallel"


@pytest.mark.parametrize(
    ("winners", "expected"),
    [
        ({8: ONE, 32: MODEL, 128: MODEL, 512: DATA}, [(0, ONE), (32, MODEL), (512, DATA)]),
        ({8: ONE, 32: ONE, 128: ONE}, [(0, ONE)]),
        # the smallest size's winner holds below it; a route may come back
        (
            {8: MODEL, 32: ONE, 128: DATA, 512: ONE},
            [(0, MODEL), (32, ONE), (128, DATA), (512, ONE)],
        ),
        ({512: DATA, 8: DATA}, [(0, DATA)]),
    ],
)
def test_breakpoints_from_the_winners(winners, expected):
    assert tune.breakpoints(winners) == expected


def test_winners_keep_the_smaller_sizes_route_through_a_tie():
    rates = {
        8: {ONE: 100.0, MODEL: 150.0},
        32: {ONE: 200.0, MODEL: 196.0, DATA: 100.0},  # within 3% of the fastest: a tie
        128: {ONE: 300.0, MODEL: 280.0, DATA: 100.0},  # 7% behind: one thread wins
        512: {ONE: 400.0, MODEL: 300.0, DATA: 390.0},  # data-parallel ties, one thread is ahead
    }
    assert tune.winners(rates) == {8: MODEL, 32: MODEL, 128: ONE, 512: ONE}
    assert tune.winners(rates, tie=0.0) == {8: MODEL, 32: ONE, 128: ONE, 512: ONE}


@pytest.mark.parametrize("route", [ONE, MODEL, DATA])
def test_one_route_tables_send_every_step_to_their_route(route):
    table = route_tables.pack(route_tables.only(route))
    for nb in (4, 32, 4096):
        assert routes.step_route(nb, 4, table) == routes.ROUTE_NAMES.index(route)


@pytest.mark.parametrize(
    ("n_threads", "batch_size", "expected"),
    [(1, 64, [ONE]), (2, 1, [ONE, MODEL]), (2, 2, [ONE, MODEL, DATA]), (4, 3, [ONE, MODEL])],
)
def test_routes_a_team_can_take(n_threads, batch_size, expected):
    assert tune.routes_for(n_threads, batch_size) == expected


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setattr(jit_cache, "cache_dir", lambda: tmp_path)
    monkeypatch.setattr(route_tables, "_measured", {})
    return tmp_path


def test_tune_keeps_the_table_its_measurements_give(cache):
    record = tune.tune(n_threads=2, widths=(6, 8, 3), ladder=(1, 64), repeats=1)
    rates = record["samples_per_s"]
    assert set(rates) == {"idle", "busy"}
    for state in rates.values():
        assert set(state) == {"1", "64"}
        assert set(state["1"]) == {ONE, MODEL}
        assert set(state["64"]) == {ONE, MODEL, DATA}
    by_size = {size: tune.scores({st: rates[st][str(size)] for st in rates}) for size in (1, 64)}
    assert record["routes"] == tune.breakpoints(tune.winners(by_size))
    assert route_tables.route_table(2).tolist() == route_tables.pack(record["routes"]).tolist()
    default_3 = route_tables.pack(route_tables.default_routes(3)).tolist()
    assert route_tables.route_table(3).tolist() == default_3


def test_scores_combine_the_states():
    rates = {
        "idle": {ONE: 100.0, MODEL: 160.0, DATA: 120.0},
        "busy": {ONE: 80.0, MODEL: 20.0, DATA: 60.0},
    }
    got = tune.scores(rates)
    expected = {
        ONE: (100 / 160 * 80 / 80) ** 0.5,
        MODEL: (160 / 160 * 20 / 80) ** 0.5,
        DATA: (120 / 160 * 60 / 80) ** 0.5,
    }
    assert got == pytest.approx(expected)
    # model-parallel, fastest idle, collapses when busy: one thread wins
    assert max(got, key=got.get) == ONE
    assert tune.scores({"idle": rates["idle"]}) == pytest.approx(
        {k: v / 160 for k, v in rates["idle"].items()}
    )


def test_one_thread_measures_only_the_calling_thread(cache):
    record = tune.tune(n_threads=1, widths=(6, 3), ladder=(4,), repeats=1, save=False)
    assert set(record["samples_per_s"]) == {"idle"}  # one thread: nothing to contend
    assert set(record["samples_per_s"]["idle"]["4"]) == {ONE}
    assert record["routes"] == [(0, ONE)]
    assert not (cache / route_tables.ROUTES_FILE).exists()


def test_cli_tune(cache, capsys):
    assert cli.main(["tune", "--quick", "--threads", "2", "--widths", "6", "5", "3"]) == 0
    err = capsys.readouterr().err
    assert "one-thread from 0 rows" in err or "parallel from 0 rows" in err
    assert "kept for this machine" in err
    assert (cache / route_tables.ROUTES_FILE).exists()
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["tune", "--threads", "0"])
    assert exit_info.value.code == 2
    assert cli.main(["tune", "--widths", "6"]) == 2
