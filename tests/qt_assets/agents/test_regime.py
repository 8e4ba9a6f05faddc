"""The market regime (qt_assets/agents/regime.py): hand-built labels, the formulas against independent numpy
computations, point-in-time canaries and the Gaussian-mixture method."""

import json
import math

import numpy as np
import pandas as pd
import pytest

from qt_assets.agents.regime import REGIME_COLUMNS, regime_frame
from qt_resources.config import RegimeSection

# the smallest windows the config allows, so every number can be checked by hand
SMALL = dict(trend_sma=5, breadth_sma=5, vol_window=5, vol_history=20)


def sessions(n: int) -> pd.DatetimeIndex:
    return pd.bdate_range("2020-01-01", periods=n)


def frame_of(bench: np.ndarray, closes: np.ndarray, **cfg) -> pd.DataFrame:
    idx = sessions(len(bench))
    closes_df = pd.DataFrame(closes, index=idx, columns=[f"S{i}" for i in range(closes.shape[1])])
    return regime_frame(pd.Series(bench, index=idx), closes_df, RegimeSection(**{**SMALL, **cfg}))


def drivers(row: pd.Series) -> dict:
    return json.loads(row["drivers"])


def path(n: int, daily: float, wiggle: float = 0.0, start: float = 100.0) -> np.ndarray:
    """Level with a constant daily drift and an alternating +-wiggle on the log scale."""
    t = np.arange(n)
    return start * np.exp(daily * t + wiggle * (-1.0) ** t)


