"""SEC Form 4 insider filings: parsing, amendments, point-in-time insider-flow features, and two providers
(bundled fixtures offline; EDGAR over HTTP).

Point-in-time rule: a filing is known from its EDGAR acceptance time ``accepted_at`` (UTC), never from the trade
date. It is usable for the decision of ``available_session``, the first XNYS session whose close is at or after
``accepted_at`` (``qt_resources.calendar.available_session``). A 4/A replaces what it amends only from its own
acceptance on.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from datetime import date
from functools import lru_cache
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import requests
from pydantic import Field

from qt_resources.calendar import available_session
from qt_resources.retry import RateLimiter, RetriesExhausted, TransientError, parse_retry_after, retry_call

TRANSACTION_COLUMNS = [
    "accession", "form_type", "symbol", "issuer_cik", "insider_cik", "insider_name", "is_director", "is_officer",
    "is_ten_pct_owner", "officer_title", "period_of_report", "transaction_date", "transaction_code", "shares",
    "price", "acquired_disposed", "shares_owned_after", "is_derivative", "accepted_at", "available_session",
]
FLOW_COLUMNS = [
    "net_buy_value_30d", "net_buy_value_90d", "buy_count_30d", "buy_count_90d", "sell_count_30d", "sell_count_90d",
    "distinct_buyers_90d", "officer_buy_value_90d", "director_buy_value_90d",
]
FORM_TYPES = ("4", "4/A")
AMENDMENT_KEY = ["issuer_cik", "insider_cik", "period_of_report"]
FIXTURES = Path(__file__).parent / "fixtures" / "form4"

_DTYPES = {**dict.fromkeys(TRANSACTION_COLUMNS, "str"), "issuer_cik": "int64", "insider_cik": "int64",
           **dict.fromkeys(["is_director", "is_officer", "is_ten_pct_owner", "is_derivative"], "bool"),
           **dict.fromkeys(["shares", "price", "shares_owned_after"], "float64")}
_COUNT_COLUMNS = [c for c in FLOW_COLUMNS if "_count_" in c or c.startswith("distinct_")]
_REQUIRED = object()
_NEVER = "9999-12-31"


class FilingsError(RuntimeError):
    """A request the filings providers cannot serve (unknown symbol, bad configuration, failed HTTP request)."""


class FilingParseError(FilingsError):
    """A Form 4 document that cannot be used; the message names the accession and the field (xpath)."""


# ----------------------------------------------------------------------------------------------- parsing


def _bool(text: str) -> bool:
    flags = {"1": True, "true": True, "0": False, "false": False}
    if text.lower() not in flags:
        raise ValueError(text)
    return flags[text.lower()]


def _date(text: str) -> str:
    """EDGAR dates, sometimes with a zone suffix (``2011-05-24-05:00``), as ISO ``YYYY-MM-DD``."""
    return date.fromisoformat(text[:10]).isoformat()


def _utc(ts) -> pd.Timestamp:
    """A timestamp in UTC; naive input is taken as UTC."""
    t = pd.Timestamp(ts)
    return t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")


def _reader(node: ET.Element, accession: str, prefix: str = ""):
    """``get(path, kind, default)``: the stripped text at ``path`` under ``node`` converted by ``kind``; empty or
    absent gives ``default``, or FilingParseError naming the accession and the full xpath when required."""

    def get(path: str, kind=str, default=_REQUIRED):
        el = node.find(path)
        text = (el.text or "").strip() if el is not None else ""
        if not text:
            if default is _REQUIRED:
                raise FilingParseError(f"{accession}: missing required field {prefix}{path}")
            return default
        try:
            return kind(text)
        except ValueError as e:
            raise FilingParseError(f"{accession}: cannot parse {prefix}{path}={text!r}") from e

    return get


def _transaction(get, is_derivative: bool) -> dict:
    """One table row; shares are required in the non-derivative table only (derivative rows may report a value)."""
    return {
        "transaction_date": get("transactionDate/value", _date),
        "transaction_code": get("transactionCoding/transactionCode"),
        "shares": get("transactionAmounts/transactionShares/value", float,
                      np.nan if is_derivative else _REQUIRED),
        "price": get("transactionAmounts/transactionPricePerShare/value", float, np.nan),  # gifts/awards: footnote only
        "acquired_disposed": get("transactionAmounts/transactionAcquiredDisposedCode/value"),
        "shares_owned_after": get("postTransactionAmounts/sharesOwnedFollowingTransaction/value", float, np.nan),
        "is_derivative": is_derivative,
    }


def _parse_rows(xml: bytes | str, accession: str, form_type: str, accepted_at: str) -> list[dict]:
    """Transactions of one ownershipDocument, TRANSACTION_COLUMNS without ``available_session``. With several
    reporting owners (joint filings), the first is the insider: joint filers report the same shares, so one row
    per transaction avoids double counting."""
    try:
        accepted = _utc(accepted_at).strftime("%Y-%m-%dT%H:%M:%SZ")
    except ValueError as e:
        raise FilingParseError(f"{accession}: cannot parse accepted_at={accepted_at!r}") from e
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as e:
        raise FilingParseError(f"{accession}: malformed XML ({e})") from e
    if root.tag != "ownershipDocument":
        raise FilingParseError(f"{accession}: root element is <{root.tag}>, expected <ownershipDocument>")
    get, rel = _reader(root, accession), "reportingOwner/reportingOwnerRelationship"
    head = {
        "accession": accession, "form_type": form_type,
        "symbol": get("issuer/issuerTradingSymbol").upper(),
        "issuer_cik": get("issuer/issuerCik", int),
        "insider_cik": get("reportingOwner/reportingOwnerId/rptOwnerCik", int),
        "insider_name": get("reportingOwner/reportingOwnerId/rptOwnerName"),
        "is_director": get(f"{rel}/isDirector", _bool, False),
        "is_officer": get(f"{rel}/isOfficer", _bool, False),
        "is_ten_pct_owner": get(f"{rel}/isTenPercentOwner", _bool, False),
        "officer_title": get(f"{rel}/officerTitle", str, None),
        "period_of_report": get("periodOfReport", _date),
    }
    rows = []
    for table, tag, is_derivative in (("nonDerivativeTable", "nonDerivativeTransaction", False),
                                      ("derivativeTable", "derivativeTransaction", True)):
        for i, tx in enumerate(root.findall(f"{table}/{tag}"), start=1):
            tx_get = _reader(tx, accession, f"{table}/{tag}[{i}]/")
            rows.append({**head, **_transaction(tx_get, is_derivative), "accepted_at": accepted})
    return rows


def parse_form4(xml: bytes | str, *, accession: str, form_type: str, accepted_at: str) -> list[dict]:
    """One dict per transaction (keys = TRANSACTION_COLUMNS, in order) of an EDGAR ownershipDocument (X0303..X0508):
    non-derivative rows first, then derivative rows; holdings are not transactions. ``accepted_at`` (ISO, naive =
    UTC) becomes a UTC ``YYYY-MM-DDTHH:MM:SSZ`` string and sets ``available_session``. Booleans accept 1/0/true/false
    (absent = False); missing or footnote-only price, absent post-transaction amount -> NaN. Raises
    FilingParseError (naming ``accession`` and the xpath) on malformed XML or a missing required field."""
    rows = _parse_rows(xml, accession, form_type, accepted_at)
    session = available_session([rows[0]["accepted_at"]]).iloc[0] if rows else None
    return [{**r, "available_session": session} for r in rows]


def _frame(rows: list[dict] | pd.DataFrame) -> pd.DataFrame:
    """Parsed rows as a typed TRANSACTION_COLUMNS frame (one calendar lookup for all), in acceptance order."""
    df = pd.DataFrame(rows, columns=TRANSACTION_COLUMNS[:-1])
    df["available_session"] = available_session(df["accepted_at"]).to_numpy()
    return df.astype(_DTYPES).sort_values(["accepted_at", "accession", "symbol"], kind="stable", ignore_index=True)


# ------------------------------------------------------------------------------- amendments, point in time


def apply_amendments(df: pd.DataFrame) -> pd.DataFrame:
    """Drop rows superseded by a 4/A: within one (issuer_cik, insider_cik, period_of_report), a 4/A replaces every
    filing (4 or 4/A) accepted before it, i.e. keep a row iff accepted_at >= the latest 4/A accepted_at of its
    key. Uses every row given; for a point-in-time view call ``as_of``."""
    accepted = pd.to_datetime(df["accepted_at"], utc=True)
    latest_amendment = accepted.where(df["form_type"] == "4/A").groupby(
        [df[k] for k in AMENDMENT_KEY], dropna=False).transform("max")
    return df[latest_amendment.isna() | (accepted >= latest_amendment)].reset_index(drop=True)


def as_of(df: pd.DataFrame, cutoff_utc) -> pd.DataFrame:
    """What was known at ``cutoff_utc`` (naive = UTC): filings with accepted_at <= cutoff, then amendments among
    those only, so a backtest before a 4/A's acceptance still sees the original."""
    return apply_amendments(df[pd.to_datetime(df["accepted_at"], utc=True) <= _utc(cutoff_utc)])


