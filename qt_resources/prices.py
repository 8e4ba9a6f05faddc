"""Daily price providers: one interface, three implementations.

Every provider returns the canonical frame ``PRICE_COLUMNS``: one row per (symbol, session), session as an
ISO date string, unadjusted OHLCV plus the provider's split/dividend-adjusted close.
"""

from __future__ import annotations

from datetime import date, timedelta

import dagster as dg
import numpy as np
import pandas as pd
from pydantic import Field

from qt_resources.retry import RateLimiter, retry_call

PRICE_COLUMNS = ["symbol", "session", "open", "high", "low", "close", "adj_close", "volume"]
_FLOAT_COLUMNS = ["open", "high", "low", "close", "adj_close"]


EXCHANGE_TZ = "America/New_York"
_AWARE = r"\d[T ]\d{1,2}:\d{2}(?::\d{2}(?:\.\d+)?)?\s*(?:Z|[+-]\d{2}:?\d{2})$"


def session_dates(col: pd.Series) -> pd.Series:
    """Session values as midnight timestamps (NaT where a value is not a date). A timestamp with a UTC offset
    (``2012-01-03T05:00:00Z``, ``2012-01-03 16:00:00-05:00``: how some APIs stamp daily bars) counts for its
    New York date."""
    if isinstance(col.dtype, pd.DatetimeTZDtype):
        return col.dt.tz_convert(EXCHANGE_TZ).dt.tz_localize(None).dt.normalize()
    if pd.api.types.is_datetime64_dtype(col.dtype):
        return col.dt.normalize()
    text = col.astype("string")
    aware = pd.Series(False, index=col.index)
    timed = text.str.contains(":", regex=False, na=False).astype(bool)  # only a value with a time can have an offset
    if timed.any():
        aware[timed] = text[timed].str.contains(_AWARE, regex=True, na=False).astype(bool)
    out = pd.to_datetime(text.where(~aware), errors="coerce", format="mixed")
    if aware.any():
        conv = pd.to_datetime(text[aware], errors="coerce", format="mixed", utc=True)
        out = out.astype("datetime64[ns]")
        out[aware] = conv.dt.tz_convert(EXCHANGE_TZ).dt.tz_localize(None).dt.normalize().astype("datetime64[ns]")
    return out


class PriceDataError(ValueError):
    """Provider output that cannot be used; the message names the row and field."""


def normalise_prices(df: pd.DataFrame, source: str) -> pd.DataFrame:
    """Coerce a provider frame to PRICE_COLUMNS, failing with the first bad row/field named."""
    missing = [c for c in PRICE_COLUMNS if c not in df.columns]
    if missing:
        raise PriceDataError(f"{source}: missing columns {missing} (got {list(df.columns)})")
    out = df[PRICE_COLUMNS].copy()
    out["symbol"] = out["symbol"].astype(str)
    out["session"] = pd.to_datetime(out["session"]).dt.strftime("%Y-%m-%d")
    for col in _FLOAT_COLUMNS + ["volume"]:
        conv = pd.to_numeric(out[col], errors="coerce")
        bad = conv.isna() & out[col].notna()
        if bad.any():
            i = bad.idxmax()
            raise PriceDataError(
                f"{source}: row {out.loc[i, 'symbol']} {out.loc[i, 'session']}: {col}={df.loc[i, col]!r} is not a number"
            )
        out[col] = conv.astype("float64")
    whole = out["volume"].notna().all() and (out["volume"] == out["volume"].round()).all()
    if whole:  # a fractional volume stays as it is: the quality gates refuse it rather than truncate it
        out["volume"] = out["volume"].astype("int64")
    return out.sort_values(["session", "symbol"], ignore_index=True)


class PriceProvider(dg.ConfigurableResource):
    """Interface: daily bars for ``symbols`` over the sessions ``start..end`` (inclusive).

    Rows may be untrusted (a CSV provider passes values through as text): the ``prices`` asset validates
    everything before it stores anything."""

    def fetch(self, symbols: list[str], start: str, end: str) -> pd.DataFrame:  # pragma: no cover
        raise NotImplementedError

    def listed_from(self, symbols: list[str]) -> dict[str, str]:
        """First session each symbol traded, where the provider knows it (before it, no row is expected)."""
        return {}

    def listed_until(self, symbols: list[str]) -> dict[str, str]:
        """Last session each delisted symbol traded, where the provider knows it (after it, no row is expected)."""
        return {}

    @property
    def name(self) -> str:
        return type(self).__name__


