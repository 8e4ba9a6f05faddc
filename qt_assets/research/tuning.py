"""Hyper-parameter search: Optuna, seeded TPE sampler, median pruning across purged walk-forward folds.

The study lives in an RDB storage (SQLite ``optuna.db`` beside the MLflow store, or ``$QTOS_OPTUNA_STORAGE``)
under a name derived from the training data's fingerprint and the research config, so an interrupted
tuning run resumes where it stopped (only the missing trials run) and a finished one is not repeated.
Every trial is an MLflow child run with its parameters and per-fold scores.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from qt_assets.research.evaluation import evaluate_model
from qt_assets.research.training import Fold, fit_pipeline, make_pipeline
from qt_resources.plugins import MODEL_FAMILIES


def fold_score(metrics: dict, metric: str) -> float:
    v = -metrics["log_loss"] if metric == "neg_log_loss" else metrics[metric]
    return float(v) if np.isfinite(v) else -1.0  # an undefined score (e.g. constant predictions) is bad


def cross_validate(params: dict, train: pd.DataFrame, folds: list[Fold], features: list[str], objective: str,
                   seed: int, winsorize: float, metric: str, report=None, n_jobs: int = 0,
                   fold_metrics: list | None = None, family: str = "xgboost") -> list[float]:
    """Score ``params`` on each fold (fit on the fold's purged rows, score its validation block).
    ``report(k, running_mean)`` may raise to prune. ``n_jobs``: xgboost threads (``training.fit_threads``).
    ``fold_metrics``: if given, every fold's full ``evaluate_model`` metrics are appended to it."""
    scores = []
    for f in folds:
        pipe = fit_pipeline(make_pipeline(objective, params, seed, winsorize, family=family), train.loc[f.fit_index],
                            features, objective, n_jobs=n_jobs)
        metrics = evaluate_model(pipe, train.loc[f.val_index], features)
        if fold_metrics is not None:
            fold_metrics.append(metrics)
        scores.append(fold_score(metrics, metric))
        if report:
            report(f.k, float(np.mean(scores)))
    return scores


def tune(train: pd.DataFrame, folds: list[Fold], features: list[str], *, objective: str, seed: int,
         winsorize: float, metric: str, n_trials: int, timeout_s: float | None, storage: str, study_name: str,
         base_params: dict, log_trial=None, n_jobs: int = 0, family: str = "xgboost"):
    """Run the missing trials of the study over the model family's search space; returns (best params, best
    trial's fold scores, study)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name=study_name, storage=storage, load_if_exists=True, direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(5, max(n_trials, 1))),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1))
    done = [t for t in study.trials if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)]
    # trials that were running when a previous process died are marked failed, then redone
    for t in study.trials:
        if t.state == optuna.trial.TrialState.RUNNING:
            study._storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)

    search = MODEL_FAMILIES.get(family).search

    def objective_fn(trial):
        params = {**base_params, **search(trial)}

        def report(k, value):
            trial.report(value, k)
            if trial.should_prune():
                raise optuna.TrialPruned()

        metrics: list[dict] = []
        try:
            scores = cross_validate(params, train, folds, features, objective, seed, winsorize, metric, report,
                                    n_jobs=n_jobs, fold_metrics=metrics, family=family)
        except optuna.TrialPruned:
            if log_trial:
                log_trial(trial.number, params, [], "pruned")
            raise
        trial.set_user_attr("fold_scores", scores)
        trial.set_user_attr("fold_metrics", metrics)  # every metric per fold: the report needs no refit
        if log_trial:
            log_trial(trial.number, params, scores, "complete")
        return float(np.mean(scores))

    remaining = max(0, n_trials - len(done))
    if remaining:
        study.optimize(objective_fn, n_trials=remaining, timeout=timeout_s, gc_after_trial=False)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        return base_params, [], study
    best = study.best_trial
    return {**base_params, **best.params}, list(best.user_attrs.get("fold_scores", [])), study


def best_fold_metrics(study, n_folds: int) -> list[dict] | None:
    """The best trial's per-fold ``evaluate_model`` metrics (the folds' fits are deterministic, so these are what
    refitting the best params on each fold gives; tested), or None when the study has no complete trial or
    the trial predates them."""
    import optuna

    if study is None or not any(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials):
        return None
    got = study.best_trial.user_attrs.get("fold_metrics")
    return got if isinstance(got, list) and len(got) == n_folds else None
