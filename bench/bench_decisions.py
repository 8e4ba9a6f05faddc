"""Decision path latency: features ready -> guarded target positions for one session, in process.

Goal (issue): deciding session D for 50 symbols with `qt_assets.agents.assets.run_agent` (intents -> allocation ->
guardian -> orders for D+1) takes p95 <= 150 ms over 200 repetitions.

Seeded synthetic universe: N symbols (default 50, S000..S049) x T XNYS sessions (default 2,520, ending
2023-12-29), geometric Brownian motion with a market factor, consistent OHLC (open near the previous close,
high >= max(open, close), low <= min(open, close)) and volumes. "Features ready" is done before any timing:
atr_pct_14 (Wilder ATR, alpha 1/14, from the 15th bar, over the close), vol_20d (std of 20 daily returns x sqrt 252) and the model's
features ret_1d, ret_5d, ret_20d, sma_ratio_5_20, rsi_14 (Wilder), as `features_daily` defines them; the
market regime with `qt_assets.agents.regime.regime_frame` on the equal-weight index of the universe. The config is
`qtos.yaml` with the universe, data range and agents replaced: a rule agent (sma_cross fast 20 / slow 100,
equal sizing) and a model agent (top_k 10), risk.max_open_positions 20. The model is the research pipeline
(`qt_assets.research.training.make_pipeline`: winsorise -> impute -> xgboost XGBClassifier, 3 classes, 50 trees,
n_jobs=1, seeded) fitted on the first 1,500 sessions (labels: forward 5-session close-to-close return vs
label.up / label.down, rows purged at the end of the training window); out-of-sample from the next session.

The inputs are shaped as `load_inputs` shapes them for a rule/model agent: adjusted closes and bars with all
history <= the last decided session, features and regime rows for the decided sessions only.

Per agent:
  * warm-up (not timed against the goal): run_agent over every session before D (the last session) in one
    call from a new book -> the book before D (JSON). Its time per session is printed as well.
  * single session: --reps repetitions of run_agent(sessions=[D]) on a book restored from that JSON (restore
    outside the timing; time.perf_counter around run_agent only; the model agent's xgboost scoring included);
    p50 / p95 / max vs the goal.
  * baseline (same run): the same agent deciding the last --batch sessions in one call (book restored from a
    second warm-up over the sessions before them), as ms per session (amortised); D's guarded targets of the
    batch must equal the single-session ones.
  * guardian only: Guardian(...).begin + decide for D, inputs prepared outside the timing.
  * profile: cProfile over --profile-reps single-session calls, top 10 by cumulative time (per call).

    .venv/bin/python bench/bench_decisions.py [--symbols 50 --sessions 2520 --reps 200 --batch 252
                                               --train-sessions 1500 --profile-reps 20 --seed 7]
"""

from __future__ import annotations

import argparse
import cProfile
import os
import platform
import pstats
import shlex
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("DO_NOT_TRACK", "true")
END = "2023-12-29"
GOAL_MS = 150.0
MODEL_FEATURES = ["ret_1d", "ret_5d", "ret_20d", "sma_ratio_5_20", "rsi_14"]


# ------------------------------------------------------------------------------------------------ data
def synthetic_market(n_sym: int, n_sessions: int, seed: int):
    """(sessions, closes wide DatetimeIndex x symbols, bars long) of a seeded GBM universe."""
    from qt_resources.calendar import sessions as xnys_sessions

    start = f"{int(END[:4]) - n_sessions // 252 - 3}-01-01"
    sess = xnys_sessions(start, END)[-n_sessions:]
    if len(sess) < n_sessions:
        raise SystemExit(f"only {len(sess)} XNYS sessions available before {END}")
    T, N = len(sess), n_sym
    width = max(3, len(str(N - 1)))
    symbols = [f"S{i:0{width}d}" for i in range(N)]
    rng = np.random.default_rng(seed)
    mu = rng.uniform(0.02, 0.12, N) / 252
    sig = rng.uniform(0.15, 0.45, N) / np.sqrt(252)
    beta = rng.uniform(0.6, 1.4, N)
    mkt = rng.normal(0.0, 0.01, (T, 1))
    lr = (mu - 0.5 * sig**2) + beta * mkt + sig * rng.standard_normal((T, N))
    close = rng.lognormal(np.log(40), 0.6, N) * np.exp(np.cumsum(lr, axis=0))
    open_ = np.vstack([close[:1], close[:-1]]) * np.exp(rng.normal(0, 0.004, (T, N)))
    high = np.maximum(open_, close) * np.exp(np.abs(rng.normal(0, 0.006, (T, N))))
    low = np.minimum(open_, close) * np.exp(-np.abs(rng.normal(0, 0.006, (T, N))))
    volume = np.round(rng.lognormal(np.log(1e6), 0.5, (T, N)))
    idx = pd.DatetimeIndex(sess)
    wide = {k: pd.DataFrame(v, index=idx, columns=symbols)
            for k, v in dict(open=open_, high=high, low=low, close=close, volume=volume).items()}
    bars = pd.DataFrame({"session": np.repeat(np.array(sess, dtype=object), N),
                         "symbol": np.tile(np.array(symbols, dtype=object), T),
                         **{k: v.to_numpy().ravel() for k, v in wide.items()}})
    return sess, symbols, wide, bars


