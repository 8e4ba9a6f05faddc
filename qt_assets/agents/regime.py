"""Point-in-time market regime: one label per session from the benchmark and the universe's closes.

``regime_frame(bench_close, closes, cfg)`` is pure (no I/O, no clock, no global state) and point in time:
the row of session D is computed from the data of sessions <= D only, so appending, changing or removing
later sessions never changes it. ``closes`` is reindexed to ``bench_close``'s sessions first. Windows count
sessions (rows of ``bench_close``), not calendar days; a missing or non-positive benchmark level is NaN, and a
window holding a NaN gives NaN. ``bench_close`` must have a sorted, unique DatetimeIndex (ValueError
otherwise). With B_t the benchmark level on session t and C_{s,t} the adjusted close of symbol s:

Rules (``method: rules``, every column below is also filled for ``method: gmm``)
---------------------------------------------------------------------------
* trend. SMA_t = mean(B_{t-n+1} .. B_t) with n = ``trend_sma``, defined once n sessions exist (and all n
  levels are valid). ``bench_vs_sma`` = B_t / SMA_t - 1. ``trend`` = +1 ("up") if B_t > SMA_t, -1 ("down") if
  B_t < SMA_t, 0 ("flat") if equal, 0 ("warming_up", ``bench_vs_sma`` NaN) while SMA_t is undefined.
* volatility. r_t = ln(B_t / B_{t-1}). ``realised_vol`` = std(r_{t-w+1} .. r_t, ddof=1) x sqrt(252) with
  w = ``vol_window`` (so defined from the (w+1)-th session on). ``vol_cut``:
  - ``vol_method: threshold``: ``vol_threshold`` on every session;
  - ``vol_method: percentile``: the ``vol_percentile`` quantile (numpy's default linear interpolation,
    position q x (m - 1) in the sorted values) of the m valid ``realised_vol`` values among the trailing
    ``vol_history`` sessions ending at t (inclusive); NaN while m < ``vol_window`` (always NaN if
    ``vol_window`` > ``vol_history``).
  ``vol_state`` = -1 ("high") if realised_vol > vol_cut, +1 ("calm") if realised_vol <= vol_cut, 0
  ("warming_up") if either is NaN.
* breadth. For each symbol, SMA_{s,t} = mean(C_{s,t-k+1} .. C_{s,t}) with k = ``breadth_sma``, defined only if
  all k closes are valid (a symbol counts from its k-th listed session). ``breadth`` = (number of symbols
  with a defined SMA_{s,t} and C_{s,t} > SMA_{s,t}) / (number of symbols with a defined SMA_{s,t}); NaN when
  no symbol has one. ``breadth_state`` = +1 ("strong") if breadth >= ``breadth_on``, else -1 ("weak") if
  breadth <= ``breadth_off``, else 0 ("neutral"); 0 ("warming_up") when NaN.
* ``score`` = trend + vol_state + breadth_state, in -3..3. ``label`` = "risk_on" if score >= 2, "risk_off" if
  score <= -2, else "neutral". ``confidence`` = |score| / 3 for risk_on / risk_off, 1 - |score| / 3 for
  neutral.

Gaussian mixture (``method: gmm``)
----------------------------------
* features x_t = [r_t, realised_vol_t]; a session's features are valid when both are finite.
* refit sessions: f, f + ``gmm_refit``, f + 2 x ``gmm_refit``, ... where f is the first session whose
  trailing ``gmm_window`` sessions (inclusive) hold at least ``gmm_window`` // 2 valid feature rows. The fit at
  refit session R uses only the valid feature rows of the ``gmm_window`` sessions ending at R (inclusive):
  they are standardised by that window's own mean and std (ddof=0; a zero std is taken as 1), then
  ``sklearn.mixture.GaussianMixture(n_components=gmm_components, covariance_type="full",
  random_state=seed)`` is fitted. That model (and that standardisation) labels the sessions from R up to,
  excluding, the next refit session.
* components are ranked by their mean realised_vol (in original units, ties by component index): the lowest
  is "risk_on" (score +1), the highest "risk_off" (score -1), any other "neutral" (score 0). A session takes
  the component with the highest posterior probability, and ``confidence`` = that probability.
* sessions before the first fit (and any later session whose features are not valid): label "neutral",
  score 0, confidence 0.0, gmm state "warming_up" (resp. "missing_features") in ``drivers``.
* ``trend`` / ``vol_state`` / ``breadth_state`` and their values are the rules' (as drivers), ``score`` is the
  gmm's.

Output
------
One row per session of ``bench_close`` with ``REGIME_COLUMNS``: ``session`` ("YYYY-MM-DD"), ``method`` ("rules"
or "gmm") and ``drivers``, a JSON object (keys sorted, floats rounded to 6 decimals, NaN as null)::

    {"breadth": {"share": 0.5, "sma": 50, "state": "neutral"},
     "trend": {"bench_vs_sma": 0.0312, "sma": 200, "state": "up"},
     "volatility": {"cut": 0.21, "method": "percentile", "realised": 0.14, "state": "calm"}}

plus, for gmm, ``"gmm": {"state": "fitted", "component": k, "refit_session": "YYYY-MM-DD",
"means_vol": [mean realised_vol of component 0, 1, ...], "converged": true}`` (component, refit_session,
means_vol and converged null while warming up).
"""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pandas as pd

