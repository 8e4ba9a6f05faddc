"""Quality gates on a corpus of bad price files, and what the asset does with them."""

import dagster as dg
import pandas as pd
import pytest

from qt_assets.market_data.assets import check_results
from qt_assets.market_data.price_quality import validate_prices
from qt_resources.calendar import sessions
from qt_resources.prices import BundledPriceProvider, PriceDataError
from tests.conftest import write_config

SESSIONS = sessions("2012-03-01", "2012-03-30")
UNIVERSE = ["AAPL", "IBM"]


def good() -> pd.DataFrame:
    return BundledPriceProvider().fetch(UNIVERSE, SESSIONS[0], SESSIONS[-1]).astype(str)


def corrupt(kind: str) -> pd.DataFrame:
    d = good()
    i = d.index[(d["symbol"] == "IBM") & (d["session"] == "2012-03-14")][0]
    if kind == "nan":
        d.loc[i, "close"] = "nan"
    elif kind == "negative":
        d.loc[i, "low"] = "-3.5"
    elif kind == "high_below_low":
        d.loc[i, "high"] = str(float(d.loc[i, "low"]) - 1)
    elif kind == "duplicate":
        d = pd.concat([d, d.loc[[i]]], ignore_index=True)
    elif kind == "non_session_date":
        extra = d.loc[[i]].assign(session="2012-03-17")  # a Saturday
        d = pd.concat([d, extra], ignore_index=True)
    elif kind == "missing_session":
        d = d.drop(index=i)
    elif kind == "wrong_type":
        d.loc[i, "volume"] = "lots"
    return d


@pytest.mark.parametrize("kind, check, named", [
    ("nan", "prices_positive", "IBM 2012-03-14: close is missing"),
    ("negative", "prices_positive", "IBM 2012-03-14: low=-3.5 is not > 0"),
    ("high_below_low", "ohlc_consistent", "IBM 2012-03-14: low="),
    ("duplicate", "unique_symbol_session", "IBM 2012-03-14: 2 rows"),
    ("non_session_date", "sessions_are_xnys", "IBM 2012-03-17: not an XNYS session"),
    ("missing_session", "sessions_complete", "IBM 2012-03-14: no row"),
    ("wrong_type", "schema_and_types", "IBM 2012-03-14: volume='lots' is not a number"),
])
def test_each_defect_fails_its_check_and_names_the_row(kind, check, named):
    v = validate_prices(corrupt(kind), SESSIONS, UNIVERSE, {"AAPL": "2000-03-01", "IBM": "2000-03-01"})
    assert not v.passed
    assert check in v.failures, v.failures
    assert any(named in row for row in v.failures[check]), v.failures[check]
    assert "2012-03-14" in v.held_sessions or kind == "non_session_date"
    assert not (v.clean["session"] == "2012-03-14").any() or kind == "non_session_date"
    if kind not in ("missing_session",):
        assert len(v.quarantine) and v.quarantine["reason"].str.contains(check).all()
    results = {r.check_name: r for r in check_results(v)}
    assert results[check].passed is False and results[check].severity == dg.AssetCheckSeverity.ERROR


def test_clean_data_passes_every_check():
    v = validate_prices(good(), SESSIONS, UNIVERSE, {"AAPL": "2000-03-01", "IBM": "2000-03-01"})
    assert v.passed and not v.warnings
    assert v.written_sessions == SESSIONS and len(v.clean) == 2 * len(SESSIONS)
    assert all(r.passed for r in check_results(v))


def test_missing_column_is_a_clear_error():
    with pytest.raises(PriceDataError, match=r"missing columns \['volume'\]"):
        validate_prices(good().drop(columns="volume"), SESSIONS, UNIVERSE)


def test_before_listing_is_not_an_error():
    d = good()
    d = d[~((d["symbol"] == "IBM") & (d["session"] < "2012-03-10"))]
    v = validate_prices(d, SESSIONS, UNIVERSE, {"AAPL": "2000-03-01", "IBM": "2012-03-12"})
    assert v.passed


def test_extreme_move_flagged_unless_a_split_explains_it():
    d = good().astype({c: float for c in ["open", "high", "low", "close", "adj_close", "volume"]})
    split = d[(d["symbol"] == "AAPL") & (d["session"] >= "2012-03-20")].index
    d.loc[split, ["open", "high", "low", "close"]] /= 2  # 2:1 split, adjusted series unchanged
    v = validate_prices(d, SESSIONS, UNIVERSE)
    assert v.passed and not v.warnings
    crash = d[(d["symbol"] == "IBM") & (d["session"] >= "2012-03-20")].index
    d.loc[crash, ["open", "high", "low", "close", "adj_close"]] *= 0.5  # a real -50% day
    v = validate_prices(d, SESSIONS, UNIVERSE)
    assert v.passed  # warning only: non-blocking
    assert any(r.startswith("IBM 2012-03-20") for r in v.warnings["extreme_moves_explained"])


