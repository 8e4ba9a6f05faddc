"""Research: train the configured xgboost model on a purged, embargoed time split, log it to MLflow,
register a version (alias ``challenger``) and promote it to ``champion`` only through the metric gate."""


import hashlib
import subprocess
from dataclasses import dataclass

import dagster as dg
import numpy as np
import pandas as pd

from qt_resources.config import REPO_ROOT, ProjectConfig
from qt_resources.registry import MlflowRegistry
from qt_resources.warehouse import Warehouse

@dataclass
class Split:
    train: pd.DataFrame
    test: pd.DataFrame
    oos_start: str
    purged: int


def load_frame(warehouse: Warehouse, features: list[str]) -> pd.DataFrame:
    cols = ", ".join(f"f.{c}" for c in features)
    return warehouse.query(
        f"select f.symbol, strftime(f.session, '%Y-%m-%d') as session, {cols}, l.fwd_return, l.label_class, "
        "strftime(l.label_session, '%Y-%m-%d') as label_session "
        "from features_daily f join labels l using (symbol, session) order by f.session, f.symbol"
    )


def time_split(frame: pd.DataFrame, train_end: str, embargo: int) -> Split:
    """Train: sessions <= train_end whose label is known by train_end (purge). Test: sessions starting
    ``embargo`` sessions after train_end, with a known label."""
    labelled = frame.dropna(subset=["label_class"])
    in_train = labelled["session"] <= train_end
    train = labelled[in_train & (labelled["label_session"] <= train_end)]
    purged = int((in_train & ~(labelled["label_session"] <= train_end)).sum())
    later = sorted(s for s in frame["session"].unique() if s > train_end)
    if len(later) <= embargo:
        raise ValueError(f"research.split.train_end: {train_end} leaves no test sessions after a {embargo}-session embargo")
    oos_start = later[embargo]
    test = labelled[labelled["session"] >= oos_start]
    if train.empty or test.empty:
        raise ValueError(f"empty split: train {len(train)} rows, test {len(test)} rows (train_end {train_end})")
    return Split(train, test, oos_start, purged)


def check_features_present(train: pd.DataFrame, features: list[str]) -> None:
    """A configured feature that is NULL on every training row means its source was never materialised
    (e.g. news_sentiment for the training sessions): fail with the feature's name instead of training blind."""
    empty = [f for f in features if train[f].isna().all()]
    if empty:
        raise ValueError(f"features.set: {', '.join(empty)} NULL on all {len(train)} training rows; materialise "
                         "their source assets (news_sentiment, insider_flow) for the training sessions")


