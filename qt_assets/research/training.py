"""Training library for the research assets: the time split with purge and embargo, purged walk-forward
folds, the preprocessing + model pipeline, and scoring. Pure functions; the assets live in assets.py.

Purge and embargo, precisely. Every label row carries ``label_session``: the session at whose close the
label is known (D + h, or D + 1 + h for next-open entry). A set of rows used for fitting with cut-off c keeps
only rows with ``session <= c`` **and** ``label_session <= c`` (purge: no label that reaches past the cut).
The rows evaluated after it start ``embargo`` sessions after c (embargo >= the label's span, checked by the
config). The same rule makes the train / validation / test split and every walk-forward fold.
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin

from qt_resources.plugins import MODEL_FAMILIES

CLASSES = (0, 1, 2)  # down, flat, up


def load_frame(warehouse, features: list[str], start: str | None = None) -> pd.DataFrame:
    """features_daily x labels from ``start`` on (data.start: the warm-up sessions before it are never trained or
    tested on), with ret_20d always present (the momentum baseline needs it)."""
    cols = ", ".join(f"f.{c}" for c in dict.fromkeys([*features, "ret_20d"]))
    return warehouse.query(
        f"select f.symbol, strftime(f.session, '%Y-%m-%d') as session, {cols}, l.fwd_return, l.label_class, "
        "strftime(l.label_session, '%Y-%m-%d') as label_session "
        "from features_daily f join labels l using (symbol, session) "
        "where f.session >= cast(coalesce(?, '1900-01-01') as date) order by f.session, f.symbol", [start])


def fingerprint(frame: pd.DataFrame) -> str:
    """Content hash of a frame (values and column names, row order included)."""
    h = hashlib.sha256(",".join(map(str, frame.columns)).encode())
    h.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    return h.hexdigest()[:16]


def fit_rows(frame: pd.DataFrame, cut: str) -> pd.Series:
    """Rows usable for fitting with cut-off ``cut``: session and label both known by then (purge)."""
    return (frame["session"] <= cut) & (frame["label_session"] <= cut) & frame["label_class"].notna()


def after_embargo(sessions: list[str], cut: str, embargo: int) -> str | None:
    """The first session ``embargo`` sessions after ``cut`` (None if there is none)."""
    later = [s for s in sessions if s > cut]
    return later[embargo] if len(later) > embargo else None


def gate_end_of(sessions: list[str], gate_start: str, n: int) -> str | None:
    """The last session of an ``n``-session gate window starting at ``gate_start`` (None: too few sessions)."""
    later = [s for s in sessions if s >= gate_start]
    return later[n - 1] if len(later) >= n else None


@dataclass
class Split:
    train: pd.DataFrame
    valid: pd.DataFrame  # empty without a validation window
    test: pd.DataFrame  # the trading / reporting window
    valid_start: str | None
    oos_start: str  # the first session of the test window: what agents trade and reports show
    purged: dict[str, int]  # rows dropped per part because their label reaches past the part's cut-off
    gate: pd.DataFrame = None  # the promotion gate's window (empty without research.split.gate_sessions)
    gate_start: str | None = None
    gate_end: str | None = None


def _purged_window(frame: pd.DataFrame, labelled: pd.Series, start: str, end: str) -> tuple[pd.DataFrame, int]:
    """(the labelled rows of sessions start..end whose label is known by ``end``, how many were purged)."""
    inside = (frame["session"] >= start) & (frame["session"] <= end) & labelled
    keep = inside & (frame["label_session"] <= end)
    return frame[keep], int((inside & ~keep).sum())


def time_split(frame: pd.DataFrame, train_end: str, valid_end: str | None, embargo: int,
               gate_sessions: int | None = None) -> Split:
    """train: purged at train_end; valid (optional): from train_end + embargo, purged at valid_end; gate
    (optional, ``gate_sessions``): the first sessions after the last cut + embargo, purged at its last session,
    which the promotion gate scores; test (the trading and reporting window): from the last cut + embargo to the end
    (labelled rows only). With a gate window the test window starts an embargo after it, so what is reported
    (and traded) was never selected on."""
    sessions = sorted(frame["session"].unique())
    labelled = frame["label_class"].notna()
    train_mask = fit_rows(frame, train_end)
    purged = {"train": int(((frame["session"] <= train_end) & labelled & ~train_mask).sum())}
    valid = frame.iloc[0:0]
    valid_start = None
    cut = train_end
    if valid_end:
        valid_start = after_embargo(sessions, train_end, embargo)
        if valid_start is None or valid_start > valid_end:
            raise ValueError(f"research.split.valid_end: {valid_end} leaves no validation sessions after "
                             f"train_end {train_end} and a {embargo}-session embargo")
        valid, purged["valid"] = _purged_window(frame, labelled, valid_start, valid_end)
        cut = valid_end
    oos_start = after_embargo(sessions, cut, embargo)
    if oos_start is None:
        raise ValueError(f"research.split: {cut} leaves no test sessions after a {embargo}-session embargo")
    gate, gate_start, gate_end = frame.iloc[0:0], None, None
    if gate_sessions:
        gate_start, gate_end = oos_start, gate_end_of(sessions, oos_start, gate_sessions)
        oos_start = after_embargo(sessions, gate_end, embargo) if gate_end else None
        if oos_start is None:
            raise ValueError(f"research.split.gate_sessions: {gate_sessions} gate sessions from {gate_start} and a "
                             f"{embargo}-session embargo leave no trading/reporting sessions")
        gate, purged["gate"] = _purged_window(frame, labelled, gate_start, gate_end)
    test = frame[(frame["session"] >= oos_start) & labelled]
    train = frame[train_mask]
    if train.empty or test.empty:
        raise ValueError(f"empty split: train {len(train)} rows, test {len(test)} rows (train_end {train_end})")
    return Split(train, valid, test, valid_start, oos_start, purged, gate, gate_start, gate_end)


@dataclass
class Fold:
    k: int
    cut: str  # last session whose (session, label) may be fitted
    val_start: str
    val_end: str
    fit_index: pd.Index
    val_index: pd.Index


def walk_forward_folds(train: pd.DataFrame, folds: int, min_train_sessions: int, embargo: int) -> list[Fold]:
    """Expanding-window folds inside ``train``: the sessions after the first ``min_train_sessions`` are cut
    into ``folds`` consecutive validation blocks; fold k fits on rows purged at its cut (the session before
    its block minus the embargo) and validates on its block."""
    sessions = sorted(train["session"].unique())
    if len(sessions) < min_train_sessions + folds * (embargo + 2):
        raise ValueError(f"research.cv: {len(sessions)} train sessions are too few for {folds} folds after "
                         f"min_train_sessions={min_train_sessions} (embargo {embargo})")
    blocks = np.array_split(np.arange(min_train_sessions, len(sessions)), folds)
    out = []
    for k, block in enumerate(blocks):
        val_start, val_end = sessions[block[0]], sessions[block[-1]]
        cut = sessions[block[0] - 1 - embargo]
        fit = fit_rows(train, cut)
        val = (train["session"] >= val_start) & (train["session"] <= val_end)
        out.append(Fold(k, cut, val_start, val_end, train.index[fit], train.index[val]))
    return out


class Winsorizer(BaseEstimator, TransformerMixin):
    """Clip each column to its [q, 1 - q] quantiles learnt in ``fit`` (NaN kept)."""

    def __init__(self, q: float = 0.01):
        self.q = q

    def fit(self, X, y=None):
        a = np.asarray(X, dtype=float)
        with warnings.catch_warnings():  # an all-NaN column has no quantile: NaN bounds, no clipping
            warnings.simplefilter("ignore", RuntimeWarning)
            self.lower_ = np.nanquantile(a, self.q, axis=0)
            self.upper_ = np.nanquantile(a, 1 - self.q, axis=0)
        self.n_features_in_ = a.shape[1]
        return self

    def transform(self, X):
        a = np.asarray(X, dtype=float)
        return np.clip(a, np.where(np.isnan(self.lower_), -np.inf, self.lower_),
                       np.where(np.isnan(self.upper_), np.inf, self.upper_))


class MedianImputer(BaseEstimator, TransformerMixin):
    """Replace NaN by each column's median learnt in ``fit`` (0 for a column with no value). The same numbers
    as sklearn's ``SimpleImputer(strategy="median", keep_empty_features=True)`` (tested bit for bit), which
    takes ~0.3 s per million rows per column through ``np.ma.median``; this takes ``np.median`` of each
    column's non-NaN values (a partition, not a sort)."""

    @staticmethod
    def _finite(a: np.ndarray) -> None:
        bad = np.isinf(a).any(axis=0)
        if bad.any():  # as SimpleImputer does: an infinite feature value is an error, not a number to train on
            raise ValueError(f"impute: infinite values in feature column(s) {np.flatnonzero(bad).tolist()}")

    def fit(self, X, y=None):
        a = np.asarray(X, dtype=float)
        self._finite(a)
        stats = np.zeros(a.shape[1])
        for j in range(a.shape[1]):
            col = a[:, j]
            v = col[~np.isnan(col)]
            if v.size:
                stats[j] = np.median(v)
        self.statistics_ = stats
        self.n_features_in_ = a.shape[1]
        return self

    def transform(self, X):
        a = np.array(X, dtype=float)  # a copy: the caller's frame is not changed
        self._finite(a)
        nan = np.isnan(a)
        if nan.any():
            a[nan] = np.broadcast_to(self.statistics_, a.shape)[nan]
        return a


