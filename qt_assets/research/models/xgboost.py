"""``xgboost``: gradient-boosted trees (xgboost's CPU ``hist``), a 3-class ``multi:softprob`` classifier
(down/flat/up) or a squared-error regressor; early stopping on the validation window; tuned by Optuna over the
space in :func:`search`; importance = total gain per feature."""

from __future__ import annotations

from qt_resources.plugins import Param, model_family


def search(trial) -> dict:
    """One Optuna trial's hyper-parameters."""
    return {
        "n_estimators": trial.suggest_int("n_estimators", 50, 400, step=25),
        "max_depth": trial.suggest_int("max_depth", 2, 6),
        "learning_rate": trial.suggest_float("learning_rate", 0.01, 0.3, log=True),
        "subsample": trial.suggest_float("subsample", 0.5, 1.0),
        "colsample_bytree": trial.suggest_float("colsample_bytree", 0.5, 1.0),
        "min_child_weight": trial.suggest_float("min_child_weight", 1.0, 20.0, log=True),
        "reg_lambda": trial.suggest_float("reg_lambda", 1e-3, 10.0, log=True),
    }


def gain_importance(model, features: list[str]):
    """Total gain per feature (a Series)."""
    import pandas as pd

    gain = model.get_booster().get_score(importance_type="gain")
    # the booster sees positional names f0..fn after the numpy preprocessing steps
    return pd.Series({f: float(gain.get(f"f{i}", gain.get(f, 0.0))) for i, f in enumerate(features)})


@model_family("xgboost", {
    "n_estimators": Param(200, int, 1, 5000, "boosting rounds"),
    "max_depth": Param(3, int, 1, 16, "tree depth"),
    "learning_rate": Param(0.05, float, 0, 1, "shrinkage per round", open_lo=True),
    "subsample": Param(0.8, float, 0, 1, "row fraction per tree", open_lo=True),
    "colsample_bytree": Param(0.8, float, 0, 1, "feature fraction per tree", open_lo=True)},
    description="gradient-boosted trees (xgboost hist)", search=search, importance=gain_importance,
    early_stopping=True)
def xgboost(objective: str, params: dict, seed: int, early_stopping: int | None):
    import xgboost as xgb

    common = dict(tree_method="hist", random_state=seed, n_jobs=1, early_stopping_rounds=early_stopping, **params)
    if objective == "classifier":
        return xgb.XGBClassifier(objective="multi:softprob", num_class=3, eval_metric="mlogloss", **common)
    return xgb.XGBRegressor(objective="reg:squarederror", eval_metric="rmse", **common)