def score(model, X: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities and the agent score P(up) - P(down)."""
    proba = model.predict_proba(X)
    return proba, proba[:, 2] - proba[:, 0]


def evaluate(model, frame: pd.DataFrame, features: list[str]) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, log_loss

    proba, s = score(model, frame[features])
    y = frame["label_class"].astype(int).to_numpy()
    ic = pd.DataFrame({"session": frame["session"].to_numpy(), "s": s, "r": frame["fwd_return"].to_numpy()})
    daily_ic = ic.groupby("session")[["s", "r"]].apply(lambda g: g["s"].corr(g["r"], method="spearman")).dropna()
    return {
        "accuracy": float(accuracy_score(y, proba.argmax(1))),
        "balanced_accuracy": float(balanced_accuracy_score(y, proba.argmax(1))),
        "log_loss": float(log_loss(y, proba, labels=[0, 1, 2])),
        "rank_ic_mean": float(daily_ic.mean()) if len(daily_ic) else float("nan"),
        "rows": float(len(frame)),
    }


def fingerprint(df: pd.DataFrame) -> str:
    return hashlib.sha256(pd.util.hash_pandas_object(df, index=False).to_numpy().tobytes()).hexdigest()[:16]


def git_sha() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True,
                             check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except Exception:
        return "unknown"


def build_research_assets(cfg: ProjectConfig, features_key: dg.AssetKey, labels_key: dg.AssetKey) -> list:
    features = list(cfg.features.set)
    mcfg = cfg.research.model
    train_end = cfg.research.split.train_end.isoformat()

    @dg.asset(
        group_name="research",
        deps=[features_key, labels_key],
        backfill_policy=dg.BackfillPolicy.single_run(),
        kinds={"xgboost", "mlflow"},
        description=(
            "xgboost classifier (down/flat/up) on features_daily x labels, trained on sessions <= train_end "
            "with labels known by then (purged), tested after an embargo; logged and registered in MLflow "
            "(alias challenger), promoted to champion through the gate."
        ),
    )
    def trained_model(context: dg.AssetExecutionContext, warehouse: Warehouse, model_registry: MlflowRegistry):
        import mlflow
        import xgboost as xgb
        from mlflow.models import infer_signature

        frame = load_frame(warehouse, features)
        split = time_split(frame, train_end, cfg.embargo)
        check_features_present(split.train, features)
        model = xgb.XGBClassifier(
            objective="multi:softprob", num_class=3, tree_method="hist", random_state=mcfg.seed, n_jobs=1,
            **mcfg.params.model_dump())
        model.fit(split.train[features], split.train["label_class"].astype(int))
        test_metrics = evaluate(model, split.test, features)
        train_metrics = evaluate(model, split.train, features)

        exp_id = model_registry.setup()
        client = model_registry.client()
        tags = {
            "features": ",".join(features),
            "label": (f"{cfg.label.kind}(price={cfg.label.price}, h={cfg.label.horizon}, up={cfg.label.up}, "
                      f"down={cfg.label.down}, vol_k={cfg.label.vol_k})"),
            "train_start": split.train["session"].min(), "train_end": train_end,
            "oos_start": split.oos_start, "test_end": split.test["session"].max(),
            "embargo_sessions": str(cfg.embargo), "purged_rows": str(split.purged),
            "data_fingerprint": fingerprint(split.train[["symbol", "session", *features, "label_class"]]),
            "code_version": git_sha(), "dagster_run_id": context.run_id,
            "config_fingerprint": cfg.fingerprint(),
        }
        with mlflow.start_run(experiment_id=exp_id, run_name=f"{mcfg.name}-{context.run_id[:8]}") as run:
            mlflow.log_params({**mcfg.params.model_dump(), "seed": mcfg.seed, "family": mcfg.family,
                               "n_features": len(features), "train_rows": len(split.train),
                               "test_rows": len(split.test)})
            mlflow.log_metrics({f"test_{k}": v for k, v in test_metrics.items()})
            mlflow.log_metrics({f"train_{k}": v for k, v in train_metrics.items()})
            mlflow.set_tags(tags)
            example = split.test[features].head(5)
            info = mlflow.xgboost.log_model(
                model, name="model", signature=infer_signature(example, model.predict_proba(example)),
                input_example=example, registered_model_name=mcfg.name, model_format="ubj")
            version = str(info.registered_model_version)
        for k, v in {**tags, **{f"test_{k}": str(v) for k, v in test_metrics.items()}}.items():
            client.set_model_version_tag(mcfg.name, version, k, v)
        client.set_registered_model_alias(mcfg.name, "challenger", version)

        decision, why, champion_metric = promote(model_registry, mcfg.name, version, split.test, test_metrics)
        client.set_model_version_tag(mcfg.name, version, "promotion", f"{decision}: {why}")

        # test-window scores, read by the backtest
        _, s = score(model, split.test[features])
        out = split.test[["symbol", "session", "fwd_return", "label_class"]].assign(score=s, model_version=version)
        warehouse.write_table("research/test_scores", out)

        context.log.info(f"{mcfg.name} v{version}: test balanced accuracy {test_metrics['balanced_accuracy']:.4f}; {decision}: {why}")
        return dg.MaterializeResult(metadata={
            "model_uri": f"models:/{mcfg.name}/{version}",
            "model_version": version,
            "mlflow_run_id": run.info.run_id,
            "promotion": f"{decision}: {why}",
            "champion_balanced_accuracy_same_window": champion_metric,
            "train_rows": len(split.train), "test_rows": len(split.test), "purged_rows": split.purged,
            "oos_start": split.oos_start,
            "test_metrics": dg.MetadataValue.json(test_metrics),
            "data_fingerprint": tags["data_fingerprint"],
            "code_version": tags["code_version"],
            "config_fingerprint": cfg.fingerprint(),
        })

    def promote(registry: MlflowRegistry, name: str, version: str, test: pd.DataFrame,
                metrics: dict) -> tuple[str, str, float | None]:
        """Gate: the challenger becomes champion if there is none, or if its balanced accuracy on this
        test window is >= the champion's on the same rows (the champion is re-scored here)."""
        client = registry.client()
        champ = registry.alias_version(name, "champion")
        if champ is None:
            client.set_registered_model_alias(name, "champion", version)
            return "promoted", "no champion existed", None
        if str(champ.version) == version:
            return "kept", "already champion", None
        champ_model, _ = registry.load_xgboost(name, "champion")
        champ_features = champ.tags.get("features", "").split(",")
        if not set(champ_features) <= set(test.columns):
            client.set_registered_model_alias(name, "champion", version)
            return "promoted", f"champion v{champ.version} uses features not in this frame", None
        champ_ba = evaluate(champ_model, test, champ_features)["balanced_accuracy"]
        if metrics["balanced_accuracy"] >= champ_ba:
            client.set_registered_model_alias(name, "champion", version)
            return "promoted", (f"balanced accuracy {metrics['balanced_accuracy']:.4f} >= champion "
                                f"v{champ.version}'s {champ_ba:.4f} on the same window"), champ_ba
        return "not promoted", (f"balanced accuracy {metrics['balanced_accuracy']:.4f} < champion "
                                f"v{champ.version}'s {champ_ba:.4f} on the same window"), champ_ba

    return [trained_model]
