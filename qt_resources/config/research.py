"""Config sections of features and research: features, label, model (a registered family), split, cross-validation,
tuning, promotion, retraining."""

from __future__ import annotations

from datetime import date
from typing import Any, Literal

from pydantic import Field, model_validator

from qt_resources.config.base import FamilyName, NAME_PATTERN, _Model
from qt_resources.plugins import MODEL_FAMILIES, param_problems, typed


class FeaturesSection(_Model):
    set: list[str] = Field(
        min_length=1, description=(
            "the model's features: columns documented on the features_daily dbt model "
            "(dbt_features/models/marts/schema.yml)"))


class LabelSection(_Model):
    kind: Literal["forward_return_class", "vol_scaled_class", "triple_barrier"] = Field(
        "forward_return_class",
        description="forward_return_class: fixed up/down thresholds on the h-session return; vol_scaled_class: "
                    "+-vol_k * sigma_20d * sqrt(h); triple_barrier: the first of the barriers "
                    "entry * (1 +- vol_k * sigma_20d * sqrt(h)) touched by the bars' high/low within h sessions "
                    "(up/down), else flat at the vertical barrier")
    price: Literal["close", "open"] = Field("close", description="close-to-close, or next-open-to-open entry")
    horizon: int = Field(5, ge=1, le=60, description="h: sessions ahead the label looks")
    up: float = Field(0.01, gt=0, lt=1, description="forward_return_class: a return above this is up")
    down: float = Field(-0.01, gt=-1, lt=0, description="forward_return_class: a return below this is down")
    vol_k: float = Field(1.0, gt=0, le=10, description="vol_scaled_class threshold / triple_barrier barrier "
                                                        "width: vol_k * sigma_20d * sqrt(h)")


class ModelSection(_Model):
    @model_validator(mode="before")
    @classmethod
    def _family_defaults(cls, data: Any) -> Any:
        """``params`` with the family's defaults filled in and its types applied, when they are all valid (else
        the cross-checks name the bad ones)."""
        if isinstance(data, dict):
            family, given = data.get("family", "xgboost"), data.get("params") or {}
            if isinstance(family, str) and family in MODEL_FAMILIES.names() and isinstance(given, dict):
                spec = MODEL_FAMILIES.get(family).params
                if not param_problems("", "", spec, given):
                    data = {**data, "params": typed(spec, given)}
        return data

    family: FamilyName = Field("xgboost", description="a registered model family (built in: xgboost; adding one: "
                                                       "docs/extending.md)")
    objective: Literal["classifier", "regressor"] = Field(
        "classifier", description="classifier: down/flat/up classes, score = P(up) - P(down); regressor: "
                                  "the forward return itself, score = the predicted return")
    name: str = Field("qtos_xgb", pattern=NAME_PATTERN, description="registered model name in MLflow")
    seed: int = Field(7, description="seed of xgboost and of Optuna's sampler")
    params: dict[str, int | float] = Field(
        default_factory=dict, description="the family's hyper-parameters (see Registered model families below; "
                                          "defaults from the family); tuned values override them")
    winsorize: float = Field(0.01, ge=0, lt=0.5, description="clip each feature to its train [q, 1-q] quantiles")
    n_jobs: int = Field(0, ge=0, le=512, description="xgboost threads per fit; 0 = auto: on fits of >= 50,000 rows "
                                                     "the cores other processes leave idle (measured over 0.1 s), "
                                                     "1 below. The model is the same for any value (tested), so "
                                                     "it is not part of the config fingerprint")


class SplitSection(_Model):
    train_end: date = Field(description="last training session (ignored when test_sessions is set)")
    valid_end: date | None = Field(None, description="validation window (early stopping) from train_end + embargo "
                                                      "to here; test starts an embargo after it. Default: no "
                                                      "validation window")
    embargo: int | None = Field(None, ge=0, le=250, description="sessions; default: label horizon")
    gate_sessions: int | None = Field(None, ge=20, description=(
        "the promotion gate's window: the first N out-of-sample sessions, which model_promotion scores; the "
        "trading and reporting window (test: what backtest reports show and agents trade) starts an embargo "
        "after it, so reported results are never the ones the gate selected on. null: one window for both "
        "(model_promotion then warns)"))
    test_sessions: int | None = Field(None, ge=20, description=(
        "rolling split: the test window is the last N sessions of the data and training ends an embargo "
        "before it (train_end is then ignored), so a retrain on new data trains on it"))


class CVSection(_Model):
    folds: int = Field(4, ge=2, le=20, description="purged walk-forward folds inside the train window")
    min_train_sessions: int = Field(252, ge=20, description="sessions before the first validation fold")


class TuningSection(_Model):
    n_trials: int = Field(12, ge=0, le=1000, description="Optuna trials (seeded TPE); 0 = the configured params")
    timeout_s: float | None = Field(None, gt=0, description="stop tuning after this many seconds (null: no limit)")
    metric: Literal["rank_ic", "ic", "balanced_accuracy", "neg_log_loss"] = Field(
        "rank_ic", description=(
            "objective on the purged folds"))


class PromotionSection(_Model):
    """Gates a challenger must pass on the out-of-sample window to become champion (all must hold)."""

    min_ic: float | None = Field(0.0, description="rank IC of the score vs the forward return >= this")
    min_balanced_accuracy: float | None = Field(
        None, ge=0, le=1, description=(
            "balanced accuracy of the challenger >= this (null = off)"))
    vs_champion: list[Literal["rank_ic", "ic", "balanced_accuracy", "sharpe"]] = Field(
        default_factory=lambda: ["sharpe"],
        description="metrics on which the challenger must be >= the champion re-scored on the same window")


class RetrainSection(_Model):
    after_sessions: int = Field(21, ge=1, description="new-data sensor: retrain after this many new sessions")
    drift_psi: float = Field(0.25, gt=0, description="drift sensor: PSI above this on any model feature")
    drift_window: int = Field(63, ge=5, description="drift sensor: live sessions compared with the train window")
    drift_bins: int = Field(10, ge=2, le=100, description="PSI bins (quantiles of the train window)")


class ResearchSection(_Model):
    model: ModelSection = Field(default_factory=ModelSection, description="the model and its registered name")
    split: SplitSection = Field(description="train / validation / test split")
    cv: CVSection = Field(CVSection(), description="purged walk-forward folds for tuning")
    tuning: TuningSection = Field(TuningSection(), description="Optuna search")
    promotion: PromotionSection = Field(
        PromotionSection(), description=(
            "gates a challenger must pass to become champion"))
    retrain: RetrainSection = Field(RetrainSection(), description="new-data and drift sensors")
