"""Splits and cash dividends, read off the provider's own prices: every provider delivers the unadjusted close
and its split- and dividend-adjusted close (``qt_resources/prices.py``), so the adjustment factor f = adj_close /
close changes exactly on ex-dates. On ex-date D, r = f_D / f_{D-1}:

- a split s-for-1 divides the raw price by s and leaves the adjusted one: r = s (a reverse split 1-for-s: 1/s);
  recognised when r is within 1e-4 of a ratio p/q with q <= 10 and |r - 1| >= 0.2;
- a cash dividend: the amount taken is d = close_D (r - 1), the one that makes the raw total return over the
  ex-date, (close_D + d) / close_{D-1}, equal the adjusted return adj_D / adj_{D-1} = r close_D / close_{D-1}, so a
  raw book keeps the equity of an adjusted one exactly, whichever convention the provider adjusted with (Quandl's
  r = 1 + d / close_D gives back d itself; Yahoo's r = 1 / (1 - d / close_{D-1}) gives d close_D / (close_{D-1} - d));
- anything else with |r - 1| <= 1e-7 is rounding.

Applying them to a book held in raw shares and prices (the paper broker, the agents' books) keeps its equity
equal to one held in adjusted prices, the backtest's (tests/qt_resources/test_corporate_actions.py):

- split s: position x s, average price / s, cash unchanged;
- dividend d: cash + position x d (a short pays it), position unchanged.

Pure functions, no Dagster.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import pandas as pd

SPLIT_MIN = 0.2  # |r - 1| from which a ratio is a split
ROUNDING = 1e-7


@dataclass(frozen=True)
class Action:
    symbol: str
    ex_date: str  # the first session the raw price is ex the action
    kind: str  # "split" or "dividend"
    ratio: float = 1.0  # split: new shares per old share
    amount: float = 0.0  # dividend: cash per share held before the ex-date


def _split_ratio(r: float) -> float | None:
    if abs(r - 1) < SPLIT_MIN:
        return None
    f = Fraction(r).limit_denominator(10)
    return float(f) if abs(float(f) - r) <= 1e-4 * r else None


def corporate_actions(prices: pd.DataFrame) -> list[Action]:
    """Every split and cash dividend in ``prices`` (rows symbol, session, close, adj_close; any order), by
    symbol and ex-date."""
    out = []
    for sym, g in prices.sort_values(["symbol", "session"]).groupby("symbol", sort=True):
        close = g["close"].to_numpy(dtype=float)
        f = g["adj_close"].to_numpy(dtype=float) / close
        days = g["session"].astype(str).str[:10].to_numpy()
        r = f[1:] / f[:-1]
        for i in np.flatnonzero(np.abs(r - 1) > ROUNDING):
            ri, ex_close = float(r[i]), float(close[i + 1])
            s = _split_ratio(ri)
            if s is not None:
                out.append(Action(str(sym), str(days[i + 1]), "split", ratio=s))
                ri /= s  # a dividend on the same day stays in the rest (per new share)
                if abs(ri - 1) <= ROUNDING:
                    continue
            if ri > 1:
                amount = ex_close * (ri - 1)
                out.append(Action(str(sym), str(days[i + 1]), "dividend", amount=amount))
    return out


def apply_to_position(qty: float, avg_price: float, cash: float, action: Action) -> tuple[float, float, float]:
    """(qty, avg_price, cash) after ``action`` on a position of ``qty`` shares (negative: short)."""
    if action.kind == "split":
        return qty * action.ratio, avg_price / action.ratio, cash
    return qty, avg_price, cash + qty * action.amount


def actions_on(actions: list[Action], session: str) -> list[Action]:
    """The actions whose ex-date is ``session`` (splits before dividends: a same-day dividend is per new share)."""
    return sorted((a for a in actions if a.ex_date == session), key=lambda a: (a.symbol, a.kind != "split"))
