"""Research: purge/embargo, train-only preprocessing, determinism and resume, promotion gates both ways."""

from types import SimpleNamespace

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from qt_assets.research.dataset import TRAINING_SET, check_features_present
from qt_assets.research.promotion import gate
from qt_assets.research.training import (
    Winsorizer, fit_pipeline, make_pipeline, predict, time_split, walk_forward_folds)
from qt_resources.calendar import sessions as xnys_sessions
from tests.conftest import ON_SHORT_RUN



def test_a_feature_null_on_every_training_row_is_named():
    train = pd.DataFrame({"ret_1d": [0.1, 0.2], "news_sentiment_1d": [None, None]})
    check_features_present(train, ["ret_1d"])
    with pytest.raises(ValueError, match=r"features.set: news_sentiment_1d NULL on all 2 training rows"):
        check_features_present(train, ["ret_1d", "news_sentiment_1d"])


def synthetic_frame(n_sessions=400, symbols=("A", "B", "C"), h=5, seed=3) -> pd.DataFrame:
    """Rows with label_session = the session h later (NaN label for the last h), two features."""
    s = xnys_sessions("2015-01-02", "2017-12-29")[:n_sessions]
    rng = np.random.default_rng(seed)
    rows = []
    for sym in symbols:
        for i, d in enumerate(s):
            known = s[i + h] if i + h < len(s) else None
            rows.append({"symbol": sym, "session": d, "label_session": known,
                         "label_class": rng.integers(0, 3) if known else np.nan,
                         "fwd_return": rng.normal(0, 0.02) if known else np.nan,
                         "f1": rng.normal(), "f2": rng.normal(), "ret_20d": rng.normal(0, 0.05)})
    return pd.DataFrame(rows).sort_values(["session", "symbol"], ignore_index=True)


@pytest.mark.parametrize("embargo", [5, 8])
def test_no_fitted_label_is_known_after_its_cut_off(embargo):
    f = synthetic_frame()
    s = sorted(f["session"].unique())
    split = time_split(f, s[250], s[320], embargo)
    assert split.train["label_session"].max() == s[250] and split.train["session"].max() == s[245]
    assert split.purged["train"] == 3 * 5  # the last h sessions before the cut have labels beyond it
    assert split.valid["session"].min() == s[250 + embargo + 1] and split.valid["label_session"].max() <= s[320]
    assert split.test["session"].min() == s[320 + embargo + 1] == split.oos_start  # embargo sessions between
    folds = walk_forward_folds(split.train, 3, 100, embargo)
    assert len(folds) == 3
    for fold in folds:
        fit, val = split.train.loc[fold.fit_index], split.train.loc[fold.val_index]
        assert fit["label_session"].max() <= fold.cut < val["session"].min()
        gap = [d for d in s if fold.cut < d < val["session"].min()]
        assert len(gap) >= embargo
        assert not set(fit.index) & set(val.index)
    # expanding window: later folds fit on more rows
    assert [len(f.fit_index) for f in folds] == sorted(len(f.fit_index) for f in folds)


