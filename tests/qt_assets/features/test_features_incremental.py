"""features_daily and labels are incremental: a run recomputes from the first new/changed/removed input row
(features: with a 600-bar lookback; labels: the rows whose forward window reads it) and must equal a full refresh on
the same data. Each step below runs dbt incrementally, checks that a stored row far before the change was
left alone (a planted marker survives), then runs ``--full-refresh`` on the same data and compares every feature,
every label column and every staged bar."""

from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest

from qt_assets.features.assets import available_features
from tests.qt_assets.features.test_features import FEATURE_MODELS
from tests.qt_assets.features.test_features import dbt_features as dbt_build
from tests.qt_assets.features.test_features import synthetic_alt_data, write_tables

SYMBOLS = ["AAPL", "IBM", "MSFT"]
MARKER = -12345.0


def dbt_features(root: Path, *extra: str, vars: dict | None = None) -> pd.DataFrame:
    # models only (the data tests run elsewhere), labels included
    return dbt_build(root, *extra, vars=vars, command="run", models=[*FEATURE_MODELS, "labels"])


def _bench(prices: pd.DataFrame) -> pd.DataFrame:
    px = prices.pivot(index="session", columns="symbol", values="adj_close")
    return pd.DataFrame({"session": px.index, "benchmark": "equal_weight",
                         "ret_1d": px.pct_change().mean(axis=1).to_numpy()})


def _plant_marker(root: Path, session: str) -> None:
    con = duckdb.connect(str(root / "qtos.duckdb"))
    try:
        con.execute("update features_daily set ret_5d = ? where symbol = 'AAPL' and session = ?", [MARKER, session])
    finally:
        con.close()


def _marker(f: pd.DataFrame, session: str) -> float:
    return float(f.loc[(f["symbol"] == "AAPL") & (f["session"] == pd.Timestamp(session)), "ret_5d"].iloc[0])


def _assert_same(inc: pd.DataFrame, full: pd.DataFrame) -> None:
    assert len(inc) == len(full)
    assert (inc[["symbol", "session"]].to_numpy() == full[["symbol", "session"]].to_numpy()).all()
    for col in available_features():
        pd.testing.assert_series_equal(inc[col], full[col], check_exact=False, rtol=1e-10, atol=1e-12, obj=col)


def _other_tables(root: Path) -> dict[str, pd.DataFrame]:
    con = duckdb.connect(str(root / "qtos.duckdb"), read_only=True)
    try:
        return {t: con.execute(f"select * from {t} order by symbol, session").df() for t in ("labels", "stg_prices")}
    finally:
        con.close()


def _assert_same_tables(inc: dict[str, pd.DataFrame], full: dict[str, pd.DataFrame]) -> None:
    """labels (and stg_prices, rebuilt each run) after an incremental run equal a full refresh: the same rows, keys,
    sessions and classes, and the same floats to 1e-12 (DuckDB's windowed stddev sums in an order that depends on
    the slice)."""
    for t in inc:
        pd.testing.assert_frame_equal(inc[t], full[t], check_exact=False, rtol=1e-12, atol=1e-15, obj=t)


@pytest.fixture(scope="module")
def data():
    from qt_resources.prices import BundledPriceProvider

    prices = BundledPriceProvider().fetch(SYMBOLS, "2004-01-02", "2010-12-31")  # ~1,760 sessions
    sessions = sorted(prices["session"].unique())
    news, flow = synthetic_alt_data(prices, np.random.default_rng(11))
    return prices, sessions, news, flow


