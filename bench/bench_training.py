"""Training at scale: the research pipeline's xgboost fit, one cross-validation pass and a sklearn peer, on a
seeded synthetic training frame of N symbols x T XNYS sessions (default 500 x 5,000 = 2.5 M rows).

The frame has the columns `load_frame` returns (symbol, session, the configured features of `qtos.yaml`
`features.set`, ret_20d, fwd_return, label_class, label_session) and is generated directly, not through dbt:
daily returns = beta x market + a persistent per-symbol drift (AR(1), the signal) + a short-term reversal of
the last 5 days + idiosyncratic noise with a slow volatility regime; the features are then computed from the
simulated prices with the definitions of `features_daily` (ret_k, SMA ratios, Wilder RSI(14), 20-day
annualised vol; NULL until their warm-up window is full; a configured feature not among these is a noisy
function of the drift), and the labels as `labels.sql` does (close-to-close over the configured horizon,
NULL for the last `horizon` sessions). The frame is written to Parquet once; every measured step then runs in
its own subprocess (fork + exec of this script), reads it as `trained_model` does (`pd.read_parquet`), splits
it with `time_split` (train_end ~75 % through the sessions, the configured embargo) and times one step:

  * xgb_n1:   make_pipeline(classifier, research.model.params, seed, winsorize) + fit_pipeline on the train
              part (the final fit at one thread), then `predict` on the test part;
  * xgb_n2:   the same with `fit_pipeline(..., n_jobs=2)`;
  * cv_n1 / cv_n0: walk_forward_folds(train, cv.folds, cv.min_train_sessions, embargo) + tuning.cross_validate
              (what one Optuna trial costs, without pruning) at one thread per fit and at the research
              default n_jobs=0 (auto: the idle cores on fits of >= 50 k rows); the fold scores are compared;
  * peer_t1 / peer_t2: the same winsorise -> impute steps + sklearn HistGradientBoostingClassifier with
              max_iter = n_estimators, max_depth, learning_rate (no early stopping), at 1 and 2 OpenMP threads.

Peak RSS is each subprocess's own VmHWM, reset (`/proc/self/clear_refs` = 5) after the data is loaded, so it is
the process's peak *during the step* (the loaded frame included, shown separately as "RSS at start"). Not
getrusage(RUSAGE_CHILDREN): that is a max over all children and Linux carries the parent's RSS over fork+exec.
The xgb_n1 and xgb_n2 test predictions and boosters are compared bit for bit (is n_jobs=2 deterministic
relative to n_jobs=1?), and the `det` step repeats that comparison for --det-sets parameter sets drawn at random
from the xgboost family's search space (qt_assets/research/models/xgboost.py), fitted on the last --det-rows train rows.

    .venv/bin/python bench/bench_training.py [--symbols 500 --sessions 5000 --seed 7] [--quick] [--keep]
                                             [--det-sets 3 --det-rows 250000]
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
END = "2023-12-29"


# ------------------------------------------------------------------------------------------------ config
def research_config() -> dict:
    """The parts of qtos.yaml the research assets use, with the defaults of the config models (qt_resources/config/)."""
    raw = yaml.safe_load((REPO / "qtos.yaml").read_text())
    r = raw.get("research", {})
    model, label = r.get("model", {}), raw.get("label", {})
    params = {"n_estimators": 200, "max_depth": 3, "learning_rate": 0.05, "subsample": 0.8,
              "colsample_bytree": 0.8, **model.get("params", {})}
    horizon = int(label.get("horizon", 5))
    embargo = r.get("split", {}).get("embargo")
    cv, tuning = r.get("cv", {}), r.get("tuning", {})
    return {"features": list(raw["features"]["set"]), "params": params, "seed": int(model.get("seed", 7)),
            "objective": model.get("objective", "classifier"), "winsorize": float(model.get("winsorize", 0.01)),
            "horizon": horizon, "up": float(label.get("up", 0.01)), "down": float(label.get("down", -0.01)),
            "embargo": int(embargo if embargo is not None else horizon), "folds": int(cv.get("folds", 4)),
            "min_train_sessions": int(cv.get("min_train_sessions", 252)),
            "metric": tuning.get("metric", "rank_ic")}


# ------------------------------------------------------------------------------------------------ memory
def status_mib(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def reset_peak() -> bool:
    """Reset this process's VmHWM to its current RSS (Linux >= 4.0)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


