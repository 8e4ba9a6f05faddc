"""Research assets, each a thin step over its library module: ``training_set`` (``dataset.py``: features x labels,
purged and embargoed train / validation / test), ``trained_model`` (``model_run.py``: Optuna on purged walk-forward
folds, the model family's pipeline, baselines, MLflow run + registered version with lineage, alias
``challenger``) and ``model_promotion`` (``promotion.py``: metric gates vs the champion on the same out-of-sample
window; the only code that moves ``champion``)."""

import base64
import json

import dagster as dg
import pandas as pd

from qt_assets.research.dataset import TRAINING_SET, embargo_problems, training_parts
from qt_assets.research.evaluation import METRICS
from qt_assets.research.model_run import train_and_register
from qt_assets.research.promotion import promote
from qt_assets.research.training import fingerprint
from qt_resources.config import ProjectConfig
from qt_resources.registry import BY_HAND, MlflowRegistry
from qt_resources.warehouse import Warehouse


def _md_table(rows: dict[str, dict]) -> str:
    return pd.DataFrame(rows).T.reindex(columns=METRICS).to_markdown(floatfmt=".4f")


def build_research_assets(cfg: ProjectConfig, features_key: dg.AssetKey, labels_key: dg.AssetKey) -> list:
    features = list(cfg.features.set)
    r = cfg.research
    mcfg = r.model
    embargo = cfg.embargo

    train_end = "rolling" if r.split.test_sessions else r.split.train_end.isoformat()
    valid_end = r.split.valid_end.isoformat() if r.split.valid_end else None
    common = dict(group_name="research", backfill_policy=dg.BackfillPolicy.single_run())

    @dg.asset(deps=[features_key, labels_key], kinds={"parquet"}, description=(
        f"features_daily x labels for the {len(features)} configured features, split by time: train (<= "
        f"{train_end}, purged: labels known by then), validation ({'to ' + valid_end if valid_end else 'none'}), "
        f"gate ({str(r.split.gate_sessions) + ' sessions the promotion gate scores' if r.split.gate_sessions else 'none'}), "
        f"test (the trading and reporting window, from an embargo of {embargo} sessions after the last cut). "
        f"One Parquet file with a `part` column."),
        **common)
    def training_set(context: dg.AssetExecutionContext, warehouse: Warehouse):
        frame, split, parts = training_parts(cfg, warehouse)
        warehouse.write_table(TRAINING_SET, parts)
        ranges = {p: f"{g['session'].min()}..{g['session'].max()} ({g['session'].nunique()} sessions, {len(g)} rows)"
                  for p, g in parts.groupby("part")}
        return dg.MaterializeResult(metadata={
            "train": ranges.get("train", ""), "valid": ranges.get("valid", "none"),
            "gate": ranges.get("gate", "none (the gate scores the test window)"), "test": ranges.get("test", ""),
            "oos_start": split.oos_start, "valid_start": split.valid_start or "none",
            "purged_rows": dg.MetadataValue.json(split.purged), "embargo_sessions": embargo,
            "data_fingerprint": fingerprint(parts), "features": ",".join(features),
            "source_sessions": f"{frame['session'].min()}..{frame['session'].max()} "
                               f"({frame['session'].nunique()} partitions of prices)"})

    @dg.asset_check(asset=training_set, blocking=True, description=(
        "No training row's label is known after train_end, no validation row's after valid_end; validation "
        "and test start at least `embargo` sessions after the previous part's cut-off."))
    def purged_and_embargoed(warehouse: Warehouse) -> dg.AssetCheckResult:
        problems = embargo_problems(cfg, warehouse.read_table(TRAINING_SET), warehouse.query(
            "select distinct strftime(session, '%Y-%m-%d') as s from labels order by s")["s"].tolist())
        return dg.AssetCheckResult(passed=not problems, metadata={"problems": "; ".join(problems) or "none"})

    @dg.asset(deps=[training_set], kinds={mcfg.family, "optuna", "mlflow"}, description=(
        f"{mcfg.family} {mcfg.objective} in a winsorise -> impute -> model pipeline fit on the train part; "
        f"Optuna ({r.tuning.n_trials} trials, seeded TPE, median pruning) on {r.cv.folds} purged walk-forward "
        f"folds, objective {r.tuning.metric}; baselines beside it; logged and registered in MLflow as "
        f"'{mcfg.name}' with lineage tags, alias challenger."), **common)
    def trained_model(context: dg.AssetExecutionContext, warehouse: Warehouse, model_registry: MlflowRegistry):
        run = train_and_register(cfg, warehouse, model_registry, context.run_id)
        version, test_m, lineage = run.version, run.test_m, run.lineage
        context.log.info(f"{mcfg.name} v{version}: test rank IC {test_m['rank_ic']:.4f}, "
                         f"balanced accuracy {test_m['balanced_accuracy']:.4f} (alias challenger)")
        return dg.MaterializeResult(metadata={
            "model_uri": f"models:/{mcfg.name}/{version}", "model_version": version,
            "mlflow_run_id": run.run_id, "params": dg.MetadataValue.json(run.params),
            "cv_scores": dg.MetadataValue.json({r.tuning.metric: run.best_scores}),
            "optuna_trials": run.trials, "optuna_study": run.study_name,
            "evaluation": dg.MetadataValue.md(_md_table(run.table)),
            "importance_calibration": dg.MetadataValue.md(
                f"![report](data:image/png;base64,{base64.b64encode(run.png).decode()})"),
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
        decision, reasons, table = promote(cfg, warehouse, model_registry)
        context.log.info(f"promotion: {decision}: {'; '.join(reasons)}")
        md = {"decision": decision, "reasons": dg.MetadataValue.json(reasons),
              "comparison": dg.MetadataValue.md(table)}
        champ = model_registry.alias_version(cfg.research.model.name, "champion")
        if champ is not None and BY_HAND in champ.tags:  # the champion now was put there by hand: say so every time
            md[BY_HAND] = dg.MetadataValue.json(json.loads(champ.tags[BY_HAND]))
        return dg.MaterializeResult(metadata=md)

    return [training_set, purged_and_embargoed, trained_model, model_promotion]