def test_incremental_runs_equal_a_full_refresh(tmp_path, data):
    prices, sessions, news, flow = data
    root = tmp_path / "wh"
    upto = sessions[1400]

    def step(kept: tuple[str, ...] = (), recomputed: tuple[str, ...] = (), full: pd.DataFrame | None = None,
             **tables) -> pd.DataFrame:
        """Write ``tables``, plant markers, run incrementally, check the markers, compare with a full refresh
        (or with ``full`` when the data did not change)."""
        if tables:
            write_tables(root, **tables)
        for d in (*kept, *recomputed):
            _plant_marker(root, d)
        inc = dbt_features(root)
        inc_tables = _other_tables(root)
        for d in kept:
            assert _marker(inc, d) == MARKER, f"{d}: a row before the change was recomputed"
        for d in recomputed:
            assert _marker(inc, d) != MARKER, f"{d}: a row after the change was not recomputed"
        if full is None:
            full = dbt_features(root, "--full-refresh")
            _assert_same_tables(inc_tables, _other_tables(root))
        for d in kept:  # restore the planted rows before comparing
            at = lambda f: (f["symbol"] == "AAPL") & (f["session"] == pd.Timestamp(d))  # noqa: E731
            inc.loc[at(inc), "ret_5d"] = full.loc[at(full), "ret_5d"].to_numpy()
        _assert_same(inc, full)
        return full

    # 1. first build of sessions <= upto, then 40 new sessions appended: only those are computed
    p0 = prices[prices["session"] <= upto]
    write_tables(root, prices=p0, benchmark=_bench(p0), news_sentiment=news[news["session"] <= upto],
                 insider_flow=flow[flow["session"] <= upto])
    assert dbt_features(root)["session"].max() == pd.Timestamp(upto)
    p1 = prices[prices["session"] <= sessions[1440]]
    new = lambda d: d[(d["session"] > upto) & (d["session"] <= sessions[1440])]  # noqa: E731
    full = step(kept=(sessions[100], upto), prices=new(p1), benchmark=new(_bench(p1)), news_sentiment=new(news),
                insider_flow=new(flow))
    assert full["session"].max() == pd.Timestamp(sessions[1440])

    # 2. nothing changed: nothing is recomputed
    step(kept=(sessions[100], sessions[1440]), full=full)

    # 3. a corrected old bar (session 1000) and late news for session 1200: recompute from 1000 on only
    fix = p1[p1["session"] == sessions[1000]].copy()
    fix.loc[fix["symbol"] == "IBM", ["close", "adj_close", "high"]] *= 1.02
    late = news[news["session"] == sessions[1200]].assign(news_count=9, sentiment_mean=0.5)
    full = step(kept=(sessions[100], sessions[999]), recomputed=(sessions[1000], sessions[1100]), prices=fix,
                news_sentiment=late)
    assert (full.loc[full["session"] == pd.Timestamp(sessions[1200]), "news_count_1d"] == 9).all()

    # 4. MSFT leaves the universe: its rows go, every session's ranks are recomputed
    write_tables(root, prices=p1[p1["symbol"] != "MSFT"])
    full = step(recomputed=(sessions[100],))
    assert set(full["symbol"]) == {"AAPL", "IBM"}


def test_a_symbol_with_a_long_gap_is_sliced_exactly(tmp_path, data):
    """IBM has no bars for 1,100 sessions: of its 600 bars before the new sessions only 100 lie in the last 2 x 600
    sessions, so its slice is cut over its whole history (cut over the recent sessions only, its 200-bar windows
    would be short), and the result equals a full build."""
    prices, sessions, news, flow = data
    root = tmp_path / "wh"
    gap = (prices["symbol"] == "IBM") & (prices["session"] >= sessions[250]) & (prices["session"] < sessions[1350])
    p = prices[~gap]
    p0 = p[p["session"] <= sessions[1450]]
    write_tables(root, prices=p0, benchmark=_bench(p0))
    dbt_features(root)
    p1 = p[p["session"] <= sessions[1470]]
    new = lambda d: d[(d["session"] > sessions[1450]) & (d["session"] <= sessions[1470])]  # noqa: E731
    write_tables(root, prices=new(p1), benchmark=new(_bench(p1)))
    inc, inc_tables = dbt_features(root), _other_tables(root)
    full = dbt_features(root, "--full-refresh")
    _assert_same(inc, full)
    _assert_same_tables(inc_tables, _other_tables(root))
    ibm = full[full["symbol"] == "IBM"]
    assert ibm["close_sma_200"].notna().iloc[-1] and len(ibm) == 1471 - 1100


def test_a_code_change_recomputes_every_row(tmp_path, data):
    prices, sessions, _, _ = data
    root = tmp_path / "wh"
    p = prices[prices["session"] <= sessions[700]]
    write_tables(root, prices=p, benchmark=_bench(p))
    dbt_features(root, vars={"features_code_version": "v1"})
    _plant_marker(root, sessions[100])
    assert _marker(dbt_features(root, vars={"features_code_version": "v1"}), sessions[100]) == MARKER
    assert _marker(dbt_features(root, vars={"features_code_version": "v2"}), sessions[100]) != MARKER


def test_a_code_change_recomputes_labels(tmp_path, data):
    prices, sessions, _, _ = data
    root = tmp_path / "wh"
    p = prices[prices["session"] <= sessions[700]]
    write_tables(root, prices=p, benchmark=_bench(p))
    dbt_features(root, vars={"features_code_version": "v1"})

    def plant():
        con = duckdb.connect(str(root / "qtos.duckdb"))
        try:
            con.execute("update labels set sigma_20d = ? where symbol = 'AAPL' and session = ?",
                        [MARKER, sessions[100]])
        finally:
            con.close()

    def planted() -> bool:
        lab = _other_tables(root)["labels"]
        at = (lab["symbol"] == "AAPL") & (lab["session"] == pd.Timestamp(sessions[100]))
        return float(lab.loc[at, "sigma_20d"].iloc[0]) == MARKER

    plant()
    dbt_features(root, vars={"features_code_version": "v1"})
    assert planted()  # same code, same inputs: nothing recomputed
    dbt_features(root, vars={"features_code_version": "v2"})
    assert not planted()


