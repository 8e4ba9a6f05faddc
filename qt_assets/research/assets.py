"""Research assets: ``training_set`` (features x labels, purged and embargoed train / validation / test),
``trained_model`` (Optuna on purged walk-forward folds, xgboost pipeline, baselines, MLflow run + registered
version with lineage, alias ``challenger``) and ``model_promotion`` (metric gates vs the champion on the same
out-of-sample window; the only code that moves ``champion``)."""


import base64
import subprocess
import tempfile
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd

from qt_assets.research.evaluation import METRICS, baselines, evaluate_model, report_png
from qt_assets.research.training import (
    fingerprint, fit_pipeline, load_frame, make_pipeline, model_importance, predict, time_split, walk_forward_folds)
from qt_resources.config import REPO_ROOT, ProjectConfig
from qt_resources.registry import MlflowRegistry
from qt_resources.warehouse import Warehouse

TRAINING_SET = "research/training_set"
TEST_SCORES = "research/test_scores"


def check_features_present(train: pd.DataFrame, features: list[str]) -> None:
    """A configured feature that is NULL on every training row means its source was never materialised
    (e.g. news_sentiment for the training sessions): fail with the feature's name instead of training blind."""
    empty = [f for f in features if train[f].isna().all()]
    if empty:
        raise ValueError(f"features.set: {', '.join(empty)} NULL on all {len(train)} training rows; materialise "
                         "their source assets (news_sentiment, insider_flow) for the training sessions")


def git_sha() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True,
                             check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except Exception:
        return "unknown"


def gate(mine: dict, theirs: dict | None, g, champion_version: str | None = None) -> tuple[bool, list[str]]:
    """Promotion gates (config ``research.promotion``): absolute floors on the challenger, then every
    ``vs_champion`` metric >= the champion's on the same window (skipped without a champion). An undefined
    (NaN) challenger metric fails; an undefined champion metric does not block."""
    reasons, ok = [], True
    for metric, floor in (("rank_ic", g.min_ic), ("balanced_accuracy", g.min_balanced_accuracy)):
        if floor is None:
            continue
        passed = bool(np.isfinite(mine[metric]) and mine[metric] >= floor)
        ok &= passed
        reasons.append(f"{metric} {mine[metric]:.4f} {'>=' if passed else '<'} {floor}")
    if theirs is None:
        reasons.append("no champion to compare with")
        return ok, reasons
    for metric in g.vs_champion:
        a, b = mine.get(metric, float("nan")), theirs.get(metric, float("nan"))
        passed = bool(np.isfinite(a) and (not np.isfinite(b) or a >= b))
        ok &= passed
        reasons.append(f"{metric} {a:.4f} {'>=' if passed else '<'} champion v{champion_version}'s {b:.4f}")
    return ok, reasons


def split_cuts(split, embargo: int, sessions: list[str]) -> tuple[str, str | None]:
    """(train_end, valid_end): as configured, or rolling (``split.test_sessions``: the last N sessions are the
    test window and training ends ``embargo`` sessions before it)."""
    n = split.test_sessions
    if n is None:
        return split.train_end.isoformat(), split.valid_end.isoformat() if split.valid_end else None
    if len(sessions) <= n + embargo + 1:
        raise ValueError(f"research.split.test_sessions: {n} (+ embargo {embargo}) leaves no training sessions "
                         f"in {len(sessions)}")
    return sessions[-(n + embargo + 1)], None


def _md_table(rows: dict[str, dict]) -> str:
    return pd.DataFrame(rows).T.reindex(columns=METRICS).to_markdown(floatfmt=".4f")