def _superseded_session(df: pd.DataFrame) -> pd.Series:
    """Per row: the first session at which a 4/A of the same AMENDMENT_KEY accepted strictly after the row's filing
    is available (NaN: never). The row is dropped by ``as_of(df, close of D)`` exactly when this is <= D."""
    amendments = df.loc[df["form_type"] == "4/A", AMENDMENT_KEY + ["accepted_at", "available_session"]]
    pairs = (df[AMENDMENT_KEY + ["accepted_at"]].reset_index(names="row")
             .merge(amendments.drop_duplicates(), on=AMENDMENT_KEY, suffixes=("", "_amendment")))
    later = pd.to_datetime(pairs["accepted_at_amendment"], utc=True) > pd.to_datetime(pairs["accepted_at"], utc=True)
    return pairs[later].groupby("row")["available_session"].min().reindex(df.index)


def _days(values) -> np.ndarray:
    return np.array(pd.Series(values, dtype=object).fillna(_NEVER).tolist(), dtype="datetime64[D]")


def insider_flow(transactions: pd.DataFrame, sessions: list[str], symbols: list[str]) -> pd.DataFrame:
    """Insider-flow features per (symbol, session): columns ``symbol, session`` + FLOW_COLUMNS, every pair present.

    Only open-market trades count: non-derivative rows with code P (buy) or S (sale). A trade counts for session D
    and window W in {30, 90} calendar days iff
      * its filing is known by D: available_session <= D (from the ACCEPTANCE time, not the trade date);
      * it is not superseded as of D: no 4/A of its (issuer, insider, period) accepted after its filing has
        available_session <= D (the same rows as ``as_of(transactions, close of D)``);
      * D - W days < transaction_date <= D.
    value = shares * price (missing price: value 0, still counted); net_buy_value = sum(buy value) - sum(sale value);
    counts are transactions; distinct_buyers = distinct insider CIKs with a buy; officer/director_buy_value = buy
    value of insiders flagged is_officer / is_director. No activity gives 0, never NaN.
    ``transactions``: provider output (amendments not applied)."""
    t = transactions.reset_index(drop=True)
    t = t.assign(superseded_session=_superseded_session(t))
    t = t[~t["is_derivative"] & t["transaction_code"].isin(["P", "S"]) & t["symbol"].isin(symbols)]
    t = t.reset_index(drop=True)
    days = np.unique(_days(sessions))
    names = list(dict.fromkeys(symbols))
    n_days, n_sym = len(days), len(names)
    traded = _days(t["transaction_date"])
    # Each trade is live on the sessions [lo, hi): known and traded, before trade + 90 days and before supersession.
    lo = np.searchsorted(days, np.maximum(_days(t["available_session"]), traded))
    hi = np.minimum(np.searchsorted(days, traded + 90), np.searchsorted(days, _days(t["superseded_session"])))
    n = np.clip(hi - lo, 0, None)
    # One row per (trade, live session), built from per-trade numpy arrays only: each trade is live on ~60
    # sessions, so expanding the transactions frame itself (object columns) took ~6 GB at 500 symbols x 20 y.
    row = np.repeat(np.arange(len(t)), n)
    day = lo[row] + np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n)
    key = pd.Categorical(t["symbol"], categories=names).codes.astype(np.int64)[row] * n_days + day
    buy_t = (t["transaction_code"] == "P").to_numpy()
    value_t = (t["shares"] * t["price"]).fillna(0.0).to_numpy()
    buy, value = buy_t[row], value_t[row]
    in_30d = (days[day] - traded[row]).astype(int) < 30
    net = np.where(buy, value, -value)
    buyer = pd.Categorical(t["insider_cik"]).codes.astype(float)
    buyer[buyer < 0] = np.nan  # no CIK: not a distinct buyer (nunique skips NaN)
    parts = pd.DataFrame({
        "key": key,
        "net_buy_value_30d": np.where(in_30d, net, 0.0), "net_buy_value_90d": net,
        "buy_count_30d": buy & in_30d, "buy_count_90d": buy, "sell_count_30d": ~buy & in_30d, "sell_count_90d": ~buy,
        "distinct_buyers_90d": np.where(buy, buyer[row], np.nan),
        "officer_buy_value_90d": value * buy * t["is_officer"].to_numpy()[row],
        "director_buy_value_90d": value * buy * t["is_director"].to_numpy()[row],
    })
    how = {c: "sum" for c in FLOW_COLUMNS} | {"distinct_buyers_90d": "nunique"}
    agg = parts.groupby("key").agg(how)  # the same rows in the same order per group as before: the same sums
    # dense (symbol, session) grid, every pair present (no activity: 0), rows by session then symbol name
    by_name = np.argsort(np.array(names, dtype=object), kind="stable")
    cols = {}
    for c in FLOW_COLUMNS:
        dense = np.zeros(n_sym * n_days, dtype="int64" if c in _COUNT_COLUMNS else "float64")
        dense[agg.index.to_numpy()] = agg[c].to_numpy()
        cols[c] = dense.reshape(n_sym, n_days)[by_name].T.ravel()
    flow = pd.DataFrame({"symbol": np.tile(np.array(names, dtype=object)[by_name], n_days),
                         "session": np.repeat(np.datetime_as_string(days), n_sym), **cols})
    return flow