@pytest.mark.parametrize("embargo", [5, 8])
def test_the_gate_window_comes_before_the_reported_window_with_an_embargo(embargo):
    """research.split.gate_sessions: the gate scores the first N out-of-sample sessions (purged at its end);
    the test window (reported, traded) starts an embargo after it, so reported results were never selected on;
    the promotion scores the gate window, and says so when there is none."""
    from types import SimpleNamespace

    from qt_assets.research.dataset import embargo_problems
    from qt_assets.research.promotion import gate_window

    f = synthetic_frame()
    s = sorted(f["session"].unique())
    split = time_split(f, s[250], None, embargo, gate_sessions=40)
    gate_start = s[250 + embargo + 1]
    assert split.gate_start == gate_start == split.gate["session"].min()
    assert split.gate_end == s[250 + embargo + 40]
    assert split.gate["label_session"].max() <= split.gate_end and split.purged["gate"] == 3 * 5
    assert split.test["session"].min() == s[250 + embargo + 40 + embargo + 1] == split.oos_start
    parts = pd.concat([split.train.assign(part="train"), split.gate.assign(part="gate"),
                       split.test.assign(part="test")], ignore_index=True)
    rows, window = gate_window(parts)
    assert window == "gate" and rows["session"].max() < split.oos_start
    assert gate_window(parts[parts["part"] != "gate"])[1] == "test"
    cfg = SimpleNamespace(embargo=embargo, research=SimpleNamespace(split=SimpleNamespace(
        train_end=pd.Timestamp(s[250]).date(), valid_end=None, test_sessions=None, gate_sessions=40)))
    assert embargo_problems(cfg, parts, s) == []
    late = parts.copy()  # a test window that starts right after the gate: no embargo
    late.loc[late["part"] == "test", "part"] = "x"
    late = pd.concat([late[late["part"] != "x"], f[f["session"] > split.gate_end].dropna(
        subset=["label_class"]).assign(part="test")], ignore_index=True)
    assert any(p.startswith("test starts 0 sessions after") for p in embargo_problems(cfg, late, s))
    with pytest.raises(ValueError, match="gate_sessions: 200 gate sessions"):
        time_split(f, s[250], None, embargo, gate_sessions=200)


def test_preprocessing_is_fit_on_train_only():
    f = synthetic_frame()
    train, test = f.iloc[:600].copy(), f.iloc[600:].copy()
    train.loc[train.index[:20], "f1"] = np.nan
    test["f1"] = 1e6  # wild values outside train must not move the learnt bounds
    pipe = fit_pipeline(make_pipeline("classifier", {"n_estimators": 20, "max_depth": 2}, 7, 0.05), train,
                        ["f1", "f2"], "classifier")
    w, imp = pipe.named_steps["winsorize"], pipe.named_steps["impute"]
    np.testing.assert_allclose(w.lower_, [np.nanquantile(train["f1"], 0.05), np.nanquantile(train["f2"], 0.05)])
    np.testing.assert_allclose(w.upper_, [np.nanquantile(train["f1"], 0.95), np.nanquantile(train["f2"], 0.95)])
    clipped = w.transform(train[["f1", "f2"]].to_numpy())
    np.testing.assert_allclose(imp.statistics_, np.nanmedian(clipped, axis=0))
    assert (w.transform(test[["f1", "f2"]].to_numpy())[:, 0] == w.upper_[0]).all()
    proba, score = predict(pipe, test[["f1", "f2"]])
    np.testing.assert_allclose(proba.sum(axis=1), 1, atol=1e-6)
    np.testing.assert_allclose(score, proba[:, 2] - proba[:, 0])


def test_winsorizer_keeps_nan_and_all_nan_columns():
    w = Winsorizer(0.1).fit(np.array([[1.0, np.nan], [2.0, np.nan], [3.0, np.nan]]))
    out = w.transform(np.array([[100.0, np.nan], [np.nan, 5.0]]))
    assert out[0, 0] == pytest.approx(np.nanquantile([1, 2, 3], 0.9)) and np.isnan(out[1, 0]) and out[1, 1] == 5.0


def test_median_imputer_equals_sklearns_simple_imputer_bit_for_bit():
    from sklearn.impute import SimpleImputer

    from qt_assets.research.training import MedianImputer

    rng = np.random.default_rng(3)
    for n in (1, 2, 7, 1000, 1001):  # odd and even counts: the even median averages the two middle values
        a = rng.standard_normal((n, 6)) * 10.0 ** rng.integers(-8, 8, 6)
        a[rng.random((n, 6)) < 0.3] = np.nan
        a[:, 1] = np.round(a[:, 1], 1)  # ties
        a[:, 2] = np.nan  # a column with no value
        ref = SimpleImputer(strategy="median", keep_empty_features=True).fit(a)
        mine = MedianImputer().fit(a)
        np.testing.assert_array_equal(mine.statistics_, ref.statistics_)
        b = a[::-1].copy()
        np.testing.assert_array_equal(mine.transform(b), ref.transform(b))
        assert np.isnan(b[:, 2]).all()  # the input is not changed
    a[0, 3] = np.inf  # both refuse an infinite value
    with pytest.raises(ValueError, match="infinity"):
        SimpleImputer(strategy="median", keep_empty_features=True).fit(a)
    with pytest.raises(ValueError, match=r"infinite values in feature column\(s\) \[3\]"):
        MedianImputer().fit(a)


