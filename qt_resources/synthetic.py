"""A seeded synthetic universe: daily bars, company news and Form 4 transactions for any symbols over any XNYS
range, offline, so the whole graph runs at any size (``data.provider: synthetic``, ``news.provider: synthetic``,
``filings.provider: synthetic``) and ``bench/`` measures on the same data. One generator for all of them.

Prices. Every symbol's path is drawn from a fixed epoch (``EPOCH``) to a fixed horizon (``HORIZON``), so a
session's bar never depends on the range asked for: fetching 2010..2012 and then 2013 gives the rows of one
fetch of 2010..2013. Returns are ``beta * market + idiosyncratic``: the market factor has volatility regimes
(a two-state Markov chain, calm 0.8 % / stressed 2.2 % a day) shared by all symbols; each symbol draws its
beta (0.5..1.5), idiosyncratic volatility (0.8..2.5 % a day) and drift. OHLC are consistent (low <= open,
close <= high), volume is lognormal and rises with the absolute move. Corporate actions: 2:1 / 3:1 splits
(about one per 12 years) and quarterly cash dividends for about half of the symbols; ``close`` is unadjusted
and ``adj_close`` is split- and dividend-adjusted as of the horizon (as a provider reports it). About a
quarter of the symbols list after the epoch and about 15 % delist before the horizon: no rows outside their
life. Each symbol's draws are seeded by (seed, symbol name): adding symbols never changes the others.

News. Poisson arrivals (0.35 items a session on average, more on big moves), published at random times of
the New York day (so some count for the next session), headlines whose tone follows the day's return, in
Finnhub's item shape, with an occasional syndicated duplicate (the same URL under another id).

Form 4. Open-market purchases (P) and sales (S) by a few insiders per issuer at about 1.5 filings a month,
accepted 0-2 business days after the trade at a random time, with an occasional 4/A amendment.
"""

from __future__ import annotations

import zlib
from functools import lru_cache

import numpy as np
import pandas as pd

from qt_resources.calendar import sessions as xnys_sessions
from qt_resources.prices import PRICE_COLUMNS

EPOCH, HORIZON = "1995-01-03", "2030-12-31"
NEWS_RATE = 0.35
FILINGS_RATE = 1.5 / 21  # filings per session per issuer
_POS = ["beats estimates", "raises guidance", "wins contract", "record profit", "strong demand", "upgrade"]
_NEG = ["misses estimates", "cuts guidance", "loses lawsuit", "weak demand", "downgrade", "recall"]
_NEUTRAL = ["announces conference call", "files quarterly report", "names new director", "holds annual meeting"]


def _rng(seed: int, *parts: str | int) -> np.random.Generator:
    return np.random.default_rng([seed, *[zlib.crc32(str(p).encode()) for p in parts]])


@lru_cache(maxsize=1)
def _calendar() -> np.ndarray:
    return np.array(xnys_sessions(EPOCH, HORIZON))


@lru_cache(maxsize=4)
def _market(seed: int) -> np.ndarray:
    """Daily market log returns over the whole calendar, with calm/stressed volatility regimes."""
    n = len(_calendar())
    rng = _rng(seed, "market")
    state = np.zeros(n, dtype=np.int8)
    switch = rng.random(n)
    for t in range(1, n):  # calm -> stressed 1 %/day, stressed -> calm 4 %/day
        state[t] = (1 - state[t - 1]) if switch[t] < (0.01 if state[t - 1] == 0 else 0.04) else state[t - 1]
    vol = np.where(state == 1, 0.022, 0.008)
    return 0.0003 + vol * rng.standard_normal(n)


