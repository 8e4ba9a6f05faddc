"""Nothing stored is lost to a worse fetch: the stored history, the universe and the listing dates say which
(symbol, session) rows are expected, never the fetched frame alone. Driven through the real `prices` and
`benchmark` assets (Dagster runs over a session range) with a csv provider whose file is broken between runs."""

import hashlib

import dagster as dg
import pandas as pd
import pytest

from qt_resources.prices import BundledPriceProvider
from tests.conftest import write_config

UNIVERSE = ["AAPL", "IBM"]
START, END = "2012-03-01", "2012-03-30"


def bundled(symbols=UNIVERSE) -> pd.DataFrame:
    return BundledPriceProvider().fetch(symbols, "2012-01-03", "2012-06-29").astype(str)


def defs_for(tmp_path, content, benchmark: str = "equal_weight", listings: dict | None = None,
             symbols: list[str] = UNIVERSE):
    """Definitions over a csv provider whose one file holds ``content`` (a frame or raw text)."""
    from qt_jobs.definitions import load_definitions

    folder = tmp_path / "csv"
    folder.mkdir(parents=True, exist_ok=True)
    if isinstance(content, pd.DataFrame):
        content.to_csv(folder / "prices.csv", index=False)
    else:
        (folder / "prices.csv").write_text(content)
    universe = {"symbols": symbols, "benchmark": benchmark, **({"listings": listings} if listings else {})}
    cfg = write_config(tmp_path, universe=universe,
                       data={"provider": "csv", "csv_path": str(folder), "start": "2012-01-03", "end": "2012-06-29"},
                       research={"split": {"train_end": "2012-04-30", "embargo": 5}},
                       backtest={"strategies": [{"name": "xgb_topk", "kind": "model"}]},
                       agents=[{"name": "xgb_daily", "kind": "model", "model": "qtos_xgb", "selection": {"top_k": 1}}])
    return load_definitions(str(cfg))


def run(defs, instance, start=START, end=END):
    from qt_jobs.jobs import FULL_GRAPH

    job = defs.resolve_job_def(FULL_GRAPH)
    return job.execute_in_process(instance=instance, asset_selection=[dg.AssetKey("prices"), dg.AssetKey("benchmark")],
                                  raise_on_error=False, tags={"dagster/asset_partition_range_start": start,
                                                              "dagster/asset_partition_range_end": end})


def snapshot(tmp_path) -> dict[str, str]:
    """Every stored price and benchmark file, by content hash."""
    root = tmp_path / "warehouse"
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for t in ("prices", "benchmark") for p in sorted((root / t).glob("session=*/data.parquet"))}


def check(res, name):
    return {e.check_name: e for e in res.get_asset_check_evaluations()}[name]


@pytest.fixture
def stored(tmp_path):
    """A good first run over March 2012: (instance, snapshot of the stored files)."""
    instance = dg.DagsterInstance.ephemeral()
    assert run(defs_for(tmp_path, bundled()), instance).success
    return instance, snapshot(tmp_path)


@pytest.mark.parametrize("broken", ["without_ibm", "header_only", "without_one_ibm_row"])
def test_a_refetch_with_fewer_rows_than_stored_fails_and_keeps_every_stored_file(tmp_path, stored, broken):
    instance, before = stored
    full = bundled()
    content = {"without_ibm": full[full["symbol"] != "IBM"],
               "header_only": ",".join(full.columns) + "\n",
               "without_one_ibm_row": full[~((full["symbol"] == "IBM") & (full["session"] == "2012-03-14"))]}[broken]
    res = run(defs_for(tmp_path, content), instance)
    assert not res.success
    rows = check(res, "sessions_complete").metadata["rows"].value
    assert "IBM 2012-03-14: stored, absent from this fetch (kept)" in rows
    assert snapshot(tmp_path) == before  # not one stored byte changed, benchmark included
    # the benchmark did not run on the remainder
    assert not any(e.asset_key == dg.AssetKey("benchmark") for e in res.get_asset_materialization_events())


def test_a_symbol_that_traded_before_the_range_is_expected_in_it(tmp_path, stored):
    instance, _ = stored
    full = bundled()
    later = full[(full["symbol"] == "AAPL") | (full["session"] < "2012-04-02")]  # IBM stops after March
    res = run(defs_for(tmp_path, later), instance, "2012-04-02", "2012-04-30")  # nothing stored for April yet
    assert not res.success
    assert "IBM 2012-04-02: no row" in check(res, "sessions_complete").metadata["rows"].value
    assert not (tmp_path / "warehouse" / "prices" / "session=2012-04-02").exists()


