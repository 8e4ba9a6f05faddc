"""Features and labels: the dbt project ``dbt_features/`` run through dagster-dbt against the warehouse's
DuckDB. dbt models become assets (group ``features``), dbt tests become asset checks beside them."""


import fcntl
import json
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import dagster as dg
import yaml
from dagster_dbt import DagsterDbtTranslator, DbtCliResource, DbtProject, dbt_assets

from qt_resources.config import REPO_ROOT, ProjectConfig
from qt_resources.warehouse import DuckDBWarehouse

DBT_DIR = REPO_ROOT / "dbt_features"
FEATURE_KEYS = ("symbol", "session")
# the dbt model that logs the warehouse's new, changed and removed partition files (incremental staging)
FILE_LOG = dg.AssetKey("warehouse_files")


def available_features() -> list[str]:
    """Feature names documented on the ``features_daily`` dbt model (the config may only name these)."""
    schema = yaml.safe_load((DBT_DIR / "models" / "marts" / "schema.yml").read_text())
    model = next(m for m in schema["models"] if m["name"] == "features_daily")
    return [c["name"] for c in model["columns"]
            if c["name"] not in FEATURE_KEYS and (c.get("meta") or {}).get("feature", True)]


def feature_code_version() -> str:
    """Hash of the code that computes the feature library's tables (every model's SQL or Python, the macros, and the
    kernels features_daily calls): passed to dbt as ``features_code_version``. features_daily and labels are
    incremental and put it in their row hashes, so a run after a code change recomputes every row."""
    import hashlib

    files = sorted([*DBT_DIR.glob("models/**/*.sql"), *DBT_DIR.glob("models/**/*.py"),
                    *DBT_DIR.glob("macros/**/*.sql")]) + [Path(__file__).with_name("kernels.py")]
    h = hashlib.sha256()
    for f in files:
        name = f.relative_to(DBT_DIR) if f.is_relative_to(DBT_DIR) else f.relative_to(DBT_DIR.parent)
        h.update(name.as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:16]


class DbtBuildConfig(dg.Config):
    full_refresh: bool = False
    """Rebuild the incremental models (features_daily) from scratch instead of from the first changed session."""


@contextmanager
def dbt_env(warehouse_root: Path) -> Iterator[None]:
    """Environment the dbt profile/sources read (the subprocess inherits os.environ)."""
    new = {"QTOS_WAREHOUSE_DIR": str(warehouse_root), "QTOS_DUCKDB_PATH": str(warehouse_root / "qtos.duckdb"),
           "DBT_SEND_ANONYMOUS_USAGE_STATS": "false", "DO_NOT_TRACK": "true"}
    old = {k: os.environ.get(k) for k in new}
    os.environ.update(new)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def dbt_executable() -> str:
    """dbt from this interpreter's environment, so a non-activated venv works too."""
    local = Path(sys.executable).parent / "dbt"
    return str(local) if local.exists() else "dbt"


def dbt_resource(project: DbtProject) -> DbtCliResource:
    return DbtCliResource(project_dir=project, dbt_executable=dbt_executable())


def _sources_newer_than(path: Path) -> bool:
    if not path.exists():
        return True
    mtime = path.stat().st_mtime
    watched = [DBT_DIR / "dbt_project.yml", DBT_DIR / "profiles.yml",
               *DBT_DIR.glob("models/**/*"), *DBT_DIR.glob("macros/**/*")]
    return any(p.stat().st_mtime > mtime for p in watched if p.is_file())


def dbt_project(warehouse_root: Path) -> DbtProject:
    """The dbt project, with a manifest that is (re)parsed at load time when it is missing or the SQL/YAML changed
    (the first load after a clone parses, ~7 s; later loads reuse it). Processes loading at once (pytest's workers,
    a code server and the daemon) parse one at a time: the others wait, then find the manifest fresh."""
    project = DbtProject(project_dir=DBT_DIR)
    project.manifest_path.parent.mkdir(parents=True, exist_ok=True)
    with open(project.manifest_path.parent / ".parse.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_SH)  # not while another process writes the manifest
        if _sources_newer_than(project.manifest_path):
            fcntl.flock(lock, fcntl.LOCK_EX)
            if _sources_newer_than(project.manifest_path):
                with dbt_env(warehouse_root):
                    dbt_resource(project).cli(["parse", "--quiet"], target_path=Path("target")).wait()
    return project


WARMUP = dg.AssetKey("price_warmup")


class QtosDbtTranslator(DagsterDbtTranslator):
    def get_group_name(self, dbt_resource_props) -> str | None:
        return "features"

    def get_asset_spec(self, manifest, unique_id, project):
        """The file log reads the warm-up sessions' files too (the asset price_warmup writes them beside the
        partitions): it runs after it."""
        spec = super().get_asset_spec(manifest, unique_id, project)
        if spec.key == FILE_LOG:
            spec = spec.merge_attributes(deps=[WARMUP])
        return spec


def build_feature_assets(cfg: ProjectConfig, project: DbtProject) -> list:
    dbt_vars = json.dumps({"label_horizon": cfg.label.horizon, "label_up": cfg.label.up,
                           "label_down": cfg.label.down, "label_price": cfg.label.price,
                           "label_kind": cfg.label.kind, "label_vol_k": cfg.label.vol_k})

    @dbt_assets(
        manifest=project.manifest_path,
        project=project,
        dagster_dbt_translator=QtosDbtTranslator(),
        backfill_policy=dg.BackfillPolicy.single_run(),
        name="dbt_features",
    )
    def dbt_features(context: dg.AssetExecutionContext, config: DbtBuildConfig, dbt: DbtCliResource,
                     warehouse: DuckDBWarehouse):
        run_vars = json.dumps({**json.loads(dbt_vars), "features_code_version": feature_code_version()})
        args = ["build", "--vars", run_vars, *(["--full-refresh"] if config.full_refresh else [])]
        with dbt_env(warehouse.root_path):
            if FILE_LOG not in context.selected_asset_keys:
                # a subset without the file log (e.g. one model picked in the UI): log the warehouse's file changes
                # first, or the staging models would not see them (dbt_features/macros/changes.sql)
                dbt.cli(["run", "--select", FILE_LOG.path[-1], "--vars", run_vars], manifest=project.manifest_path,
                        raise_on_error=True).wait()
            yield from dbt.cli(args, context=context).stream()

    return [dbt_features]


if __name__ == "__main__":
    from qt_resources.config import load_config

    print(f"dbt manifest: {dbt_project(load_config().warehouse_dir).manifest_path}")
