"""Promotion: the metric gates a challenger must pass to become ``champion`` (``research.promotion``), applied on
the same out-of-sample window to both versions (the gate window of ``research.split.gate_sessions``, before and
apart from the trading and reporting window; without it, the test window); the only code that moves the alias.

A champion moved by anything else (by hand in the MLflow UI or API) is recorded, not ignored: the registered model
keeps the champion as the gate (or the last check) knew it in its tags ``qtos.champion*``; when the alias points
elsewhere, ``qt_resources.registry.reconcile_champion`` (run by ``model_promotion`` and the ``champion_changed`` sensor) tags the new
champion's version ``champion_by_hand`` (previous champion, when it was detected and by what; MLflow records no
user and no time for an alias change, so "who" is what MLflow can say: nobody) and relabels a gate decision of
``rejected`` as ``champion_by_hand`` (the gate's verdict stays in ``gate_decision``)."""

from __future__ import annotations


import numpy as np
import pandas as pd

from qt_assets.research.dataset import TRAINING_SET
from qt_assets.research.evaluation import METRICS, evaluate_model
from qt_assets.research.training import predict
from qt_resources.config import ProjectConfig
from qt_resources.registry import MlflowRegistry, reconcile_champion, record_champion
from qt_resources.warehouse import Warehouse


def gate(mine: dict, theirs: dict | None, g, champion_version: str | None = None) -> tuple[bool, list[str]]:
    """Promotion gates (config ``research.promotion``): absolute floors on the challenger, then every
    ``vs_champion`` metric >= the champion's on the same window (skipped without a champion). An undefined
    (NaN) challenger metric fails; an undefined champion metric does not block."""
    reasons, ok = [], True
    for metric, floor in (("rank_ic", g.min_ic), ("balanced_accuracy", g.min_balanced_accuracy)):
        if floor is None:
            continue
        passed = bool(np.isfinite(mine[metric]) and mine[metric] >= floor)
        ok &= passed
        reasons.append(f"{metric} {mine[metric]:.4f} {'>=' if passed else '<'} {floor}")
    if theirs is None:
        reasons.append("no champion to compare with")
        return ok, reasons
    for metric in g.vs_champion:
        a, b = mine.get(metric, float("nan")), theirs.get(metric, float("nan"))
        passed = bool(np.isfinite(a) and (not np.isfinite(b) or a >= b))
        ok &= passed
        reasons.append(f"{metric} {a:.4f} {'>=' if passed else '<'} champion v{champion_version}'s {b:.4f}")
    return ok, reasons


def gate_window(parts: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """(the rows the gate scores, which window they are): the gate window (``research.split.gate_sessions``), else
    the test window, which is then also the one reported and traded."""
    gate_rows = parts[parts["part"] == "gate"]
    if len(gate_rows):
        return gate_rows.reset_index(drop=True), "gate"
    return parts[parts["part"] == "test"].reset_index(drop=True), "test"


def promote(cfg: ProjectConfig, warehouse: Warehouse, registry: MlflowRegistry) -> tuple[str, list[str], str]:
    """Score the challenger (and the champion) on the gate window (else the test window), backtest each through the model strategy, apply
    the gates; move ``champion`` if they pass and tag the decision on the version. A version is decided once.
    Returns (decision, reasons, comparison table)."""
    from qt_assets.backtests.runs import backtest_scores
    from qt_assets.backtests.metrics import returns_metrics

    client = registry.client()
    name = cfg.research.model.name
    moved = reconcile_champion(client, name, "model_promotion")
    by_hand = ([f"champion moved by hand to v{moved['version']} (previous v{moved['previous_champion']}, "
                f"detected {moved['detected_at']})"] if moved else [])
    chal = registry.alias_version(name, "challenger")
    if chal is None:
        raise LookupError(f"{name}: no challenger version; materialise trained_model first")
    version = str(chal.version)
    if "promotion_decision" in chal.tags:
        return "unchanged", by_hand + [f"v{version} already decided: {chal.tags['promotion_decision']} "
                                       f"({chal.tags.get('promotion_reason', '')})"], ""
    champ = registry.alias_version(name, "champion")
    parts = warehouse.read_table(TRAINING_SET)
    test, window = gate_window(parts)

    def measure(v) -> dict:
        model, _ = registry.load_model(name, version=str(v.version))
        feats = v.tags["features"].split(",")
        m = evaluate_model(model, test, feats)
        _, sc = predict(model, test[feats])
        pf = backtest_scores(cfg, warehouse, test[["symbol", "session"]].assign(score=sc))
        m["sharpe"] = float(returns_metrics(pf.qt_value, cfg.backtest.initial_cash)["sharpe"].iloc[0])
        return m

    mine = measure(chal)
    rows = {f"challenger v{version}": mine}
    theirs, champ_version = None, None
    if champ is not None and str(champ.version) != version:
        theirs, champ_version = measure(champ), str(champ.version)
        rows[f"champion v{champ_version}"] = theirs
    ok, reasons = gate(mine, theirs, cfg.research.promotion, champ_version)
    reasons = [f"scored on the {window} window {test['session'].min()}..{test['session'].max()}"
               + ("" if window == "gate" else ": the same window the reports show and the agents trade, so they "
                  "are selected on (set research.split.gate_sessions)")] + reasons
    decision = "promoted" if ok else "rejected"
    if ok:
        client.set_registered_model_alias(name, "champion", version)
        record_champion(client, name, version, "model_promotion")
    reasons = by_hand + reasons
    client.set_model_version_tag(name, version, "promotion_decision", decision)
    client.set_model_version_tag(name, version, "promotion_reason", "; ".join(reasons))
    client.set_model_version_tag(name, version, "promotion_window",
                                 f"{test['session'].min()}..{test['session'].max()}")
    table = pd.DataFrame(rows).T.reindex(columns=[*METRICS, "sharpe"]).to_markdown(floatfmt=".4f")
    return decision, reasons, table