# ------------------------------------------------------------------------------------------------ providers


def _iso(day) -> str:
    return pd.Timestamp(day).strftime("%Y-%m-%d")


def _ny_date(ts) -> str:
    return _utc(ts).tz_convert("America/New_York").strftime("%Y-%m-%d")


class FilingsProvider(dg.ConfigurableResource):
    """Interface: ``fetch(symbols, start, end)`` -> TRANSACTION_COLUMNS rows of the Form 4 / 4/A filings about
    ``symbols`` ACCEPTED in [start, end] (New York dates), amendments NOT applied (see ``as_of``).

    The issuer is identified by CIK: ``symbol`` is the requested ticker, and filings listed under the issuer's CIK
    where the company is itself the reporting owner of another issuer are dropped. Implementations supply
    ``_ticker_ciks``, ``_filings`` (every filing listed for a CIK that may fall in the range) and ``_document``."""

    def fetch(self, symbols: list[str], start: str, end: str) -> pd.DataFrame:
        start, end = _iso(start), _iso(end)
        ciks = self._ticker_ciks()
        unknown = [s for s in symbols if s not in ciks]
        if unknown:
            raise FilingsError(f"{self.name}: unknown symbol(s) {unknown}")
        rows = []
        for symbol in symbols:
            cik = ciks[symbol]
            for f in self._filings(cik, start, end):
                if f["form_type"] in FORM_TYPES and start <= _ny_date(f["accepted_at"]) <= end:
                    parsed = _parse_rows(self._document(cik, f), f["accession"], f["form_type"], f["accepted_at"])
                    rows += [{**r, "symbol": symbol} for r in parsed if r["issuer_cik"] == cik]
        return _frame(rows)

    @property
    def name(self) -> str:
        return type(self).__name__

    def _ticker_ciks(self) -> dict[str, int]:  # pragma: no cover
        raise NotImplementedError

    def _filings(self, cik: int, start: str, end: str) -> list[dict]:  # pragma: no cover
        """Dicts with accession, form_type, accepted_at, document."""
        raise NotImplementedError

    def _document(self, cik: int, filing: dict) -> bytes:  # pragma: no cover
        raise NotImplementedError