def features_ready(wide: dict[str, pd.DataFrame], sess: list[str]) -> pd.DataFrame:
    """Long frame session, symbol, atr_pct_14, vol_20d + MODEL_FEATURES (NaN until each warm-up is full)."""
    px, h, lo = wide["close"], wide["high"], wide["low"]
    prev = px.shift(1)
    ret1 = px / prev - 1
    tr = pd.DataFrame(np.maximum.reduce([(h - lo).to_numpy(), (h - prev).abs().to_numpy(),
                                         (lo - prev).abs().to_numpy()]),
                      index=px.index, columns=px.columns)  # NaN on the first bar (no previous close)
    wilder = dict(alpha=1 / 14, adjust=False, min_periods=14)
    atr = tr.ewm(**wilder).mean()
    gain, loss = (px - prev).clip(lower=0), (prev - px).clip(lower=0)
    rsi = 100 - 100 / (1 + gain.ewm(**wilder).mean() / loss.ewm(**wilder).mean())
    f = {"atr_pct_14": atr / px, "vol_20d": ret1.rolling(20).std() * np.sqrt(252.0), "ret_1d": ret1,
         "ret_5d": px / px.shift(5) - 1, "ret_20d": px / px.shift(20) - 1,
         "sma_ratio_5_20": px.rolling(5).mean() / px.rolling(20).mean(), "rsi_14": rsi}
    T, N = px.shape
    out = pd.DataFrame({"session": np.repeat(np.array(sess, dtype=object), N),
                        "symbol": np.tile(px.columns.to_numpy(dtype=object), T)})
    for k, v in f.items():
        out[k] = v.reindex(index=px.index, columns=px.columns).to_numpy().ravel()
    return out


def project_config(symbols: list[str], sess: list[str], train_sessions: int):
    from qt_resources.config import parse_config

    raw = yaml.safe_load((REPO / "qtos.yaml").read_text())
    raw["universe"] = {**raw["universe"], "symbols": symbols, "benchmark": "equal_weight"}
    raw["data"] = {**raw["data"], "provider": "bundled", "start": sess[0], "end": sess[-1]}
    raw["features"] = {"set": [*MODEL_FEATURES, "vol_20d"]}
    raw["research"]["split"] = {**raw["research"]["split"], "train_end": sess[train_sessions - 1]}
    raw["research"]["split"].pop("valid_end", None)
    raw["research"]["split"].pop("test_sessions", None)
    raw["agents"] = [
        {"name": "trend", "kind": "rule", "rule": "sma_cross", "params": {"fast": 20, "slow": 100}, "mode": "paper"},
        {"name": "xgb_daily", "kind": "model", "model": raw["research"]["model"]["name"],
         "selection": {"top_k": min(10, len(symbols)), "min_score": 0.0}, "mode": "paper"},
    ]
    raw["risk"] = {**raw["risk"], "max_open_positions": 20}
    return parse_config(raw, "qtos.yaml (bench overrides)")


