"""Secret scan: a full run of the graph (CLI, persistent instance with captured compute logs) whose resources hold
real-looking secrets -- the LLM key (news scorer, an LLM agent, the journal narrative, against our chat server)
and the Alpaca keys (the broker, against our trading server) -- then every log, run/event record, metadata
value, MLflow param/tag and stored file is searched for the secret values."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd

from tests.alpaca_trading_server import AlpacaTradingServer
from tests.conftest import REPO, SHORT_WINDOW, repo_config, write_config
from tests.news_servers import serve_openai

BIN = Path(sys.executable).parent


def _texts(root: Path):
    """(path, text) of every file under root; Parquet read back (its pages may be compressed)."""
    for p in sorted(root.rglob("*")):
        if not p.is_file():
            continue
        if p.suffix == ".parquet":
            yield p, pd.read_parquet(p).to_csv(index=False)
        else:
            yield p, p.read_bytes().decode("utf-8", errors="replace")


def test_no_secret_value_appears_in_logs_metadata_mlflow_or_files(tmp_path):
    tag = os.urandom(8).hex()
    secrets = {"OPENAI_API_KEY": f"sk-scan-{tag}", "ALPACA_API_KEY": f"PKSCAN{tag.upper()}",
               "ALPACA_SECRET_KEY": f"scan-secret-{tag}"}
    llm = serve_openai(api_key=secrets["OPENAI_API_KEY"])
    try:
        with AlpacaTradingServer(key=secrets["ALPACA_API_KEY"], secret=secrets["ALPACA_SECRET_KEY"]) as alpaca:
            shutil.copytree(REPO / "prompts", tmp_path / "prompts")
            agents = [*repo_config()["agents"],
                      {"name": "scribe", "kind": "llm", "prompt": "prompts/llm_agent.md",
                       "context": ["market_data", "positions", "news", "memory"]}]
            cfg = write_config(tmp_path, **SHORT_WINDOW, agents=agents, news={"provider": "bundled", "scorer": "llm"},
                               llm={"kind": "openai", "base_url": f"{llm.url}/v1", "model": "gpt-scan"},
                               broker={"kind": "alpaca", "alpaca": {"paper_url": alpaca.url, "timeout_seconds": 5}})
            home = tmp_path / "dagster_home"
            home.mkdir()
            (home / "dagster.yaml").write_text((REPO / "dagster.yaml").read_text())
            env = {**os.environ, **secrets, "DAGSTER_HOME": str(home), "QTOS_CONFIG": str(cfg)}
            r = subprocess.run([str(BIN / "dagster"), "job", "execute", "-m", "qt_jobs.definitions", "-j", "full_graph",
                                "--tags", json.dumps({"dagster/asset_partition_range_start": "2010-03-01",
                                                      "dagster/asset_partition_range_end": "2011-06-30"})],
                               env=env, cwd=REPO, capture_output=True, text=True, timeout=1200)
            assert r.returncode == 0, r.stderr[-4000:]
            # the secrets were really used: both servers authenticated calls with them
            assert llm.requests and {q["headers"]["authorization"] for q in llm.requests} == \
                {f"Bearer {secrets['OPENAI_API_KEY']}"}
            assert alpaca.count("GET", "/v2/") > 0 and {q["key"] for q in alpaca.requests} == {secrets["ALPACA_API_KEY"]}
    finally:
        llm.close()

    found = []
    blobs = [("cli stdout", r.stdout), ("cli stderr", r.stderr)]
    blobs += [(str(p.relative_to(tmp_path)), t) for p, t in _texts(tmp_path)]
    import dagster as dg

    inst = dg.DagsterInstance.from_config(str(home))
    llm_checks = []
    try:
        for rec in inst.get_run_records():
            blobs.append((f"run {rec.dagster_run.run_id}", dg.serialize_value(rec.dagster_run)))
            events = inst.all_logs(rec.dagster_run.run_id)
            assert any(e.dagster_event and e.dagster_event.event_type_value == "ASSET_MATERIALIZATION" for e in events)
            blobs += [(f"run {rec.dagster_run.run_id} event", dg.serialize_value(e)) for e in events]
            llm_checks += [e.dagster_event.event_specific_data for e in events if e.dagster_event
                           and e.dagster_event.event_type_value == "ASSET_CHECK_EVALUATION"
                           and e.dagster_event.event_specific_data.check_name == "llm_calls_answered"]
    finally:
        inst.dispose()
    # the LLM agent's run shows whether its calls were answered (the fake answers sentiment JSON, not decisions:
    # every call fails its schema, the decisions hold, and the check says so instead of a count in metadata)
    assert [c.asset_key.to_user_string() for c in llm_checks] == ["decisions/scribe"]
    assert not llm_checks[0].passed and llm_checks[0].metadata["decisions_without_answer"].value > 0
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}")
    runs = [run for e in client.search_experiments() for run in client.search_runs([e.experiment_id])]
    assert runs, "the full run logged to MLflow"
    blobs += [(f"mlflow run {run.info.run_id}", json.dumps([run.data.params, run.data.tags])) for run in runs]
    for name, value in secrets.items():
        found += [f"{name} in {where}" for where, text in blobs if value in text]
    assert not found, found
    assert len(blobs) > 100  # the scan did look at something