AUTO_THREADS_MIN_ROWS = 50_000
CPU_SAMPLE_S = 0.1  # how long fit_threads watches the CPUs before a large fit


def _cpu_sample() -> tuple[float, float, float] | None:
    """(seconds of CPU time all processes spent on the cores this process may run on, this process's own CPU
    seconds (every thread), a monotonic clock) from /proc/stat; None where /proc/stat is not there."""
    import os
    import time

    cpus = {f"cpu{i}" for i in os.sched_getaffinity(0)}
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return None
    busy = 0
    for line in lines:
        f = line.split()
        if f and f[0] in cpus:  # user nice system idle iowait irq softirq steal: busy = all but idle, iowait
            busy += sum(int(x) for x in f[1:4]) + sum(int(x) for x in f[6:9])
    t = os.times()
    return busy / os.sysconf("SC_CLK_TCK"), t.user + t.system, time.monotonic()


def others_busy_cores(interval: float = CPU_SAMPLE_S) -> float | None:
    """Cores kept busy by other processes over the next ``interval`` seconds (all CPU time on this process's
    cores minus this process's own), or None where it cannot be measured."""
    import time

    a = _cpu_sample()
    if a is None:
        return None
    time.sleep(interval)
    b = _cpu_sample()
    wall = b[2] - a[2]
    if wall <= 0:
        return None
    return max(0.0, ((b[0] - a[0]) - (b[1] - a[1])) / wall)


