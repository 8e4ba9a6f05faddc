"""Exchange-calendar logic in one place (exchange_calendars, XNYS by default).

Session keys are ISO dates (``YYYY-MM-DD``); they are the partition keys of every session-partitioned asset.
"""

from __future__ import annotations

from datetime import date
from functools import lru_cache

import exchange_calendars as xcals
import pandas as pd


@lru_cache(maxsize=32)
def _built(name: str, start_year: int, end_year: int) -> xcals.ExchangeCalendar:
    return xcals.get_calendar(name, start=f"{start_year}-01-01", end=f"{end_year}-12-31")


_SPAN: dict[str, tuple[int, int]] = {}  # name -> the whole years its cached calendar covers


def _calendar(name: str, start: str, end: str) -> xcals.ExchangeCalendar:
    """A calendar covering [start, end]: one per name, built over whole years and widened (rebuilt once) when a
    call reaches past it. Building one costs ~0.13 s whatever its span, so a cache keyed on the exact range
    rebuilt it on every call with a new range (e.g. once per session in a backfill of orders)."""
    lo, hi = int(start[:4]), int(end[:4])
    have = _SPAN.get(name)
    if have is None or lo < have[0] or hi > have[1]:  # a year of margin each side: neighbours need no rebuild
        have = (lo - 1, hi + 1) if have is None else (min(lo - 1, have[0]), max(hi + 1, have[1]))
        _SPAN[name] = have
    return _built(name, *have)


def sessions(start: date | str, end: date | str, calendar: str = "XNYS") -> list[str]:
    """Trading sessions in [start, end] as ISO date strings, in order (early closes included)."""
    s, e = pd.Timestamp(start), pd.Timestamp(end)
    cal = _calendar(calendar, (s - pd.Timedelta(days=7)).strftime("%Y-%m-%d"),
                    (e + pd.Timedelta(days=7)).strftime("%Y-%m-%d"))
    return [d.strftime("%Y-%m-%d") for d in cal.sessions_in_range(s, e)]


def is_session(day: date | str, calendar: str = "XNYS") -> bool:
    d = pd.Timestamp(day)
    return sessions(d, d, calendar) == [d.strftime("%Y-%m-%d")]


def session_closes_utc(start: date | str, end: date | str, calendar: str = "XNYS") -> pd.Series:
    """Close time (UTC, early closes included) of every session in [start, end], indexed by session key."""
    s, e = pd.Timestamp(start), pd.Timestamp(end)
    cal = _calendar(calendar, (s - pd.Timedelta(days=7)).strftime("%Y-%m-%d"),
                    (e + pd.Timedelta(days=7)).strftime("%Y-%m-%d"))
    closes = cal.schedule.loc[s:e, "close"]
    return pd.Series(closes.to_numpy(), index=[d.strftime("%Y-%m-%d") for d in closes.index], name="close_utc")


def available_session(ts_utc, calendar: str = "XNYS") -> pd.Series:
    """The decision cut-off rule, in one place: an item time-stamped ``ts`` (UTC) is usable for the decision
    of the first session whose close is at or after ``ts``. So news published at 15:59 New York time on D
    counts for D; at 16:01 it counts for the next session; over a weekend, for Monday.

    ``ts_utc``: a Series (or list) of tz-aware timestamps or ISO strings. Returns session keys (str)."""
    ts = pd.to_datetime(pd.Series(ts_utc), utc=True, format="ISO8601")
    if ts.empty:
        return pd.Series([], dtype=object)
    closes = session_closes_utc(ts.min().tz_convert("America/New_York").date(),
                                (ts.max() + pd.Timedelta(days=14)).tz_convert("America/New_York").date(), calendar)
    idx = closes.searchsorted(ts, side="left")
    keys = closes.index.to_numpy()
    return pd.Series([keys[i] if i < len(keys) else None for i in idx], index=ts.index, dtype=object)