# ------------------------------------------------------------------------------------------------ data
def make_frame(n_symbols: int, n_sessions: int, seed: int, cfg: dict) -> pd.DataFrame:
    """The synthetic training frame, sorted by (session, symbol) like load_frame."""
    from scipy.signal import lfilter

    from qt_resources.calendar import sessions as xnys_sessions

    start = f"{int(END[:4]) - n_sessions // 252 - 3}-01-01"
    sess = np.array(xnys_sessions(start, END)[-n_sessions:], dtype=object)
    T, N = len(sess), n_symbols
    rng = np.random.default_rng(seed)
    regime = np.exp(lfilter([1.0], [1.0, -0.995], rng.normal(0, 0.03, T)))          # market vol regime
    r_m = rng.normal(0.0003, 0.010, T) * regime / regime.mean()
    beta = rng.uniform(0.5, 1.5, N)
    sig_i = rng.uniform(0.010, 0.025, N)
    logv = lfilter([1.0], [1.0, -0.98], rng.normal(0, 0.04, (T, N)), axis=0)          # per-symbol vol regime
    drift = lfilter([1.0], [1.0, -0.98], rng.normal(0, 0.0003, (T, N)), axis=0)      # the signal, sd ~0.0015/day
    eps = rng.standard_normal((T, N)) * sig_i * np.exp(logv)
    r = np.empty((T, N))
    last5 = np.zeros((5, N))
    for t in range(T):  # short-term reversal of the last 5 days' return
        r[t] = beta * r_m[t] + drift[t] - 0.02 * last5.sum(axis=0) + eps[t]
        last5[t % 5] = r[t]
    px = pd.DataFrame(rng.lognormal(np.log(40), 0.8, N) * np.exp(np.cumsum(np.log1p(np.clip(r, -0.5, None)),
                                                                           axis=0)))
    ret1 = px / px.shift(1) - 1
    gain, loss = ret1.clip(lower=0) * px.shift(1), (-ret1).clip(lower=0) * px.shift(1)
    wilder = dict(alpha=1 / 14, adjust=False, min_periods=14)
    rsi = 100 - 100 / (1 + gain.ewm(**wilder).mean() / loss.ewm(**wilder).mean())
    sma = {w: px.rolling(w).mean() for w in (5, 20, 50)}
    known = {
        "ret_1d": ret1, "ret_5d": px / px.shift(5) - 1, "ret_20d": px / px.shift(20) - 1,
        "sma_ratio_5_20": sma[5] / sma[20], "sma_ratio_20_50": sma[20] / sma[50],
        "rsi_14": rsi, "vol_20d": ret1.rolling(20).std() * np.sqrt(252.0),
    }
    h = cfg["horizon"]
    fwd = (px.shift(-h) / px - 1).to_numpy()
    label = np.where(np.isnan(fwd), np.nan, np.where(fwd > cfg["up"], 2.0, np.where(fwd < cfg["down"], 0.0, 1.0)))
    label_sess = np.concatenate([sess[h:], np.full(h, None, dtype=object)])
    cols = {"symbol": np.tile(np.array([f"S{j:04d}" for j in range(N)], dtype=object), T),
            "session": np.repeat(sess, N)}
    for f in dict.fromkeys([*cfg["features"], "ret_20d"]):
        v = known[f].to_numpy() if f in known else drift * 500 + rng.standard_normal((T, N))
        cols[f] = v.ravel()
    cols.update(fwd_return=fwd.ravel(), label_class=label.ravel(), label_session=np.repeat(label_sess, N))
    return pd.DataFrame(cols), list(sess)