def fit_threads(rows: int, n_jobs: int = 0) -> int:
    """xgboost threads for a fit of ``rows`` rows. ``n_jobs`` > 0 is taken as given. 0 (auto): 1 below
    AUTO_THREADS_MIN_ROWS; above, the cores this process may run on that other processes leave idle, measured
    over CPU_SAMPLE_S just before the fit (``others_busy_cores``: CPU time on those cores minus this process's
    own), at least 1. OpenMP threads wait for each other at every tree level, so a thread on a core that another
    process keeps busy makes a fit slower than one thread (measured: a CV pass at 50 symbols took 11.3 s on 1
    thread and 21.6 s on 2 beside a busy core; BENCHMARKS.md). The load average cannot tell this: it counts this
    process's own fit threads, so after a minute of two-thread fits it read ~2 on an otherwise idle 2-core
    machine and every later fit ran on one thread (seen in the 500-symbol research run). Without /proc/stat the
    1-minute load average less one is used. The booster is the same for any thread count (xgboost's CPU
    ``hist``; tests/qt_assets/research/test_research.py compares the model bytes at 1, 2 and 3 threads, so an upgrade
    that breaks it fails CI): the choice changes the time only."""
    import os

    if n_jobs > 0:
        return n_jobs
    if rows < AUTO_THREADS_MIN_ROWS:
        return 1
    cores = len(os.sched_getaffinity(0))
    others = others_busy_cores()
    if others is None:
        others = max(0.0, os.getloadavg()[0] - 1.0)
    return max(1, min(cores, int(cores - others + 0.5)))