from qt_resources.config import RegimeSection

REGIME_COLUMNS = ["session", "label", "confidence", "score", "trend", "vol_state", "breadth_state",
                  "bench_vs_sma", "realised_vol", "vol_cut", "breadth", "method", "drivers"]
ANNUALISE = math.sqrt(252.0)
LABELS = np.array(["risk_off", "neutral", "risk_on"], dtype=object)  # indexed by sign(score) + 1

TREND_STATE = {1: "up", -1: "down", 0: "flat"}
VOL_STATE = {1: "calm", -1: "high"}
BREADTH_STATE = {1: "strong", -1: "weak", 0: "neutral"}
WARMING_UP = "warming_up"


def _num(x: float) -> float | None:
    """A float for the drivers JSON: rounded to 6 decimals, NaN/inf as null."""
    x = float(x)
    return round(x, 6) if math.isfinite(x) else None


def _rules(bench: pd.Series, closes: pd.DataFrame, cfg: RegimeSection) -> dict[str, np.ndarray]:
    """The rules' columns as arrays aligned with ``bench``."""
    # trend
    sma = bench.rolling(cfg.trend_sma, min_periods=cfg.trend_sma).mean()
    bench_vs_sma = (bench / sma - 1.0).to_numpy(dtype=float)
    level, sma_v = bench.to_numpy(dtype=float), sma.to_numpy(dtype=float)
    with np.errstate(invalid="ignore"):
        trend = np.where(level > sma_v, 1, np.where(level < sma_v, -1, 0))
    trend_known = np.isfinite(bench_vs_sma)
    trend = np.where(trend_known, trend, 0)

    # volatility
    with np.errstate(divide="ignore", invalid="ignore"):
        log_ret = np.log(level[1:] / level[:-1]) if len(level) > 1 else np.array([], dtype=float)
    log_ret = pd.Series(np.concatenate([[np.nan], log_ret])[: len(level)], index=bench.index)
    log_ret = log_ret.where(np.isfinite(log_ret))
    realised = (log_ret.rolling(cfg.vol_window, min_periods=cfg.vol_window).std(ddof=1) * ANNUALISE)
    if cfg.vol_method == "threshold":
        vol_cut = pd.Series(float(cfg.vol_threshold), index=bench.index)
    elif cfg.vol_window > cfg.vol_history:
        vol_cut = pd.Series(np.nan, index=bench.index)
    else:
        vol_cut = realised.rolling(cfg.vol_history, min_periods=cfg.vol_window).quantile(
            cfg.vol_percentile, interpolation="linear")
    realised_v, cut_v = realised.to_numpy(dtype=float), vol_cut.to_numpy(dtype=float)
    vol_known = np.isfinite(realised_v) & np.isfinite(cut_v)
    with np.errstate(invalid="ignore"):
        vol_state = np.where(vol_known, np.where(realised_v > cut_v, -1, 1), 0)

    # breadth
    if closes.shape[1]:
        c = closes.to_numpy(dtype=float)
        c_sma = closes.rolling(cfg.breadth_sma, min_periods=cfg.breadth_sma).mean().to_numpy(dtype=float)
        has_sma = np.isfinite(c_sma) & np.isfinite(c)
        with np.errstate(invalid="ignore"):
            above = (c > c_sma) & has_sma
        n_valid = has_sma.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            breadth = np.where(n_valid > 0, above.sum(axis=1) / np.maximum(n_valid, 1), np.nan)
    else:
        breadth = np.full(len(bench), np.nan)
    breadth_known = np.isfinite(breadth)
    with np.errstate(invalid="ignore"):
        breadth_state = np.where(~breadth_known, 0,
                                 np.where(breadth >= cfg.breadth_on, 1, np.where(breadth <= cfg.breadth_off, -1, 0)))

    return {"trend": trend.astype(int), "trend_known": trend_known, "bench_vs_sma": bench_vs_sma,
            "vol_state": vol_state.astype(int), "vol_known": vol_known, "realised_vol": realised_v,
            "vol_cut": cut_v, "breadth_state": breadth_state.astype(int), "breadth_known": breadth_known,
            "breadth": breadth.astype(float), "log_ret": log_ret.to_numpy(dtype=float)}


