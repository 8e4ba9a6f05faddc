import time

import numpy as np
import pandas as pd
import pytest

from qt_resources.calendar import session_closes_utc, sessions
from qt_resources.filings import (
    FIXTURES, FLOW_COLUMNS, TRANSACTION_COLUMNS, BundledFilingsProvider, EdgarFilingsProvider, FilingParseError,
    FilingsError, apply_amendments, as_of, insider_flow, parse_form4,
)
from tests.edgar_server import EdgarServer

SYMBOLS = ["AAPL", "GOOG", "IBM", "MSFT"]
UA = "QTOS Research qtos-research@example.com"
AAPL_SALE = dict(accession="0001900002-12-000007", form_type="4", accepted_at="2012-05-03T20:05:12.000Z")
IBM_SALE = dict(accession="0001900005-12-000003", form_type="4", accepted_at="2012-03-07T21:30:00.000Z")


def xml(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


@pytest.fixture(scope="module")
def bundled() -> pd.DataFrame:
    return BundledFilingsProvider().fetch(SYMBOLS, "2011-01-01", "2013-12-31")


@pytest.fixture(scope="module")
def server():
    s = EdgarServer()
    yield s
    s.shutdown()


@pytest.fixture
def edgar(server):
    server.requests.clear()
    server.faults.clear()
    return server


def provider(server, **overrides) -> EdgarFilingsProvider:
    cfg = dict(user_agent=UA, data_base_url=server.url, archives_base_url=server.url, max_requests_per_second=1000,
               backoff_seconds=0.01)
    return EdgarFilingsProvider(**(cfg | overrides))


def flow_at(transactions, symbol, day) -> pd.Series:
    f = insider_flow(transactions, [day], [symbol])
    return f.set_index(["symbol", "session"]).loc[(symbol, day)]


# ----------------------------------------------------------------------------------------------- parsing


def test_parse_open_market_sale_rows():
    rows = parse_form4(xml("aapl_20120503_okafor_s.xml"), **AAPL_SALE)
    assert [list(r) for r in rows] == [TRANSACTION_COLUMNS] * 2
    assert rows[0] == {
        "accession": "0001900002-12-000007", "form_type": "4", "symbol": "AAPL", "issuer_cik": 320193,
        "insider_cik": 1900002, "insider_name": "OKAFOR DANIEL", "is_director": False, "is_officer": True,
        "is_ten_pct_owner": False, "officer_title": "SVP, Operations", "period_of_report": "2012-05-01",
        "transaction_date": "2012-05-01", "transaction_code": "S", "shares": 3000.0, "price": 582.10,
        "acquired_disposed": "D", "shares_owned_after": 20000.0, "is_derivative": False,
        "accepted_at": "2012-05-03T20:05:12Z", "available_session": "2012-05-04",  # 16:05 New York -> next session
    }
    assert (rows[1]["shares"], rows[1]["price"], rows[1]["shares_owned_after"]) == (2000.0, 583.05, 18000.0)


def test_parse_buy_true_false_flags_and_footnote_only_price():
    [buy] = parse_form4(xml("aapl_20110815_hale_p.xml"), accession="a1", form_type="4",
                        accepted_at="2011-08-15T21:05:12Z")
    assert (buy["transaction_code"], buy["acquired_disposed"], buy["shares"], buy["price"]) == ("P", "A", 1000, 365.5)
    assert buy["is_director"] and not buy["is_officer"] and buy["officer_title"] is None
    [gift] = parse_form4(xml("goog_20111123_lindqvist_g.xml"), accession="a2", form_type="4",
                         accepted_at="2011-11-23T15:42:10Z")
    assert gift["transaction_code"] == "G" and np.isnan(gift["price"])
    assert gift["is_director"] is True and gift["is_officer"] is False  # "true"/"false" spelling
    assert gift["available_session"] == "2011-11-23"  # 10:42 New York -> same session


def test_parse_option_exercise_has_derivative_and_non_derivative_rows():
    rows = parse_form4(xml("aapl_20120822_okafor_m.xml"), accession="a3", form_type="4",
                       accepted_at="2012-08-22T21:10:33Z")
    got = [(r["transaction_code"], r["is_derivative"], r["acquired_disposed"], r["shares"], r["price"]) for r in rows]
    assert got == [("M", False, "A", 10000, 70.0),     # shares acquired on exercise, at the exercise price
                   ("F", False, "D", 4200, 665.15),    # shares withheld for the exercise price / tax
                   ("M", True, "D", 10000, 0.0)]       # the options given up


def test_joint_filing_uses_the_first_reporting_owner():
    [row] = parse_form4(xml("msft_20130220_sorensen_p_joint.xml"), accession="a4", form_type="4",
                        accepted_at="2013-02-20T19:12:45Z")
    assert (row["insider_cik"], row["insider_name"], row["is_director"]) == (1900007, "SORENSEN ERIK", True)


@pytest.mark.parametrize("edit, message", [
    (lambda x: x[: len(x) // 2], r"0001900005-12-000003: malformed XML"),
    (lambda x: x.replace(b"<issuerCik>0000051143</issuerCik>", b""), r"0001900005-12-000003: .*issuer/issuerCik"),
    (lambda x: x.replace(b"<transactionDate><value>2012-03-05</value></transactionDate>", b""),
     r"0001900005-12-000003: .*nonDerivativeTable/nonDerivativeTransaction\[1\]/transactionDate/value"),
    (lambda x: x.replace(b"<value>12000</value>", b"<value>12,000</value>"), r"transactionShares/value='12,000'"),
    (lambda x: b"<html><body>FORM 4</body></html>", r"0001900005-12-000003: root element is <html>"),
])
def test_unusable_document_names_accession_and_field(edit, message):
    with pytest.raises(FilingParseError, match=message):
        parse_form4(edit(xml("ibm_20120307_castellano_s.xml")), **IBM_SALE)


def test_bundled_covers_the_codes_and_drops_filings_about_other_issuers(bundled):
    assert list(bundled.columns) == TRANSACTION_COLUMNS and len(bundled) == 14
    codes = set(zip(bundled["transaction_code"], bundled["is_derivative"]))
    assert {("P", False), ("S", False), ("M", False), ("M", True), ("F", False), ("G", False), ("A", False)} <= codes
    assert set(bundled["form_type"]) == {"4", "4/A"}
    # Google's own Form 4 as a 10% owner of another issuer is listed under Google's CIK but is not about GOOG.
    assert "0001288776-12-000021" not in set(bundled["accession"]) and set(bundled["symbol"]) == set(SYMBOLS)


def test_fetch_range_is_acceptance_date_in_new_york(bundled):
    p = BundledFilingsProvider()
    # Accepted 2012-10-25 20:45 New York = 2012-10-26 00:45 UTC.
    assert list(p.fetch(["GOOG"], "2012-10-25", "2012-10-25")["accession"]) == ["0001900004-12-000003"]
    assert p.fetch(["GOOG"], "2012-10-26", "2012-10-31").empty
    with pytest.raises(FilingsError, match=r"unknown symbol\(s\) \['NOPE'\]"):
        p.fetch(["AAPL", "NOPE"], "2012-01-01", "2012-12-31")


# ------------------------------------------------------------------------------- amendments, point in time


def test_amendment_supersedes_only_from_its_own_acceptance(bundled):
    ibm = bundled[bundled["symbol"] == "IBM"]

    def sold(df):
        return df.loc[df["transaction_code"] == "S", "shares"].tolist()

    assert sold(apply_amendments(ibm)) == [1200]
    assert len(apply_amendments(ibm)) == 2  # the director's award (another key) stays
    assert sold(as_of(ibm, "2012-03-07T21:29:59Z")) == []          # before the original
    assert sold(as_of(ibm, "2012-03-12T13:59:59Z")) == [12000]     # original only: the 4/A is not known yet
    assert sold(as_of(ibm, "2012-03-12T14:00:00+00:00")) == [1200]  # 4/A accepted: the original is replaced
    assert sold(as_of(ibm, pd.Timestamp("2012-03-12 10:00", tz="America/New_York"))) == [1200]
    # Only EARLIER filings are superseded: a Form 4 of the same key accepted after the 4/A stays.
    later = ibm[ibm["form_type"] == "4"].tail(1).assign(accession="0001900005-12-000009", shares=500.0,
                                                       accepted_at="2012-03-14T15:00:00Z")
    assert sold(apply_amendments(pd.concat([ibm, later]))) == [1200, 500]


def test_filing_accepted_after_the_close_counts_from_the_next_session(bundled):
    without = bundled[bundled["accession"] != AAPL_SALE["accession"]]
    # Accepted 16:05 New York on 2012-05-03: D's row is exactly as if the filing did not exist.
    pd.testing.assert_series_equal(flow_at(bundled, "AAPL", "2012-05-03"), flow_at(without, "AAPL", "2012-05-03"))
    assert (flow_at(bundled, "AAPL", "2012-05-03") == 0).all()
    nxt = flow_at(bundled, "AAPL", "2012-05-04")
    assert (nxt["sell_count_30d"], nxt["sell_count_90d"], nxt["buy_count_90d"]) == (2, 2, 0)
    assert nxt["net_buy_value_30d"] == pytest.approx(-(3000 * 582.10 + 2000 * 583.05))
    # The same filing accepted at 15:59 New York counts for that very session.
    early = pd.DataFrame(parse_form4(xml("aapl_20120503_okafor_s.xml"),
                                     **(AAPL_SALE | {"accepted_at": "2012-05-03T19:59:00Z"})))
    assert flow_at(early, "AAPL", "2012-05-03")["sell_count_30d"] == 2


def test_late_filing_counts_only_from_acceptance_and_windows_use_trade_date(bundled):
    # Director bought 2012-09-04 (200 @ 680.25) but the Form 4 was accepted 2012-10-22 14:30 New York;
    # an officer bought 2012-10-24 (300 @ 695.00), accepted 2012-10-25 20:45 New York.
    assert (flow_at(bundled, "GOOG", "2012-10-19") == 0).all()
    d = flow_at(bundled, "GOOG", "2012-10-22")
    assert (d["buy_count_90d"], d["buy_count_30d"], d["distinct_buyers_90d"]) == (1, 0, 1)  # 48 days old: not 30d
    assert (d["net_buy_value_90d"], d["net_buy_value_30d"], d["director_buy_value_90d"]) == (136050.0, 0.0, 136050.0)
    assert flow_at(bundled, "GOOG", "2012-10-25")["buy_count_90d"] == 1
    d = flow_at(bundled, "GOOG", "2012-10-26")
    assert (d["buy_count_90d"], d["buy_count_30d"], d["distinct_buyers_90d"]) == (2, 1, 2)
    assert (d["officer_buy_value_90d"], d["director_buy_value_90d"]) == (208500.0, 136050.0)
    assert flow_at(bundled, "GOOG", "2012-11-30")["buy_count_90d"] == 2  # 2012-09-04 is 87 days back
    assert flow_at(bundled, "GOOG", "2012-12-03")["buy_count_90d"] == 1  # 90 days back: out of the window


def test_insider_flow_applies_amendments_as_of_each_session(bundled):
    assert flow_at(bundled, "IBM", "2012-03-07")["sell_count_90d"] == 0
    assert flow_at(bundled, "IBM", "2012-03-09")["net_buy_value_30d"] == pytest.approx(-12000 * 205.10)
    d = flow_at(bundled, "IBM", "2012-03-12")
    assert d["net_buy_value_30d"] == pytest.approx(-1200 * 205.10) and d["sell_count_30d"] == 1


def test_insider_flow_shape_zeros_and_open_market_only(bundled):
    days = sessions("2012-08-01", "2012-09-28")
    flow = insider_flow(bundled, days, SYMBOLS)
    assert list(flow.columns) == ["symbol", "session"] + FLOW_COLUMNS and len(flow) == len(days) * len(SYMBOLS)
    assert not flow[FLOW_COLUMNS].isna().any().any()
    assert flow["buy_count_90d"].dtype == "int64"
    # The option exercise (M) and withholding (F) accepted 2012-08-22 change nothing; only the May sale is in 90d.
    aapl = flow[flow["symbol"] == "AAPL"].set_index("session")
    assert aapl.loc["2012-08-22", FLOW_COLUMNS].equals(aapl.loc["2012-08-23", FLOW_COLUMNS])
    assert (flow.loc[flow["symbol"] == "MSFT", FLOW_COLUMNS] == 0).all().all()
    assert (insider_flow(bundled.iloc[:0], days[:3], ["AAPL"])[FLOW_COLUMNS] == 0).all().all()


def test_insider_flow_equals_a_per_session_as_of_reference(bundled):
    days = sorted(set(sessions("2011-05-02", "2013-05-31")[::9]) | {"2012-03-09", "2012-03-12", "2012-10-22"})
    closes = session_closes_utc(days[0], days[-1])
    got = insider_flow(bundled, days, SYMBOLS).set_index(["symbol", "session"])
    for day in days:
        known = as_of(bundled, closes[day])
        trades = known[~known["is_derivative"] & known["transaction_code"].isin(["P", "S"])]
        age = (pd.Timestamp(day) - pd.to_datetime(trades["transaction_date"])).dt.days
        for symbol in SYMBOLS:
            for w in (30, 90):
                x = trades[(trades["symbol"] == symbol) & (age >= 0) & (age < w)]
                value = (x["shares"] * x["price"]).fillna(0)
                buy = x["transaction_code"] == "P"
                row = got.loc[(symbol, day)]
                assert row[f"net_buy_value_{w}d"] == pytest.approx(value[buy].sum() - value[~buy].sum())
                assert (row[f"buy_count_{w}d"], row[f"sell_count_{w}d"]) == (buy.sum(), (~buy).sum())
            assert row["distinct_buyers_90d"] == x.loc[buy, "insider_cik"].nunique()
            assert row["officer_buy_value_90d"] == pytest.approx(value[buy & x["is_officer"]].sum())


# ---------------------------------------------------------------------------------------- EDGAR over HTTP


def test_edgar_provider_matches_bundled_and_speaks_edgar(edgar, bundled):
    got = provider(edgar).fetch(SYMBOLS, "2011-01-01", "2013-12-31")
    pd.testing.assert_frame_equal(got, bundled)
    paths = edgar.paths()
    assert {r["user_agent"] for r in edgar.requests} == {UA}
    assert "/files/company_tickers.json" in paths and "/submissions/CIK0000320193.json" in paths
    assert "/submissions/CIK0000320193-submissions-001.json" in paths  # older-filings page followed
    assert not any("xslF345" in p or p.endswith(".htm") for p in paths)  # raw XML only, 10-K skipped


def test_edgar_range_skips_pages_outside_it(edgar):
    got = provider(edgar).fetch(["AAPL"], "2012-07-01", "2012-12-31")
    pd.testing.assert_frame_equal(got, BundledFilingsProvider().fetch(["AAPL"], "2012-07-01", "2012-12-31"))
    assert list(got["accession"].unique()) == ["0001900002-12-000011"]
    assert not any("submissions-001" in p for p in edgar.paths())


def test_edgar_user_agent_is_validated_before_any_request(edgar):
    with pytest.raises(FilingsError, match=r"user_agent .*contact@example\.com.*got 'QTOS'"):
        provider(edgar, user_agent="QTOS").fetch(["AAPL"], "2012-01-01", "2012-12-31")
    assert edgar.requests == []


def test_edgar_unknown_symbol_is_named(edgar):
    with pytest.raises(FilingsError, match=r"unknown symbol\(s\) \['NOPE'\]"):
        provider(edgar).fetch(["AAPL", "NOPE"], "2012-01-01", "2012-12-31")


def test_edgar_rate_limit_spaces_requests(edgar, monkeypatch):
    # timed where the client sends (the server's receive times carry scheduling jitter of a loaded CI machine)
    import qt_resources.filings as filings
    sent, real_get = [], filings.requests.get
    monkeypatch.setattr(filings.requests, "get", lambda *a, **k: sent.append(time.monotonic()) or real_get(*a, **k))
    provider(edgar, max_requests_per_second=5).fetch(["AAPL"], "2012-01-01", "2012-12-31")
    assert len(edgar.requests) == len(sent) == 5  # tickers, submissions, older page, two documents
    assert min(np.diff(sent)) >= 0.2 - 0.002


def test_edgar_retries_503_with_backoff_and_429_after_retry_after(edgar, bundled):
    edgar.faults.extend([503, 429])  # the 429 says Retry-After: 0
    got = provider(edgar, backoff_seconds=0.5).fetch(["IBM"], "2011-01-01", "2013-12-31")
    pd.testing.assert_frame_equal(got, bundled[bundled["symbol"] == "IBM"].reset_index(drop=True))
    assert edgar.paths()[:3] == ["/files/company_tickers.json"] * 3
    t = [r["t"] for r in edgar.requests]
    assert t[1] - t[0] >= 0.5 - 0.02  # backoff after the 503
    assert t[2] - t[1] < 0.9  # Retry-After: 0 beats the next backoff (1.0 s)


def test_edgar_client_errors_are_not_retried(edgar):
    with pytest.raises(FilingsError, match=r"GET http://127\.0\.0\.1:\d+/nowhere/files/company_tickers\.json "
                                           r"-> HTTP 404"):
        provider(edgar, archives_base_url=f"{edgar.url}/nowhere").fetch(["IBM"], "2012-01-01", "2012-12-31")
    assert len(edgar.requests) == 1


def test_edgar_gives_up_naming_the_url(edgar):
    edgar.faults.extend([503] * 4)
    with pytest.raises(FilingsError, match=r"GET http://127\.0\.0\.1:\d+/files/company_tickers\.json failed after "
                                           r"4 attempts \(last: HTTP 503\)"):
        provider(edgar).fetch(["IBM"], "2012-01-01", "2012-12-31")
    assert len(edgar.requests) == 4


def test_insider_flow_rows_by_session_then_symbol_whatever_the_symbol_order(bundled):
    days = sessions("2012-02-01", "2012-12-31")  # IBM's sales, GOOG's two buys (two insiders)
    flow = insider_flow(bundled, days, SYMBOLS)
    assert flow.equals(flow.sort_values(["session", "symbol"], ignore_index=True))
    # the universe's order and a repeated symbol change nothing (rows are built on a dense symbol x session grid)
    assert insider_flow(bundled, days, ["MSFT", "IBM", "AAPL", "IBM", "GOOG"]).equals(flow)
    # a buy without an insider CIK counts as a buy but not as a distinct buyer
    anonymous = insider_flow(bundled.assign(insider_cik=None), days, SYMBOLS)
    assert (anonymous["distinct_buyers_90d"] == 0).all() and flow["distinct_buyers_90d"].max() == 2
    assert anonymous.drop(columns="distinct_buyers_90d").equals(flow.drop(columns="distinct_buyers_90d"))