def test_a_first_fetch_without_any_row_of_a_symbol_fails_naming_it(tmp_path):
    instance = dg.DagsterInstance.ephemeral()
    full = bundled()
    res = run(defs_for(tmp_path, full[full["symbol"] != "IBM"]), instance)
    assert not res.success
    rows = check(res, "sessions_complete").metadata["rows"].value
    assert "IBM: no row in 2012-03-01..2012-03-30, none stored, and no listing date known" in rows
    assert "universe.listings.IBM" in rows
    assert snapshot(tmp_path) == {}


def test_an_explicit_delisting_is_the_logged_way_to_drop_stored_rows(tmp_path, stored):
    instance, before = stored
    full = bundled()
    gone = full[(full["symbol"] == "AAPL") | (full["session"] <= "2012-03-15")]
    res = run(defs_for(tmp_path, gone, listings={"IBM": {"delisted": "2012-03-15"}}), instance)
    assert res.success, check(res, "sessions_complete").metadata["rows"].value
    after = snapshot(tmp_path)
    day = lambda s: pd.read_parquet(tmp_path / "warehouse" / "prices" / f"session={s}" / "data.parquet")
    assert sorted(day("2012-03-15")["symbol"]) == ["AAPL", "IBM"]
    assert sorted(day("2012-03-16")["symbol"]) == ["AAPL"]
    assert after["prices/session=2012-03-15/data.parquet"] == before["prices/session=2012-03-15/data.parquet"]
    mat = [e for e in res.get_asset_materialization_events() if e.asset_key == dg.AssetKey("prices")][-1]
    assert mat.materialization.metadata["rows_dropped_after_delisting"].value == 11  # 03-16 .. 03-30
    logs = [e.message for e in instance.all_logs(res.run_id) if e.level >= 30]
    assert any("dropped after their symbol's delisting" in m and "IBM 2012-03-16" in m for m in logs)


def test_the_benchmark_writes_nothing_when_its_check_fails(tmp_path):
    instance = dg.DagsterInstance.ephemeral()
    frame = pd.concat([bundled(), bundled(["MSFT"])], ignore_index=True)  # MSFT: the benchmark, not traded
    assert run(defs_for(tmp_path, frame, benchmark="MSFT"), instance).success
    before = snapshot(tmp_path)
    hole = frame[~((frame["symbol"] == "MSFT") & (frame["session"] == "2012-03-14"))]
    res = run(defs_for(tmp_path, hole, benchmark="MSFT"), instance)
    assert not res.success
    evaluation = check(res, "benchmark_sessions_complete")
    assert not evaluation.passed and "2012-03-14" in str(evaluation.metadata["missing_sessions"].value)
    after = snapshot(tmp_path)
    assert {k: v for k, v in after.items() if k.startswith("benchmark")} == \
        {k: v for k, v in before.items() if k.startswith("benchmark")}


def test_fractional_volume_is_refused_not_truncated(tmp_path, stored):
    instance, before = stored
    full = bundled()
    i = full.index[(full["symbol"] == "IBM") & (full["session"] == "2012-03-14")][0]
    full.loc[i, "volume"] = "1234.5"
    res = run(defs_for(tmp_path, full), instance)
    assert not res.success
    rows = check(res, "schema_and_types").metadata["rows"].value
    assert "IBM 2012-03-14: volume='1234.5' is not a whole number of shares" in rows
    key = "prices/session=2012-03-14/data.parquet"
    assert snapshot(tmp_path)[key] == before[key]


def test_messages_name_the_file_and_its_line(tmp_path):
    full = bundled()
    full = full.sort_values(["symbol", "session"], ignore_index=True)
    i = full.index[(full["symbol"] == "IBM") & (full["session"] == "2012-03-14")][0]
    full.loc[i, "close"] = "n/a"
    text = full.to_csv(index=False)
    text = text.replace("\n", "\n\n", 1)  # a blank line after the header: still counted
    line = text.splitlines().index(next(l for l in text.splitlines() if ",n/a," in l)) + 1
    instance = dg.DagsterInstance.ephemeral()
    res = run(defs_for(tmp_path, text), instance)
    assert not res.success
    rows = check(res, "schema_and_types").metadata["rows"].value
    assert f"prices.csv line {line}: IBM 2012-03-14: close='n/a' is not a number" in rows


@pytest.mark.parametrize("stamp", ["{d}T00:00:00-05:00", "{d}T05:00:00Z", "{d} 16:00:00-04:00"])
def test_timezone_suffixed_dates_count_for_their_new_york_session(tmp_path, stamp):
    plain = bundled()
    instance = dg.DagsterInstance.ephemeral()
    assert run(defs_for(tmp_path / "a", plain), instance).success
    stamped = plain.assign(session=[stamp.format(d=d) for d in plain["session"]])
    instance_b = dg.DagsterInstance.ephemeral()
    res = run(defs_for(tmp_path / "b", stamped), instance_b)
    assert res.success
    a, b = snapshot(tmp_path / "a"), snapshot(tmp_path / "b")
    assert a == b and len(a) == 2 * 22


