"""Model registry resource: MLflow used directly (dagster-mlflow pins pandas < 3).

Default: a local store under ``mlflow/`` (SQLite backend ``mlflow.db``, artifacts in ``artifacts/``).
``MLFLOW_TRACKING_URI`` in the environment points it at a tracking server instead.

The champion as the gate set it is kept in the registered model's tags ``qtos.champion*``
(:func:`record_champion`); a ``champion`` alias moved by anything else (by hand in the MLflow UI or API) is found
and recorded on the version by :func:`reconcile_champion`, which ``model_promotion`` and the ``champion_changed``
sensor run.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path

import dagster as dg

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")


class ModelRegistry(dg.ConfigurableResource):
    """Interface: where models are logged, registered, aliased and loaded from."""

    def client(self):  # pragma: no cover
        raise NotImplementedError


class MlflowRegistry(ModelRegistry):
    store_dir: str
    tracking_uri: str | None = None
    experiment: str = "qtos"

    @property
    def uri(self) -> str:
        if self.tracking_uri:
            return self.tracking_uri
        return f"sqlite:///{Path(self.store_dir) / 'mlflow.db'}"

    def setup(self):
        """Point the mlflow module at this store and return the experiment id."""
        import mlflow

        Path(self.store_dir).mkdir(parents=True, exist_ok=True)
        # mlflow.set_tracking_uri also exports MLFLOW_TRACKING_URI; restore it so this store does not leak
        # into the next Definitions built in the same process (they read the variable)
        before = os.environ.get("MLFLOW_TRACKING_URI")
        mlflow.set_tracking_uri(self.uri)
        mlflow.set_registry_uri(self.uri)
        if before is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = before
        exp = mlflow.get_experiment_by_name(self.experiment)
        if exp is None:
            artifact_location = None if self.tracking_uri else (Path(self.store_dir) / "artifacts").resolve().as_uri()
            return mlflow.create_experiment(self.experiment, artifact_location=artifact_location)
        return exp.experiment_id

    def client(self):
        from mlflow import MlflowClient

        self.setup()
        return MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)

    def alias_version(self, name: str, alias: str):
        """The model version behind ``models:/name@alias``, or None."""
        from mlflow.exceptions import MlflowException

        try:
            return self.client().get_model_version_by_alias(name, alias)
        except MlflowException:
            return None

    def load_model(self, name: str, alias: str | None = "champion", version: str | None = None):
        """The registered model pipeline (preprocessing + booster) at ``models:/<name>@<alias>`` or
        ``models:/<name>/<version>`` -- never a file path. Returns (model, ModelVersion)."""
        import mlflow

        self.setup()
        if version is not None:
            mv = self.client().get_model_version(name, str(version))
            uri = f"models:/{name}/{version}"
        else:
            mv = self.alias_version(name, alias)
            if mv is None:
                raise LookupError(f"MLflow model {name!r} has no version with alias {alias!r} at {self.uri}: "
                                  "materialise trained_model and model_promotion first")
            uri = f"models:/{name}@{alias}"
        if self.tracking_uri:  # a tracking server serves its own artifacts
            return mlflow.sklearn.load_model(uri), mv
        return mlflow.sklearn.load_model(str(self.model_dir(mv))), mv

    def model_dir(self, mv) -> Path:
        """The local directory of a model version's files **in this store**. MLflow records absolute artifact
        URIs, so a copied or moved project would load the old copy's files (or fail with "No such artifact: ''"
        once they are gone); the recorded location is re-rooted under this store's ``artifacts/``. A missing
        directory is an error naming the model, version and path."""
        from urllib.parse import unquote, urlparse

        client = self.client()
        location = mv.source
        if location.startswith("models:/"):  # MLflow 3: the version points at a logged model
            location = client.get_logged_model(location.removeprefix("models:/").split("/")[0]).artifact_location
        elif location.startswith("runs:/"):
            run_id, _, sub = location.removeprefix("runs:/").partition("/")
            location = f"{client.get_run(run_id).info.artifact_uri.rstrip('/')}/{sub}"
        recorded = Path(unquote(urlparse(location).path))
        exp = client.get_experiment(client.get_run(mv.run_id).info.experiment_id)
        old_root = Path(unquote(urlparse(exp.artifact_location).path))
        here = (Path(self.store_dir) / "artifacts").resolve()
        try:
            path = here / recorded.relative_to(old_root)
        except ValueError:  # recorded outside the experiment's root: take it as it is
            path = recorded
        if not path.exists():
            raise FileNotFoundError(f"MLflow model {mv.name!r} version {mv.version}: its files are missing at {path} "
                                    f"(recorded as {recorded}; store {Path(self.store_dir).resolve()})")
        return path

    def optuna_storage(self) -> str:
        """RDB storage for Optuna studies: ``$QTOS_OPTUNA_STORAGE`` (e.g. a Postgres URL) or a SQLite file
        beside the local MLflow store."""
        Path(self.store_dir).mkdir(parents=True, exist_ok=True)
        return os.environ.get("QTOS_OPTUNA_STORAGE") or f"sqlite:///{Path(self.store_dir) / 'optuna.db'}"


# --- the champion as the gate set it, and moves made by hand (qt_assets/research/promotion.py) ---------------
CHAMPION_TAGS = ("qtos.champion", "qtos.champion_set_by", "qtos.champion_set_at")
BY_HAND = "champion_by_hand"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def record_champion(client, name: str, version: str, set_by: str, at: str | None = None) -> None:
    """Remember ``version`` as the champion ``set_by`` (model_promotion, or by hand) on the registered model."""
    for tag, value in zip(CHAMPION_TAGS, (str(version), set_by, at or _now())):
        client.set_registered_model_tag(name, tag, value)


def reconcile_champion(client, name: str, seen_by: str, now: str | None = None) -> dict | None:
    """When the ``champion`` alias of ``name`` is not the version the gate (or the last check) recorded, record the
    move on the new champion's version and remember it. Returns the record, or None when nothing moved."""
    from mlflow.exceptions import MlflowException

    try:
        mv = client.get_model_version_by_alias(name, "champion")
        rm = client.get_registered_model(name)
    except MlflowException:
        return None  # no champion (or no model) yet
    version, known = str(mv.version), rm.tags.get(CHAMPION_TAGS[0])
    if known == version:
        return None
    decided = mv.tags.get("promotion_decision")
    if known is None and decided == "promoted":  # a registry from before these tags: the gate's own champion
        record_champion(client, name, version, "model_promotion")
        return None
    now = now or _now()
    rec = {"version": version, "previous_champion": known or "unknown (no champion was recorded)",
           "detected_at": now, "detected_by": seen_by,
           "moved_by": "not model_promotion: by hand in the MLflow UI or API (MLflow records no user or time for "
                       "an alias change; detected_at is the first check that saw it)",
           "gate_decision": decided or "never gated"}
    client.set_model_version_tag(name, version, BY_HAND, json.dumps(rec, sort_keys=True))
    if decided != "promoted":
        client.set_model_version_tag(name, version, "gate_decision", decided or "never gated")
        client.set_model_version_tag(name, version, "promotion_decision", BY_HAND)
    record_champion(client, name, version, "by hand", now)
    return rec
