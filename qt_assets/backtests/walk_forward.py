"""Walk-forward backtest of a model strategy (config ``backtest.walk_forward``): retrain on each rolling window,
predict the next one, stitch the out-of-sample windows into one backtest.

Windows (one Dagster partition each, so a backfill of a window range rebuilds exactly those):
    window k tests sessions [t_k, t_k + test_sessions) with t_k = first + k * test_sessions; its model is fit on
    the ``train_sessions`` sessions ending ``embargo`` sessions before t_k, keeping only rows whose label is
    known by that cut (``label_session <= cut``, the purge of ``training.fit_rows``). So no label used for fitting
    reaches into the window it scores, and consecutive models never see their own test window.
Each window's model is the configured pipeline (winsorise -> impute -> xgboost, ``research.model.params``, seeded)
without tuning: tuning inside every window would need its own nested purged folds, and the configured params are
what the research asset tunes from. The stitched report is ``walk_forward/<strategy>``.
"""

from dataclasses import dataclass

import dagster as dg
import numpy as np
import pandas as pd

from qt_resources.calendar import sessions
from qt_resources.config import ProjectConfig
from qt_resources.warehouse import Warehouse

GROUP = "walk_forward"


@dataclass(frozen=True)
class Window:
    key: str
    train_start: str
    cut: str  # last session whose (session, label) may be fitted
    test_start: str
    test_end: str


def windows(cfg: ProjectConfig) -> list[Window]:
    wf = cfg.backtest.walk_forward
    days = sessions(cfg.data.start, cfg.data.end, cfg.project.calendar)
    emb = cfg.embargo
    first = wf.train_sessions + emb
    if wf.start is not None:
        first = max(first, next((i for i, d in enumerate(days) if d >= wf.start.isoformat()), len(days)))
    out = []
    for k, t in enumerate(range(first, len(days), wf.test_sessions)):
        end = min(t + wf.test_sessions, len(days)) - 1
        out.append(Window(f"{k:03d}_{days[t]}", days[t - emb - wf.train_sessions], days[t - emb - 1], days[t],
                          days[end]))
    if not out:
        raise ValueError(f"backtest.walk_forward.train_sessions: {wf.train_sessions} (+ embargo {emb}) leaves no test "
                         f"window in the {len(days)} sessions of data.start..data.end")
    return out


def window_partitions(cfg: ProjectConfig) -> dg.StaticPartitionsDefinition:
    return dg.StaticPartitionsDefinition([w.key for w in windows(cfg)])


def fit_window(frame: pd.DataFrame, w: Window, features: list[str], cfg: ProjectConfig) -> tuple[pd.DataFrame, dict]:
    """Fit on the window's training rows, score its test sessions. Returns (scores, facts)."""
    from qt_assets.research.evaluation import ic_metrics
    from qt_assets.research.dataset import check_features_present
    from qt_assets.research.training import fit_pipeline, fit_rows, make_pipeline, predict

    m = cfg.research.model
    train = frame[fit_rows(frame, w.cut) & (frame["session"] >= w.train_start)]
    test = frame[(frame["session"] >= w.test_start) & (frame["session"] <= w.test_end)]
    if train.empty or test.empty:
        raise ValueError(f"walk-forward window {w.key}: {len(train)} training rows, {len(test)} test rows "
                         f"(train {w.train_start}..{w.cut}, test {w.test_start}..{w.test_end})")
    check_features_present(train, features)
    pipe = fit_pipeline(make_pipeline(m.objective, dict(m.params), m.seed, m.winsorize, family=m.family), train,
                        features, m.objective, n_jobs=m.n_jobs)
    _, score = predict(pipe, test[features])
    scores = test[["session", "symbol"]].assign(score=score, window=w.key)
    ic = ic_metrics(test, score)
    if not train["label_session"].max() <= w.cut < w.test_start:  # the purge, checked on the rows themselves
        raise ValueError(f"walk-forward window {w.key}: a training label is known after the cut {w.cut}")
    return scores, {"train_rows": len(train), "test_rows": len(test), "max_train_label_session": train["label_session"].max(),
                    **{k: float(v) for k, v in ic.items()}}