class BundledPriceProvider(PriceProvider):
    """Offline default: real daily stocks shipped in ``bokeh_sampledata`` (Quandl WIKI, public domain):
    AAPL, GOOG, IBM, MSFT 2000-03-01..2013-03-01 and FB from its 2012 IPO; OHLCV unadjusted plus
    ``adj_close``. No network access at all."""

    def fetch(self, symbols: list[str], start: str, end: str) -> pd.DataFrame:
        from bokeh_sampledata import stocks

        data = stocks.data
        available = sorted(data["ticker"].unique())
        unknown = [s for s in symbols if s not in available]
        if unknown:
            raise PriceDataError(f"bundled provider: unknown symbol(s) {unknown}; available: {available}")
        d = data[data["ticker"].isin(symbols) & data["date"].between(pd.Timestamp(start), pd.Timestamp(end))]
        d = d.rename(columns={"ticker": "symbol", "date": "session"})
        return normalise_prices(d.reset_index(drop=True), "bundled")

    def listed_from(self, symbols: list[str]) -> dict[str, str]:
        from bokeh_sampledata import stocks

        first = stocks.data.groupby("ticker")["date"].min()
        return {s: first[s].strftime("%Y-%m-%d") for s in symbols if s in first.index}


class CsvPriceProvider(PriceProvider):
    """Your own daily bars: every ``*.csv`` under ``path`` (a file or a folder) with a header
    ``symbol,session,open,high,low,close,adj_close,volume`` (``date`` is accepted for ``session``;
    ``adj_close`` defaults to ``close``). Values pass through as text; the quality gates judge them."""

    path: str

    def fetch(self, symbols: list[str], start: str, end: str) -> pd.DataFrame:
        from pathlib import Path

        root = Path(self.path)
        files = sorted(root.glob("*.csv")) if root.is_dir() else [root]
        if not files or not files[0].exists():
            raise PriceDataError(f"csv provider: no CSV files at {root}")
        frames = []
        for f in files:
            try:
                d = pd.read_csv(f, dtype=str, keep_default_na=False, na_values=[""])
            except pd.errors.EmptyDataError:
                raise PriceDataError(f"csv provider: {f} is empty (not even a header line; expected "
                                     f"{','.join(PRICE_COLUMNS)})") from None
            except (pd.errors.ParserError, UnicodeDecodeError) as e:
                raise PriceDataError(f"csv provider: {f} cannot be read as CSV: {e}") from None
            d = d.rename(columns={"date": "session"})
            if "adj_close" not in d.columns and "close" in d.columns:
                d["adj_close"] = d["close"]
            lacking = [c for c in PRICE_COLUMNS if c not in d.columns]
            if lacking:
                got = ", ".join(map(str, d.columns))
                raise PriceDataError(f"csv provider: {f}: missing columns {lacking} (its header has: "
                                     f"{got[:200]!r}{' ...' if len(got) > 200 else ''}); nothing written")
            d["_source"] = _line_sources(f, len(d))
            frames.append(d)
        d = pd.concat(frames, ignore_index=True)
        if "symbol" in d.columns:  # other symbols in the files were not asked for
            d = d[d["symbol"].fillna("").str.strip().isin(symbols)]
        if "session" in d.columns:  # outside start..end was not asked for; unparseable dates stay for the gates
            day = session_dates(d["session"])
            d = d[day.isna() | day.between(pd.Timestamp(start), pd.Timestamp(end))]
        return d.reset_index(drop=True)


def _line_sources(path, rows: int) -> list[str]:
    """"<file> line N" for each data row read from ``path``: the file's own line numbers (the header is the first
    non-blank line; blank lines, which the reader skips, are counted)."""
    numbers = [n for n, line in enumerate(path.read_text(errors="replace").splitlines(), start=1) if line.strip()][1:]
    if len(numbers) != rows:  # e.g. a quoted field over several lines: say the data row instead
        return [f"{path.name} data row {k}" for k in range(1, rows + 1)]
    return [f"{path.name} line {n}" for n in numbers]


class YFinancePriceProvider(PriceProvider):
    """Yahoo Finance through ``yfinance`` (needs internet); transient errors retried with backoff."""

    max_attempts: int = 4

    def fetch(self, symbols: list[str], start: str, end: str) -> pd.DataFrame:
        import yfinance as yf

        end_excl = (date.fromisoformat(end) + timedelta(days=1)).isoformat()
        raw = retry_call(lambda: yf.download(symbols, start=start, end=end_excl, auto_adjust=False,
                                             group_by="ticker", progress=False, threads=False),
                         what=f"yfinance {symbols} {start}..{end}", attempts=self.max_attempts)
        frames = []
        for s in symbols:
            if s not in raw.columns.get_level_values(0):
                raise PriceDataError(f"yfinance: no data for symbol {s!r}")
            f = raw[s].dropna(how="all").reset_index()
            frames.append(pd.DataFrame({
                "symbol": s, "session": f["Date"], "open": f["Open"], "high": f["High"], "low": f["Low"],
                "close": f["Close"], "adj_close": f["Adj Close"], "volume": f["Volume"],
            }))
        return normalise_prices(pd.concat(frames, ignore_index=True), "yfinance")


