"""The research dataset: features_daily x labels for the configured features, split by time into train,
validation, the promotion gate's window and test (the trading and reporting window) with purge and embargo (:func:`qt_assets.research.training.time_split` states the rule), and
the check that the stored split obeys it."""

from __future__ import annotations

import pandas as pd

from qt_assets.research.training import Split, gate_end_of, load_frame, time_split
from qt_resources.config import ProjectConfig
from qt_resources.warehouse import Warehouse

TRAINING_SET = "research/training_set"
TEST_SCORES = "research/test_scores"


def check_features_present(train: pd.DataFrame, features: list[str]) -> None:
    """A configured feature that is NULL on every training row means its source was never materialised
    (e.g. news_sentiment for the training sessions): fail with the feature's name instead of training blind."""
    empty = [f for f in features if train[f].isna().all()]
    if empty:
        raise ValueError(f"features.set: {', '.join(empty)} NULL on all {len(train)} training rows; materialise "
                         "their source assets (news_sentiment, insider_flow) for the training sessions")


def split_cuts(split, embargo: int, sessions: list[str]) -> tuple[str, str | None]:
    """(train_end, valid_end): as configured, or rolling (``split.test_sessions``: the last N sessions are the
    test window and training ends ``embargo`` sessions before it)."""
    n = split.test_sessions
    if n is None:
        return split.train_end.isoformat(), split.valid_end.isoformat() if split.valid_end else None
    if len(sessions) <= n + embargo + 1:
        raise ValueError(f"research.split.test_sessions: {n} (+ embargo {embargo}) leaves no training sessions "
                         f"in {len(sessions)}")
    return sessions[-(n + embargo + 1)], None


def training_parts(cfg: ProjectConfig, warehouse: Warehouse) -> tuple[pd.DataFrame, Split, pd.DataFrame]:
    """(the joined frame, its split, the parts in one frame with a ``part`` column) for the configured features."""
    features = list(cfg.features.set)
    frame = load_frame(warehouse, features, cfg.data.start.isoformat())
    split = time_split(frame, *split_cuts(cfg.research.split, cfg.embargo, sorted(frame["session"].unique())),
                       cfg.embargo, cfg.research.split.gate_sessions)
    check_features_present(split.train, features)
    parts = pd.concat([split.train.assign(part="train"), split.valid.assign(part="valid"),
                       split.gate.assign(part="gate"), split.test.assign(part="test")], ignore_index=True)
    return frame, split, parts


def embargo_problems(cfg: ProjectConfig, parts: pd.DataFrame, sessions: list[str]) -> list[str]:
    """Why the stored ``parts`` break purge or embargo over ``sessions`` (the labels' sessions); [] if they do not:
    no training row's label known after train_end, no validation row's after valid_end, validation and test
    starting at least ``embargo`` sessions after the previous part's cut-off."""
    embargo = cfg.embargo
    train_end, valid_end = split_cuts(cfg.research.split, embargo, sessions)
    problems = []
    cut = train_end
    tr = parts[parts["part"] == "train"]
    if (tr["label_session"] > train_end).any():
        problems.append(f"{int((tr['label_session'] > train_end).sum())} train rows with label after {train_end}")
    gate_rows = parts[parts["part"] == "gate"]
    n_gate = cfg.research.split.gate_sessions
    gate_end = gate_end_of(sessions, gate_rows["session"].min(), n_gate) if n_gate and len(gate_rows) else None
    if n_gate and gate_rows.empty:
        problems.append(f"no gate rows although research.split.gate_sessions is {n_gate}")
    for part, end in (("valid", valid_end), ("gate", gate_end), ("test", None)):
        rows = parts[parts["part"] == part]
        if rows.empty:
            continue
        gap = sum(1 for s in sessions if cut < s < rows["session"].min())
        if gap < embargo:
            problems.append(f"{part} starts {gap} sessions after {cut} (< embargo {embargo})")
        if end and (rows["label_session"] > end).any():
            problems.append(f"{int((rows['label_session'] > end).sum())} {part} rows with label after {end}")
        cut = end or cut
    return problems