def train_model(cfg, feats: pd.DataFrame, wide: dict[str, pd.DataFrame], sess: list[str], train_sessions: int):
    """The research pipeline with 50 trees on the first ``train_sessions`` sessions; (model, version)."""
    from qt_assets.research.training import fit_pipeline, make_pipeline

    h, lab = cfg.label.horizon, cfg.label
    px = wide["close"]
    fwd = (px.shift(-h) / px - 1).to_numpy().ravel()
    frame = feats.assign(label_class=np.where(np.isnan(fwd), np.nan,
                                              np.where(fwd > lab.up, 2.0, np.where(fwd < lab.down, 0.0, 1.0))))
    pos = np.repeat(np.arange(len(sess)), px.shape[1])
    train = frame[(pos + h <= train_sessions - 1) & frame["label_class"].notna()].dropna(subset=MODEL_FEATURES)
    m = cfg.research.model
    params = {**m.params, "n_estimators": 50}
    pipe = make_pipeline("classifier", params, m.seed, m.winsorize)
    fit_pipeline(pipe, train, MODEL_FEATURES, "classifier")
    version = SimpleNamespace(version="1", tags={"features": ",".join(MODEL_FEATURES),
                                                 "oos_start": sess[train_sessions]})
    return pipe, version, len(train), np.bincount(train["label_class"].astype(int), minlength=3)


# ------------------------------------------------------------------------------------------------ timing
def inputs(keys: list[str], closes, bars, feats, regime):
    """AgentInputs as load_inputs builds them for rule/model agents."""
    from qt_assets.agents.assets import AgentInputs

    last = keys[-1]
    ks = set(keys)
    return AgentInputs(sessions=keys, closes=closes.loc[:last], bars=bars[bars["session"] <= last],
                       features=feats[feats["session"].isin(ks)].reset_index(drop=True),
                       regime=regime[regime["session"].isin(ks)].reset_index(drop=True))


def pct(a: np.ndarray) -> dict[str, float]:
    return {"p50": float(np.percentile(a, 50)), "p95": float(np.percentile(a, 95)), "max": float(a.max()),
            "mean": float(a.mean()), "min": float(a.min())}


def short(path: str) -> str:
    for root in (str(REPO) + "/", "site-packages/"):
        if root in path:
            return path.split(root, 1)[1]
    return path


def profile_top(call, books: list, n: int = 10) -> tuple[list[str], list[str], float]:
    """cProfile over one call per book: (top n by cumulative time, top n among the repo's own functions,
    profiled ms per call). Rows: cumulative ms, self ms and calls, per call."""
    pr = cProfile.Profile()
    t = time.perf_counter()
    pr.enable()
    for b in books:
        call(b)
    pr.disable()
    per_call = (time.perf_counter() - t) / len(books) * 1e3
    reps = len(books)
    rows = []
    for (fn, line, name), (_, nc, tt, ct, _) in pstats.Stats(pr).stats.items():
        if name == "<lambda>" or "_lsprof" in name:
            continue
        where = name if fn == "~" else f"{short(fn)}:{line}({name})"
        rows.append((ct, tt, nc, where, fn.startswith(str(REPO / "qt_"))))
    rows.sort(key=lambda r: -r[0])
    fmt = lambda r: f"    {r[0] / reps * 1e3:8.2f} {r[1] / reps * 1e3:8.2f} {r[2] / reps:8.0f}  {r[3]}"  # noqa: E731
    return [fmt(r) for r in rows[:n]], [fmt(r) for r in rows if r[4]][:n], per_call


