"""The production stack for real, on loopback: the production instance (deploy/production/dagster.yaml) on the
real PostgreSQL, `dagster-webserver` and `dagster-daemon` as processes, the workspace's code location; a job
launched through `DagsterGraphQLClient` is queued, dequeued by the daemon and succeeds."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import dagster as dg
import pytest

from tests.conftest import REPO, SHORT_WINDOW, write_config
from tests.pg import (PG_HOST, PG_PORT, PG_USER, _stop, _tail, drop_database, ensure_postgres, free_port,
                      fresh_database, listening_addresses)

BIN = Path(sys.executable).parent


def _wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            pytest.fail(f"{proc.args[0]} exited with {proc.returncode}; log {log}:\n{_tail(log)}", pytrace=False)
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        if time.monotonic() > deadline:
            pytest.fail(f"{url} not up after {timeout:.0f}s; log {log}:\n{_tail(log)}", pytrace=False)
        time.sleep(0.5)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    ensure_postgres()
    tmp = tmp_path_factory.mktemp("stack")
    home = tmp / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "deploy" / "production" / "dagster.yaml", home / "dagster.yaml")
    url = fresh_database("stack")
    env = {**os.environ, "DAGSTER_HOME": str(home), "DAGSTER_PG_HOST": PG_HOST, "DAGSTER_PG_PORT": str(PG_PORT),
           "DAGSTER_PG_USER": PG_USER, "DAGSTER_PG_PASSWORD": "unused-with-trust-auth",
           "DAGSTER_PG_DB": url.rsplit("/", 1)[1], "QTOS_CONFIG": str(write_config(tmp, **SHORT_WINDOW)),
           "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    port = free_port()
    procs = []
    try:
        for name, cmd in (("daemon", [str(BIN / "dagster-daemon"), "run", "-w", str(REPO / "workspace.yaml")]),
                          ("webserver", [str(BIN / "dagster-webserver"), "-h", "127.0.0.1", "-p", str(port),
                                         "-w", str(REPO / "workspace.yaml")])):
            log = tmp / f"{name}.log"
            with open(log, "wb") as f:
                procs.append((subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                               env=env, cwd=tmp, start_new_session=True), log))
        web, web_log = procs[1]
        _wait_http(f"http://127.0.0.1:{port}/server_info", web, web_log, 120)
        yield {"port": port, "tmp": tmp, "env": env, "db": url.rsplit("/", 1)[1],
               "logs": [log for _, log in procs]}
    finally:
        for p, _ in procs:
            _stop(p)
        drop_database(url)


def test_webserver_listens_on_loopback_only(stack):
    assert listening_addresses(stack["port"]) == {"127.0.0.1"}


def test_the_code_location_loads_without_errors(stack):
    import json

    q = json.dumps({"query": "{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus "
                             "locationOrLoadError { __typename ... on PythonError { message } } } } } }"})
    req = urllib.request.Request(f"http://127.0.0.1:{stack['port']}/graphql", data=q.encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        entries = json.load(r)["data"]["workspaceOrError"]["locationEntries"]
    assert [(e["name"], e["loadStatus"], e["locationOrLoadError"]["__typename"]) for e in entries] == \
        [("qtos", "LOADED", "RepositoryLocation")], entries


def test_a_job_launched_through_graphql_is_queued_then_run_by_the_daemon(stack):
    from dagster_graphql import DagsterGraphQLClient

    from tests.pg import _connect

    client = DagsterGraphQLClient("127.0.0.1", port_number=stack["port"])
    run_id = client.submit_job_execution("prices_backfill", repository_location_name="qtos",
                                         repository_name="__repository__", tags={"dagster/partition": "2010-03-02"})
    seen, deadline = [], time.monotonic() + 240
    while True:
        status = client.get_run_status(run_id).value
        if not seen or seen[-1] != status:
            seen.append(status)
        if status in ("SUCCESS", "FAILURE", "CANCELED"):
            break
        assert time.monotonic() < deadline, f"run {run_id} still {status}; daemon log:\n{_tail(stack['logs'][0])}"
        time.sleep(0.5)
    assert status == "SUCCESS", f"{seen}; daemon log:\n{_tail(stack['logs'][0])}"
    assert seen[0] in ("QUEUED", "STARTING", "STARTED")  # submitted to the queue, not run by the webserver
    with _connect(stack["db"]) as con, con.cursor() as cur:  # the run lives in the production Postgres
        cur.execute("select status from runs where run_id = %s", (run_id,))
        assert cur.fetchone() == ("SUCCESS",)
        cur.execute("select distinct dagster_event_type from event_logs where run_id = %s", (run_id,))
        kinds = {k for (k,) in cur.fetchall()}
    assert {dg.DagsterEventType.RUN_ENQUEUED.value, dg.DagsterEventType.RUN_SUCCESS.value} <= kinds, kinds
    assert (stack["tmp"] / "warehouse" / "prices" / "session=2010-03-02" / "data.parquet").exists()