def random_walk(n: int, k: int, seed: int) -> tuple[pd.Series, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    idx = sessions(n)
    bench = pd.Series(100 * np.exp(np.cumsum(rng.normal(0.0002, 0.012, n))), index=idx)
    closes = pd.DataFrame(50 * np.exp(np.cumsum(rng.normal(0.0002, 0.02, (n, k)), axis=0)), index=idx,
                          columns=[f"S{i}" for i in range(k)])
    closes.iloc[: n // 3, 0] = np.nan  # lists later
    closes.iloc[: n // 2, 1] = np.nan
    return bench, closes


# ---------------------------------------------------------------- hand-built labels

N = 30
FIRST_FULL = 5  # first row where trend (4), breadth (4) and realised vol (5) are all defined


def test_rising_calm_broad_is_risk_on_with_full_confidence():
    bench = path(N, 0.002, 0.0005)
    closes = np.column_stack([path(N, 0.001 * (i + 1), start=20.0 + i) for i in range(4)])
    f = frame_of(bench, closes, vol_method="threshold", vol_threshold=0.25)
    rows = f.iloc[FIRST_FULL:]
    assert (rows["label"] == "risk_on").all()
    assert (rows["score"] == 3).all()
    assert np.allclose(rows["confidence"], 1.0)
    assert (rows["trend"] == 1).all() and (rows["vol_state"] == 1).all() and (rows["breadth_state"] == 1).all()
    assert np.allclose(rows["breadth"], 1.0)
    d = drivers(f.iloc[-1])
    assert d["trend"]["state"] == "up" and d["volatility"]["state"] == "calm" and d["breadth"]["state"] == "strong"
    assert d["trend"]["sma"] == 5 and d["breadth"]["sma"] == 5 and d["volatility"]["method"] == "threshold"
    assert (f["method"] == "rules").all()
    assert list(f.columns) == REGIME_COLUMNS
    assert list(f["session"][:3]) == ["2020-01-01", "2020-01-02", "2020-01-03"]


def test_falling_volatile_narrow_is_risk_off():
    bench = path(N, -0.03, 0.02)
    closes = np.column_stack([path(N, -0.01 * (i + 1), start=20.0 + i) for i in range(4)])
    f = frame_of(bench, closes, vol_method="threshold", vol_threshold=0.25)
    rows = f.iloc[FIRST_FULL:]
    assert (rows["label"] == "risk_off").all()
    assert (rows["score"] == -3).all()
    assert np.allclose(rows["confidence"], 1.0)
    assert (rows["realised_vol"] > 0.25).all()
    assert np.allclose(rows["breadth"], 0.0)
    d = drivers(f.iloc[-1])
    assert d["trend"]["state"] == "down" and d["volatility"]["state"] == "high" and d["breadth"]["state"] == "weak"


@pytest.mark.parametrize("rising, breadth, score, label, confidence", [
    (3, 0.75, 1, "neutral", 2 / 3),  # up, high vol, strong breadth
    (2, 0.5, 0, "neutral", 1.0),  # up, high vol, neutral breadth
    (1, 0.25, -1, "neutral", 2 / 3),  # up, high vol, weak breadth
])
def test_mixed_drivers_are_neutral_with_the_documented_confidence(rising, breadth, score, label, confidence):
    bench = path(N, 0.002, 0.0005)  # rising and calm in absolute terms ...
    closes = np.column_stack([path(N, 0.01 if i < rising else -0.01, start=20.0 + i) for i in range(4)])
    f = frame_of(bench, closes, vol_method="threshold", vol_threshold=0.005)  # ... but above a tiny cut
    rows = f.iloc[FIRST_FULL:]
    assert (rows["trend"] == 1).all() and (rows["vol_state"] == -1).all()
    assert np.allclose(rows["breadth"], breadth)
    assert (rows["score"] == score).all()
    assert (rows["label"] == label).all()
    assert np.allclose(rows["confidence"], confidence)


def test_score_two_is_risk_on_with_two_thirds_confidence():
    bench = path(N, 0.002, 0.0005)
    closes = np.column_stack([path(N, 0.01 if i < 2 else -0.01, start=20.0 + i) for i in range(4)])
    f = frame_of(bench, closes, vol_method="threshold", vol_threshold=0.25)
    rows = f.iloc[FIRST_FULL:]
    assert (rows["score"] == 2).all() and (rows["label"] == "risk_on").all()
    assert np.allclose(rows["confidence"], 2 / 3)
    assert drivers(rows.iloc[-1])["breadth"]["state"] == "neutral"


def test_ties_fall_on_the_documented_side():
    bench = path(N, 0.002, 0.0005)
    flat = np.full(N, 30.0)  # close == its SMA: not above
    closes = np.column_stack([path(N, 0.01, start=20.0), path(N, 0.01, start=21.0), flat, flat])
    f = frame_of(bench, closes, vol_method="threshold")
    assert np.allclose(f["breadth"][4:], 0.5)
    # breadth exactly breadth_on (3 of 5) is strong, exactly breadth_off (2 of 5) is weak
    five = [path(N, 0.01 if i < 3 else -0.01, start=20.0 + i) for i in range(5)]
    assert (frame_of(bench, np.column_stack(five))["breadth_state"][4:] == 1).all()
    five = [path(N, 0.01 if i < 2 else -0.01, start=20.0 + i) for i in range(5)]
    assert (frame_of(bench, np.column_stack(five))["breadth_state"][4:] == -1).all()
    # realised_vol exactly at the cut is calm
    bench, closes = random_walk(60, 3, seed=4)
    rv = regime_frame(bench, closes, RegimeSection(**SMALL, vol_method="threshold"))["realised_vol"]
    cut = float(rv.iloc[30])
    f = regime_frame(bench, closes, RegimeSection(**SMALL, vol_method="threshold", vol_threshold=cut))
    assert f["vol_state"].iloc[30] == 1
    assert (f["vol_state"][rv > cut] == -1).all() and (f["vol_state"][rv < cut] == 1).all()


def test_warm_up_rows_are_flagged():
    bench = path(N, 0.002, 0.0005)
    closes = np.column_stack([path(N, 0.01, start=20.0 + i) for i in range(4)])
    f = frame_of(bench, closes)  # percentile: the cut needs vol_window valid realised values
    for i in range(4):  # fewer than trend_sma (and breadth_sma) sessions
        row = f.iloc[i]
        d = drivers(row)
        assert row["trend"] == 0 and math.isnan(row["bench_vs_sma"])
        assert d["trend"]["state"] == "warming_up" and d["trend"]["bench_vs_sma"] is None
        assert d["breadth"]["state"] == "warming_up" and d["breadth"]["share"] is None
        assert row["breadth_state"] == 0 and math.isnan(row["breadth"])
    assert drivers(f.iloc[4])["trend"]["state"] == "up" and f.iloc[4]["trend"] == 1
    assert drivers(f.iloc[4])["breadth"]["state"] == "strong"
    for i in range(5):  # the first log return is at row 1, the first 5-return std at row 5
        assert math.isnan(f.iloc[i]["realised_vol"]) and drivers(f.iloc[i])["volatility"]["state"] == "warming_up"
    for i in range(9):  # realised_vol rows 5..9 are the first 5 valid values of the history
        assert math.isnan(f.iloc[i]["vol_cut"]) and f.iloc[i]["vol_state"] == 0
    assert not math.isnan(f.iloc[9]["vol_cut"]) and drivers(f.iloc[9])["volatility"]["state"] != "warming_up"
    assert f.iloc[0]["label"] == "neutral" and f.iloc[0]["score"] == 0 and f.iloc[0]["confidence"] == 1.0


# ---------------------------------------------------------------- formulas vs independent numpy


def expected_values(bench: np.ndarray, closes: np.ndarray, cfg: RegimeSection) -> dict[str, np.ndarray]:
    n = len(bench)
    bvs, rv, cut, br = (np.full(n, np.nan) for _ in range(4))
    lr = np.r_[np.nan, np.diff(np.log(bench))]
    for t in range(n):
        if t >= cfg.trend_sma - 1:
            bvs[t] = bench[t] / bench[t - cfg.trend_sma + 1: t + 1].mean() - 1
        if t >= cfg.vol_window:
            rv[t] = np.std(lr[t - cfg.vol_window + 1: t + 1], ddof=1) * np.sqrt(252)
        hist = rv[max(0, t - cfg.vol_history + 1): t + 1]
        hist = hist[~np.isnan(hist)]
        if cfg.vol_method == "threshold":
            cut[t] = cfg.vol_threshold
        elif len(hist) >= cfg.vol_window:
            cut[t] = np.quantile(hist, cfg.vol_percentile)
        if t >= cfg.breadth_sma - 1:
            win = closes[t - cfg.breadth_sma + 1: t + 1]
            ok = ~np.isnan(win).any(axis=0)
            if ok.any():
                br[t] = np.mean(closes[t, ok] > win[:, ok].mean(axis=0))
    return {"bench_vs_sma": bvs, "realised_vol": rv, "vol_cut": cut, "breadth": br}


@pytest.mark.parametrize("vol_method", ["percentile", "threshold"])
def test_values_match_independent_numpy(vol_method):
    bench, closes = random_walk(120, 6, seed=3)
    closes.iloc[40:43, 2] = np.nan  # a hole: no SMA for that symbol while it is in the window
    cfg = RegimeSection(**SMALL, vol_method=vol_method, vol_threshold=0.18, vol_percentile=0.7)
    f = regime_frame(bench, closes, cfg)
    exp = expected_values(bench.to_numpy(), closes.to_numpy(), cfg)
    for col, values in exp.items():
        np.testing.assert_allclose(f[col].to_numpy(dtype=float), values, rtol=1e-10, atol=1e-12, err_msg=col)
        assert (f[col].isna().to_numpy() == np.isnan(values)).all(), col

    trend = np.where(np.isnan(exp["bench_vs_sma"]), 0, np.sign(exp["bench_vs_sma"]))
    vol = np.where(np.isnan(exp["realised_vol"]) | np.isnan(exp["vol_cut"]), 0,
                   np.where(exp["realised_vol"] > exp["vol_cut"], -1, 1))
    b = exp["breadth"]
    breadth = np.where(np.isnan(b), 0, np.where(b >= 0.6, 1, np.where(b <= 0.4, -1, 0)))
    score = trend + vol + breadth
    assert (f["trend"] == trend).all() and (f["vol_state"] == vol).all() and (f["breadth_state"] == breadth).all()
    assert (f["score"] == score).all()
    label = np.where(score >= 2, "risk_on", np.where(score <= -2, "risk_off", "neutral"))
    assert (f["label"].to_numpy() == label).all()
    np.testing.assert_allclose(f["confidence"], np.where(label == "neutral", 1 - abs(score) / 3, abs(score) / 3))
    assert len(set(label)) == 3 and set(vol) == {-1, 0, 1}  # the data exercises every branch

    for i in (10, 41, 119):  # drivers carry the same values, rounded to 6 decimals
        d = drivers(f.iloc[i])
        assert d["trend"]["bench_vs_sma"] == round(exp["bench_vs_sma"][i], 6)
        assert d["volatility"]["realised"] == round(exp["realised_vol"][i], 6)
        assert d["volatility"]["cut"] == round(exp["vol_cut"][i], 6)
        assert d["breadth"]["share"] == round(exp["breadth"][i], 6)


def test_threshold_and_percentile_cuts():
    bench, closes = random_walk(200, 4, seed=5)
    thr = regime_frame(bench, closes, RegimeSection(**SMALL, vol_method="threshold", vol_threshold=0.17))
    pct = regime_frame(bench, closes, RegimeSection(**SMALL, vol_method="percentile", vol_percentile=0.8))
    assert (thr["vol_cut"] == 0.17).all()  # the threshold on every session, warm-up included
    assert (thr["vol_state"] == np.where(thr["realised_vol"].isna(), 0,
                                         np.where(thr["realised_vol"] > 0.17, -1, 1))).all()
    rv = pct["realised_vol"].to_numpy()
    assert pct["vol_cut"][:9].isna().all()
    for t in range(9, 200):
        hist = rv[max(0, t - 19): t + 1]
        assert pct["vol_cut"][t] == pytest.approx(np.quantile(hist[~np.isnan(hist)], 0.8), rel=1e-12)
    assert (thr["vol_state"] != pct["vol_state"]).any()
    assert drivers(pct.iloc[-1])["volatility"]["method"] == "percentile"
    assert drivers(thr.iloc[-1])["volatility"]["method"] == "threshold"


# ---------------------------------------------------------------- point in time


POINT_IN_TIME = {
    "rules": dict(trend_sma=50, breadth_sma=20, vol_window=10, vol_history=120),
    "gmm": dict(method="gmm", trend_sma=50, breadth_sma=20, vol_window=10, vol_history=120, gmm_window=120,
                gmm_refit=40),
}


@pytest.mark.parametrize("method", ["rules", "gmm"])
def test_rows_up_to_d_do_not_see_later_data(method):
    bench, closes = random_walk(500, 10, seed=11)
    cfg = RegimeSection(**POINT_IN_TIME[method])
    d = 330  # gmm: first fit at row 69, refits every 40
    full = regime_frame(bench, closes, cfg)

    truncated = regime_frame(bench.iloc[: d + 1], closes.iloc[: d + 1], cfg)

    rng = np.random.default_rng(0)
    order = np.r_[np.arange(d + 1), d + 1 + rng.permutation(len(bench) - d - 1)]
    b2 = pd.Series(bench.to_numpy()[order], index=bench.index)
    c2 = pd.DataFrame(closes.to_numpy()[order], index=closes.index, columns=closes.columns)
    b2.iloc[d + 1:] *= 3
    c2.iloc[d + 1:] *= 3
    perturbed = regime_frame(b2, c2, cfg)

    pd.testing.assert_frame_equal(truncated, full.iloc[: d + 1], check_exact=True)
    pd.testing.assert_frame_equal(perturbed.iloc[: d + 1], full.iloc[: d + 1], check_exact=True)
    # the canary is alive: the perturbation does change the later rows
    assert not np.allclose(perturbed["realised_vol"][d + 5:], full["realised_vol"][d + 5:])
    if method == "gmm":
        assert drivers(full.iloc[d])["gmm"]["state"] == "fitted"
        assert (perturbed["drivers"][d + 1:] != full["drivers"][d + 1:]).any()


# ---------------------------------------------------------------- gaussian mixture


def two_regimes(seed: int = 2) -> tuple[pd.Series, pd.DataFrame]:
    """400 calm sessions, 200 volatile ones, 200 calm again."""
    rng = np.random.default_rng(seed)
    sd = np.r_[np.full(400, 0.003), np.full(200, 0.03), np.full(200, 0.003)]
    idx = sessions(len(sd))
    bench = pd.Series(100 * np.exp(np.cumsum(rng.normal(0.0, sd))), index=idx)
    closes = pd.DataFrame(50 * np.exp(np.cumsum(rng.normal(0.0, 0.01, (len(sd), 5)), axis=0)), index=idx)
    return bench, closes


GMM = dict(method="gmm", vol_window=10, gmm_window=300, gmm_refit=20)


def test_gmm_is_deterministic_and_refits_on_schedule():
    bench, closes = two_regimes()
    cfg = RegimeSection(**GMM)
    a, b = regime_frame(bench, closes, cfg), regime_frame(bench, closes, cfg)
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    assert (a["method"] == "gmm").all()

    # features are valid from row 10 (first realised vol): 150 valid rows first at row 159
    first = 159
    warm = a.iloc[:first]
    assert (warm["label"] == "neutral").all() and (warm["confidence"] == 0.0).all() and (warm["score"] == 0).all()
    assert all(drivers(r)["gmm"]["state"] == "warming_up" for _, r in warm.iterrows())
    refits = [drivers(r)["gmm"]["refit_session"] for _, r in a.iloc[first:].iterrows()]
    expected = [a["session"][first + 20 * ((i - first) // 20)] for i in range(first, len(a))]
    assert refits == expected
    # the rules' columns are still filled as drivers
    rules = regime_frame(bench, closes, RegimeSection(**{**GMM, "method": "rules"}))
    for col in ["trend", "vol_state", "breadth_state", "bench_vs_sma", "realised_vol", "vol_cut", "breadth"]:
        pd.testing.assert_series_equal(a[col], rules[col])
    conf = a["confidence"][first:]
    assert ((conf > 0) & (conf <= 1)).all()


@pytest.mark.parametrize("components", [2, 3])
def test_gmm_high_vol_component_is_risk_off(components):
    bench, closes = two_regimes()
    f = regime_frame(bench, closes, RegimeSection(**GMM, gmm_components=components))
    for _, row in f.iloc[159:].iterrows():
        g = drivers(row)["gmm"]
        means = np.asarray(g["means_vol"])
        rank = int(np.argsort(np.argsort(means))[g["component"]])
        assert row["label"] == ("risk_on" if rank == 0 else "risk_off" if rank == components - 1 else "neutral")
        assert row["score"] == {"risk_on": 1, "neutral": 0, "risk_off": -1}[row["label"]]
    volatile = f.iloc[450:600]  # fitted on windows holding both regimes
    calm_again = f.iloc[650:800]
    if components == 2:
        assert (volatile["label"] == "risk_off").mean() > 0.9
        assert (calm_again["label"] == "risk_on").mean() > 0.9
    else:  # three components split one of the regimes; the calm one is never risk_off, the volatile never risk_on
        assert (volatile["label"] == "risk_on").mean() < 0.05 and (volatile["label"] == "risk_off").mean() > 0.5
        assert (calm_again["label"] == "risk_off").mean() < 0.05
