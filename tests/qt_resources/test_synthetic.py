"""The seeded synthetic universe (qt_resources/synthetic.py) and its providers."""

import numpy as np
import pandas as pd
import pytest

from qt_assets.market_data.assets import check_results
from qt_assets.market_data.price_quality import validate_prices
from qt_resources.calendar import sessions
from qt_resources.filings import SyntheticFilingsProvider, as_of
from qt_resources.news import SyntheticNewsProvider, dedupe_news
from qt_resources.prices import PRICE_COLUMNS, SyntheticPriceProvider
from qt_resources.synthetic import synthetic_bars

SYMS = [f"S{i:03d}" for i in range(40)]


def test_bars_do_not_depend_on_the_range_fetched_and_are_seeded():
    whole = synthetic_bars(SYMS[:5], "2010-01-04", "2012-12-31")
    part = synthetic_bars(SYMS[:5], "2011-06-01", "2011-06-30")
    sub = whole[(whole["session"] >= "2011-06-01") & (whole["session"] <= "2011-06-30")].reset_index(drop=True)
    pd.testing.assert_frame_equal(sub, part)
    pd.testing.assert_frame_equal(synthetic_bars(SYMS[:2], "2011-01-03", "2011-03-31"),
                                  synthetic_bars(SYMS[:2], "2011-01-03", "2011-03-31"))
    # adding symbols never changes the others; another seed is another universe
    more = synthetic_bars(SYMS[:8], "2011-06-01", "2011-06-30")
    pd.testing.assert_frame_equal(more[more["symbol"].isin(SYMS[:5])].reset_index(drop=True), part)
    assert not np.allclose(synthetic_bars(SYMS[:1], "2011-01-03", "2011-03-31", seed=8)["close"],
                           synthetic_bars(SYMS[:1], "2011-01-03", "2011-03-31")["close"])


def test_bars_are_realistic_enough_for_every_stage():
    b = synthetic_bars(SYMS, "2000-01-03", "2019-12-31")
    assert list(b.columns) == PRICE_COLUMNS
    assert ((b["low"] <= b[["open", "close"]].min(axis=1)) & (b["high"] >= b[["open", "close"]].max(axis=1))).all()
    assert (b["volume"] > 0).all() and (b["close"] > 0).all()
    wide = b.pivot(index="session", columns="symbol", values="adj_close")
    r = np.log(wide).diff()
    assert 0.005 < r.std().median() < 0.04                         # daily vol of a stock
    corr = r.corr().to_numpy()[np.triu_indices(r.shape[1], 1)]
    assert 0.05 < np.nanmedian(corr) < 0.8                          # a market factor
    # corporate actions: unadjusted close jumps at splits, adj_close stays continuous
    ratio = (b["adj_close"] / b["close"]).groupby(b["symbol"])
    assert (ratio.nunique() > 1).mean() > 0.5
    close = b.pivot(index="session", columns="symbol", values="close")
    jumps = (close / close.shift(1)).stack()
    split_days = jumps[(jumps < 0.55)].index
    assert len(split_days) > 0
    adj_moves = (wide / wide.shift(1)).stack().loc[split_days]
    assert (adj_moves > 0.7).all()
    # listings and delistings mid-range
    life = b.groupby("symbol")["session"].agg(["min", "max"])
    assert (life["min"] > "2000-01-03").any() and (life["max"] < "2019-12-31").any()


def test_provider_output_passes_the_price_gates_with_listings_and_delistings():
    p = SyntheticPriceProvider()
    keys = sessions("2015-01-02", "2016-12-30")
    raw = p.fetch(SYMS, keys[0], keys[-1])
    v = validate_prices(raw, keys, SYMS, p.listed_from(SYMS), listed_until=p.listed_until(SYMS))
    assert all(r.passed for r in check_results(v)), [r.check_name for r in check_results(v) if not r.passed]
    assert len(v.quarantine) == 0 and v.written_sessions == keys
    # without the delisting dates a delisted symbol's missing rows would fail completeness
    until = p.listed_until(SYMS)
    gone = [s for s, d in until.items() if d < keys[0]]
    if gone:
        v2 = validate_prices(raw, keys, SYMS, p.listed_from(SYMS))
        assert not next(r for r in check_results(v2) if r.check_name == "sessions_complete").passed


def test_synthetic_news_and_filings_have_realistic_rates_duplicates_and_amendments():
    news = SyntheticNewsProvider().fetch(SYMS[:10], "2012-01-03", "2012-12-31")
    per_session = len(news) / (10 * 250)
    assert 0.2 < per_session < 1.5
    assert len(dedupe_news(news)) < len(news)                       # syndicated copies exist and are dropped
    assert news["available_session"].notna().all()
    ny_close = pd.to_datetime(news["published_at"], utc=True).dt.tz_convert("America/New_York").dt.hour >= 16
    assert (ny_close & (news["available_session"] > pd.to_datetime(news["published_at"]).dt.strftime("%Y-%m-%d"))).any()
    tx = SyntheticFilingsProvider().fetch(SYMS[:10], "2012-01-03", "2012-12-31")
    assert 0.5 < len(tx) / (10 * 12) < 3                            # about 1.5 a month per issuer
    assert set(tx["transaction_code"]) == {"P", "S"} and "4/A" in set(tx["form_type"])
    assert (tx["accepted_at"].str[:10] >= tx["transaction_date"]).all()
    assert len(as_of(tx, "2012-12-31")) < len(tx)                   # amendments supersede what they amend
    again = SyntheticFilingsProvider().fetch(SYMS[:10], "2012-06-01", "2012-06-30")
    june = tx[(tx["accepted_at"] >= "2012-06-01") & (tx["accepted_at"] < "2012-07-01")]
    assert sorted(again["accession"]) == sorted(june["accession"])


def test_outside_the_calendar_is_refused_with_the_range():
    with pytest.raises(ValueError, match="outside its calendar 1995-01-03..2030-12-31"):
        synthetic_bars(["S000"], "1990-01-02", "1991-01-02")