@pytest.mark.parametrize("objective", ["classifier", "regressor"])
def test_the_model_is_the_same_for_any_thread_count(objective):
    """xgboost's CPU hist builds the same booster at 1 and 2 threads (measured to 1.8 M rows, BENCHMARKS.md);
    fit_pipeline relies on it to use every core on large fits. Fails on an xgboost that breaks it."""
    import hashlib
    import pickle

    rng = np.random.default_rng(5)
    n = 20_000
    f = pd.DataFrame(rng.standard_normal((n, 8)), columns=[f"x{i}" for i in range(8)])
    f[f.abs() > 2.2] = np.nan
    f["x7"] = f["x7"].round(1)
    f["fwd_return"] = 0.01 * f["x0"].fillna(0) + 0.02 * rng.standard_normal(n)
    f["label_class"] = np.digitize(f["fwd_return"], [-0.01, 0.01])
    cols = [f"x{i}" for i in range(8)]
    params = {"n_estimators": 40, "max_depth": 6, "learning_rate": 0.2, "subsample": 0.7, "colsample_bytree": 0.6,
              "min_child_weight": 2.0, "reg_lambda": 0.5}
    digests = set()
    for threads in (1, 2, 3):
        pipe = fit_pipeline(make_pipeline(objective, params, 7, 0.01, early_stopping=5), f.iloc[:15_000], cols,
                            objective, valid=f.iloc[15_000:], n_jobs=threads)
        booster = bytes(pipe.named_steps["model"].get_booster().save_raw("json"))
        digests.add((hashlib.sha256(booster).hexdigest(), hashlib.sha256(pickle.dumps(pipe)).hexdigest()))
    assert len(digests) == 1, digests


def test_auto_threads_use_the_idle_cores_only_on_large_fits(monkeypatch):
    import os

    from qt_assets.research import training
    from qt_assets.research.training import AUTO_THREADS_MIN_ROWS, fit_threads

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2})
    others = iter([0.1, 1.2, 5.0, None])
    monkeypatch.setattr(training, "others_busy_cores", lambda interval=0.1: next(others))
    # nothing else running: every core (also right after this process's own multi-thread fits)
    assert fit_threads(AUTO_THREADS_MIN_ROWS - 1) == 1 and fit_threads(AUTO_THREADS_MIN_ROWS) == 3
    assert fit_threads(AUTO_THREADS_MIN_ROWS) == 2  # another process keeps a core busy
    assert fit_threads(AUTO_THREADS_MIN_ROWS) == 1  # an overloaded machine: still one thread
    monkeypatch.setattr(os, "getloadavg", lambda: (2.2, 1.0, 1.0))  # no /proc/stat: the load average less one
    assert fit_threads(AUTO_THREADS_MIN_ROWS) == 2
    assert fit_threads(10, n_jobs=2) == 2 and fit_threads(10**7, n_jobs=1) == 1