class AlpacaPriceProvider(PriceProvider):
    """Alpaca market data through alpaca-py's ``StockHistoricalDataClient``. Keys come from environment
    variables (``dg.EnvVar``); ``url_override`` points the client at another host (tests use a local server)."""

    api_key: str
    secret_key: str
    url_override: str | None = None
    feed: str = Field("iex", description="iex (free) or sip")
    max_attempts: int = 4
    max_requests_per_second: float = Field(3.0, description="Alpaca's free data plan allows 200/min")

    def fetch(self, symbols: list[str], start: str, end: str) -> pd.DataFrame:
        from alpaca.data.enums import Adjustment, DataFeed
        from alpaca.data.historical import StockHistoricalDataClient
        from alpaca.data.requests import StockBarsRequest
        from alpaca.data.timeframe import TimeFrame

        client = StockHistoricalDataClient(self.api_key, self.secret_key, url_override=self.url_override)
        limiter = RateLimiter(self.max_requests_per_second)

        def call(req):
            limiter.wait()
            return client.get_stock_bars(req)

        def bars(adjustment) -> pd.DataFrame:
            req = StockBarsRequest(symbol_or_symbols=symbols, timeframe=TimeFrame.Day,
                                   start=pd.Timestamp(start, tz="America/New_York"),
                                   end=pd.Timestamp(end, tz="America/New_York") + pd.Timedelta(hours=23),
                                   adjustment=adjustment, feed=DataFeed(self.feed))
            # alpaca-py itself retries 429/504 (3 x 3 s); we add backoff for 5xx and dropped connections
            df = retry_call(lambda: call(req), what=f"alpaca bars {symbols} {start}..{end} ({adjustment.value})",
                            attempts=self.max_attempts).df
            if df.empty:
                return df
            df = df.reset_index()
            df["session"] = df["timestamp"].dt.tz_convert("America/New_York").dt.strftime("%Y-%m-%d")
            return df

        raw, adj = bars(Adjustment.RAW), bars(Adjustment.ALL)
        missing = [s for s in symbols if raw.empty or s not in set(raw["symbol"])]
        if missing:
            raise PriceDataError(f"alpaca: no bars for symbol(s) {missing} in {start}..{end}")
        merged = raw.merge(adj[["symbol", "session", "close"]].rename(columns={"close": "adj_close"}),
                           on=["symbol", "session"], how="left")
        merged["adj_close"] = np.where(merged["adj_close"].isna(), merged["close"], merged["adj_close"])
        return normalise_prices(merged, "alpaca")


class SyntheticPriceProvider(PriceProvider):
    """Seeded synthetic universe (qt_resources/synthetic.py): any symbols over any XNYS range 1995-2030, market
    factor + idiosyncratic returns, consistent OHLC, lognormal volume, splits and dividends in ``adj_close``,
    listings and delistings. Offline; a session's bar never depends on the range fetched."""

    seed: int = 7

    def fetch(self, symbols: list[str], start: str, end: str) -> pd.DataFrame:
        from qt_resources.synthetic import synthetic_bars

        return normalise_prices(synthetic_bars(symbols, start, end, self.seed), "synthetic")

    def listed_from(self, symbols: list[str]) -> dict[str, str]:
        from qt_resources.synthetic import listed_from

        return listed_from(symbols, self.seed)

    def listed_until(self, symbols: list[str]) -> dict[str, str]:
        from qt_resources.synthetic import listed_until

        return listed_until(symbols, self.seed)


def make_price_provider(kind: str, csv_path: str | None = None, seed: int = 7) -> PriceProvider:
    if kind == "synthetic":
        return SyntheticPriceProvider(seed=seed)
    if kind == "csv":
        return CsvPriceProvider(path=csv_path or "prices_csv")
    if kind == "bundled":
        return BundledPriceProvider()
    if kind == "yfinance":
        return YFinancePriceProvider()
    if kind == "alpaca":
        return AlpacaPriceProvider(api_key=dg.EnvVar("ALPACA_API_KEY"), secret_key=dg.EnvVar("ALPACA_SECRET_KEY"),
                                   url_override=None)
    raise ValueError(f"data.provider: unknown provider {kind!r}")
