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