def _csv_defs(tmp_path, frame: pd.DataFrame):
    from qt_jobs.definitions import load_definitions

    folder = tmp_path / "csv"
    folder.mkdir(exist_ok=True)
    frame.to_csv(folder / "prices.csv", index=False)
    cfg = write_config(tmp_path, universe={"symbols": UNIVERSE, "benchmark": "equal_weight"},
                       data={"provider": "csv", "csv_path": str(folder), "start": "2012-01-03", "end": "2012-06-29"},
                       research={"split": {"train_end": "2012-04-30", "embargo": 5}},
                       backtest={"strategies": [{"name": "xgb_topk", "kind": "model"}]},  # 6 months: no walk-forward
                       agents=[{"name": "xgb_daily", "kind": "model", "model": "qtos_xgb",
                                "selection": {"top_k": 1}}])
    return load_definitions(str(cfg))


def _materialise(defs, instance, start, end):
    from qt_jobs.jobs import FULL_GRAPH

    job = defs.resolve_job_def(FULL_GRAPH)
    sel = [dg.AssetKey(k) for k in ("prices", "benchmark", "stg_prices", "stg_benchmark", "stg_news_sentiment",
                                    "stg_insider_flow", "benchmark_daily", "features_daily", "labels")]
    return job.execute_in_process(instance=instance, asset_selection=sel, raise_on_error=False,
                                  tags={"dagster/asset_partition_range_start": start,
                                        "dagster/asset_partition_range_end": end})


def test_bad_file_blocks_downstream_and_keeps_good_data(tmp_path):
    full = BundledPriceProvider().fetch(UNIVERSE, "2012-01-03", "2012-06-29").astype(str)
    instance = dg.DagsterInstance.ephemeral()
    defs = _csv_defs(tmp_path, full)
    assert _materialise(defs, instance, "2012-03-01", "2012-03-30").success
    stored = tmp_path / "warehouse" / "prices" / "session=2012-03-14" / "data.parquet"
    before = pd.read_parquet(stored)
    mtime = stored.stat().st_mtime_ns
    feats_before = instance.get_latest_materialization_event(dg.AssetKey("features_daily"))

    i = full.index[(full["symbol"] == "IBM") & (full["session"] == "2012-03-14")][0]
    full.loc[i, "high"] = "1.0"  # high < low
    defs = _csv_defs(tmp_path, full)
    res = _materialise(defs, instance, "2012-03-01", "2012-03-30")
    assert not res.success
    checks = {e.check_name: e for e in res.get_asset_check_evaluations()}
    assert checks["ohlc_consistent"].passed is False
    assert "IBM 2012-03-14" in checks["ohlc_consistent"].metadata["rows"].value
    # downstream did not run
    assert instance.get_latest_materialization_event(dg.AssetKey("features_daily")).run_id == feats_before.run_id
    # the good stored partition was not overwritten; other sessions were rewritten
    assert stored.stat().st_mtime_ns == mtime
    pd.testing.assert_frame_equal(pd.read_parquet(stored), before)
    q = list((tmp_path / "warehouse" / "quarantine" / "prices").glob("run=*/data.parquet"))
    assert len(q) == 1 and pd.read_parquet(q[0])["reason"].str.contains("ohlc_consistent").all()


def test_rematerialising_a_partition_is_idempotent(tmp_path):
    full = BundledPriceProvider().fetch(UNIVERSE, "2012-01-03", "2012-06-29").astype(str)
    instance = dg.DagsterInstance.ephemeral()
    defs = _csv_defs(tmp_path, full)
    assert _materialise(defs, instance, "2012-03-01", "2012-03-30").success
    root = tmp_path / "warehouse" / "prices"
    other = root / "session=2012-03-01" / "data.parquet"
    other_mtime = other.stat().st_mtime_ns
    first = pd.read_parquet(root / "session=2012-03-14" / "data.parquet")
    assert _materialise(defs, instance, "2012-03-14", "2012-03-14").success
    again = pd.read_parquet(root / "session=2012-03-14" / "data.parquet")
    pd.testing.assert_frame_equal(first, again)
    assert len(again) == 2 and not again.duplicated(["symbol", "session"]).any()
    assert other.stat().st_mtime_ns == other_mtime  # other partitions untouched
    assert len(list(root.glob("session=*/data.parquet"))) == len(sessions("2012-03-01", "2012-03-30"))
