"""The model-family seam as docs/extending.md describes it: one file registering one estimator builder, named in
qtos.yaml's ``plugins:``; the config validates the family and its params, the research pipeline fits it (with
train-only preprocessing, logged to MLflow like xgboost) and a model strategy backtests its scores."""

import textwrap

import numpy as np
import pandas as pd
import pytest
import yaml

from qt_resources.config import ConfigError, load_config
from qt_resources.plugins import MODEL_FAMILIES
from tests.conftest import REPO, repo_config

LOGIT = textwrap.dedent('''\
    """logit {c}: multinomial logistic regression on standardised features (ridge for the regressor)."""
    from qt_resources.plugins import Param, model_family


    @model_family("logit", {"c": Param(1.0, float, 1e-4, 1e4, "inverse regularisation strength")},
                  description="logistic regression on standardised features (sklearn)")
    def logit(objective, params, seed, early_stopping):
        from sklearn.linear_model import LogisticRegression, Ridge
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        if objective == "classifier":
            return make_pipeline(StandardScaler(), LogisticRegression(C=params["c"], max_iter=1000))
        return make_pipeline(StandardScaler(), Ridge(alpha=1.0 / params["c"]))
''')


def _project(tmp_path, model: dict, n_trials: int = 0):
    (tmp_path / "logit.py").write_text(LOGIT)
    raw = repo_config()
    raw["plugins"] = ["logit.py"]
    raw["research"]["model"] = {**raw["research"].get("model", {}), **model}
    raw["research"].setdefault("tuning", {})["n_trials"] = n_trials
    (tmp_path / "qtos.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    return tmp_path / "qtos.yaml"


def test_a_family_added_in_one_file_is_validated_from_the_config(tmp_path):
    cfg = load_config(_project(tmp_path, {"family": "logit", "params": {"c": 0.5}}))
    assert cfg.research.model.family == "logit" and cfg.research.model.params == {"c": 0.5}
    assert "logit" in MODEL_FAMILIES.names()
    with pytest.raises(ConfigError) as exc:
        load_config(_project(tmp_path, {"family": "logit", "params": {"c": 0, "max_depth": 3}}, n_trials=5))
    assert exc.value.problems == [
        "research.model.params.c: 0 is not in [0.0001, 10000]",
        "research.model.params.max_depth: unknown parameter of model family 'logit' (known: c)",
        "research.tuning.n_trials: 5 trials, but model family 'logit' has no search space (set 0)"]
    with pytest.raises(ConfigError) as exc:
        load_config(_project(tmp_path, {"family": "lgbm", "params": {}}))
    assert exc.value.problems[0].startswith(
        "research.model.family: 'lgbm' is not a registered model family (registered: logit, xgboost;")
    # the built-in family: params default-filled from its registry entry, typed
    xgb = load_config(_project(tmp_path, {"family": "xgboost", "params": {"n_estimators": 300}}))
    assert xgb.research.model.params == {"n_estimators": 300, "max_depth": 3, "learning_rate": 0.05,
                                         "subsample": 0.8, "colsample_bytree": 0.8}
    assert isinstance(xgb.research.model.params["n_estimators"], int)


def test_the_added_family_trains_registers_and_backtests(tmp_path):
    """Fit through the research pipeline (winsorise -> impute on train rows -> the family's estimator), score
    out of sample, log and reload through MLflow as the research asset does, then backtest the scores as a model
    strategy: the scores carry the signal planted in the data, so the strategy holds the symbol it favours."""
    import mlflow

    from qt_assets.backtests.runs import run_strategy
    from qt_assets.research.evaluation import evaluate_model, report_png
    from qt_assets.research.training import fit_pipeline, make_pipeline, model_importance, predict
    from tests.qt_assets.backtests.test_engine import random_bars

    cfg = load_config(_project(tmp_path, {"family": "logit", "params": {"c": 0.5}}))
    m = cfg.research.model
    symbols = cfg.universe.symbols
    bars = random_bars(np.random.default_rng(3), 400, symbols, vol=0.01)
    rng = np.random.default_rng(8)
    rows = []
    for d in bars.close.index:
        for j, s in enumerate(symbols):
            x = rng.standard_normal()
            fwd = 0.02 * x + 0.005 * rng.standard_normal()
            rows.append({"session": d.strftime("%Y-%m-%d"), "symbol": s, "f1": x, "f2": rng.standard_normal(),
                         "fwd_return": fwd, "label_class": int(np.digitize(fwd, [-0.01, 0.01]))})
    frame = pd.DataFrame(rows)
    frame.loc[frame.sample(frac=0.05, random_state=1).index, "f2"] = np.nan
    cut = frame["session"].unique()[250]
    train, test = frame[frame["session"] <= cut], frame[frame["session"] > cut]
    pipe = fit_pipeline(make_pipeline(m.objective, m.params, m.seed, m.winsorize, family=m.family), train,
                        ["f1", "f2"], m.objective, n_jobs=m.n_jobs)
    assert [name for name, _ in pipe.steps] == ["winsorize", "impute", "model"]
    proba, score = predict(pipe, test[["f1", "f2"]])
    assert proba.shape == (len(test), 3)
    metrics = evaluate_model(pipe, test, ["f1", "f2"])
    assert metrics["rank_ic"] > 0.5  # the planted signal is found
    assert model_importance(pipe, ["f1", "f2"], m.family) is None  # the family reports none: the report says so
    assert report_png(None, test, proba, "logit").startswith(b"\x89PNG")

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = mlflow.create_experiment("seam", artifact_location=(tmp_path / "artifacts").as_uri())
    with mlflow.start_run(experiment_id=exp):
        info = mlflow.sklearn.log_model(pipe, name="model", serialization_format="cloudpickle")
    again = mlflow.sklearn.load_model(info.model_uri)
    np.testing.assert_array_equal(predict(again, test[["f1", "f2"]])[1], score)

    st = next(s for s in cfg.backtest.strategies if s.kind == "model")
    scores = test[["session", "symbol"]].assign(score=score)
    pf, weights, _ = run_strategy(cfg, st, bars, scores)
    held = weights.fillna(0.0) > 0
    top = scores.assign(rank=scores.groupby("session")["score"].rank(ascending=False, method="first"))
    expected = (top[(top["rank"] <= st.selection.top_k) & (top["score"] > st.selection.min_score)]
                .assign(v=True).pivot(index="session", columns="symbol", values="v").fillna(False))
    expected.index = pd.DatetimeIndex(expected.index)
    assert (held.reindex_like(expected).fillna(False) == expected.astype(bool)).all().all()
    assert len(pf.orders.records) > 50


def test_the_docs_show_this_family_file_verbatim():
    assert LOGIT in (REPO / "docs" / "extending.md").read_text()