def test_an_empty_file_is_named(tmp_path, stored):
    instance, before = stored
    res = run(defs_for(tmp_path, ""), instance)
    assert not res.success
    failure = next(e for e in res.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE)
    error, message = failure.step_failure_data.error, ""
    while error is not None:  # Dagster's error wraps ours as its cause
        message, error = message + error.message, error.cause
    assert "prices.csv is empty" in message and str(tmp_path / "csv") in message
    assert snapshot(tmp_path) == before


# ------------------------------------------------------------------ a corpus of malformed price files

def _edit(sym, day, **values):
    def f(d):
        d = d.copy()
        i = d.index[(d["symbol"] == sym) & (d["session"] == day)][0]
        for k, v in values.items():
            d.loc[i, k] = v
        return d
    return f


def _drop(symbol=None, session=None):
    return lambda d: d[~(((d["symbol"] == symbol) if symbol else True) & ((d["session"] == session) if session else True))]


def _text(fn):
    return lambda d: fn(d.to_csv(index=False))


CORPUS = [  # (id, what is done to the good file, where the message is, text it must contain)
    ("close_not_a_number", _edit("IBM", "2012-03-14", close="n/a"), "schema_and_types", "close='n/a' is not a number"),
    ("volume_word", _edit("IBM", "2012-03-14", volume="lots"), "schema_and_types", "volume='lots' is not a number"),
    ("volume_fraction", _edit("IBM", "2012-03-14", volume="10.25"), "schema_and_types", "is not a whole number"),
    ("negative_low", _edit("IBM", "2012-03-14", low="-3.5"), "prices_positive", "low=-3.5 is not > 0"),
    ("zero_adj_close", _edit("IBM", "2012-03-14", adj_close="0"), "prices_positive", "adj_close=0.0 is not > 0"),
    ("empty_open", _edit("IBM", "2012-03-14", open=""), "prices_positive", "open is missing"),
    ("negative_volume", _edit("IBM", "2012-03-14", volume="-5"), "volume_non_negative", "volume=-5 is negative"),
    ("empty_volume", _edit("IBM", "2012-03-14", volume=""), "volume_non_negative", "volume is missing"),
    ("high_below_low", _edit("IBM", "2012-03-14", high="1.0"), "ohlc_consistent", "IBM 2012-03-14: low="),
    ("close_above_high", _edit("IBM", "2012-03-14", close="9999"), "ohlc_consistent", "close=9999"),
    ("infinite_close", _edit("IBM", "2012-03-14", close="1e400"), "ohlc_consistent", "close=inf"),
    ("bad_date", _edit("IBM", "2012-03-14", session="2012-13-45"), "schema_and_types", "session='2012-13-45' is not a date"),
    ("weekend_date", _edit("IBM", "2012-03-14", session="2012-03-17"), "sessions_are_xnys", "2012-03-17: not an XNYS session"),
    ("date_outside_range", _edit("IBM", "2012-03-14", session="2012-04-06"), "sessions_complete",
     "IBM 2012-03-14: stored, absent"),  # a row outside the range is not stored: its session lacks it
    ("duplicate_row", lambda d: pd.concat([d, d[(d["symbol"] == "IBM") & (d["session"] == "2012-03-14")]]),
     "unique_symbol_session", "IBM 2012-03-14: 2 rows"),
    ("missing_row", _drop("IBM", "2012-03-14"), "sessions_complete", "IBM 2012-03-14: stored, absent from this fetch"),
    ("missing_symbol", _drop("IBM"), "sessions_complete", "IBM 2012-03-01: stored, absent from this fetch"),
    ("missing_session", _drop(session="2012-03-14"), "sessions_complete", "AAPL 2012-03-14: stored, absent"),
    ("header_only", lambda d: d.iloc[0:0], "sessions_complete", "AAPL 2012-03-01: stored, absent"),
    ("symbol_lower_case", _edit("IBM", "2012-03-14", symbol="ibm"), "sessions_complete", "IBM 2012-03-14: stored"),
    ("timezone_to_next_day", _edit("IBM", "2012-03-14", session="2012-03-14T23:30:00-06:00"), "sessions_complete",
     "IBM 2012-03-14: stored, absent"),  # 23:30 in Denver is the 15th in New York
    ("missing_column", lambda d: d.drop(columns=["close"]), "error", "prices.csv: missing columns ['close'] (its header has"),
    ("semicolon_separated", _text(lambda t: t.replace(",", ";")), "error", "prices.csv: missing columns"),
    ("empty_file", _text(lambda t: ""), "error", "prices.csv is empty"),
    ("binary_garbage", _text(lambda t: "\x00\x01\x02garbage\xff" * 50), "error", "prices.csv"),
]


