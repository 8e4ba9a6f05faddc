"""Exchange-calendar logic in one place (exchange_calendars, XNYS by default).

Session keys are ISO dates (``YYYY-MM-DD``); they are the partition keys of every session-partitioned asset.
"""

from __future__ import annotations

from datetime import date
from functools import lru_cache

import exchange_calendars as xcals
import pandas as pd


@lru_cache(maxsize=8)
def _calendar(name: str, start: str, end: str) -> xcals.ExchangeCalendar:
    return xcals.get_calendar(name, start=start, end=end)


def sessions(start: date | str, end: date | str, calendar: str = "XNYS") -> list[str]:
    """Trading sessions in [start, end] as ISO date strings, in order (early closes included)."""
    s, e = pd.Timestamp(start), pd.Timestamp(end)
    cal = _calendar(calendar, (s - pd.Timedelta(days=7)).strftime("%Y-%m-%d"),
                    (e + pd.Timedelta(days=7)).strftime("%Y-%m-%d"))
    return [d.strftime("%Y-%m-%d") for d in cal.sessions_in_range(s, e)]


def is_session(day: date | str, calendar: str = "XNYS") -> bool:
    d = pd.Timestamp(day)
    return sessions(d, d, calendar) == [d.strftime("%Y-%m-%d")]