@lru_cache(maxsize=64)
def _symbol_path(seed: int, symbol: str) -> pd.DataFrame:
    """The symbol's whole life on the calendar: session, OHLCV (unadjusted), adj_close, ret."""
    cal, m = _calendar(), _market(seed)
    n = len(cal)
    rng = _rng(seed, "symbol", symbol)
    beta, ivol, drift = rng.uniform(0.5, 1.5), rng.uniform(0.008, 0.025), rng.normal(0.0002, 0.0002)
    first = int(rng.integers(0, n * 3 // 4)) if rng.random() < 0.25 else 0
    last = int(rng.integers(first + 252, n)) if rng.random() < 0.15 and first + 252 < n else n - 1
    r = drift + beta * m + ivol * rng.standard_normal(n)
    total = np.exp(np.cumsum(r))  # total-return index
    factor = np.ones(n)  # adjustment factor of the event on each session (1 = none)
    splits = np.flatnonzero(rng.random(n) < 1 / (12 * 252))
    factor[splits] = 1 / rng.choice([2.0, 3.0], size=len(splits))
    if rng.random() < 0.5:
        q = int(rng.integers(0, 63))
        div_days = np.arange(q, n, 63)
        factor[div_days] *= 1 - rng.uniform(0.002, 0.008)
    # unadjusted close: the total return minus what the events took out, scaled to a plausible first price
    close = total * np.cumprod(factor)
    close *= rng.uniform(10, 200) / close[first]
    adj = close * np.cumprod(factor[::-1])[::-1] / factor  # x the factors of later events (as of the horizon)
    prev = np.concatenate([[close[0]], close[:-1]]) * factor  # yesterday's close on today's basis
    open_ = prev * np.exp(0.3 * (ivol + 0.5 * np.abs(m)) * rng.standard_normal(n))
    span = np.abs(rng.standard_normal(n)) * 0.5 * (ivol + np.abs(m))
    high = np.maximum(open_, close) * np.exp(span)
    low = np.minimum(open_, close) * np.exp(-np.abs(rng.standard_normal(n)) * 0.5 * (ivol + np.abs(m)))
    volume = np.exp(rng.normal(13.5, 0.8) + 0.4 * rng.standard_normal(n)) * (1 + 20 * np.abs(r))
    life = slice(first, last + 1)
    return pd.DataFrame({"session": cal[life], "open": open_[life].round(4), "high": high[life].round(4),
                         "low": low[life].round(4), "close": close[life].round(4), "adj_close": adj[life],
                         "volume": volume[life].round().astype("int64"), "ret": r[life]})


def synthetic_bars(symbols: list[str], start: str, end: str, seed: int = 7) -> pd.DataFrame:
    """PRICE_COLUMNS rows of ``symbols`` for the sessions in [start, end]."""

    _check_range(start, end)
    frames = []
    for s in symbols:
        p = _symbol_path(seed, s)
        p = p[(p["session"] >= start) & (p["session"] <= end)]
        frames.append(p.drop(columns="ret").assign(symbol=s))
    if not frames:
        return pd.DataFrame(columns=PRICE_COLUMNS)
    return pd.concat(frames, ignore_index=True)[PRICE_COLUMNS].sort_values(["session", "symbol"], ignore_index=True)


def listed_from(symbols: list[str], seed: int = 7) -> dict[str, str]:
    return {s: str(_symbol_path(seed, s)["session"].iloc[0]) for s in symbols}


def listed_until(symbols: list[str], seed: int = 7) -> dict[str, str]:
    """Last session of the symbols that delist before the horizon."""
    last = {s: str(_symbol_path(seed, s)["session"].iloc[-1]) for s in symbols}
    return {s: d for s, d in last.items() if d < _calendar()[-1]}


def _check_range(start: str, end: str) -> None:
    if start < EPOCH or end > HORIZON:
        raise ValueError(f"synthetic provider: {start}..{end} is outside its calendar {EPOCH}..{HORIZON}")


def synthetic_news(symbols: list[str], start: str, end: str, seed: int = 7) -> pd.DataFrame:
    """News items (provider, provider_id, symbol, published_at (UTC), headline, summary, url, source) of
    ``symbols`` on the sessions in [start, end] (publication times may fall after a session's close)."""
    _check_range(start, end)
    frames = []
    for s in symbols:
        p = _symbol_path(seed, s)
        rng = _rng(seed, "news", s)  # drawn over the symbol's whole life: independent of the range asked for
        counts = rng.poisson(NEWS_RATE * (1 + 30 * np.abs(p["ret"].to_numpy())))
        k = int(counts.sum())
        day = np.repeat(np.arange(len(p)), counts)
        ret = p["ret"].to_numpy()[day]
        minutes = rng.integers(6 * 60, 20 * 60, size=k)  # 06:00..20:00 New York: some after the close
        pick, toned, dup = rng.integers(0, 6, size=k), rng.random(k) < 0.7, rng.random(k) < 0.05
        sess = p["session"].to_numpy()[day]
        keep = (sess >= start) & (sess <= end)
        if not keep.any():
            continue
        sess, ret, minutes, pick, toned, dup = (a[keep] for a in (sess, ret, minutes, pick, toned, dup))
        idx = np.flatnonzero(keep)
        words = np.where(~toned, np.array(_NEUTRAL)[pick % len(_NEUTRAL)],
                         np.where(ret > 0.01, np.array(_POS)[pick], np.where(ret < -0.01, np.array(_NEG)[pick],
                                                                             np.array(_NEUTRAL)[pick % 4])))
        ts = (pd.to_datetime(sess).tz_localize("America/New_York") + pd.to_timedelta(minutes, unit="min")).tz_convert("UTC")
        ids = np.array([f"{s}-{i}" for i in idx])
        url = np.char.add(f"https://news.example.com/{s.lower()}/", ids)
        f = pd.DataFrame({"provider": "synthetic", "provider_id": ids, "symbol": s, "published_at": ts,
                          "headline": np.char.add(f"{s} ", words.astype(str)), "url": url, "source": "SyntheticWire"})
        f["summary"] = f["headline"] + " (" + pd.Series(sess).to_numpy() + ")."
        copies = f[dup].assign(provider_id=lambda d: d["provider_id"] + "-syn", url=lambda d: d["url"] + "?utm_source=partner",
                               published_at=lambda d: d["published_at"] + pd.Timedelta(minutes=1), source="PartnerWire")
        frames += [f, copies]
    cols = ["provider", "provider_id", "symbol", "published_at", "headline", "summary", "url", "source"]
    return pd.concat(frames, ignore_index=True)[cols] if frames else pd.DataFrame(columns=cols)


def synthetic_form4(symbols: list[str], start: str, end: str, seed: int = 7) -> pd.DataFrame:
    """Form 4 / 4/A transactions (qt_resources.filings.TRANSACTION_COLUMNS without available_session) accepted
    on New York dates in [start, end]."""
    _check_range(start, end)
    frames = []
    for s in symbols:
        p = _symbol_path(seed, s)
        rng = _rng(seed, "form4", s)
        n = len(p)
        on = rng.random(n) < FILINGS_RATE
        k = int(on.sum())
        insider, code_p = rng.integers(0, 4, size=k), rng.random(k) < 0.35
        shares, lag = rng.integers(1, 50, size=k) * 100.0, rng.integers(0, 3, size=k)
        minutes, noise = rng.integers(7 * 60, 21 * 60, size=k), rng.normal(0, 0.005, size=k)
        owned, amend = rng.integers(100, 5000, size=k) * 100.0, rng.random(k) < 0.05
        sess = p["session"].to_numpy()[on]
        filed = np.busday_offset(sess.astype("datetime64[D]"), lag, roll="forward")  # 0-2 business days later
        accepted = (pd.DatetimeIndex(filed).tz_localize("America/New_York") + pd.to_timedelta(minutes, unit="min"))
        cik = 1_000_000 + zlib.crc32(s.encode()) % 8_000_000
        acc = np.array([f"{cik:010d}-{d[2:4]}-{i:06d}" for i, d in zip(np.flatnonzero(on), sess)], dtype=object)
        f = pd.DataFrame({
            "accession": acc, "form_type": "4", "symbol": s, "issuer_cik": cik, "insider_cik": cik * 10 + insider,
            "insider_name": [f"Insider {i} of {s}" for i in insider], "is_director": insider >= 2,
            "is_officer": insider < 2, "is_ten_pct_owner": False,
            "officer_title": np.where(insider == 0, "CEO", np.where(insider == 1, "CFO", "")),
            "period_of_report": sess, "transaction_date": sess, "transaction_code": np.where(code_p, "P", "S"),
            "shares": shares, "price": np.round(p["close"].to_numpy()[on] * (1 + noise), 2),
            "acquired_disposed": np.where(code_p, "A", "D"), "shares_owned_after": owned, "is_derivative": False,
            "accepted_at": accepted})
        am = f[amend].assign(form_type="4/A", shares=lambda d: d["shares"] + 100,
                             accepted_at=lambda d: d["accepted_at"] + pd.Timedelta(days=1),
                             accession=lambda d: d["accession"] + "A")
        f = pd.concat([f, am], ignore_index=True)
        ny = f["accepted_at"].dt.strftime("%Y-%m-%d")
        f = f[(ny >= start) & (ny <= end)].copy()
        f["accepted_at"] = f["accepted_at"].dt.tz_convert("UTC").dt.strftime("%Y-%m-%dT%H:%M:%SZ")
        frames.append(f)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