# ------------------------------------------------------------------------------------------------ worker
def worker(step: str, root: Path) -> None:
    """One measured step in this (fresh) process; writes root/<step>.json (and .npy predictions)."""
    from qt_assets.research.evaluation import evaluate_model
    from qt_assets.research.training import fit_pipeline, make_pipeline, predict, time_split, walk_forward_folds

    meta = json.loads((root / "meta.json").read_text())
    cfg, features = meta["cfg"], meta["cfg"]["features"]
    t0 = time.perf_counter()
    frame = pd.read_parquet(root / "frame.parquet")
    split = time_split(frame, meta["train_end"], None, cfg["embargo"])
    train, test = split.train.reset_index(drop=True), split.test.reset_index(drop=True)
    del frame, split
    out = {"step": step, "load_s": time.perf_counter() - t0, "train_rows": len(train), "test_rows": len(test),
           "train_range": f"{train['session'].min()}..{train['session'].max()}",
           "test_range": f"{test['session'].min()}..{test['session'].max()}"}
    gc.collect()
    out["rss_start_mib"], out["load_peak_mib"] = status_mib("VmRSS"), status_mib("VmHWM")
    out["peak_reset"] = reset_peak()
    cpu = {}

    def measured(fn):
        reset_peak()
        ru = resource.getrusage(resource.RUSAGE_SELF)
        t = time.perf_counter()
        res = fn()
        wall = time.perf_counter() - t
        ru2 = resource.getrusage(resource.RUSAGE_SELF)
        cpu.setdefault("cpu_s", ru2.ru_utime + ru2.ru_stime - ru.ru_utime - ru.ru_stime)  # the first: the fit
        return res, wall, status_mib("VmHWM")

    obj, seed, wins = cfg["objective"], cfg["seed"], cfg["winsorize"]
    if step.startswith("xgb_n"):
        n_jobs = int(step[-1])

        def fit():
            return fit_pipeline(make_pipeline(obj, cfg["params"], seed, wins), train, features, obj, n_jobs=n_jobs)

        pipe, out["fit_s"], out["fit_peak_mib"] = measured(fit)
        out["fit_rows"] = len(train)
        (proba, score), out["predict_s"], out["predict_peak_mib"] = measured(lambda: predict(pipe, test[features]))
        out["predict_rows"] = len(test)
        np.save(root / f"{step}_proba.npy", proba if proba is not None else score)
        raw = bytes(pipe.named_steps["model"].get_booster().save_raw("json"))
        out["booster_sha"] = hashlib.sha256(raw).hexdigest()[:16]
        if n_jobs == 1:  # where the fit's time goes: preprocessing alone, and the fit with a single round
            t = time.perf_counter()
            make_pipeline(obj, cfg["params"], seed, wins)[:-1].fit_transform(train[features])
            out["preprocess_s"] = time.perf_counter() - t
            t = time.perf_counter()
            fit_pipeline(make_pipeline(obj, {**cfg["params"], "n_estimators": 1}, seed, wins), train, features, obj,
                         n_jobs=1)
            out["one_round_s"] = time.perf_counter() - t
        out["test_metrics"] = evaluate_model(pipe, test, features)
    elif step == "det":  # n_jobs=1 vs 2 on a subset, with parameter sets drawn from the xgboost family's search space (qt_assets/research/models/xgboost.py)
        import optuna

        from qt_assets.research.models.xgboost import search as suggest

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        sub = train.iloc[-meta["det_rows"]:]
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
        checks = []
        reset_peak()
        ru = resource.getrusage(resource.RUSAGE_SELF)
        t = time.perf_counter()
        for _ in range(meta["det_sets"]):
            trial = study.ask()
            params = {**cfg["params"], **suggest(trial)}
            study.tell(trial, 0.0)
            got = []
            for n_jobs in (1, 2):
                pipe = fit_pipeline(make_pipeline(obj, params, seed, wins), sub, features, obj, n_jobs=n_jobs)
                got.append((predict(pipe, test[features])[0],
                            bytes(pipe.named_steps["model"].get_booster().save_raw("json"))))
            (a, ra), (b, rb) = got
            checks.append({"params": {k: round(v, 4) if isinstance(v, float) else v for k, v in params.items()},
                           "identical_booster": ra == rb, "identical_predictions": bool(np.array_equal(a, b)),
                           "max_abs_diff": float(np.max(np.abs(a - b)))})
        ru2 = resource.getrusage(resource.RUSAGE_SELF)
        out.update(fit_s=time.perf_counter() - t, fit_peak_mib=status_mib("VmHWM"), fit_rows=len(sub), checks=checks,
                   cpu_s=ru2.ru_utime + ru2.ru_stime - ru.ru_utime - ru.ru_stime)
    elif step.startswith("cv_n"):  # cv_n1: one thread per fit; cv_n0: fit_pipeline auto
        import qt_assets.research.tuning as tuning

        n_jobs = int(step[-1])

        timing = {"fit_s": 0.0, "score_s": 0.0, "fit_rows": 0, "val_rows": 0}
        fit_orig, eval_orig = tuning.fit_pipeline, tuning.evaluate_model

        def timed(fn, seconds_key, rows_key):
            def wrapper(pipe, frame, *a, **k):
                t = time.perf_counter()
                res = fn(pipe, frame, *a, **k)
                timing[seconds_key] += time.perf_counter() - t
                timing[rows_key] += len(frame)
                return res
            return wrapper

        tuning.fit_pipeline = timed(fit_orig, "fit_s", "fit_rows")
        tuning.evaluate_model = timed(eval_orig, "score_s", "val_rows")

        def cv():
            folds = walk_forward_folds(train, cfg["folds"], cfg["min_train_sessions"], cfg["embargo"])
            return folds, tuning.cross_validate(cfg["params"], train, folds, features, obj, seed, wins, cfg["metric"],
                                                n_jobs=n_jobs)

        (folds, scores), out["fit_s"], out["fit_peak_mib"] = measured(cv)
        out.update(cv_fit_s=timing["fit_s"], cv_score_s=timing["score_s"], fit_rows=timing["fit_rows"],
                   val_rows=timing["val_rows"], fold_fit_rows=[len(f.fit_index) for f in folds],
                   scores=scores, metric=cfg["metric"])
    elif step.startswith("peer_t"):
        from sklearn.ensemble import HistGradientBoostingClassifier
        from threadpoolctl import threadpool_limits

        threads = int(step[-1])
        p = cfg["params"]

        def fit():
            pipe = make_pipeline(obj, p, seed, wins)
            pipe.steps[-1] = ("model", HistGradientBoostingClassifier(
                max_iter=p["n_estimators"], max_depth=p["max_depth"], learning_rate=p["learning_rate"],
                early_stopping=False, random_state=seed))
            return pipe.fit(train[features], train["label_class"].astype(int).to_numpy())

        with threadpool_limits(threads, user_api="openmp"):
            pipe, out["fit_s"], out["fit_peak_mib"] = measured(fit)
            out["fit_rows"] = len(train)
            _, out["predict_s"], out["predict_peak_mib"] = measured(lambda: predict(pipe, test[features]))
            out["predict_rows"] = len(test)
        out["test_metrics"] = evaluate_model(pipe, test, features)
    else:
        raise SystemExit(f"unknown step {step}")
    out.update(cpu)  # the det step sets its own cpu_s
    (root / f"{step}.json").write_text(json.dumps(out, default=float))


