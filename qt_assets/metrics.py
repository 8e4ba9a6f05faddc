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
The returns metrics are computed in one numba pass per column (sweeps score thousands of columns); a test pins
them to vectorbt's ``returns`` accessor with a 252-session year (the same formulas, including its conventions:
Sharpe and Sortino are +inf for a zero deviation), except that the drawdown also counts the initial cash as a
peak (vectorbt's starts at the first session's value); other tests check them by hand.

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

from qt_assets.engine import YEAR_SESSIONS

EULER_GAMMA = 0.5772156649015329


def returns_from_value(value: pd.DataFrame, init_cash: float) -> pd.DataFrame:
    prev = value.shift(1)
    prev.iloc[0] = init_cash
    return value / prev - 1


@njit(cache=True)
def _returns_stats_nb(v, init_cash):
    """Two passes over the rows of ``v`` (sessions x columns, C order: the engine's layout), every column's
    accumulators side by side: sum of r, sum of min(r, 0)^2, max drawdown and the longest stretch under water
    (the initial cash counts as a peak); then sum of (r - mean)^2."""
    n_t, n_c = v.shape
    prev = np.full(n_c, init_cash)
    peak = np.full(n_c, init_cash)
    run = np.zeros(n_c)
    out = np.zeros((6, n_c))  # mean, sd, downside rms, max drawdown, longest under water, growth
    for t in range(n_t):
        for c in range(n_c):
            x = v[t, c]
            r = x / prev[c] - 1.0
            out[0, c] += r
            if r < 0:
                out[2, c] += r * r
            if x < peak[c] * (1 - 1e-12):
                run[c] += 1
                out[4, c] = max(out[4, c], run[c])
            else:
                run[c] = 0
            peak[c] = max(peak[c], x)
            out[3, c] = min(out[3, c], x / peak[c] - 1.0)
            prev[c] = x
    ss = np.zeros(n_c)
    prev[:] = init_cash
    for c in range(n_c):
        out[0, c] /= n_t
    for t in range(n_t):
        for c in range(n_c):
            d = v[t, c] / prev[c] - 1.0 - out[0, c]
            ss[c] += d * d
            prev[c] = v[t, c]
    for c in range(n_c):
        out[1, c] = np.sqrt(ss[c] / (n_t - 1)) if n_t > 1 else np.nan
        out[2, c] = np.sqrt(out[2, c] / n_t)
        out[5, c] = v[n_t - 1, c] / init_cash
    return out


def returns_metrics(value: pd.DataFrame, init_cash: float) -> pd.DataFrame:
    """One row per column of ``value`` (portfolio values per session), in one numba pass per column (the
    formulas of the module docstring; a test pins them to vectorbt's returns accessor)."""
    v = np.ascontiguousarray(value.to_numpy(dtype=np.float64))
    if not np.isfinite(v).all():
        raise ValueError("returns_metrics: portfolio values must be finite")
    n = len(value)
    mean, sd, down, mdd, longest, growth = _returns_stats_nb(v, float(init_cash))
    ann = np.sqrt(YEAR_SESSIONS)
    with np.errstate(divide="ignore", invalid="ignore"):
        cagr = growth ** (YEAR_SESSIONS / n) - 1
        out = pd.DataFrame({
            "total_return": growth - 1,
            "cagr": cagr,
            "ann_volatility": sd * ann,
            "sharpe": np.where(sd == 0, np.inf, mean / sd * ann),  # vectorbt's convention for a zero deviation
            "sortino": np.where(down == 0, np.inf, mean * YEAR_SESSIONS / (down * ann)),
            "max_drawdown": mdd,
            "max_drawdown_sessions": longest.astype(np.int64),
            "calmar": np.where(mdd < 0, cagr / np.abs(mdd), np.nan),
            "sessions": n,
        }, index=value.columns)
    return out


def trade_metrics(pf, value: pd.DataFrame, gross: np.ndarray, groups: np.ndarray | None = None) -> pd.DataFrame:
    """Trade, turnover, exposure and fee metrics per group (``groups``: group id of each column, default the
    portfolio's own grouping; ``gross``: gross exposure per session and group), indexed like ``value``'s columns."""
    n_groups = value.shape[1]
    groups = pf.wrapper.grouper.get_groups() if groups is None else np.asarray(groups)
    t = pf.exit_trades.values
    closed = t["status"] == 1
    g = groups[t["col"]]
    gc = g[closed]
    pnl, ret = t["pnl"][closed], t["return"][closed]
    cnt = np.bincount(g, minlength=n_groups).astype(float)
    ccnt = np.bincount(gc, minlength=n_groups).astype(float)
    wins = np.bincount(gc, weights=(pnl > 0), minlength=n_groups)
    gains = np.bincount(gc, weights=np.where(pnl > 0, pnl, 0), minlength=n_groups)
    losses = np.bincount(gc, weights=np.where(pnl < 0, -pnl, 0), minlength=n_groups)
    hold = np.bincount(gc, weights=(t["exit_idx"] - t["entry_idx"])[closed], minlength=n_groups)
    o = pf.orders.values
    og = groups[o["col"]]
    notional = np.bincount(og, weights=np.abs(o["size"] * o["price"]), minlength=n_groups)
    fees = np.bincount(og, weights=o["fees"], minlength=n_groups)
    v = value.to_numpy()
    years = len(value) / YEAR_SESSIONS
    with np.errstate(divide="ignore", invalid="ignore"):
        return pd.DataFrame({
            "trades": cnt.astype(int),
            "closed_trades": ccnt.astype(int),
            "win_rate": wins / ccnt,
            "profit_factor": np.where(losses > 0, gains / losses, np.where(gains > 0, np.inf, np.nan)),
            "expectancy": np.bincount(gc, weights=pnl, minlength=n_groups) / ccnt,
            "expectancy_pct": np.bincount(gc, weights=ret, minlength=n_groups) / ccnt,
            "avg_holding_sessions": hold / ccnt,
            "turnover": notional / v.mean(axis=0) / years,
            "exposure": (gross > 1e-9 * np.abs(v)).mean(axis=0),
            "avg_gross_exposure": (gross / v).mean(axis=0),
            "fees_paid": fees,
        }, index=value.columns)


def benchmark_metrics(r: pd.DataFrame, bench: pd.Series) -> pd.DataFrame:
    """alpha (annualised) and beta of each column of daily returns ``r`` against ``bench`` (aligned)."""
    b = bench.reindex(r.index)
    ok = b.notna()
    rb, bb = r[ok], b[ok].to_numpy()
    var = bb.var(ddof=1)
    cov = ((rb - rb.mean()).mul(bb - bb.mean(), axis=0)).sum() / (len(bb) - 1)
    beta = cov / var if var > 0 else cov * np.nan
    alpha = (rb.mean() - beta * bb.mean()) * YEAR_SESSIONS
    return pd.DataFrame({"alpha": alpha, "beta": beta, "correlation": rb.corrwith(pd.Series(bb, index=rb.index))})


def portfolio_metrics(pf, init_cash: float, bench: pd.Series | None = None, groups=None) -> pd.DataFrame:
    """All metrics per group of ``pf``, a portfolio from :func:`qt_assets.engine.simulate` (one row per group)."""
    value, gross = pf.qt_value, pf.qt_gross.to_numpy()  # computed by the engine in the simulation pass
    m = returns_metrics(value, init_cash).join(trade_metrics(pf, value, gross, groups))
    if bench is not None:
        m = m.join(benchmark_metrics(returns_from_value(value, init_cash), bench))
    return m


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
