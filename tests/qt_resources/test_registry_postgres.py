"""MlflowRegistry against an MLflow tracking server with a PostgreSQL backend store, with the same sequence
as training (log run + xgboost model, register, tag, alias challenger/champion, load by alias) run against
the embedded SQLite store for parity. The rows are checked in the backend database itself."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from qt_resources.registry import MlflowRegistry
from tests.pg import listening_addresses, mlflow_server, postgres_database

NAME = "qtos_xgb"
FEATURES = ["ret_1d", "ret_5d", "vol_20d", "rsi_14"]


@pytest.fixture
def isolated_mlflow():
    """MlflowRegistry.setup() sets mlflow's global URIs and exports MLFLOW_TRACKING_URI (which
    qt_jobs.definitions reads): put all of it back so no later test talks to a stopped server."""
    import mlflow.tracking._model_registry.utils as reg_utils
    import mlflow.tracking._tracking_service.utils as trk_utils

    keys = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
    saved_env = {k: os.environ.pop(k, None) for k in keys}
    saved = trk_utils._tracking_uri, reg_utils._registry_uri
    try:
        yield
    finally:
        import mlflow

        while mlflow.active_run() is not None:
            mlflow.end_run("KILLED")
        trk_utils._tracking_uri, reg_utils._registry_uri = saved
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(params=["sqlite", "postgres-server"])
def backend(request, tmp_path, isolated_mlflow):
    store = tmp_path / "mlflow"
    if request.param == "sqlite":
        registry = MlflowRegistry(store_dir=str(store))
        yield SimpleNamespace(kind="sqlite", registry=registry, db_url=registry.uri,
                              artifacts=store / "artifacts", port=None)
        return
    with postgres_database("registry") as db_url:
        with mlflow_server(tmp_path, db_url) as server_uri:
            yield SimpleNamespace(kind="postgres-server", registry=MlflowRegistry(store_dir=str(store),
                                                                                   tracking_uri=server_uri),
                                  db_url=db_url, artifacts=tmp_path / "mlflow-server" / "artifacts",
                                  port=int(server_uri.rsplit(":", 1)[1]))
    # dropped, server stopped
    assert _sql(db_url.rsplit("/", 1)[0] + "/postgres", "select count(*) from pg_database where datname = :d",
                d=db_url.rsplit("/", 1)[1]) == [(0,)]


def _sql(url: str, query: str, **params) -> list[tuple]:
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(sa.text(query), params)]
    finally:
        engine.dispose()


def _data(seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = pd.DataFrame(rng.normal(size=(300, len(FEATURES))), columns=FEATURES)
    y = np.digitize(X["ret_1d"] + 0.5 * X["rsi_14"] + rng.normal(scale=0.5, size=len(X)), [-0.5, 0.5])
    return X, y


def _model(X: pd.DataFrame, y: np.ndarray, seed: int, n_estimators: int):
    """The pipeline training registers (winsorise -> impute -> xgboost)."""
    from qt_assets.research.training import make_pipeline

    params = {"n_estimators": n_estimators, "max_depth": 3, "learning_rate": 0.3}
    return make_pipeline("classifier", params, seed, 0.01).fit(X, y)


def _train_and_register(registry: MlflowRegistry, model, X: pd.DataFrame, run_name: str) -> tuple[str, str]:
    """What qt_assets.research.model_run.train_and_register does with the registry; returns (version, run_id)."""
    import mlflow
    import xgboost as xgb
    from mlflow.models import infer_signature

    exp_id = registry.setup()
    client = registry.client()
    tags = {"features": ",".join(FEATURES), "train_end": "2010-12-31", "data_fingerprint": run_name * 2}
    with mlflow.start_run(experiment_id=exp_id, run_name=run_name) as run:
        booster = model.named_steps["model"]
        mlflow.log_params({"n_estimators": booster.n_estimators, "max_depth": booster.max_depth,
                           "learning_rate": booster.learning_rate, "seed": booster.random_state,
                           "n_features": len(FEATURES)})
        mlflow.log_metrics({"test_balanced_accuracy": 0.41, "train_balanced_accuracy": 0.62})
        mlflow.set_tags(tags)
        example = X.head(5)
        info = mlflow.sklearn.log_model(
            model, name="model", signature=infer_signature(example, model.predict_proba(example)),
            input_example=example, registered_model_name=NAME, serialization_format="cloudpickle",
            # training lets MLflow infer these (a ~4 s subprocess per model); irrelevant to the store
            pip_requirements=[f"xgboost=={xgb.__version__}"])
        version = str(info.registered_model_version)
    for k, v in {**tags, "test_balanced_accuracy": "0.41"}.items():
        client.set_model_version_tag(NAME, version, k, v)
    client.set_registered_model_alias(NAME, "challenger", version)
    return version, run.info.run_id


def test_registry_round_trip(backend):
    registry = backend.registry
    X, y = _data(seed=7)
    m1 = _model(X, y, seed=1, n_estimators=25)
    m2 = _model(X, y, seed=2, n_estimators=5)
    assert not np.array_equal(m1.predict_proba(X), m2.predict_proba(X))

    if backend.kind == "postgres-server":
        assert registry.uri.startswith("http://127.0.0.1:")
        assert listening_addresses(backend.port) == {"127.0.0.1"}, "server must bind to loopback only"
        exp = registry.client().get_experiment(registry.setup())
        assert exp.artifact_location.startswith("mlflow-artifacts:"), exp.artifact_location
    else:
        assert registry.uri.startswith("sqlite:///")

    assert registry.alias_version(NAME, "champion") is None
    with pytest.raises(LookupError, match="no version with alias 'champion'"):
        registry.load_model(NAME, "champion")

    # v1: challenger, then promoted to champion
    v1, run1 = _train_and_register(registry, m1, X, "run-one")
    assert v1 == "1"
    client = registry.client()
    client.set_registered_model_alias(NAME, "champion", v1)
    loaded, version = registry.load_model(NAME, "champion")
    assert str(version.version) == "1"  # SQLite store: int; REST: str
    np.testing.assert_array_equal(loaded.predict_proba(X), m1.predict_proba(X))
    assert str(registry.alias_version(NAME, "challenger").version) == "1"
    assert version.tags["features"] == ",".join(FEATURES)
    assert version.run_id == run1

    run = client.get_run(run1)
    assert run.data.params["n_estimators"] == "25" and run.data.params["n_features"] == "4"
    assert run.data.metrics["test_balanced_accuracy"] == pytest.approx(0.41)
    assert run.data.tags["train_end"] == "2010-12-31"

    # v2: challenger; champion stays on v1 until moved
    v2, run2 = _train_and_register(registry, m2, X, "run-two")
    assert v2 == "2"
    assert str(registry.alias_version(NAME, "challenger").version) == "2"
    assert str(registry.alias_version(NAME, "champion").version) == "1"
    client.set_registered_model_alias(NAME, "champion", v2)
    loaded2, version2 = registry.load_model(NAME, "champion")
    assert str(version2.version) == "2" and version2.run_id == run2
    np.testing.assert_array_equal(loaded2.predict_proba(X), m2.predict_proba(X))
    assert not np.array_equal(loaded2.predict_proba(X), m1.predict_proba(X))
    assert set(registry.alias_version(NAME, "champion").aliases) == {"challenger", "champion"}

    # the rows live in the backend database itself (Postgres for the server, the SQLite file otherwise)
    dialect = sa.engine.make_url(backend.db_url).get_backend_name()
    assert dialect == ("postgresql" if backend.kind == "postgres-server" else "sqlite")
    db = backend.db_url
    assert _sql(db, "select name from registered_models") == [(NAME,)]
    assert _sql(db, "select version, run_id from model_versions where name = :n order by version", n=NAME) == \
        [(1, run1), (2, run2)]
    assert sorted(_sql(db, "select alias, version from registered_model_aliases where name = :n", n=NAME)) == \
        [("challenger", 2), ("champion", 2)]
    assert _sql(db, "select version, value from model_version_tags where name = :n and key = 'features' "
                    "order by version", n=NAME) == [(1, ",".join(FEATURES)), (2, ",".join(FEATURES))]
    assert _sql(db, "select value from params where run_uuid = :r and key = 'n_estimators'", r=run2) == [("5",)]
    assert _sql(db, "select count(*) from metrics where run_uuid in (:a, :b)", a=run1, b=run2) == [(4,)]

    # the model files were written where the store says (server: proxied to --artifacts-destination)
    assert len(list(Path(backend.artifacts).rglob("MLmodel"))) == 2
