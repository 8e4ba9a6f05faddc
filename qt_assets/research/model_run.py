"""One training run of the research loop, without Dagster: tune on purged walk-forward folds (Optuna, the model
family's search space), fit the pipeline on the train part (early stopping on validation), evaluate on the test
part beside the baselines, log everything to MLflow with the lineage tags, register the version with alias
``challenger`` and store its out-of-sample scores (``research/test_scores``)."""

from __future__ import annotations

import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from qt_assets.research.dataset import TEST_SCORES, TRAINING_SET
from qt_assets.research.evaluation import baselines, evaluate_model, report_png
from qt_assets.research.training import (fingerprint, fit_pipeline, make_pipeline, model_importance, predict,
                                         walk_forward_folds)
from qt_resources.config import REPO_ROOT, ProjectConfig
from qt_resources.registry import MlflowRegistry
from qt_resources.warehouse import Warehouse


def git_sha() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True,
                             check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except Exception:
        return "unknown"


@dataclass
class ModelRun:
    """What a training run produced (the asset's metadata is made from it)."""
    version: str          # the registered model version
    run_id: str           # its MLflow run
    params: dict          # the hyper-parameters it was fit with (tuned over the configured ones)
    best_scores: list     # the chosen params' per-fold scores
    trials: int           # Optuna trials in the study (0 without tuning)
    study_name: str       # "none" without tuning
    table: dict           # evaluation rows: model (test / valid), baselines, folds
    png: bytes            # importance and calibration plot
    test_m: dict          # the model's test metrics
    lineage: dict         # the tags set on the run and the version


def train_and_register(cfg: ProjectConfig, warehouse: Warehouse, model_registry: MlflowRegistry,
                       dagster_run_id: str) -> ModelRun:
    features = list(cfg.features.set)
    r = cfg.research
    mcfg = r.model
    embargo = cfg.embargo
    import mlflow
    from mlflow.models import infer_signature

    parts = warehouse.read_table(TRAINING_SET)
    train, valid, gate, test = (parts[parts["part"] == p].reset_index(drop=True)
                                for p in ("train", "valid", "gate", "test"))
    data_fp = fingerprint(parts)
    folds = walk_forward_folds(train, r.cv.folds, r.cv.min_train_sessions, embargo)
    exp_id = model_registry.setup()
    client = model_registry.client()
    study_name = f"{mcfg.name}-{data_fp}-{cfg.fingerprint()[:12]}"

    with mlflow.start_run(experiment_id=exp_id, run_name=f"{mcfg.name}-{dagster_run_id[:8]}") as run:
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
            "gate_window": (f"{gate['session'].min()}..{gate['session'].max()}" if not gate.empty else "none"),
            "data_end": parts["session"].max(),
            "embargo_sessions": str(embargo), "data_fingerprint": data_fp, "code_version": git_sha(),
            "dagster_run_id": dagster_run_id, "config_fingerprint": cfg.fingerprint(),
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
    return ModelRun(version=version, run_id=run.info.run_id, params=params, best_scores=best_scores,
                    trials=len(study.trials) if study else 0, study_name=study_name if study else "none",
                    table=table, png=png, test_m=test_m, lineage=lineage)