@lru_cache(maxsize=1)
def _bundled_index() -> dict:
    return json.loads((FIXTURES / "index.json").read_text())


class BundledFilingsProvider(FilingsProvider):
    """Offline default: hand-written Form 4 XML in EDGAR's schema (fictional insiders and numbers, real issuer CIKs)
    for AAPL, GOOG, IBM, MSFT 2011-2013 in ``fixtures/form4``; ``index.json`` lists each file's CIK, accession, form
    type and acceptance time. No network access."""

    def _ticker_ciks(self) -> dict[str, int]:
        return {ticker: v["cik"] for ticker, v in _bundled_index()["tickers"].items()}

    def _filings(self, cik: int, start: str, end: str) -> list[dict]:
        return [{"accession": f["accession"], "form_type": f["form_type"], "accepted_at": f["acceptanceDateTime"],
                 "document": f["file"]} for f in _bundled_index()["filings"] if f["cik"] == cik]

    def _document(self, cik: int, filing: dict) -> bytes:
        return (FIXTURES / filing["document"]).read_bytes()


class SyntheticFilingsProvider(FilingsProvider):
    """Seeded synthetic Form 4 / 4/A transactions for any symbols (qt_resources/synthetic.py): open-market
    purchases and sales by a few insiders per issuer, accepted 0-2 business days after the trade."""

    seed: int = 7

    def fetch(self, symbols: list[str], start: str, end: str) -> pd.DataFrame:
        from qt_resources.synthetic import synthetic_form4

        return _frame(synthetic_form4(symbols, _iso(start), _iso(end), self.seed))