def bench_agent(cfg, agent, sess, closes, bars, feats, regime, model, version, a) -> dict:
    from qt_assets.agents.assets import GUARD_FEATURES, _by_session, run_agent
    from qt_assets.agents.guardian import Book, Guardian
    from qt_resources.costs import CostModel

    kw = dict(model=model, version=version, llm=None)
    D = sess[-1]
    cash = cfg.broker.initial_cash

    # 1. warm the book over every session before D, one call
    book = Book.new(cash)
    t = time.perf_counter()
    run_agent(cfg, agent, inputs(sess[:-1], closes, bars, feats, regime), book, **kw)
    t_warm = time.perf_counter() - t
    book_d = book.to_json()

    # 2. single session D, --reps times
    inp = inputs([D], closes, bars, feats, regime)
    times = np.empty(a.reps)
    out = None
    for i in range(a.reps):
        b = Book.from_json(book_d)
        t = time.perf_counter()
        out = run_agent(cfg, agent, inp, b, **kw)
        times[i] = time.perf_counter() - t
    single = pct(times * 1e3)
    dec1, g1, _ = out

    # 3. baseline: the last --batch sessions in one call, from the book before them
    book = Book.new(cash)
    run_agent(cfg, agent, inputs(sess[:-a.batch], closes, bars, feats, regime), book, **kw)
    book_b = book.to_json()
    binp = inputs(sess[-a.batch:], closes, bars, feats, regime)
    batch = []
    for _ in range(a.batch_reps):
        b = Book.from_json(book_b)
        t = time.perf_counter()
        _, gb, _ = run_agent(cfg, agent, binp, b, **kw)
        batch.append(time.perf_counter() - t)
    t_batch = float(np.median(batch))
    # D decided in the batch vs alone: orders and rules identical, weights to the last bits (the book's dicts come
    # back key-sorted from JSON, so equity sums in another order than in a book carried in memory)
    gd, g1r = gb[gb["session"] == D].reset_index(drop=True), g1.reset_index(drop=True)
    exact = ["symbol", "order_side", "order_qty", "rules"]
    diff = max(float(np.nanmax(np.abs(gd[c].to_numpy(float) - g1r[c].to_numpy(float)), initial=0.0))
               for c in ("intent_weight", "target_weight"))
    same = (gd[exact].equals(g1r[exact]) and diff <= 1e-12, diff)

    # guardian only (begin + decide for D), inputs prepared outside the timing
    risk, costs = cfg.risk_for(agent), CostModel.from_config(cfg.backtest.costs)
    bars_d = _by_session(bars[bars["session"] == D], ["open", "high", "low", "close"]).get(D, {})
    f = _by_session(inp.features, GUARD_FEATURES).get(D, {})
    atr = {k: v[0] * bars_d[k][3] for k, v in f.items() if k in bars_d}  # ATR in price units, as run_agent
    vol = {k: v[1] for k, v in f.items()}
    r = inp.regime.iloc[0]
    reg = (r["label"], float(r["confidence"]))
    intents = dict(zip(dec1["symbol"], dec1["target_weight"]))
    gt = np.empty(a.reps)
    for i in range(a.reps):
        b = Book.from_json(book_d)
        t = time.perf_counter()
        g = Guardian(agent, risk, cfg.allocation, costs, list(closes.columns), b)
        g.begin(D, bars_d, reg)
        g.decide(intents, atr, vol)
        gt[i] = time.perf_counter() - t

    # profile of the single-session call
    books = [Book.from_json(book_d) for _ in range(a.profile_reps)]
    top, own, prof_ms = profile_top(lambda b: run_agent(cfg, agent, inp, b, **kw), books)

    held = Book.from_json(book_d)
    return {"agent": agent.name, "kind": agent.kind, "warm_s": t_warm,
            "warm_ms_per_session": t_warm / (len(sess) - 1) * 1e3,
            "single": single, "batch_ms_per_session": t_batch / a.batch * 1e3, "batch_s": t_batch,
            "guardian": pct(gt * 1e3), "same": same, "top": top, "own": own, "prof_ms": prof_ms,
            "positions": len(held.qty), "targets": int((g1["target_weight"] > 1e-12).sum()),
            "orders": int((g1["order_side"] != "").sum()), "regime": str(g1["regime"].iloc[0]),
            "rules": sorted({x for s in g1["rules"] for x in s.split(",") if x})}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--symbols", type=int, default=50)
    ap.add_argument("--sessions", type=int, default=2520)
    ap.add_argument("--reps", type=int, default=200, help="single-session repetitions per agent")
    ap.add_argument("--batch", type=int, default=252, help="baseline: the last N sessions in one call")
    ap.add_argument("--batch-reps", type=int, default=3, help="baseline repetitions (median reported)")
    ap.add_argument("--train-sessions", type=int, default=1500)
    ap.add_argument("--profile-reps", type=int, default=20)
    ap.add_argument("--goal-ms", type=float, default=GOAL_MS)
    ap.add_argument("--seed", type=int, default=7)
    a = ap.parse_args()
    if not 300 <= a.train_sessions + 20 <= a.sessions - a.batch:
        ap.error("need --train-sessions >= 280 and --sessions >= --train-sessions + --batch + 20")

    import sklearn
    import xgboost

    from qt_assets.agents.regime import regime_frame

    exe = sys.executable
    if exe.startswith(str(Path.cwd()) + "/"):
        exe = os.path.relpath(exe)
    print(f"command: {shlex.join([exe, *sys.argv])}  (cwd {Path.cwd()})")
    print(f"machine: {platform.platform()}; {platform.processor() or platform.machine()}; os.cpu_count() = "
          f"{os.cpu_count()}; load average {os.getloadavg()[0]:.2f}; Python {platform.python_version()}, "
          f"pandas {pd.__version__}, numpy {np.__version__}, xgboost {xgboost.__version__}, "
          f"scikit-learn {sklearn.__version__}")

    t = time.perf_counter()
    sess, symbols, wide, bars = synthetic_market(a.symbols, a.sessions, a.seed)
    feats = features_ready(wide, sess)
    cfg = project_config(symbols, sess, a.train_sessions)
    closes = wide["close"]
    level = (1 + closes.pct_change().mean(axis=1).fillna(0.0)).cumprod()
    regime = regime_frame(level, closes, cfg.regime)[["session", "label", "confidence"]]
    model, version, n_train, classes = train_model(cfg, feats, wide, sess, a.train_sessions)
    t_prep = time.perf_counter() - t
    print(f"data: {a.symbols} symbols x {len(sess)} XNYS sessions {sess[0]}..{sess[-1]} (seed {a.seed}); "
          f"D = {sess[-1]}; features + regime + model ready in {t_prep:.1f} s (not timed below)")
    print(f"model: make_pipeline(winsorise, impute, XGBClassifier 50 trees, n_jobs=1), {n_train} train rows "
          f"(classes down/flat/up {classes.tolist()}), features {','.join(MODEL_FEATURES)}; "
          f"out-of-sample from {version.tags['oos_start']}")
    print(f"regime of D: {regime['label'].iloc[-1]} ({regime['confidence'].iloc[-1]:.2f}); labels over the run: "
          f"{regime['label'].value_counts().to_dict()}")
    print(f"agents: {'; '.join(f'{x.name} ({x.kind})' for x in cfg.agents)}; risk.max_open_positions "
          f"{cfg.risk.max_open_positions}, max_position_pct {cfg.risk.max_position_pct}\n")

    res = [bench_agent(cfg, ag, sess, closes, bars, feats, regime, model if ag.kind == "model" else None,
                       version if ag.kind == "model" else None, a) for ag in cfg.agents]

    print(f"single-session decision path, run_agent(sessions=[D]), {a.reps} repetitions, ms "
          f"(goal p95 <= {a.goal_ms:g} ms):")
    print(f"| agent | kind | p50 | p95 | max | mean | goal | guardian only p50 / p95 | "
          f"batch of {a.batch}: ms/session | warm-up {len(sess) - 1}: ms/session | D same in batch |")
    print("|---|---|---:|---:|---:|---:|---|---:|---:|---:|---|")
    for r in res:
        s, g = r["single"], r["guardian"]
        print(f"| {r['agent']} | {r['kind']} | {s['p50']:.1f} | {s['p95']:.1f} | {s['max']:.1f} | {s['mean']:.1f} | "
              f"{'PASS' if s['p95'] <= a.goal_ms else 'FAIL'} | {g['p50']:.2f} / {g['p95']:.2f} | "
              f"{r['batch_ms_per_session']:.2f} ({r['batch_s']:.2f} s) | {r['warm_ms_per_session']:.2f} "
              f"({r['warm_s']:.1f} s) | {'yes' if r['same'][0] else 'NO'} (max weight diff {r['same'][1]:.0e}) |")
    print()
    for r in res:
        s = r["single"]
        print(f"{r['agent']}: D in regime {r['regime']}; book holds {r['positions']} positions before D; "
              f"{r['targets']} non-zero targets, {r['orders']} orders; rules hit: {', '.join(r['rules']) or 'none'}; "
              f"single-session p50 = {s['p50'] / r['batch_ms_per_session']:.1f}x the amortised batch cost")
    for r in res:
        print(f"\ncProfile, {r['agent']} ({r['kind']}), {a.profile_reps} single-session calls ({r['prof_ms']:.1f} ms "
              f"per call under the profiler), top 10 by cumulative time, per call:\n"
              f"    cum ms  self ms    calls  function")
        print("\n".join(r["top"]))
        print("  the repo's own functions among them (qt_*), top 10 by cumulative time:")
        print("\n".join(r["own"]))


if __name__ == "__main__":
    main()