def test_others_busy_cores_counts_other_processes_not_this_one(monkeypatch):
    """The arithmetic on two /proc/stat samples, then the real thing: a spinning child process is counted, this
    process's own spinning threads are not (the load average counted them: the bug this replaced)."""
    import os
    import subprocess
    import sys
    import threading
    import time

    from qt_assets.research import training

    real = training._cpu_sample
    samples = iter([(100.0, 5.0, 10.0), (101.9, 5.8, 11.0)])  # 1.9 CPU-s on the cores, 0.8 of them ours
    monkeypatch.setattr(training, "_cpu_sample", lambda: next(samples))
    assert abs(training.others_busy_cores(0) - 1.1) < 1e-9
    monkeypatch.setattr(training, "_cpu_sample", lambda: None)
    assert training.others_busy_cores(0) is None
    monkeypatch.setattr(training, "_cpu_sample", real)

    spin = subprocess.Popen([sys.executable, "-c", "import time\nt=time.time()\nwhile time.time()-t<20: pass"])
    try:
        time.sleep(0.3)
        assert training.others_busy_cores(0.5) > 0.6  # a busy core of another process
    finally:
        spin.kill()
        spin.wait()
    stop = threading.Event()

    def burn():  # numpy releases the GIL: this process keeps (up to) every core busy itself
        a = np.random.default_rng(0).random((400, 400))
        while not stop.is_set():
            a @ a

    threads = [threading.Thread(target=burn) for _ in range(len(os.sched_getaffinity(0)))]
    for t in threads:
        t.start()
    try:
        time.sleep(0.3)
        own = training.others_busy_cores(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join()
    # other tests may run beside this one (pytest-xdist): allow one busy core of theirs, not this process's
    assert own < len(os.sched_getaffinity(0)) - 0.5, own


def test_regressor_objective_predicts_returns():
    f = synthetic_frame()
    pipe = fit_pipeline(make_pipeline("regressor", {"n_estimators": 20}, 7, 0.01), f.dropna(), ["f1", "f2"],
                        "regressor")
    proba, score = predict(pipe, f[["f1", "f2"]])
    assert proba is None and score.shape == (len(f),) and np.abs(score).max() < 0.2


def test_tuning_is_seeded_resumable_and_deterministic(tmp_path):
    from qt_assets.research.tuning import tune

    f = synthetic_frame().dropna(subset=["label_class"])
    folds = walk_forward_folds(f, 3, 100, 5)
    kw = dict(objective="classifier", seed=11, winsorize=0.01, metric="rank_ic", timeout_s=None,
              base_params={"n_estimators": 50})

    def run(storage, n, name="s"):
        return tune(f, folds, ["f1", "f2"], n_trials=n, storage=storage, study_name=name, **kw)

    a_params, a_scores, a_study = run(f"sqlite:///{tmp_path / 'a.db'}", 5)
    b_params, b_scores, _ = run(f"sqlite:///{tmp_path / 'b.db'}", 5)
    assert a_params == b_params and a_scores == b_scores  # same seed, same data -> same search
    # resume: an interrupted study (2 of 5 trials done) finishes with the same trials as an uninterrupted one
    run(f"sqlite:///{tmp_path / 'c.db'}", 2)
    c_params, c_scores, c_study = run(f"sqlite:///{tmp_path / 'c.db'}", 5)
    assert len(c_study.trials) == 5 and c_params == a_params
    # a finished study is not repeated
    _, _, again = run(f"sqlite:///{tmp_path / 'a.db'}", 5)
    assert len(again.trials) == 5
    # the same params on the same data give identical predictions
    p1 = fit_pipeline(make_pipeline("classifier", a_params, 11, 0.01), f, ["f1", "f2"], "classifier")
    p2 = fit_pipeline(make_pipeline("classifier", b_params, 11, 0.01), f, ["f1", "f2"], "classifier")
    np.testing.assert_array_equal(p1.predict_proba(f[["f1", "f2"]]), p2.predict_proba(f[["f1", "f2"]]))


def test_the_best_trials_fold_metrics_are_what_a_refit_gives(tmp_path):
    """trained_model reports every metric per fold from the best trial instead of refitting each fold."""
    from qt_assets.research.evaluation import evaluate_model
    from qt_assets.research.tuning import best_fold_metrics, tune

    f = synthetic_frame().dropna(subset=["label_class"])
    folds = walk_forward_folds(f, 3, 100, 5)
    params, scores, study = tune(f, folds, ["f1", "f2"], objective="classifier", seed=3, winsorize=0.01,
                                 metric="rank_ic", n_trials=4, timeout_s=None, storage=f"sqlite:///{tmp_path / 's.db'}",
                                 study_name="s", base_params={"n_estimators": 30})
    tuned = best_fold_metrics(study, len(folds))
    assert tuned is not None and len(tuned) == len(folds)
    for fold in folds:
        pipe = fit_pipeline(make_pipeline("classifier", params, 3, 0.01), f.loc[fold.fit_index], ["f1", "f2"],
                            "classifier")
        refit = evaluate_model(pipe, f.loc[fold.val_index], ["f1", "f2"])
        assert tuned[fold.k].keys() == refit.keys()
        for k, v in refit.items():
            assert (np.isnan(v) and np.isnan(tuned[fold.k][k])) or tuned[fold.k][k] == v, (fold.k, k)
    assert best_fold_metrics(study, len(folds) + 1) is None and best_fold_metrics(None, 3) is None


def test_promotion_gate_both_ways():
    g = SimpleNamespace(min_ic=0.02, min_balanced_accuracy=None, vs_champion=["rank_ic", "sharpe"])
    good = {"rank_ic": 0.05, "balanced_accuracy": 0.4, "sharpe": 1.2}
    ok, why = gate(good, None, g)
    assert ok and why == ["rank_ic 0.0500 >= 0.02", "no champion to compare with"]
    ok, why = gate({**good, "rank_ic": 0.01}, None, g)
    assert not ok and why[0] == "rank_ic 0.0100 < 0.02"
    champ = {"rank_ic": 0.04, "balanced_accuracy": 0.4, "sharpe": 1.5}
    ok, why = gate(good, champ, g, "3")
    assert not ok and why[-1] == "sharpe 1.2000 < champion v3's 1.5000"
    ok, why = gate({**good, "sharpe": 1.5}, champ, g, "3")
    assert ok and why[1:] == ["rank_ic 0.0500 >= champion v3's 0.0400", "sharpe 1.5000 >= champion v3's 1.5000"]
    ok, _ = gate({**good, "rank_ic": float("nan")}, champ, SimpleNamespace(min_ic=None, min_balanced_accuracy=None,
                                                                        vs_champion=["rank_ic"]), "3")
    assert not ok  # an undefined challenger metric never passes


def _materialise(short_run, keys, partition=None, model_registry=None):
    from qt_jobs.definitions import load_definitions

    if model_registry is not None:  # the agents' decisions with another registry
        from qt_assets.agents.assets import build_agent_assets
        from qt_assets.features.assets import available_features
        from qt_assets.market_data.assets import sessions_partitions
        from qt_resources.config import load_config
        from qt_resources.warehouse import DuckDBWarehouse

        cfg = load_config(str(short_run["config"]), known_features=available_features())
        assets = build_agent_assets(cfg, sessions_partitions(cfg), dg.AssetKey("features_daily"))
        from qt_resources.llm import NoLLM

        return dg.materialize(assets, partition_key=partition, instance=short_run["instance"],
                              selection=[dg.AssetKey(k) for k in keys],
                              resources={"warehouse": DuckDBWarehouse(root=str(cfg.warehouse_dir)),
                                         "model_registry": model_registry, "llm": NoLLM()})
    defs = load_definitions(str(short_run["config"]))
    job = defs.resolve_job_def("full_graph")
    tags = {"dagster/partition": partition} if partition else {
        "dagster/asset_partition_range_start": short_run["keys"][0],
        "dagster/asset_partition_range_end": short_run["keys"][-1]}
    return job.execute_in_process(instance=short_run["instance"], tags=tags,
                                  asset_selection=[dg.AssetKey(k) for k in keys])


@ON_SHORT_RUN
def test_retraining_the_same_data_resumes_the_study_and_the_gate_respects_a_hand_demotion(short_run):
    """A second training on unchanged data: the Optuna study is resumed (no new trial), the new version's
    test scores equal v1's (determinism), the gate promotes it (Sharpe equal to the champion's). Moving the
    alias back by hand and re-running the promotion leaves the hand decision alone."""
    from mlflow import MlflowClient

    from qt_resources.warehouse import DuckDBWarehouse

    wh = DuckDBWarehouse(root=str(short_run["tmp"] / "warehouse"))
    v1_scores = wh.read_table("research/test_scores")
    res = _materialise(short_run, ["trained_model", "model_promotion"])
    assert res.success
    md = res.asset_materializations_for_node("trained_model")[0].metadata
    assert md["model_version"].value == "2" and md["optuna_trials"].value == 4
    v2_scores = wh.read_table("research/test_scores")
    np.testing.assert_array_equal(v1_scores["score"].to_numpy(), v2_scores["score"].to_numpy())
    uri = f"sqlite:///{short_run['tmp'] / 'mlflow' / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    v2 = client.get_model_version("qtos_xgb", "2")
    assert v2.tags["promotion_decision"] == "promoted", v2.tags
    assert "sharpe" in v2.tags["promotion_reason"] and "champion v1" in v2.tags["promotion_reason"]
    assert str(client.get_model_version_by_alias("qtos_xgb", "champion").version) == "2"
    assert set(wh.read_table(TRAINING_SET)["part"]) == {"train", "gate", "test"}

    assert client.get_registered_model("qtos_xgb").tags["qtos.champion"] == "2"  # the gate's champion, recorded
    client.set_registered_model_alias("qtos_xgb", "champion", "1")  # a human demotes v2 in the MLflow UI
    res = _materialise(short_run, ["model_promotion"])
    md = res.asset_materializations_for_node("model_promotion")[0].metadata
    assert md["decision"].value == "unchanged"
    assert str(client.get_model_version_by_alias("qtos_xgb", "champion").version) == "1"
    # the hand move is recorded: in the metadata and on the version (previous champion, when, by what)
    assert md["champion_by_hand"].value["version"] == "1" and md["champion_by_hand"].value["previous_champion"] == "2"
    assert md["reasons"].value[0].startswith("champion moved by hand to v1 (previous v2")
    assert "champion_by_hand" in client.get_model_version("qtos_xgb", "1").tags
    client.set_registered_model_alias("qtos_xgb", "champion", "2")


@ON_SHORT_RUN
def test_without_a_champion_the_agent_holds_and_says_why(short_run, tmp_path):
    from qt_resources.registry import MlflowRegistry
    from qt_resources.warehouse import DuckDBWarehouse

    last = short_run["keys"][-1]
    agent = [("decisions", "xgb_daily"), ("guarded_targets", "xgb_daily")]  # one multi-asset
    res = _materialise(short_run, agent, partition=last,
                       model_registry=MlflowRegistry(store_dir=str(tmp_path / "empty_mlflow")))
    assert res.success
    wh = DuckDBWarehouse(root=str(short_run["tmp"] / "warehouse"))
    d = wh.read_partitions("decisions/xgb_daily", [last])
    assert (d["target_weight"] == 0).all() and d["reason"].str.contains("no champion model").all()
    assert d["reason"].str.contains("nothing trained yet").all() and (d["model_version"] == "none").all()
    g = wh.read_partitions("guarded_targets/xgb_daily", [last])
    assert (g["target_weight"] == 0).all()  # flat intents: the guardian closes what the book held
    assert _materialise(short_run, agent, partition=last).success  # restore the real ones


def test_rolling_split_moves_with_the_data():
    """split.test_sessions: the last N sessions are the test window; training ends an embargo before it."""
    from qt_assets.research.dataset import split_cuts
    from qt_resources.config import ProjectConfig
    from tests.conftest import SHORT_WINDOW, repo_config

    raw = {**repo_config(), **SHORT_WINDOW}
    raw["research"] = {**raw["research"], "split": {"train_end": "2010-12-31", "embargo": 5, "test_sessions": 60}}
    cfg = ProjectConfig.model_validate(raw)
    bad = {**raw, "research": {**raw["research"], "split": {**raw["research"]["split"], "valid_end": "2011-03-31"}}}
    assert "research.split.valid_end: not supported with test_sessions (rolling split)" in \
        ProjectConfig.model_validate(bad).cross_check()
    f = synthetic_frame(300)
    s = sorted(f["session"].unique())
    for data in (s[:250], s):  # more data -> the windows move forward
        train_end, valid_end = split_cuts(cfg.research.split, 5, data)
        assert (train_end, valid_end) == (data[-66], None)
        split = time_split(f[f["session"].isin(data)], train_end, valid_end, 5)
        assert split.oos_start == data[-60] and split.train["label_session"].max() == data[-66]
    with pytest.raises(ValueError, match="test_sessions: 60"):
        split_cuts(cfg.research.split, 5, s[:60])