_LIMITERS: dict[float, RateLimiter] = {}  # process-wide, per rate: SEC's limit is per client, not per instance
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[A-Za-z]{2,}")
_XSL_DIR = re.compile(r"^xslF345X\d+/")


class EdgarFilingsProvider(FilingsProvider):
    """SEC EDGAR over HTTP: ticker -> CIK from ``files/company_tickers.json``; the CIK's filing list from
    ``submissions/CIK##########.json`` (``filings.recent`` plus the older-filings pages in ``filings.files`` that
    overlap the range); the raw XML from ``Archives/edgar/data/{cik}/{accession}/{primaryDocument}``, without the
    ``xslF345X0N/`` rendering folder.

    ``user_agent`` identifies you as SEC's fair-access policy requires ("Company Name contact@example.com"; fill it
    from ``dg.EnvVar``). Every request carries it, is spaced by ``max_requests_per_second`` (process-wide, shared by
    all providers with that rate; SEC allows 10) and is retried on 429/5xx/timeouts up to ``max_attempts`` times,
    waiting Retry-After if given, else ``backoff_seconds * 2**(attempt-1)`` (either capped at 30 s).

    Caveat: ``acceptanceDateTime`` is taken as the UTC time it claims to be; ticker -> CIK is today's mapping."""

    user_agent: str = Field(description='SEC fair-access identity: "Company Name contact@example.com"')
    data_base_url: str = "https://data.sec.gov"
    archives_base_url: str = "https://www.sec.gov"
    max_requests_per_second: float = Field(10, gt=0)
    max_attempts: int = Field(4, ge=1)
    backoff_seconds: float = Field(0.5, ge=0)
    timeout_seconds: float = Field(30, gt=0)

    def _ticker_ciks(self) -> dict[str, int]:
        rows = self._get_json(f"{self.archives_base_url}/files/company_tickers.json").values()
        return {r["ticker"].upper(): int(r["cik_str"]) for r in rows}

    def _filings(self, cik: int, start: str, end: str) -> list[dict]:
        base = f"{self.data_base_url}/submissions"
        filings = self._get_json(f"{base}/CIK{cik:010d}.json")["filings"]
        # A page lists filing dates; a filing's date is its acceptance date or a few days later.
        latest = _iso(pd.Timestamp(end) + pd.Timedelta(days=7))
        pages = [filings["recent"]] + [self._get_json(f"{base}/{p['name']}") for p in filings.get("files", [])
                                       if p["filingTo"] >= start and p["filingFrom"] <= latest]
        return [{"accession": a, "form_type": f, "accepted_at": t, "document": d} for p in pages
                for a, f, t, d in zip(p["accessionNumber"], p["form"], p["acceptanceDateTime"], p["primaryDocument"])]

    def _document(self, cik: int, filing: dict) -> bytes:
        folder = filing["accession"].replace("-", "")
        raw = _XSL_DIR.sub("", filing["document"])
        return self._get(f"{self.archives_base_url}/Archives/edgar/data/{cik}/{folder}/{raw}").content

    def _get_json(self, url: str):
        try:
            return self._get(url).json()
        except ValueError as e:
            raise FilingsError(f"EDGAR: GET {url}: response is not JSON ({e})") from e

    def _get(self, url: str) -> requests.Response:
        if not _EMAIL.search(self.user_agent or ""):
            raise FilingsError("EdgarFilingsProvider.user_agent must identify you with a name and an email, e.g. "
                               f"'Company Name contact@example.com' (SEC fair-access policy); got {self.user_agent!r}")
        limiter = _LIMITERS.setdefault(self.max_requests_per_second, RateLimiter(self.max_requests_per_second))

        def attempt() -> requests.Response:
            limiter.wait()
            try:
                response = requests.get(url, headers={"User-Agent": self.user_agent}, timeout=self.timeout_seconds)
            except (requests.Timeout, requests.ConnectionError) as e:
                raise TransientError(type(e).__name__) from None
            if response.ok:
                return response
            if response.status_code != 429 and response.status_code < 500:
                raise FilingsError(f"EDGAR: GET {url} -> HTTP {response.status_code}")
            raise TransientError(f"HTTP {response.status_code}",
                                 retry_after=parse_retry_after(response.headers.get("Retry-After")))

        try:
            return retry_call(attempt, what=f"EDGAR: GET {url}", attempts=self.max_attempts,
                              base_delay=self.backoff_seconds)
        except RetriesExhausted as e:
            last = e.__cause__
            problem = str(last) if isinstance(last, TransientError) else type(last).__name__
            message = f"EDGAR: GET {url} failed after {self.max_attempts} attempts (last: {problem})"
            raise FilingsError(message) from None
