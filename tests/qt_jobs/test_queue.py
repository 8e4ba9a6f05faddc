"""The production queue enforces "one order-placing run at a time" for real: webserver + daemon on the
production instance (real PostgreSQL); two runs holding an asset of the `broker` pool are submitted, the second
waits QUEUED until the first is done, while a run outside the pool goes ahead."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import pytest
import yaml

from tests.conftest import REPO
from tests.pg import PG_HOST, PG_PORT, PG_USER, _stop, drop_database, ensure_postgres, free_port, fresh_database
from tests.qt_jobs.test_stack import BIN, _wait_http


@pytest.fixture
def queue_stack(tmp_path):
    ensure_postgres()
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(REPO / "deploy" / "production" / "dagster.yaml", home / "dagster.yaml")
    ws = tmp_path / "workspace.yaml"
    ws.write_text(yaml.safe_dump({"load_from": [{"python_file": {
        "relative_path": str(REPO / "tests" / "queue_defs.py"), "location_name": "queue",
        "working_directory": str(REPO)}}]}))
    url = fresh_database("queue")
    env = {**os.environ, "DAGSTER_HOME": str(home), "DAGSTER_PG_HOST": PG_HOST, "DAGSTER_PG_PORT": str(PG_PORT),
           "DAGSTER_PG_USER": PG_USER, "DAGSTER_PG_PASSWORD": "unused-with-trust-auth",
           "DAGSTER_PG_DB": url.rsplit("/", 1)[1], "QTOS_TEST_SLOW_S": "15",
           "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    port = free_port()
    procs = []
    try:
        for name, cmd in (("daemon", [str(BIN / "dagster-daemon"), "run", "-w", str(ws)]),
                          ("webserver", [str(BIN / "dagster-webserver"), "-h", "127.0.0.1", "-p", str(port),
                                         "-w", str(ws)])):
            log = tmp_path / f"{name}.log"
            with open(log, "wb") as f:
                procs.append((subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                               env=env, cwd=tmp_path, start_new_session=True), log))
        _wait_http(f"http://127.0.0.1:{port}/server_info", procs[1][0], procs[1][1], 120)
        yield port, procs[0][1]
    finally:
        for p, _ in procs:
            _stop(p)
        drop_database(url)


def test_one_run_of_the_broker_pool_at_a_time(queue_stack):
    from dagster_graphql import DagsterGraphQLClient

    from tests.pg import _tail

    port, daemon_log = queue_stack
    c = DagsterGraphQLClient("127.0.0.1", port_number=port)
    submit = lambda job: c.submit_job_execution(job, repository_location_name="queue",  # noqa: E731
                                                repository_name="__repository__")
    first = submit("orders_like")
    deadline = time.monotonic() + 120
    while c.get_run_status(first).value != "STARTED":
        assert time.monotonic() < deadline, f"first run never started:\n{_tail(daemon_log)}"
        time.sleep(0.2)
    second, other = submit("orders_like"), submit("other")
    seen_second, deadline = [], time.monotonic() + 180
    while True:
        s1, s2, so = (c.get_run_status(r).value for r in (first, second, other))
        seen_second.append((s1, s2, so))
        if s1 not in ("SUCCESS",):
            assert s2 == "QUEUED", f"second run left the queue while the first was {s1}: {s2}"
        if s2 == "SUCCESS" and so == "SUCCESS":
            break
        assert "FAILURE" not in (s1, s2, so) and time.monotonic() < deadline, (s1, s2, so, _tail(daemon_log))
        time.sleep(0.2)
    assert any(s[:2] == ("STARTED", "QUEUED") for s in seen_second)  # it really waited behind the first
    # the run outside the pool went ahead: it succeeded while the second was still waiting
    assert any(s[1:] == ("QUEUED", "SUCCESS") for s in seen_second), seen_second[-5:]