def test_a_warehouse_built_before_the_file_log_upgrades_in_place(tmp_path, data):
    """A warehouse built by the version before incremental staging has no file log, no model state and staging
    tables without source_file: the next incremental run rebuilds every table in place (no full refresh needed) and
    equals a full build."""
    prices, sessions, _, _ = data
    root = tmp_path / "wh"
    p = prices[prices["session"] <= sessions[500]]
    write_tables(root, prices=p, benchmark=_bench(p))
    dbt_features(root)
    con = duckdb.connect(str(root / "qtos.duckdb"))
    try:
        con.execute("drop table warehouse_files")
        con.execute("drop table qtos_model_state")
        for t in ("stg_prices", "stg_news_sentiment", "stg_insider_flow"):
            con.execute(f"alter table {t} drop column source_file")
        con.execute("update labels set sigma_20d = ? where symbol = 'AAPL' and session = ?", [MARKER, sessions[100]])
    finally:
        con.close()
    _plant_marker(root, sessions[100])
    inc, inc_tables = dbt_features(root), _other_tables(root)
    assert inc_tables["stg_prices"]["source_file"].notna().all()
    full = dbt_features(root, "--full-refresh")
    _assert_same(inc, full)  # the planted rows were recomputed too
    _assert_same_tables(inc_tables, _other_tables(root))


def test_removed_partitions_leave_every_table(tmp_path, data):
    """A deleted partition file (the last session of every table; one session of news only) takes its rows out of
    the staging tables, features_daily and labels, and the result equals a full build."""
    import shutil

    prices, sessions, news, _ = data
    root = tmp_path / "wh"
    p = prices[prices["session"] <= sessions[700]]
    write_tables(root, prices=p, benchmark=_bench(p), news_sentiment=news[news["session"] <= sessions[700]])
    dbt_features(root)
    for t in ("prices", "benchmark", "news_sentiment"):
        shutil.rmtree(root / t / f"session={sessions[700]}")
    shutil.rmtree(root / "news_sentiment" / f"session={sessions[650]}")
    _plant_marker(root, sessions[100])
    inc, inc_tables = dbt_features(root), _other_tables(root)
    assert _marker(inc, sessions[100]) == MARKER  # nothing before the removed partitions was recomputed
    assert inc["session"].max() == pd.Timestamp(sessions[699])
    assert inc_tables["labels"]["session"].max() == pd.Timestamp(sessions[699])
    assert inc.loc[inc["session"] == pd.Timestamp(sessions[650]), "news_count_1d"].isna().all()
    full = dbt_features(root, "--full-refresh")
    inc.loc[(inc["symbol"] == "AAPL") & (inc["session"] == pd.Timestamp(sessions[100])), "ret_5d"] = \
        full.loc[(full["symbol"] == "AAPL") & (full["session"] == pd.Timestamp(sessions[100])), "ret_5d"].to_numpy()
    _assert_same(inc, full)
    _assert_same_tables(inc_tables, _other_tables(root))


def test_a_same_size_rewrite_in_the_same_second_is_seen(tmp_path, data):
    """A partition rewritten right after the build with one price changed (same schema, same file size, same
    second) is reloaded: the signature has the mtime in nanoseconds and the inode (each write renames a new file
    into place)."""
    prices, sessions, _, _ = data
    root = tmp_path / "wh"
    p = prices[prices["session"] <= sessions[300]]
    write_tables(root, prices=p, benchmark=_bench(p))
    dbt_features(root)
    part = root / "prices" / f"session={sessions[300]}" / "data.parquet"
    size = part.stat().st_size
    fix = p[p["session"] == sessions[300]].copy()
    fix.loc[fix["symbol"] == "IBM", ["close", "adj_close"]] += 0.25
    write_tables(root, prices=fix)
    assert part.stat().st_size == size
    dbt_features(root)
    px = _other_tables(root)["stg_prices"]
    got = px.loc[(px["symbol"] == "IBM") & (px["session"] == pd.Timestamp(sessions[300])), "close"].iloc[0]
    assert got == pytest.approx(fix.loc[fix["symbol"] == "IBM", "close"].iloc[0])


def test_features_built_before_their_staging_catch_up(tmp_path, data):
    """features_daily and labels run without the staging models (new partitions logged but not staged yet) record
    only what their inputs reflect, so the next full run recomputes the new sessions: the result equals a full
    build."""
    prices, sessions, _, _ = data
    root = tmp_path / "wh"
    p0 = prices[prices["session"] <= sessions[600]]
    write_tables(root, prices=p0, benchmark=_bench(p0))
    dbt_features(root)
    p1 = prices[prices["session"] <= sessions[620]]
    new = lambda d: d[d["session"] > sessions[600]]  # noqa: E731
    write_tables(root, prices=new(p1), benchmark=new(_bench(p1)))
    dbt_build(root, command="run", models=["warehouse_files", "features_daily", "labels"])
    assert _other_tables(root)["stg_prices"]["session"].max() == pd.Timestamp(sessions[600])  # not staged yet
    inc, inc_tables = dbt_features(root), _other_tables(root)
    assert inc["session"].max() == pd.Timestamp(sessions[620])
    full = dbt_features(root, "--full-refresh")
    _assert_same(inc, full)
    _assert_same_tables(inc_tables, _other_tables(root))