def make_pipeline(objective: str, params: dict, seed: int, winsorize: float, early_stopping: int | None = None,
                  family: str = "xgboost"):
    """winsorise -> impute (train medians) -> the model family's estimator (``research/models/``; xgboost: hist).
    Every step is fit on the training rows only and saved with the model (one sklearn Pipeline logged to MLflow).
    Threads are set by ``fit_pipeline``; ``early_stopping`` applies to families that support it."""
    from sklearn.pipeline import Pipeline

    spec = MODEL_FAMILIES.get(family)
    model = spec.estimator(objective, params, seed, early_stopping if spec.early_stopping else None)
    return Pipeline([("winsorize", Winsorizer(winsorize)), ("impute", MedianImputer()), ("model", model)])


def model_importance(pipe, features: list[str], family: str) -> pd.Series | None:
    """The family's feature importance of the fitted pipeline's estimator, or None if it reports none."""
    spec = MODEL_FAMILIES.get(family)
    return None if spec.importance is None else spec.importance(pipe.named_steps["model"], features)


def target(frame: pd.DataFrame, objective: str) -> np.ndarray:
    return (frame["label_class"].astype(int) if objective == "classifier" else frame["fwd_return"]).to_numpy()


def fit_pipeline(pipe, train: pd.DataFrame, features: list[str], objective: str,
                 valid: pd.DataFrame | None = None, n_jobs: int = 0):
    """Fit; with ``valid`` the booster early-stops on it (transformed by the train-fitted preprocessing, which is
    fitted once). ``n_jobs``: xgboost threads, see ``fit_threads``."""
    X, y = train[features], target(train, objective)
    model = pipe.named_steps["model"]
    own = model.get_params(deep=False)
    if "n_jobs" in own:
        model.set_params(n_jobs=fit_threads(len(train), n_jobs))
    if valid is None or valid.empty or own.get("early_stopping_rounds") is None:
        if "early_stopping_rounds" in own:
            model.set_params(early_stopping_rounds=None)
        pipe.fit(X, y)
    else:
        pre = pipe[:-1]
        Xt = pre.fit_transform(X, y)
        model.fit(Xt, y, eval_set=[(pre.transform(valid[features]), target(valid, objective))], verbose=False)
    if "n_jobs" in own:
        model.set_params(n_jobs=1)  # the saved model is the same whatever the fit's threads; predictions are small
    return pipe


def predict(pipe, X: pd.DataFrame) -> tuple[np.ndarray | None, np.ndarray]:
    """(class probabilities or None, score). Classifier: score = P(up) - P(down); regressor: the predicted
    forward return."""
    if hasattr(pipe, "predict_proba") and hasattr(pipe[-1], "classes_"):
        proba = pipe.predict_proba(X)
        return proba, proba[:, 2] - proba[:, 0]
    return None, np.asarray(pipe.predict(X), dtype=float)