def _rule_drivers(r: dict[str, np.ndarray], cfg: RegimeSection) -> list[dict]:
    out = []
    for t, tk, bvs, v, vk, rv, cut, b, bk, share in zip(
            r["trend"].tolist(), r["trend_known"].tolist(), r["bench_vs_sma"].tolist(), r["vol_state"].tolist(),
            r["vol_known"].tolist(), r["realised_vol"].tolist(), r["vol_cut"].tolist(),
            r["breadth_state"].tolist(), r["breadth_known"].tolist(), r["breadth"].tolist()):
        out.append({
            "trend": {"state": TREND_STATE[t] if tk else WARMING_UP, "bench_vs_sma": _num(bvs), "sma": cfg.trend_sma},
            "volatility": {"state": VOL_STATE[v] if vk else WARMING_UP, "realised": _num(rv), "cut": _num(cut),
                           "method": cfg.vol_method},
            "breadth": {"state": BREADTH_STATE[b] if bk else WARMING_UP, "share": _num(share),
                        "sma": cfg.breadth_sma},
        })
    return out


def _gmm(features: np.ndarray, sessions: list[str], cfg: RegimeSection):
    """(score, confidence, per-session gmm driver dicts) from trailing-window mixture refits."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.mixture import GaussianMixture
    from threadpoolctl import threadpool_limits  # a dependency of scikit-learn

    n = len(features)
    score = np.zeros(n, dtype=int)
    conf = np.zeros(n, dtype=float)
    gmm_drivers: list[dict] = [{"state": WARMING_UP, "component": None, "refit_session": None, "means_vol": None,
                                "converged": None} for _ in range(n)]
    valid = np.isfinite(features).all(axis=1)
    window = cfg.gmm_window
    counts = pd.Series(valid.astype(float)).rolling(window, min_periods=1).sum().to_numpy()
    ready = np.flatnonzero(counts >= window // 2)
    if not len(ready):
        return score, conf, gmm_drivers
    for start in range(int(ready[0]), n, cfg.gmm_refit):
        lo = max(0, start - window + 1)
        fit_x = features[lo:start + 1][valid[lo:start + 1]]
        mu, sd = fit_x.mean(axis=0), fit_x.std(axis=0)
        sd = np.where(sd > 0, sd, 1.0)
        model = GaussianMixture(n_components=cfg.gmm_components, covariance_type="full", random_state=cfg.seed)
        # a few hundred 2-d rows: BLAS threads only add overhead (x20 on a busy 2-core machine)
        with warnings.catch_warnings(), threadpool_limits(limits=1):
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.fit((fit_x - mu) / sd)
        means_vol = model.means_[:, 1] * sd[1] + mu[1]
        rank = np.empty(cfg.gmm_components, dtype=int)
        rank[np.argsort(means_vol, kind="stable")] = np.arange(cfg.gmm_components)
        comp_score = np.where(rank == 0, 1, np.where(rank == cfg.gmm_components - 1, -1, 0))
        means_list = [_num(m) for m in means_vol]
        refit_session, converged = sessions[start], bool(model.converged_)

        stop = min(start + cfg.gmm_refit, n)
        idx = np.arange(start, stop)
        ok = idx[valid[start:stop]]
        for i in idx[~valid[start:stop]]:
            gmm_drivers[i] = {"state": "missing_features", "component": None, "refit_session": refit_session,
                              "means_vol": means_list, "converged": converged}
        if not len(ok):
            continue
        with threadpool_limits(limits=1):
            proba = model.predict_proba((features[ok] - mu) / sd)
        comp = proba.argmax(axis=1)
        score[ok] = comp_score[comp]
        conf[ok] = proba[np.arange(len(ok)), comp]
        for i, k in zip(ok.tolist(), comp.tolist()):
            gmm_drivers[i] = {"state": "fitted", "component": k, "refit_session": refit_session,
                              "means_vol": means_list, "converged": converged}
    return score, conf, gmm_drivers


def regime_frame(bench_close: pd.Series, closes: pd.DataFrame, cfg: RegimeSection) -> pd.DataFrame:
    """The regime of every session of ``bench_close`` (see the module docstring for the formulas)."""
    if not isinstance(bench_close.index, pd.DatetimeIndex):
        raise ValueError("bench_close must be indexed by a DatetimeIndex of sessions")
    if not bench_close.index.is_monotonic_increasing or not bench_close.index.is_unique:
        raise ValueError("bench_close's sessions must be sorted and unique")
    bench = bench_close.astype(float)
    bench = bench.where(bench > 0)  # a non-positive level has no log return
    closes = closes.copy()
    closes.index = pd.DatetimeIndex(closes.index)
    closes = closes.reindex(bench.index).astype(float)

    r = _rules(bench, closes, cfg)
    drivers = _rule_drivers(r, cfg)
    sessions = list(bench.index.strftime("%Y-%m-%d"))
    n = len(bench)

    if cfg.method == "gmm":
        features = np.column_stack([r["log_ret"], r["realised_vol"]]) if n else np.empty((0, 2))
        score, confidence, gmm_drivers = _gmm(features, sessions, cfg)  # score is already -1/0/+1
        for d, g in zip(drivers, gmm_drivers):
            d["gmm"] = g
        sign = score
    else:
        score = r["trend"] + r["vol_state"] + r["breadth_state"]
        sign = np.where(score >= 2, 1, np.where(score <= -2, -1, 0))
        a = np.abs(score) / 3.0
        confidence = np.where(sign != 0, a, 1.0 - a)

    return pd.DataFrame({
        "session": sessions,
        "label": LABELS[sign + 1] if n else np.array([], dtype=object),
        "confidence": np.asarray(confidence, dtype=float),
        "score": np.asarray(score, dtype=int),
        "trend": r["trend"],
        "vol_state": r["vol_state"],
        "breadth_state": r["breadth_state"],
        "bench_vs_sma": r["bench_vs_sma"],
        "realised_vol": r["realised_vol"],
        "vol_cut": r["vol_cut"],
        "breadth": r["breadth"],
        "method": cfg.method,
        "drivers": [json.dumps(d, sort_keys=True, allow_nan=False) for d in drivers],
    }, columns=REGIME_COLUMNS)
