"""Research sensors: keep the decisions on the current champion and ask for a retrain when the data asks for it.

``champion_changed`` (every 60 s, targets the decisions job)
    Watches the MLflow alias ``champion`` of every model used by an agent of kind ``model``. When the version
    behind it changes (a promotion by the gate, or a hand edit in the MLflow UI), it requests the latest
    materialised partition of ``decisions/<agent>`` for each agent on that model, so today's target weights
    come from the new champion. Agents whose latest partition already records the champion's version
    (``model_version`` materialisation metadata, e.g. the gate promoted inside a full-graph run that then
    built the decisions) and agents never materialised are left alone. On the first tick (no cursor entry
    for a model) it requests only when that metadata differs from the champion. Cursor: ``{model: version}``.

``retrain_on_new_data`` (every 300 s, targets the retrain job)
    Counts the stored ``prices`` sessions after the ``data_end`` tag of the latest registered version
    (``champion``, else the highest version) and requests a retrain once there are at least
    ``research.retrain.after_sessions`` of them. Cursor: the last session a request was made for, so the
    same data never triggers twice.

``feature_drift`` (every 600 s, targets the retrain job)
    Population stability index (:func:`psi`) of each of the champion's features between its training window
    (``train_start``..``train_end`` tags) and the last ``research.retrain.drift_window`` sessions of
    ``features_daily``; any PSI above ``research.retrain.drift_psi`` requests a retrain with the drifting
    features in the run tags. Cursor: ``{"model_version", "last_session"}``: evaluated once per new session
    (or new champion).

All three are created STOPPED (``default_status``): a retrain costs minutes of CPU and re-running decisions
replaces stored target weights, so a user switches them on in the Dagster UI (Automation → Sensors) or with
``dagster sensor start <name>``. Every run they request carries ``qtos/trigger`` (plus the evidence) as tags.
"""

from __future__ import annotations

import json
from collections import defaultdict

import dagster as dg
import duckdb
import numpy as np
import pandas as pd

from qt_resources.config import ProjectConfig
from qt_resources.registry import MlflowRegistry, reconcile_champion
from qt_resources.warehouse import Warehouse

CHAMPION = "champion"
PSI_EPSILON = 1e-4
FEATURES_TABLE = "features_daily"


# --- PSI ------------------------------------------------------------------------------------
def psi(train: np.ndarray, live: np.ndarray, bins: int) -> float:
    """Population stability index of ``live`` against the reference sample ``train``.

    Bins: the ``bins``-quantiles of ``train`` give the inner edges (``np.quantile`` at 1/bins .. (bins-1)/bins,
    duplicates dropped, so a feature with repeated values gets fewer bins); the outer bins are open-ended, so
    live values outside the training range land in the first/last bin. A value equal to an edge goes to the
    bin above it. Proportions of each sample per bin are floored at ``PSI_EPSILON`` (1e-4) so an empty bin
    contributes a large but finite term, and

        PSI = sum_i (p_live_i - p_train_i) * ln(p_live_i / p_train_i)

    which is >= 0 and 0 for identical bin proportions (rules of thumb: < 0.1 stable, > 0.25 shifted).
    Non-finite values (NaN, +-inf) are excluded from both samples; if either sample has no finite value the
    result is NaN (the caller reports such a feature as skipped).

    Example: train = 1..10, bins = 2 -> one edge at 5.5, p_train = (0.5, 0.5); live = (1, 1, 1, 9) ->
    p_live = (0.75, 0.25); PSI = 0.25 ln 1.5 - 0.25 ln 0.5 = 0.25 ln 3 = 0.2747.
    """
    if bins < 2:
        raise ValueError(f"bins must be >= 2, got {bins}")
    t = np.asarray(train, dtype=float).ravel()
    v = np.asarray(live, dtype=float).ravel()
    t, v = t[np.isfinite(t)], v[np.isfinite(v)]
    if t.size == 0 or v.size == 0:
        return float("nan")
    edges = np.unique(np.quantile(t, np.linspace(0.0, 1.0, bins + 1)[1:-1]))
    n = edges.size + 1
    p_train = np.bincount(np.searchsorted(edges, t, side="right"), minlength=n) / t.size
    p_live = np.bincount(np.searchsorted(edges, v, side="right"), minlength=n) / v.size
    p_train, p_live = np.maximum(p_train, PSI_EPSILON), np.maximum(p_live, PSI_EPSILON)
    return float(np.sum((p_live - p_train) * np.log(p_live / p_train)))


