"""Backtest metrics, per portfolio (or per sweep combination: every function works column-wise).

Sessions, never calendar days: a year is 252 sessions. r_t = V_t / V_{t-1} - 1 with V_{-1} = initial cash, n
sessions.
- total_return = V_n / V_0 - 1;  cagr = (1 + total_return) ** (252 / n) - 1
- ann_volatility = std(r, ddof=1) * sqrt(252);  sharpe = mean(r) / std(r, ddof=1) * sqrt(252) (risk-free 0)
- sortino = mean(r) * 252 / (sqrt(mean(min(r, 0)^2)) * sqrt(252))
- max_drawdown = min_t V_t / max_{s<=t} V_s - 1 (the initial cash counts as a peak);
  max_drawdown_sessions = the longest stretch of sessions spent below a previous peak (to the recovery, or to the
  end when not recovered); calmar = cagr / |max_drawdown|
- Trades are vectorbt's exit trades (a position from entry to exit; a partial exit closes a part).
  win_rate = closed trades with pnl > 0 / closed trades; profit_factor = sum of winning pnl / |sum of losing pnl|;
  expectancy = mean pnl per closed trade (currency) and expectancy_pct = mean return per closed trade;
  avg_holding_sessions = mean(exit session index - entry session index) over closed trades; trades counts open
  ones too.
- turnover = sum |order notional| / mean(V) / (n / 252)  (annualised, one side counted per order);
  exposure = share of sessions with any position; avg_gross_exposure = mean(sum |position value| / V);
  fees_paid = sum of commissions.
- Against a benchmark's daily returns b (same sessions): beta = cov(r, b) / var(b);
  alpha = (mean(r) - beta * mean(b)) * 252 (annualised, arithmetic).
Every metric comes from numba accumulators (``_returns_stats_nb``, ``trade_stats_nb``, ``exposure_stats_nb``,
``bench_stats_nb``) turned into numbers by one function, ``metrics_frame``: a single backtest and each combination
of the compiled sweep (:mod:`qt_assets.backtests.sweep`) use exactly the same code. A test pins
them to vectorbt's ``returns`` accessor with a 252-session year (the same formulas), except two conventions: the
drawdown also counts the initial cash as a peak (vectorbt's starts at the first session's value), and a metric
whose denominator is 0 is undefined (NaN; reports print "undefined"), never infinite: Sharpe and Sortino of a book
with zero deviation (vectorbt: +inf), the profit factor without a losing trade. Other tests check them by hand.

Probabilistic and deflated Sharpe ratio (Bailey & Lopez de Prado), on per-session Sharpe SR over n returns with
skewness g3 and (non-excess) kurtosis g4:
  PSR(SR*) = Phi((SR - SR*) sqrt(n - 1) / sqrt(1 - g3 SR + (g4 - 1) / 4 SR^2));
  DSR = PSR(SR0) with SR0 = sqrt(Var[SR_trials]) ((1 - gamma) Phi^-1(1 - 1/N) + gamma Phi^-1(1 - 1/(N e))),
  N trials, gamma = Euler-Mascheroni. DSR is the probability that the best of N trials has a true Sharpe above 0
  after accounting for the selection among N.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from numba import njit
from scipy import stats

from qt_assets.backtests.engine import YEAR_SESSIONS, f64

EULER_GAMMA = 0.5772156649015329


def returns_from_value(value: pd.DataFrame, init_cash: float) -> pd.DataFrame:
    prev = value.shift(1)
    prev.iloc[0] = init_cash
    return value / prev - 1


@njit(cache=True)
def _returns_stats_nb(v, init_cash):
    """Per column of ``v`` (sessions x columns): sum of r, sum of min(r, 0)^2, max drawdown and the longest
    stretch under water (the initial cash counts as a peak) in one pass, then sum of (r - mean)^2."""
    n_t, n_c = v.shape
    out = np.zeros((6, n_c))  # mean, sd, downside rms, max drawdown, longest under water, growth
    ret = np.empty(n_t)
    for c in range(n_c):
        prev = init_cash
        peak = init_cash
        run = 0.0
        total = 0.0
        down = 0.0
        mdd = 0.0
        longest = 0.0
        for t in range(n_t):
            x = v[t, c]
            r = x / prev - 1.0
            ret[t] = r
            total += r
            if r < 0:
                down += r * r
            if x < peak * (1 - 1e-12):
                run += 1
                longest = max(longest, run)
            else:
                run = 0.0
            if x < peak:
                mdd = min(mdd, x / peak - 1.0)
            else:
                peak = x  # a new peak: no drawdown
            prev = x
        mean = total / n_t
        ss = 0.0
        for t in range(n_t):
            d = ret[t] - mean
            ss += d * d
        out[0, c] = mean
        out[1, c] = np.sqrt(ss / (n_t - 1)) if n_t > 1 else np.nan
        out[2, c] = np.sqrt(down / n_t)
        out[3, c] = mdd
        out[4, c] = longest
        out[5, c] = v[n_t - 1, c] / init_cash
    return out


def returns_metrics(value: pd.DataFrame, init_cash: float) -> pd.DataFrame:
    """One row per column of ``value`` (portfolio values per session), in one numba pass per column (the
    formulas of the module docstring; a test pins them to vectorbt's returns accessor)."""
    v = f64(value)
    if not np.isfinite(v).all():
        raise ValueError("returns_metrics: portfolio values must be finite")
    return _returns_frame(_returns_stats_nb(v, float(init_cash)), len(value), value.columns)


def _returns_frame(stats: np.ndarray, n: int, index) -> pd.DataFrame:
    """The returns metrics from :func:`_returns_stats_nb`'s accumulators (6 x columns)."""
    mean, sd, down, mdd, longest, growth = stats
    ann = np.sqrt(YEAR_SESSIONS)
    with np.errstate(divide="ignore", invalid="ignore"):
        cagr = growth ** (YEAR_SESSIONS / n) - 1
        return pd.DataFrame({
            "total_return": growth - 1,
            "cagr": cagr,
            "ann_volatility": sd * ann,
            # undefined (NaN) for a zero deviation, where vectorbt reports +inf: a flat book has no Sharpe
            "sharpe": np.where(sd == 0, np.nan, mean / sd * ann),
            "sortino": np.where(down == 0, np.nan, mean * YEAR_SESSIONS / (down * ann)),
            "max_drawdown": mdd,
            "max_drawdown_sessions": longest.astype(np.int64),
            "calmar": np.where(mdd < 0, cagr / np.abs(mdd), np.nan),
            "sessions": n,
        }, index=index)


# trade, order and exposure accumulators per group (rows of ``out`` in trade_stats_nb / exposure_stats_nb)
TRADE_STATS = ("trades", "closed", "wins", "gains", "losses", "hold", "pnl", "ret", "notional", "fees")
EXPOSURE_STATS = ("exposed", "gross_ratio", "value")


@njit(cache=True)
def trade_stats_nb(trades, orders, groups, out):
    """Accumulate vectorbt exit-trade records and order records into ``out`` (groups x TRADE_STATS); ``groups``
    maps a record's column to its group."""
    for r in range(len(trades)):
        g = groups[trades[r]["col"]]
        out[g, 0] += 1
        if trades[r]["status"] == 1:  # closed
            pnl = trades[r]["pnl"]
            out[g, 1] += 1
            if pnl > 0:
                out[g, 2] += 1
                out[g, 3] += pnl
            elif pnl < 0:
                out[g, 4] -= pnl
            out[g, 5] += trades[r]["exit_idx"] - trades[r]["entry_idx"]
            out[g, 6] += pnl
            out[g, 7] += trades[r]["return"]
    for r in range(len(orders)):
        g = groups[orders[r]["col"]]
        out[g, 8] += abs(orders[r]["size"] * orders[r]["price"])
        out[g, 9] += orders[r]["fees"]


@njit(cache=True)
def exposure_stats_nb(v, gross, out):
    """Per column of ``v`` / ``gross`` (sessions x groups): sessions with a position, sum of gross / value, sum of
    value, into ``out`` (groups x EXPOSURE_STATS)."""
    n_t, n_c = v.shape
    for t in range(n_t):
        for c in range(n_c):
            if gross[t, c] > 1e-9 * abs(v[t, c]):
                out[c, 0] += 1
            out[c, 1] += gross[t, c] / v[t, c]
            out[c, 2] += v[t, c]


@njit(cache=True)
def bench_stats_nb(r, b, out):
    """alpha (annualised), beta and correlation of each column of daily returns ``r`` (sessions x columns) against
    ``b`` (aligned), over the sessions where both are known (NaN on either side is left out), into ``out``
    (columns x 3; NaN with fewer than two such sessions or a flat benchmark)."""
    n_t, n_c = r.shape
    for c in range(n_c):
        out[c, 0] = out[c, 1] = out[c, 2] = np.nan
        n = 0
        mr = 0.0
        mb = 0.0
        for t in range(n_t):
            if not (np.isnan(b[t]) or np.isnan(r[t, c])):
                n += 1
                mr += r[t, c]
                mb += b[t]
        if n < 2:
            continue
        mr /= n
        mb /= n
        cov = 0.0
        vr = 0.0
        vb = 0.0
        for t in range(n_t):
            if not (np.isnan(b[t]) or np.isnan(r[t, c])):
                cov += (r[t, c] - mr) * (b[t] - mb)
                vr += (r[t, c] - mr) ** 2
                vb += (b[t] - mb) ** 2
        if vb > 0:
            beta = cov / vb
            out[c, 0] = (mr - beta * mb) * YEAR_SESSIONS
            out[c, 1] = beta
            if vr > 0:
                out[c, 2] = cov / np.sqrt(vr * vb)


def metrics_frame(ret: np.ndarray, trade: np.ndarray, expo: np.ndarray, bench: np.ndarray | None, n: int,
                  index) -> pd.DataFrame:
    """Every metric of the module docstring from the accumulators (``_returns_stats_nb`` 6 x groups,
    ``trade_stats_nb`` groups x TRADE_STATS, ``exposure_stats_nb`` groups x EXPOSURE_STATS, ``bench_stats_nb``
    groups x 3 or None): one row per group. A single backtest and every combination of a sweep get their numbers
    from here."""
    cnt, ccnt, wins, gains, losses, hold, pnl, ret_sum, notional, fees = trade.T
    exposed, gross_ratio, value_sum = expo.T
    years = n / YEAR_SESSIONS
    with np.errstate(divide="ignore", invalid="ignore"):
        out = _returns_frame(ret, n, index).join(pd.DataFrame({
            "trades": cnt.astype(np.int64),
            "closed_trades": ccnt.astype(np.int64),
            "win_rate": wins / ccnt,
            "profit_factor": np.where(losses > 0, gains / losses, np.nan),  # undefined without a losing trade
            "expectancy": pnl / ccnt,
            "expectancy_pct": ret_sum / ccnt,
            "avg_holding_sessions": hold / ccnt,
            "turnover": notional / (value_sum / n) / years,
            "exposure": exposed / n,
            "avg_gross_exposure": gross_ratio / n,
            "fees_paid": fees,
        }, index=index))
    if bench is not None:
        out = out.join(pd.DataFrame(bench, columns=["alpha", "beta", "correlation"], index=index))
    return out


def benchmark_metrics(r: pd.DataFrame, bench: pd.Series) -> pd.DataFrame:
    """alpha (annualised), beta and correlation of each column of daily returns ``r`` against ``bench``."""
    out = np.empty((r.shape[1], 3))
    bench_stats_nb(f64(r), f64(bench.reindex(r.index)), out)
    return pd.DataFrame(out, columns=["alpha", "beta", "correlation"], index=r.columns)


def portfolio_metrics(pf, init_cash: float, bench: pd.Series | None = None, groups=None) -> pd.DataFrame:
    """All metrics per group of ``pf``, a portfolio from :func:`qt_assets.backtests.engine.simulate` (one row per group;
    ``groups``: group id of each column, default the portfolio's own grouping)."""
    value = pf.qt_value  # value and gross exposure: computed by the engine in the simulation pass
    v = f64(value)
    if not np.isfinite(v).all():
        raise ValueError("portfolio_metrics: portfolio values must be finite")
    n_groups = v.shape[1]
    groups = np.asarray(pf.wrapper.grouper.get_groups() if groups is None else groups, dtype=np.int64)
    trade = np.zeros((n_groups, len(TRADE_STATS)))
    trade_stats_nb(pf.exit_trades.values, pf.orders.values, groups, trade)
    expo = np.zeros((n_groups, len(EXPOSURE_STATS)))
    exposure_stats_nb(v, f64(pf.qt_gross), expo)
    b = None
    if bench is not None:
        b = benchmark_metrics(returns_from_value(value, init_cash), bench).to_numpy()
    return metrics_frame(_returns_stats_nb(v, float(init_cash)), trade, expo, b, len(value), value.columns)


# --- selection-aware Sharpe ------------------------------------------------------------------------------
def probabilistic_sharpe(r: np.ndarray, sr_star: float = 0.0) -> float:
    """PSR of the per-session returns ``r`` against the per-session benchmark Sharpe ``sr_star``."""
    r = np.asarray(r, dtype=float)
    r = r[~np.isnan(r)]
    n = len(r)
    sd = r.std(ddof=1)
    if n < 3 or not sd > 0:
        return float("nan")
    sr = r.mean() / sd
    g3 = stats.skew(r)
    g4 = stats.kurtosis(r, fisher=False)
    denom = 1 - g3 * sr + (g4 - 1) / 4 * sr ** 2
    return float(stats.norm.cdf((sr - sr_star) * np.sqrt(n - 1) / np.sqrt(max(denom, 1e-12))))


def expected_max_sharpe(trial_srs: np.ndarray) -> float:
    """SR0: the expected maximum per-session Sharpe of N unskilled trials with the trials' Sharpe variance."""
    srs = np.asarray(trial_srs, dtype=float)
    srs = srs[~np.isnan(srs)]
    n = len(srs)
    if n < 2:
        return 0.0
    z = stats.norm.ppf
    return float(np.sqrt(srs.var(ddof=1)) * ((1 - EULER_GAMMA) * z(1 - 1 / n) + EULER_GAMMA * z(1 - 1 / (n * np.e))))


def deflated_sharpe(best_returns: np.ndarray, trial_srs: np.ndarray) -> tuple[float, float]:
    """(DSR, SR0) of the best trial's per-session returns given every trial's per-session Sharpe."""
    sr0 = expected_max_sharpe(trial_srs)
    return probabilistic_sharpe(best_returns, sr0), sr0