@pytest.fixture(scope="module")
def corpus_base(tmp_path_factory):
    base = tmp_path_factory.mktemp("corpus_base")
    assert run(defs_for(base, bundled()), dg.DagsterInstance.ephemeral()).success
    return base


@pytest.mark.parametrize("case, mutate, where, expected", CORPUS, ids=[c[0] for c in CORPUS])
def test_each_malformed_price_file_is_named_and_changes_no_stored_byte(tmp_path, corpus_base, case, mutate, where,
                                                                       expected):
    import shutil

    shutil.copytree(corpus_base / "warehouse", tmp_path / "warehouse")
    before = snapshot(tmp_path)
    content = mutate(bundled())
    res = run(defs_for(tmp_path, content), dg.DagsterInstance.ephemeral())
    assert not res.success
    if where == "error":
        failure = next(e for e in res.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE)
        error, text = failure.step_failure_data.error, ""
        while error is not None:
            text, error = text + error.message, error.cause
        assert "Traceback" not in text.split("\n")[-2:]  # the cause is a message, not a stack
    else:
        text = check(res, where).metadata["rows"].value
    assert expected in text, text
    assert snapshot(tmp_path) == before
    assert not list((tmp_path / "warehouse").rglob(".data.*"))  # no temporary file left behind


def test_a_run_of_dagsters_own_asset_job_carries_the_resolved_config(tmp_path):
    """`dagster asset materialize` and the UI's asset page launch Dagster's implicit asset job, which has none of
    our jobs' tags: the warehouse resource adds them at the run's first step."""
    import json

    defs = defs_for(tmp_path, bundled())
    instance = dg.DagsterInstance.ephemeral()
    job = defs.resolve_implicit_global_asset_job_def()
    res = job.execute_in_process(instance=instance, asset_selection=[dg.AssetKey("prices")],
                                 partition_key="2012-03-14")
    assert res.success
    tags = instance.get_run_by_id(res.run_id).tags
    assert json.loads(tags["qtos/config"])["data"]["provider"] == "csv"
    assert tags["qtos/config_fingerprint"] == \
        res.asset_materializations_for_node("prices")[0].metadata["config_fingerprint"].value


@pytest.mark.parametrize("table", ["news", "insider_filings"])
def test_a_refetch_of_alternative_data_that_lacks_stored_items_keeps_them(tmp_path, table):
    from qt_assets.alt_data.assets import _merge_filings, _merge_news, _store_by_usable_session
    from qt_resources.calendar import sessions
    from qt_resources.filings import BundledFilingsProvider
    from qt_resources.news import BundledNewsProvider, dedupe_news
    from qt_resources.warehouse import DuckDBWarehouse

    keys = sessions("2010-01-04", "2012-12-31")
    w = DuckDBWarehouse(root=str(tmp_path))
    symbols = ["AAPL", "GOOG", "IBM", "MSFT"]
    if table == "news":
        full, merge, key = dedupe_news(BundledNewsProvider().fetch(symbols, keys[0], keys[-1])), _merge_news, "provider_id"
    else:
        full, merge, key = BundledFilingsProvider().fetch(symbols, keys[0], keys[-1]), _merge_filings, "accession"
    full = full[full["available_session"].isin(keys)]
    assert len(full) > 3
    written, kept = _store_by_usable_session(w, table, full, keys, merge)
    assert kept == 0 and len(written) == len(full)
    stored = w.read_partitions(table, keys)
    lacking = full[full[key] != full[key].iloc[0]]  # the provider silently drops one item
    written, kept = _store_by_usable_session(w, table, lacking, keys, merge)
    assert kept == (full[key] == full[key].iloc[0]).sum() > 0
    again = w.read_partitions(table, keys)
    assert sorted(again[key]) == sorted(stored[key]) and len(again) == len(stored)
    written, kept = _store_by_usable_session(w, table, full.iloc[0:0], keys, merge)  # nothing at all came back
    assert kept == len(stored) and len(w.read_partitions(table, keys)) == len(stored)


def test_taking_a_symbol_out_of_the_universe_drops_its_stored_rows_with_a_warning(tmp_path):
    three = [*UNIVERSE, "MSFT"]
    instance = dg.DagsterInstance.ephemeral()
    frame = bundled(three)
    assert run(defs_for(tmp_path, frame, symbols=three), instance).success
    res = run(defs_for(tmp_path, frame, symbols=UNIVERSE), instance)  # MSFT taken out of the universe
    assert res.success
    day = pd.read_parquet(tmp_path / "warehouse" / "prices" / "session=2012-03-14" / "data.parquet")
    assert sorted(day["symbol"]) == UNIVERSE
    logs = [e.message for e in instance.all_logs(res.run_id) if e.level >= 30]
    assert any("removal from universe.symbols" in m and "MSFT 2012-03-01" in m for m in logs), logs
