import pandas as pd
import pytest

import exchange_calendars as xcals

from qt_resources import calendar as qcal
from qt_resources.calendar import is_session, session_closes_utc, sessions
from qt_resources.prices import BundledPriceProvider, PriceDataError, normalise_prices


def test_calendar_knows_closures_and_early_closes():
    s = sessions("2001-09-07", "2001-09-18")
    assert "2001-09-11" not in s and "2001-09-14" not in s  # markets closed after 9/11
    assert s[:3] == ["2001-09-07", "2001-09-10", "2001-09-17"]
    assert is_session("2012-07-03")  # early close is still a session
    assert not is_session("2012-10-29")  # Hurricane Sandy closure
    assert not is_session("2012-04-06")  # Good Friday


def test_calendar_is_built_once_for_many_ranges_and_answers_as_exchange_calendars_does():
    """One session per call (an orders backfill asks once per session) must not rebuild the calendar each time
    (~0.13 s a build); widening past the cached span rebuilds it once; answers equal a calendar built for the
    exact range."""
    qcal._SPAN.pop("XNYS", None)
    qcal._built.cache_clear()
    days = pd.bdate_range("2010-03-01", "2010-12-31")
    for d in days:
        session_closes_utc(d, d)
    assert qcal._built.cache_info().misses == 1
    assert sessions("2007-05-01", "2007-05-10")  # earlier than the span (2009-2011): widened once, then cached
    assert sessions("2008-01-07", "2011-02-01")
    assert qcal._built.cache_info().misses == 2
    exact = xcals.get_calendar("XNYS", start="2007-04-20", end="2011-02-10")
    want = exact.schedule.loc["2007-05-01":"2011-02-01", "close"]
    got = session_closes_utc("2007-05-01", "2011-02-01")
    assert list(got.index) == [d.strftime("%Y-%m-%d") for d in want.index]
    assert (got.to_numpy() == want.to_numpy()).all()


def test_bundled_provider_returns_exactly_the_xnys_sessions_in_range():
    start, end = "2008-01-02", "2012-12-31"
    df = BundledPriceProvider().fetch(["AAPL", "IBM", "MSFT", "GOOG"], start, end)
    expected = sessions(start, end)
    for sym, g in df.groupby("symbol"):
        assert g["session"].tolist() == expected, sym
    assert not df.duplicated(["symbol", "session"]).any()
    assert list(df.columns) == ["symbol", "session", "open", "high", "low", "close", "adj_close", "volume"]


def test_bundled_provider_before_ipo_is_not_an_error():
    df = BundledPriceProvider().fetch(["GOOG", "IBM"], "2004-08-02", "2004-08-31")
    goog = df[df["symbol"] == "GOOG"]["session"]
    assert goog.min() == "2004-08-19"  # IPO day
    assert set(df[df["symbol"] == "IBM"]["session"]) == set(sessions("2004-08-02", "2004-08-31"))


def test_unknown_symbol_is_a_clear_error():
    with pytest.raises(PriceDataError, match=r"unknown symbol\(s\) \['ZZZZ'\]; available"):
        BundledPriceProvider().fetch(["AAPL", "ZZZZ"], "2010-01-04", "2010-01-08")


def test_malformed_value_names_row_and_field():
    bad = pd.DataFrame({"symbol": ["AAPL", "AAPL"], "session": ["2010-01-04", "2010-01-05"],
                        "open": [1.0, 2.0], "high": [1.0, "n/a"], "low": [1.0, 2.0], "close": [1.0, 2.0],
                        "adj_close": [1.0, 2.0], "volume": [1, 2]})
    with pytest.raises(PriceDataError, match=r"row AAPL 2010-01-05: high='n/a' is not a number"):
        normalise_prices(bad, "test")
    with pytest.raises(PriceDataError, match=r"missing columns \['volume'\]"):
        normalise_prices(bad.drop(columns="volume"), "test")