# --- helpers --------------------------------------------------------------------------------
def _load_cursor(raw: str | None) -> dict:
    if not raw:
        return {}
    try:
        out = json.loads(raw)
    except json.JSONDecodeError:
        return {}
    return out if isinstance(out, dict) else {}


def _metadata_text(value) -> str | None:
    if value is None:
        return None
    return str(getattr(value, "value", value))


def _recorded_model_version(instance: dg.DagsterInstance, key: dg.AssetKey, partition: str) -> str | None:
    """``model_version`` in the metadata of the latest materialisation of ``key``'s ``partition``."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=key, asset_partitions=[partition]), limit=1).records
    if not records or records[0].asset_materialization is None:
        return None
    return _metadata_text(records[0].asset_materialization.metadata.get("model_version"))


def _latest_registered_version(registry: MlflowRegistry, name: str):
    """The version behind ``@champion``, else the highest registered version, else None (tags included)."""
    mv = registry.alias_version(name, CHAMPION)
    if mv is not None:
        return mv
    client = registry.client()
    versions = client.search_model_versions(f"name='{name}'")
    if not versions:
        return None
    top = max(versions, key=lambda v: int(v.version))
    return client.get_model_version(name, str(top.version))


def _quote(col: str) -> str:
    return '"' + col.replace('"', '""') + '"'


def _as_float(s: pd.Series) -> np.ndarray:
    return pd.to_numeric(s, errors="coerce").to_numpy(dtype=float, na_value=np.nan)


# --- sensors --------------------------------------------------------------------------------
def build_research_sensors(cfg: ProjectConfig, *, retrain_job: str, decisions_job: str) -> list[dg.SensorDefinition]:
    """The sensors ``champion_changed`` (-> ``decisions_job``), ``retrain_on_new_data`` and ``feature_drift``
    (-> ``retrain_job``). Resources: ``model_registry`` (MlflowRegistry), ``warehouse`` (Warehouse)."""
    agents_by_model: dict[str, list[str]] = defaultdict(list)
    for agent in cfg.agents:
        if agent.kind in ("model", "hybrid"):
            agents_by_model[agent.model].append(agent.name)
    model_name = cfg.research.model.name
    retrain = cfg.research.retrain

    @dg.sensor(name="champion_changed", job_name=decisions_job, minimum_interval_seconds=60,
               default_status=dg.DefaultSensorStatus.STOPPED,
               description="Re-materialises the latest decisions/<agent> partition when the MLflow 'champion' "
                           "alias of the agent's model moves (gate promotion or a hand edit in MLflow).")
    def champion_changed(context: dg.SensorEvaluationContext, model_registry: MlflowRegistry):
        if not agents_by_model:
            return dg.SkipReason("no agent of kind 'model' in the config")
        cursor = _load_cursor(context.cursor)
        requests: list[dg.RunRequest] = []
        notes: list[str] = []
        for name, agents in sorted(agents_by_model.items()):
            mv = model_registry.alias_version(name, CHAMPION)
            if mv is None:
                notes.append(f"{name}: no version has alias '{CHAMPION}' (materialise trained_model first)")
                continue
            version = str(mv.version)
            previous = cursor.get(name)
            if previous == version:
                notes.append(f"{name}: champion still v{version}")
                continue
            moved = reconcile_champion(model_registry.client(), name, "champion_changed sensor")
            if moved:
                context.log.warning(f"{name}: champion moved to v{version} by hand (previous "
                                    f"v{moved['previous_champion']}); recorded on the version")
            by_partition: dict[str, list[dg.AssetKey]] = defaultdict(list)
            for agent in agents:
                key = dg.AssetKey(["decisions", agent])
                partitions = context.instance.get_materialized_partitions(key)
                if not partitions:
                    notes.append(f"{name}: {key.to_user_string()} never materialised")
                    continue
                latest = max(partitions)
                recorded = _recorded_model_version(context.instance, key, latest)
                if recorded == version:
                    notes.append(f"{name}: {key.to_user_string()} [{latest}] already uses v{version}")
                    continue
                by_partition[latest] += [key, dg.AssetKey(["guarded_targets", agent])]  # one multi-asset
            cursor[name] = version
            change = f"v{previous} -> v{version}" if previous is not None else f"v{version} (first tick)"
            if not by_partition:
                notes.append(f"{name}: champion {change}, nothing to re-materialise")
            for partition, keys in sorted(by_partition.items()):
                context.log.info(f"{name}: champion {change}: re-materialising "
                                 f"{[k.to_user_string() for k in keys]} for {partition}")
                requests.append(dg.RunRequest(
                    run_key=f"champion-{name}-v{version}-{partition}",
                    asset_selection=sorted(keys, key=lambda k: k.to_user_string()),
                    partition_key=partition,
                    tags={"qtos/trigger": "champion_changed", "qtos/champion_version": version,
                          "qtos/model": name}))
        new_cursor = json.dumps(cursor, sort_keys=True)
        if requests:
            return dg.SensorResult(run_requests=requests, cursor=new_cursor)
        return dg.SensorResult(skip_reason="; ".join(notes), cursor=new_cursor)

    @dg.sensor(name="retrain_on_new_data", job_name=retrain_job, minimum_interval_seconds=300,
               default_status=dg.DefaultSensorStatus.STOPPED,
               description=f"Requests a retrain of {model_name} once {retrain.after_sessions} price sessions "
                           "newer than the data the latest model saw (its data_end tag) are stored.")
    def retrain_on_new_data(context: dg.SensorEvaluationContext, model_registry: MlflowRegistry,
                            warehouse: Warehouse):
        mv = _latest_registered_version(model_registry, model_name)
        if mv is None:
            return dg.SkipReason(f"no registered version of {model_name}: train first (materialise trained_model)")
        version = str(mv.version)
        tags = mv.tags or {}
        data_end = tags.get("data_end") or tags.get("test_end")
        if not data_end:
            return dg.SkipReason(f"{model_name} v{version} has no data_end (or test_end) tag")
        new = [s for s in warehouse.stored_sessions("prices") if s > data_end]
        n = len(new)
        if n < retrain.after_sessions:
            return dg.SkipReason(f"{n} new price sessions since {model_name} v{version}'s data_end {data_end} "
                                 f"(retrain at {retrain.after_sessions})")
        last = new[-1]
        if context.cursor and last <= context.cursor:
            return dg.SkipReason(f"retrain already requested for data up to {context.cursor} "
                                 f"({n} sessions after v{version}'s data_end {data_end})")
        return dg.SensorResult(
            run_requests=[dg.RunRequest(
                run_key=f"new-data-{model_name}-{last}",
                tags={"qtos/trigger": "new_data", "qtos/new_sessions": str(n), "qtos/data_end": data_end,
                      "qtos/model_version": version})],
            cursor=last)

    @dg.sensor(name="feature_drift", job_name=retrain_job, minimum_interval_seconds=600,
               default_status=dg.DefaultSensorStatus.STOPPED,
               description=f"Requests a retrain of {model_name} when the PSI of any champion feature over the last "
                           f"{retrain.drift_window} sessions vs its training window exceeds {retrain.drift_psi}.")
    def feature_drift(context: dg.SensorEvaluationContext, model_registry: MlflowRegistry, warehouse: Warehouse):
        mv = model_registry.alias_version(model_name, CHAMPION)
        if mv is None:
            return dg.SkipReason(f"{model_name} has no '{CHAMPION}' version: train first")
        version = str(mv.version)
        tags = mv.tags or {}
        features = [f for f in tags.get("features", "").split(",") if f]
        train_start, train_end = tags.get("train_start"), tags.get("train_end")
        if not features or not train_start or not train_end:
            return dg.SkipReason(f"{model_name} v{version} lacks the features/train_start/train_end tags")
        try:
            columns = set(warehouse.query(f"select * from {FEATURES_TABLE} limit 0").columns)
        except (FileNotFoundError, duckdb.CatalogException) as exc:
            return dg.SkipReason(f"{FEATURES_TABLE} is not available ({type(exc).__name__}): "
                                 "materialise the dbt feature assets first")
        absent = [f for f in features if f not in columns]
        present = [f for f in features if f in columns]
        live_sessions = sorted(warehouse.query(
            f"select distinct strftime(session, '%Y-%m-%d') as s from {FEATURES_TABLE} order by s desc limit ?",
            [retrain.drift_window])["s"])
        if not live_sessions:
            return dg.SkipReason(f"{FEATURES_TABLE} is empty")
        last_live = live_sessions[-1]
        cursor = _load_cursor(context.cursor)
        if cursor.get("model_version") == version and cursor.get("last_session", "") >= last_live:
            return dg.SkipReason(f"no new session since {cursor['last_session']} (champion v{version})")
        new_cursor = json.dumps({"model_version": version, "last_session": last_live})
        if not present:
            return dg.SensorResult(skip_reason=f"none of v{version}'s features {absent} are in {FEATURES_TABLE}",
                                   cursor=new_cursor)
        cols = ", ".join(_quote(f) for f in present)
        train = warehouse.query(
            f"select {cols} from {FEATURES_TABLE} where session between cast(? as date) and cast(? as date)",
            [train_start, train_end])
        live = warehouse.query(f"select {cols} from {FEATURES_TABLE} where session >= cast(? as date)",
                               [live_sessions[0]])
        scores: dict[str, float] = {}
        skipped = list(absent)
        for f in present:
            value = psi(_as_float(train[f]), _as_float(live[f]), retrain.drift_bins)
            if np.isnan(value):
                skipped.append(f)
            else:
                scores[f] = value
        window = f"live {live_sessions[0]}..{last_live} vs train {train_start}..{train_end}"
        skipped_note = f"; skipped (absent or all-NaN in a window): {','.join(skipped)}" if skipped else ""
        if skipped:
            context.log.warning(f"feature_drift: skipped features {skipped} (absent or all-NaN in a window)")
        drifting = sorted(((f, v) for f, v in scores.items() if v > retrain.drift_psi), key=lambda fv: (-fv[1], fv[0]))
        if not drifting:
            top = sorted(scores.items(), key=lambda fv: -fv[1])[:3]
            summary = ", ".join(f"{f}:{v:.3f}" for f, v in top)
            return dg.SensorResult(
                skip_reason=f"no feature PSI above {retrain.drift_psi} ({window}; highest {summary}){skipped_note}",
                cursor=new_cursor)
        run_tags = {"qtos/trigger": "drift",
                    "qtos/drift_features": ",".join(f"{f}:{v:.3f}" for f, v in drifting),
                    "qtos/model_version": version,
                    "qtos/drift_window": f"{live_sessions[0]}..{last_live}"}
        if skipped:
            run_tags["qtos/drift_skipped_features"] = ",".join(skipped)
        context.log.info(f"feature_drift: {run_tags['qtos/drift_features']} ({window}){skipped_note}")
        return dg.SensorResult(
            run_requests=[dg.RunRequest(run_key=f"drift-{model_name}-v{version}-{last_live}", tags=run_tags)],
            cursor=new_cursor)

    return [champion_changed, retrain_on_new_data, feature_drift]