def run_step(step: str, root: Path) -> dict:
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    with open(root / f"{step}.log", "w") as fh:
        rc = subprocess.call([sys.executable, __file__, "--worker", step, str(root)], stdout=fh,
                             stderr=subprocess.STDOUT)
    wall = time.perf_counter() - t0
    if rc != 0:
        print((root / f"{step}.log").read_text()[-3000:], file=sys.stderr)
        raise SystemExit(f"{step}: exit code {rc}")
    return {**json.loads((root / f"{step}.json").read_text()), "wall_s": wall, "load": load}


# ------------------------------------------------------------------------------------------------ main
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--symbols", type=int, default=500)
    ap.add_argument("--sessions", type=int, default=5000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--train-frac", type=float, default=0.75, help="train_end this far through the sessions")
    ap.add_argument("--det-sets", type=int, default=3, help="extra n_jobs=1 vs 2 checks: random xgboost search-space "
                                                            "parameter sets, fitted on the last --det-rows train rows")
    ap.add_argument("--det-rows", type=int, default=250_000)
    ap.add_argument("--quick", action="store_true", help="small run: 50 symbols x 600 sessions")
    ap.add_argument("--keep", action="store_true", help="keep the temp directory")
    ap.add_argument("--worker", nargs=2, metavar=("STEP", "ROOT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker[0], Path(args.worker[1]))
        return 0
    if args.quick:
        args.symbols, args.sessions = 50, 600

    cfg = research_config()
    root = Path(tempfile.mkdtemp(prefix="qtos-bench-training-"))
    print(f"load average {os.getloadavg()[0]:.2f}, {os.cpu_count()} CPUs; temp {root}", flush=True)
    t0 = time.perf_counter()
    frame, sess = make_frame(args.symbols, args.sessions, args.seed, cfg)
    gen_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    frame.to_parquet(root / "frame.parquet", index=False)
    write_s = time.perf_counter() - t0
    train_end = sess[int(round(args.train_frac * len(sess))) - 1]
    labelled = frame["label_class"].notna()
    shares = frame.loc[labelled, "label_class"].value_counts(normalize=True).sort_index().round(3).to_dict()
    (root / "meta.json").write_text(json.dumps({"cfg": cfg, "train_end": train_end, "det_sets": args.det_sets,
                                                "det_rows": args.det_rows}))
    n_rows = len(frame)
    del frame
    print(f"generated {n_rows:,} rows ({args.symbols} symbols x {len(sess)} sessions {sess[0]}..{sess[-1]}, "
          f"seed {args.seed}) in {gen_s:.1f} s, Parquet {write_s:.1f} s; label shares {shares}; "
          f"train_end {train_end}, embargo {cfg['embargo']}; features {', '.join(cfg['features'])}; "
          f"params {cfg['params']}", flush=True)

    res = {}
    steps = ["xgb_n1", "xgb_n2", "cv_n1", "cv_n0", "peer_t1", "peer_t2"] + (["det"] if args.det_sets else [])
    for step in steps:
        res[step] = run_step(step, root)
        r = res[step]
        print(f"  {step}: {r['fit_s']:.1f} s (CPU {r.get('cpu_s', float('nan')):.1f} s, load average before "
              f"{r['load']:.2f}), peak {r['fit_peak_mib']:.0f} MiB (process wall {r['wall_s']:.1f} s, load+split "
              f"{r['load_s']:.1f} s)", flush=True)

    a, b = np.load(root / "xgb_n1_proba.npy"), np.load(root / "xgb_n2_proba.npy")
    same = bool(np.array_equal(a, b))
    det = {"identical_predictions": same, "max_abs_diff": float(np.max(np.abs(a - b))),
           "rows_differing": int((a != b).any(axis=1).sum()) if a.ndim == 2 else int((a != b).sum()),
           "identical_booster": res["xgb_n1"]["booster_sha"] == res["xgb_n2"]["booster_sha"]}

    x1, x2, cv, cv0, p1, p2 = (res[k] for k in ("xgb_n1", "xgb_n2", "cv_n1", "cv_n0", "peer_t1", "peer_t2"))
    m = lambda r: r["test_metrics"]  # noqa: E731
    rows = [
        ("(a) final fit: make_pipeline + fit_pipeline, xgboost n_jobs=1", x1["fit_rows"], x1["fit_s"], x1),
        ("(b) same, n_jobs=2", x2["fit_rows"], x2["fit_s"], x2),
        (f"(c) one CV pass: walk_forward_folds + cross_validate ({len(cv['fold_fit_rows'])} folds; fit "
         f"{cv['cv_fit_s']:.1f} s, score {cv['cv_score_s']:.1f} s), n_jobs=1", cv["fit_rows"], cv["fit_s"], cv),
        (f"(c) same, n_jobs=0 (auto: the idle cores on fits of >= 50 k rows; fit {cv0['cv_fit_s']:.1f} s, score "
         f"{cv0['cv_score_s']:.1f} s)", cv0["fit_rows"], cv0["fit_s"], cv0),
        ("(d) peer: winsorise + impute + sklearn HistGradientBoostingClassifier, 1 thread",
         p1["fit_rows"], p1["fit_s"], p1),
        ("(d) peer, 2 threads", p2["fit_rows"], p2["fit_s"], p2),
    ]
    print()
    print("| step | rows | seconds | CPU s | peak RSS MiB | RSS at start MiB |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, n, s, r in rows:
        print(f"| {name} | {n:,} | {s:.1f} | {r['cpu_s']:.1f} | {r['fit_peak_mib']:,.0f} | {r['rss_start_mib']:,.0f} |")
    for name, r in (("predict (test part), xgboost n_jobs=1", x1), ("predict (test part), xgboost n_jobs=2", x2),
                    ("predict (test part), peer 1 thread", p1), ("predict (test part), peer 2 threads", p2)):
        print(f"| {name} | {r['predict_rows']:,} | {r['predict_s']:.1f} | | {r['predict_peak_mib']:,.0f} | "
              f"{r['rss_start_mib']:,.0f} |")
    print()
    print(f"train {x1['train_range']} ({x1['train_rows']:,} rows), test {x1['test_range']} ({x1['test_rows']:,} "
          f"rows); each subprocess loads + splits the Parquet frame in {x1['load_s']:.1f} s, peak "
          f"{x1['load_peak_mib']:,.0f} MiB (not in the figures above)")
    per_round = (x1["fit_s"] - x1["one_round_s"]) / max(1, cfg["params"]["n_estimators"] - 1)
    print(f"(a) of the final fit's {x1['fit_s']:.1f} s: preprocessing (winsorise + impute fit_transform) alone "
          f"{x1['preprocess_s']:.1f} s; the whole pipeline with n_estimators=1 {x1['one_round_s']:.1f} s (fixed "
          f"cost: preprocessing + xgboost's quantile sketch / DMatrix); so {per_round * 1000:.0f} ms per boosting "
          f"round (3 trees, one per class)")
    print(f"(c) fold fit rows {cv['fold_fit_rows']} (sum {cv['fit_rows']:,}), validation rows {cv['val_rows']:,}; "
          f"fold {cv['metric']} {[round(s, 4) for s in cv['scores']]}; the same scores at n_jobs=0 (auto): "
          f"{cv0['scores'] == cv['scores']}")
    for name, r in (("xgboost n_jobs=1", x1), ("xgboost n_jobs=2", x2), ("peer 1 thread", p1), ("peer 2 threads", p2)):
        print(f"test metrics, {name}: rank_ic {m(r)['rank_ic']:.4f}, balanced_accuracy "
              f"{m(r)['balanced_accuracy']:.4f}, log_loss {m(r)['log_loss']:.4f}")
    print(f"determinism n_jobs=1 vs n_jobs=2 (final fit, test predictions): {det}")
    if "det" in res:
        for c in res["det"]["checks"]:
            print(f"  extra check on the last {res['det']['fit_rows']:,} train rows: {c}")
    print(f"goal (final fit <= 60 s): {'met' if x1['fit_s'] <= 60 else 'NOT met'} ({x1['fit_s']:.1f} s at n_jobs=1, "
          f"{x2['fit_s']:.1f} s at n_jobs=2)")
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