def build_walk_forward_assets(cfg: ProjectConfig, features_key: dg.AssetKey, labels_key: dg.AssetKey) -> list:
    wf = cfg.backtest.walk_forward
    if wf is None:
        return []
    st = next(s for s in cfg.backtest.strategies if s.name == wf.strategy)
    parts = window_partitions(cfg)
    by_key = {w.key: w for w in windows(cfg)}
    features = list(cfg.features.set)
    table = f"walk_forward/{st.name}"

    @dg.asset(key=["walk_forward_scores", st.name], group_name=GROUP, partitions_def=parts,
              backfill_policy=dg.BackfillPolicy.single_run(), deps=[features_key, labels_key], kinds={"xgboost"},
              description=(f"Out-of-sample scores of strategy '{st.name}' per walk-forward window: a model fit on the "
                           f"{wf.train_sessions} sessions before each window (purged, {cfg.embargo}-session embargo) "
                           f"scores the next {wf.test_sessions} sessions."))
    def walk_forward_scores(context: dg.AssetExecutionContext, warehouse: Warehouse):
        from qt_assets.research.training import load_frame

        frame = load_frame(warehouse, features, cfg.data.start.isoformat())
        facts = {}
        for key in sorted(context.partition_keys):
            w = by_key[key]
            scores, f = fit_window(frame, w, features, cfg)
            warehouse.write_table(f"{table}/window={key}", scores)
            facts[key] = {"train": f"{w.train_start}..{w.cut}", "test": f"{w.test_start}..{w.test_end}", **f}
            context.log.info(f"window {key}: {f}")
        return dg.MaterializeResult(metadata={
            "windows": dg.MetadataValue.md(pd.DataFrame(facts).T.to_markdown(floatfmt=".4f")),
            "n_windows": len(facts), "config_fingerprint": cfg.fingerprint()})

    @dg.asset(key=["walk_forward", st.name], group_name=GROUP, deps=[walk_forward_scores], kinds={"vectorbt"},
              backfill_policy=dg.BackfillPolicy.single_run(),
              description=(f"Strategy '{st.name}' backtested on the stitched out-of-sample walk-forward scores "
                           "(every window's model only scores sessions after its own training data), with "
                           "per-window returns."))
    def walk_forward_report(context: dg.AssetExecutionContext, warehouse: Warehouse):
        from qt_assets.backtests.assets import write_report
        from qt_assets.backtests.runs import load_bars, load_benchmark, run_strategy, shown
        from qt_assets.backtests.engine import YEAR_SESSIONS
        from qt_assets.backtests.metrics import returns_from_value

        missing = [k for k in by_key if not warehouse.table_exists(f"{table}/window={k}")]
        if missing:
            raise FileNotFoundError(f"walk_forward_scores/{st.name}: windows not materialised: {missing[:5]}"
                                    f"{' ...' if len(missing) > 5 else ''}; backfill them first")
        scores = pd.concat([warehouse.read_table(f"{table}/window={k}") for k in by_key], ignore_index=True)
        bars = load_bars(warehouse, str(scores["session"].min()))
        bench = load_benchmark(warehouse)
        pf, _, bars = run_strategy(cfg, st, bars, scores)
        win = scores.groupby("window")["session"].agg(["min", "max"])
        folder = cfg.reports_dir / "backtests" / f"walk_forward_{st.name}"
        metrics, meta = write_report(cfg, f"{st.name} walk-forward", pf, bars, bench, folder,
                                     f"{st.name}: walk-forward, {len(win)} windows")
        r = returns_from_value(pf.qt_value, cfg.backtest.initial_cash).iloc[:, 0]
        spans = [r.loc[a:b] for a, b in zip(win["min"], win["max"])]
        per = pd.DataFrame({"test": win["min"] + ".." + win["max"],
                            "return": [float((1 + x).prod() - 1) for x in spans],
                            "sharpe": [float(x.mean() / x.std() * np.sqrt(YEAR_SESSIONS)) if x.std() > 0
                                       else float("nan") for x in spans]})  # undefined for a flat window
        context.log.info(f"walk-forward {st.name}: Sharpe {shown(metrics['strategy']['sharpe'])} over {len(win)} windows")
        return dg.MaterializeResult(metadata={**meta, "windows": len(win),
                                              "per_window": dg.MetadataValue.md(per.to_markdown(floatfmt=".4f"))})

    return [walk_forward_scores, walk_forward_report]
