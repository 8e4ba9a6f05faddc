"""The local MLflow store moves with the project: models load from the store they are in, never from where the
store was when they were logged, and a missing model file is named."""

import shutil

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from qt_resources.registry import MlflowRegistry


def _store_with_a_model(root):
    import mlflow

    reg = MlflowRegistry(store_dir=str(root), experiment="reloc")
    exp = reg.setup()
    X = np.random.default_rng(0).random((40, 2))
    model = LogisticRegression().fit(X, [0, 1] * 20)
    with mlflow.start_run(experiment_id=exp):
        mlflow.sklearn.log_model(model, name="model", registered_model_name="reloc_m",
                                 serialization_format="cloudpickle")
    reg.client().set_registered_model_alias("reloc_m", "champion", "1")
    return X, model.predict_proba(X)


def test_a_copied_store_loads_its_own_files_after_the_original_is_gone(tmp_path):
    X, expected = _store_with_a_model(tmp_path / "a" / "mlflow")
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    shutil.rmtree(tmp_path / "a")
    moved = MlflowRegistry(store_dir=str(tmp_path / "b" / "mlflow"), experiment="reloc")
    for kw in ({"alias": "champion"}, {"version": "1"}):
        model, mv = moved.load_model("reloc_m", **kw)
        assert str(mv.version) == "1" and np.array_equal(model.predict_proba(X), expected)
    assert str(moved.model_dir(mv)).startswith(str((tmp_path / "b").resolve()))


def test_a_copy_does_not_read_the_originals_files(tmp_path):
    _store_with_a_model(tmp_path / "a" / "mlflow")
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    copy = MlflowRegistry(store_dir=str(tmp_path / "b" / "mlflow"), experiment="reloc")
    _, mv = copy.load_model("reloc_m")
    assert str(copy.model_dir(mv)).startswith(str((tmp_path / "b").resolve()))
    shutil.rmtree(copy.model_dir(mv))  # the copy's files gone, the original's still there: named, not used
    with pytest.raises(FileNotFoundError, match=r"MLflow model 'reloc_m' version 1: its files are missing at .*/b/"):
        copy.load_model("reloc_m")


def test_a_champion_moved_by_hand_is_recorded_on_the_version_not_left_rejected(tmp_path):
    """The gate promoted v1 and rejected v2; a user moves ``champion`` to v2 in the MLflow UI. The next check
    records on v2 who (as far as MLflow knows), when and the previous champion, relabels its decision, and says
    nothing more on the next check; a move back to v1 is recorded on v1 (its gate decision kept)."""
    import json

    from qt_resources.registry import BY_HAND, reconcile_champion, record_champion

    reg = MlflowRegistry(store_dir=str(tmp_path / "mlflow"), experiment="hand")
    reg.setup()
    c = reg.client()
    c.create_registered_model("m")
    for _ in range(2):
        c.create_model_version("m", source=str(tmp_path / "nowhere"))
    c.set_registered_model_alias("m", "champion", "1")  # what promote() does when v1 passes the gate
    record_champion(c, "m", "1", "model_promotion")
    c.set_model_version_tag("m", "1", "promotion_decision", "promoted")
    c.set_model_version_tag("m", "2", "promotion_decision", "rejected")
    assert reconcile_champion(c, "m", "test") is None  # the gate's own champion: nothing to record

    c.set_registered_model_alias("m", "champion", "2")  # by hand
    rec = reconcile_champion(c, "m", "champion_changed sensor", now="2026-12-08T03:00:00+00:00")
    assert rec["version"] == "2" and rec["previous_champion"] == "1" and rec["gate_decision"] == "rejected"
    assert rec["detected_at"] == "2026-12-08T03:00:00+00:00" and rec["detected_by"] == "champion_changed sensor"
    v2 = c.get_model_version("m", "2").tags
    assert v2["promotion_decision"] == BY_HAND and v2["gate_decision"] == "rejected"
    assert json.loads(v2[BY_HAND]) == rec
    assert c.get_registered_model("m").tags["qtos.champion_set_by"] == "by hand"
    assert reconcile_champion(c, "m", "model_promotion") is None  # recorded once

    c.set_registered_model_alias("m", "champion", "1")  # and back, by hand
    back = reconcile_champion(c, "m", "model_promotion")
    assert back["previous_champion"] == "2" and back["gate_decision"] == "promoted"
    assert c.get_model_version("m", "1").tags["promotion_decision"] == "promoted"  # its gate verdict stands


def test_a_registry_from_before_the_champion_tags_is_adopted_silently(tmp_path):
    from qt_resources.registry import reconcile_champion

    reg = MlflowRegistry(store_dir=str(tmp_path / "mlflow"), experiment="old")
    reg.setup()
    c = reg.client()
    c.create_registered_model("m")
    c.create_model_version("m", source=str(tmp_path / "nowhere"))
    assert reconcile_champion(c, "m", "test") is None  # no champion yet
    c.set_registered_model_alias("m", "champion", "1")
    c.set_model_version_tag("m", "1", "promotion_decision", "promoted")
    assert reconcile_champion(c, "m", "test") is None
    assert c.get_registered_model("m").tags["qtos.champion"] == "1"
