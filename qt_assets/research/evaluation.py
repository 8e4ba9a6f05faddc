"""Model evaluation: classification metrics, information coefficients, baselines and the report plot.

IC (per session, across symbols): Pearson correlation of the score with the realised forward return; Rank IC:
Spearman; both averaged over sessions with at least 3 symbols and a non-constant score; ICIR = mean / std
of the per-session Rank IC. A constant score (always-long) has no IC (NaN), by definition.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import pandas as pd

from qt_assets.research.training import CLASSES, predict

METRICS = ["accuracy", "balanced_accuracy", "f1_macro", "roc_auc_ovr", "log_loss", "rmse", "ic", "rank_ic", "icir"]


def ic_metrics(frame: pd.DataFrame, score: np.ndarray) -> dict[str, float]:
    d = pd.DataFrame({"session": frame["session"].to_numpy(), "s": score, "r": frame["fwd_return"].to_numpy()})
    d = d.dropna()
    ics, rics = [], []
    for _, g in d.groupby("session"):
        if len(g) < 3 or g["s"].nunique() < 2 or g["r"].nunique() < 2:
            continue
        ics.append(np.corrcoef(g["s"], g["r"])[0, 1])
        rics.append(np.corrcoef(g["s"].rank(), g["r"].rank())[0, 1])
    if not rics:
        return {"ic": float("nan"), "rank_ic": float("nan"), "icir": float("nan")}
    sd = float(np.std(rics, ddof=1)) if len(rics) > 1 else float("nan")
    return {"ic": float(np.mean(ics)), "rank_ic": float(np.mean(rics)),
            "icir": float(np.mean(rics) / sd) if sd and sd > 0 else float("nan")}


def classification_metrics(y: np.ndarray, proba: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, log_loss, roc_auc_score

    pred = proba.argmax(axis=1)
    out = {"accuracy": accuracy_score(y, pred), "f1_macro": f1_score(y, pred, average="macro", labels=list(CLASSES)),
           "log_loss": log_loss(y, np.clip(proba, 1e-6, 1), labels=list(CLASSES))}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out["balanced_accuracy"] = balanced_accuracy_score(y, pred)
        try:
            out["roc_auc_ovr"] = roc_auc_score(y, proba, multi_class="ovr", labels=list(CLASSES))
        except ValueError:  # a class absent from y
            out["roc_auc_ovr"] = float("nan")
    return {k: float(v) for k, v in out.items()}


def evaluate_scores(frame: pd.DataFrame, proba: np.ndarray | None, score: np.ndarray,
                    pred_return: np.ndarray | None = None) -> dict[str, float]:
    """Every metric of METRICS that applies (NaN otherwise)."""
    out = dict.fromkeys(METRICS, float("nan"))
    if proba is not None:
        out.update(classification_metrics(frame["label_class"].astype(int).to_numpy(), proba))
    if pred_return is not None:
        err = pred_return - frame["fwd_return"].to_numpy()
        out["rmse"] = float(np.sqrt(np.nanmean(err ** 2)))
        # direction classes from the predicted return's sign vs the label's thresholds are not defined; the
        # balanced accuracy of sign(prediction) vs sign(return) is the regressor's directional skill
        from sklearn.metrics import balanced_accuracy_score

        out["balanced_accuracy"] = float(balanced_accuracy_score(frame["fwd_return"].to_numpy() > 0, pred_return > 0))
    out.update(ic_metrics(frame, score))
    return out


def evaluate_model(pipe, frame: pd.DataFrame, features: list[str]) -> dict[str, float]:
    proba, score = predict(pipe, frame[features])
    return evaluate_scores(frame, proba, score, pred_return=None if proba is not None else score)


def baselines(train: pd.DataFrame, frame: pd.DataFrame, features: list[str], seed: int) -> dict[str, dict]:
    """Reported beside the model every time, on the same rows: logistic regression on the same features
    (train-fitted imputation and scaling), always-long (P(up) = 1), and the 20-day momentum sign."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from qt_assets.research.training import MedianImputer

    out = {}
    logit = make_pipeline(MedianImputer(), StandardScaler(),
                          LogisticRegression(max_iter=1000, random_state=seed))
    logit.fit(train[features], train["label_class"].astype(int))
    p = np.zeros((len(frame), 3))
    p[:, logit.classes_.astype(int)] = logit.predict_proba(frame[features])
    out["logistic_regression"] = evaluate_scores(frame, p, p[:, 2] - p[:, 0])
    up = np.tile([0.0, 0.0, 1.0], (len(frame), 1))
    out["always_long"] = evaluate_scores(frame, up, np.ones(len(frame)))
    mom = np.sign(frame["ret_20d"].fillna(0.0).to_numpy())
    pm = np.where(mom[:, None] > 0, [0.0, 0.0, 1.0], np.where(mom[:, None] < 0, [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]))
    out["momentum_20d_sign"] = evaluate_scores(frame, pm, mom)
    return out


def report_png(importance: pd.Series | None, frame: pd.DataFrame, proba: np.ndarray | None, title: str) -> bytes:
    """Feature importance (the model family's: gain for xgboost; None: not reported) and, for a classifier, the
    calibration of P(up) on the test window."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    if importance is None:
        axes[0].text(0.5, 0.5, "no feature importance\nreported by this model family", ha="center", va="center")
        axes[0].set_axis_off()
    else:
        imp = importance.sort_values().tail(15)
        axes[0].barh(imp.index, imp.values, color="tab:blue")
        axes[0].set_title("feature importance (gain)")
    ax = axes[1]
    if proba is not None:
        y_up = (frame["label_class"].astype(int).to_numpy() == 2).astype(float)
        bins = np.linspace(0, 1, 11)
        idx = np.clip(np.digitize(proba[:, 2], bins) - 1, 0, 9)
        mids, freq, n = [], [], []
        for b in range(10):
            m = idx == b
            if m.sum() >= 5:
                mids.append(proba[m, 2].mean())
                freq.append(y_up[m].mean())
                n.append(int(m.sum()))
        ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1)
        ax.plot(mids, freq, marker="o")
        ax.set_xlabel("predicted P(up)")
        ax.set_ylabel("observed share up")
        ax.set_title("calibration, test window")
    else:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    return buf.getvalue()