def build_research_assets(cfg: ProjectConfig, features_key: dg.AssetKey, labels_key: dg.AssetKey) -> list:
    features = list(cfg.features.set)
    r = cfg.research
    mcfg = r.model
    embargo = cfg.embargo

    def cuts(sessions: list[str]) -> tuple[str, str | None]:
        return split_cuts(r.split, embargo, sessions)

    train_end = "rolling" if r.split.test_sessions else r.split.train_end.isoformat()
    valid_end = r.split.valid_end.isoformat() if r.split.valid_end else None
    common = dict(group_name="research", backfill_policy=dg.BackfillPolicy.single_run())

    @dg.asset(deps=[features_key, labels_key], kinds={"parquet"}, description=(
        f"features_daily x labels for the {len(features)} configured features, split by time: train (<= "
        f"{train_end}, purged: labels known by then), validation ({'to ' + valid_end if valid_end else 'none'}), "
        f"test (from an embargo of {embargo} sessions after the last cut). One Parquet file with a `part` column."),
        **common)
    def training_set(context: dg.AssetExecutionContext, warehouse: Warehouse):
        frame = load_frame(warehouse, features)
        split = time_split(frame, *cuts(sorted(frame["session"].unique())), embargo)
        check_features_present(split.train, features)
        parts = pd.concat([split.train.assign(part="train"), split.valid.assign(part="valid"),
                           split.test.assign(part="test")], ignore_index=True)
        warehouse.write_table(TRAINING_SET, parts)
        ranges = {p: f"{g['session'].min()}..{g['session'].max()} ({g['session'].nunique()} sessions, {len(g)} rows)"
                  for p, g in parts.groupby("part")}
        return dg.MaterializeResult(metadata={
            "train": ranges.get("train", ""), "valid": ranges.get("valid", "none"), "test": ranges.get("test", ""),
            "oos_start": split.oos_start, "valid_start": split.valid_start or "none",
            "purged_rows": dg.MetadataValue.json(split.purged), "embargo_sessions": embargo,
            "data_fingerprint": fingerprint(parts), "features": ",".join(features),
            "source_sessions": f"{frame['session'].min()}..{frame['session'].max()} "
                               f"({frame['session'].nunique()} partitions of prices)"})

    @dg.asset_check(asset=training_set, blocking=True, description=(
        "No training row's label is known after train_end, no validation row's after valid_end; validation "
        "and test start at least `embargo` sessions after the previous part's cut-off."))
    def purged_and_embargoed(warehouse: Warehouse) -> dg.AssetCheckResult:
        parts = warehouse.read_table(TRAINING_SET)
        sessions = warehouse.query("select distinct strftime(session, '%Y-%m-%d') as s from labels order by s")["s"].tolist()
        train_end, valid_end = cuts(sessions)
        problems = []
        cut = train_end
        tr = parts[parts["part"] == "train"]
        if (tr["label_session"] > train_end).any():
            problems.append(f"{int((tr['label_session'] > train_end).sum())} train rows with label after {train_end}")
        for part, end in (("valid", valid_end), ("test", None)):
            rows = parts[parts["part"] == part]
            if rows.empty:
                continue
            gap = sum(1 for s in sessions if cut < s < rows["session"].min())
            if gap < embargo:
                problems.append(f"{part} starts {gap} sessions after {cut} (< embargo {embargo})")
            if end and (rows["label_session"] > end).any():
                problems.append(f"{int((rows['label_session'] > end).sum())} {part} rows with label after {end}")
            cut = end or cut
        return dg.AssetCheckResult(passed=not problems, metadata={"problems": "; ".join(problems) or "none"})

    @dg.asset(deps=[training_set], kinds={mcfg.family, "optuna", "mlflow"}, description=(
        f"{mcfg.family} {mcfg.objective} in a winsorise -> impute -> model pipeline fit on the train part; "
        f"Optuna ({r.tuning.n_trials} trials, seeded TPE, median pruning) on {r.cv.folds} purged walk-forward "
        f"folds, objective {r.tuning.metric}; baselines beside it; logged and registered in MLflow as "
        f"'{mcfg.name}' with lineage tags, alias challenger."), **common)
    def trained_model(context: dg.AssetExecutionContext, warehouse: Warehouse, model_registry: MlflowRegistry):
        import mlflow
        from mlflow.models import infer_signature

        parts = warehouse.read_table(TRAINING_SET)
        train, valid, test = (parts[parts["part"] == p].reset_index(drop=True) for p in ("train", "valid", "test"))
        data_fp = fingerprint(parts)
        folds = walk_forward_folds(train, r.cv.folds, r.cv.min_train_sessions, embargo)
        exp_id = model_registry.setup()
        client = model_registry.client()
        study_name = f"{mcfg.name}-{data_fp}-{cfg.fingerprint()[:12]}"

        with mlflow.start_run(experiment_id=exp_id, run_name=f"{mcfg.name}-{context.run_id[:8]}") as run:
            from qt_assets.research.tuning import best_fold_metrics, cross_validate, tune

            def log_trial(number, params, scores, state):
                with mlflow.start_run(experiment_id=exp_id, run_name=f"trial-{number}", nested=True):
                    mlflow.log_params({**params, "trial": number})
                    mlflow.set_tags({"optuna_study": study_name, "trial_state": state})
                    for k, s in enumerate(scores):
                        mlflow.log_metric(f"fold_{r.tuning.metric}", s, step=k)
                    if scores:
                        mlflow.log_metric(f"cv_{r.tuning.metric}", float(np.mean(scores)))

            base = dict(mcfg.params)
            params, best_scores, study = tune(
                train, folds, features, objective=mcfg.objective, seed=mcfg.seed, winsorize=mcfg.winsorize,
                metric=r.tuning.metric, n_trials=r.tuning.n_trials, timeout_s=r.tuning.timeout_s,
                storage=model_registry.optuna_storage(), study_name=study_name, base_params=base,
                log_trial=log_trial, n_jobs=mcfg.n_jobs, family=mcfg.family) if r.tuning.n_trials else (base, [], None)

            # every metric per fold with the chosen params (the best trial's, else refit), then the final fit
            # (early stopping on validation)
            tuned = best_fold_metrics(study, len(folds))
            if tuned is None:
                tuned = []
                cross_validate(params, train, folds, features, mcfg.objective, mcfg.seed, mcfg.winsorize,
                               r.tuning.metric, n_jobs=mcfg.n_jobs, fold_metrics=tuned, family=mcfg.family)
            fold_rows = {f"fold {f.k} ({f.val_start}..{f.val_end})": tuned[f.k] for f in folds}
            pipe = fit_pipeline(make_pipeline(mcfg.objective, params, mcfg.seed, mcfg.winsorize,
                                              early_stopping=20 if not valid.empty else None, family=mcfg.family),
                                train, features, mcfg.objective, valid, n_jobs=mcfg.n_jobs)
            test_m = evaluate_model(pipe, test, features)
            valid_m = evaluate_model(pipe, valid, features) if not valid.empty else {}
            table = {"model (test)": test_m, **({"model (valid)": valid_m} if valid_m else {}),
                     **{f"{k} (test)": v for k, v in baselines(train, test, features, mcfg.seed).items()},
                     **fold_rows}
            importance = model_importance(pipe, features, mcfg.family)
            proba, s = predict(pipe, test[features])
            png = report_png(importance, test, proba, f"{mcfg.name}: importance and calibration")

            lineage = {
                "features": ",".join(features), "objective": mcfg.objective,
                "label": (f"{cfg.label.kind}(price={cfg.label.price}, h={cfg.label.horizon}, up={cfg.label.up}, "
                          f"down={cfg.label.down}, vol_k={cfg.label.vol_k})"),
                "train_start": train["session"].min(), "train_end": train["session"].max(),
                "valid_start": valid["session"].min() if not valid.empty else "none",
                "oos_start": test["session"].min(), "test_end": test["session"].max(),
                "data_end": parts["session"].max(),
                "embargo_sessions": str(embargo), "data_fingerprint": data_fp, "code_version": git_sha(),
                "dagster_run_id": context.run_id, "config_fingerprint": cfg.fingerprint(),
                "optuna_study": study_name if study else "none",
            }
            mlflow.set_tags(lineage)
            mlflow.log_params({**{f"param_{k}": v for k, v in params.items()}, "seed": mcfg.seed,
                               "winsorize": mcfg.winsorize, "n_features": len(features), "cv_folds": r.cv.folds,
                               "n_trials": r.tuning.n_trials, "train_rows": len(train), "valid_rows": len(valid),
                               "test_rows": len(test)})
            mlflow.log_metrics({f"test_{k}": v for k, v in test_m.items() if np.isfinite(v)})
            mlflow.log_metrics({f"valid_{k}": v for k, v in valid_m.items() if np.isfinite(v)})
            for name, row in table.items():
                if "(test)" in name and name != "model (test)":
                    mlflow.log_metrics({f"baseline_{name.split(' ')[0]}_{k}": v for k, v in row.items() if np.isfinite(v)})
            mlflow.log_dict({"features": features, "params": params,
                             "preprocessing": {"winsorize_q": mcfg.winsorize, "lower": pipe[0].lower_.tolist(),
                                               "upper": pipe[0].upper_.tolist(),
                                               "impute_median": pipe[1].statistics_.tolist()},
                             "folds": [{"k": f.k, "cut": f.cut, "val": [f.val_start, f.val_end]} for f in folds],
                             "partitions": {"first": parts["session"].min(), "last": parts["session"].max(),
                                            "count": int(parts["session"].nunique())}},
                            "lineage/training.json")
            mlflow.log_text(pd.DataFrame(table).T.to_csv(), "evaluation/metrics.csv")
            with tempfile.TemporaryDirectory() as d:
                (Path(d) / "importance_calibration.png").write_bytes(png)
                mlflow.log_artifact(str(Path(d) / "importance_calibration.png"), "evaluation")
            example = test[features].head(5)
            out_example = pipe.predict_proba(example) if proba is not None else pipe.predict(example)
            info = mlflow.sklearn.log_model(
                pipe, name="model", signature=infer_signature(example, out_example), input_example=example,
                registered_model_name=mcfg.name, serialization_format="cloudpickle",
                pyfunc_predict_fn="predict_proba" if proba is not None else "predict")
            version = str(info.registered_model_version)
        for k, v in {**lineage, **{f"test_{k}": f"{v:.6g}" for k, v in test_m.items()}}.items():
            client.set_model_version_tag(mcfg.name, version, k, str(v))
        client.set_registered_model_alias(mcfg.name, "challenger", version)

        out = test[["symbol", "session", "fwd_return", "label_class"]].assign(score=s, model_version=version)
        warehouse.write_table(TEST_SCORES, out)
        context.log.info(f"{mcfg.name} v{version}: test rank IC {test_m['rank_ic']:.4f}, "
                         f"balanced accuracy {test_m['balanced_accuracy']:.4f} (alias challenger)")
        return dg.MaterializeResult(metadata={
            "model_uri": f"models:/{mcfg.name}/{version}", "model_version": version,
            "mlflow_run_id": run.info.run_id, "params": dg.MetadataValue.json(params),
            "cv_scores": dg.MetadataValue.json({r.tuning.metric: best_scores}),
            "optuna_trials": len(study.trials) if study else 0, "optuna_study": study_name if study else "none",
            "evaluation": dg.MetadataValue.md(_md_table(table)),
            "importance_calibration": dg.MetadataValue.md(
                f"![report](data:image/png;base64,{base64.b64encode(png).decode()})"),
            "test_rank_ic": test_m["rank_ic"], "test_balanced_accuracy": test_m["balanced_accuracy"],
            **{k: lineage[k] for k in ("train_start", "train_end", "oos_start", "test_end", "data_fingerprint",
                                       "code_version", "config_fingerprint")},
        })

    @dg.asset(deps=[trained_model], kinds={"mlflow"}, description=(
        "Moves alias champion to the challenger only if it passes the configured gates on the same "
        "out-of-sample window as the current champion (re-scored here, backtested through the model strategy); "
        "the decision and its reasons are tagged on the version. A version is decided once: re-running does "
        "not undo a promotion or demotion made by hand in the MLflow UI."), **common)
    def model_promotion(context: dg.AssetExecutionContext, warehouse: Warehouse, model_registry: MlflowRegistry):
        decision, reasons, table = promote(warehouse, model_registry)
        context.log.info(f"promotion: {decision}: {'; '.join(reasons)}")
        return dg.MaterializeResult(metadata={"decision": decision, "reasons": dg.MetadataValue.json(reasons),
                                              "comparison": dg.MetadataValue.md(table)})

    def promote(warehouse: Warehouse, registry: MlflowRegistry) -> tuple[str, list[str], str]:
        from qt_assets.backtests.assets import backtest_scores
        from qt_assets.backtests.metrics import returns_metrics

        client = registry.client()
        name = mcfg.name
        chal = registry.alias_version(name, "challenger")
        if chal is None:
            raise LookupError(f"{name}: no challenger version; materialise trained_model first")
        version = str(chal.version)
        if "promotion_decision" in chal.tags:
            return "unchanged", [f"v{version} already decided: {chal.tags['promotion_decision']} "
                                 f"({chal.tags.get('promotion_reason', '')})"], ""
        champ = registry.alias_version(name, "champion")
        parts = warehouse.read_table(TRAINING_SET)
        test = parts[parts["part"] == "test"].reset_index(drop=True)

        def measure(v) -> dict:
            model, _ = registry.load_model(name, version=str(v.version))
            feats = v.tags["features"].split(",")
            m = evaluate_model(model, test, feats)
            _, sc = predict(model, test[feats])
            pf = backtest_scores(cfg, warehouse, test[["symbol", "session"]].assign(score=sc))
            m["sharpe"] = float(returns_metrics(pf.qt_value, cfg.backtest.initial_cash)["sharpe"].iloc[0])
            return m

        mine = measure(chal)
        rows = {f"challenger v{version}": mine}
        theirs, champ_version = None, None
        if champ is not None and str(champ.version) != version:
            theirs, champ_version = measure(champ), str(champ.version)
            rows[f"champion v{champ_version}"] = theirs
        ok, reasons = gate(mine, theirs, r.promotion, champ_version)
        decision = "promoted" if ok else "rejected"
        if ok:
            client.set_registered_model_alias(name, "champion", version)
        client.set_model_version_tag(name, version, "promotion_decision", decision)
        client.set_model_version_tag(name, version, "promotion_reason", "; ".join(reasons))
        client.set_model_version_tag(name, version, "promotion_window",
                                     f"{test['session'].min()}..{test['session'].max()}")
        table = pd.DataFrame(rows).T.reindex(columns=[*METRICS, "sharpe"]).to_markdown(floatfmt=".4f")
        return decision, reasons, table

    return [training_set, purged_and_embargoed, trained_model, model_promotion]

