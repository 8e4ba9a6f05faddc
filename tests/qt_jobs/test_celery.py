"""Scale-out on dagster-celery, for real: two worker processes (`dagster-celery worker start`) on the local Redis
and on the local RabbitMQ, the spine (prices -> features -> decisions -> orders) run as Celery tasks across both,
on the production instance (PostgreSQL storage: workers on several machines cannot share SQLite files).
Every wait is bounded: a run with no live worker would hang forever."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest

from qt_jobs.jobs import CELERY_BACKEND_ENV, CELERY_BROKER_ENV, CELERY_QUEUE_ENV, SPINE_CELERY
from tests.conftest import REPO, SHORT_WINDOW, write_config
from tests.pg import PG_HOST, PG_PORT, PG_USER, _stop, _tail, drop_database, ensure_postgres, fresh_database

BIN = Path(sys.executable).parent
BROKERS = {"redis": ("redis://127.0.0.1:6379/5", "redis://127.0.0.1:6379/6"),
           "rabbitmq": ("pyamqp://guest:guest@127.0.0.1:5672//", "rpc://")}


def _ppid(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


@pytest.mark.parametrize("broker", ["redis", "rabbitmq"])
def test_the_spine_runs_across_two_celery_workers(tmp_path, broker, monkeypatch):
    url, backend = BROKERS[broker]
    ensure_postgres()
    db_url = fresh_database("celery")
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text((REPO / "deploy" / "production" / "dagster.yaml").read_text())
    celery_yaml = REPO / "deploy" / "celery.yaml"  # the shipped worker config: broker and backend from env
    env = {**os.environ, "DAGSTER_HOME": str(home), "QTOS_CONFIG": str(write_config(tmp_path, **SHORT_WINDOW)),
           CELERY_BROKER_ENV: url, CELERY_BACKEND_ENV: backend, "DAGSTER_PG_HOST": PG_HOST,
           "DAGSTER_PG_PORT": str(PG_PORT), "DAGSTER_PG_USER": PG_USER, "DAGSTER_PG_PASSWORD": "unused-with-trust-auth",
           "DAGSTER_PG_DB": db_url.rsplit("/", 1)[1],
           "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",  # `celery` must be on PATH
           # a queue of this test's own: a worker of another run on the same broker never takes our steps
           CELERY_QUEUE_ENV: f"qtos-test-{broker}-{os.getpid()}-{time.time_ns()}"}
    workers = []
    try:
        for name in ("w1", "w2"):
            log = tmp_path / f"{name}.log"
            with open(log, "wb") as f:
                workers.append((subprocess.Popen(
                    [str(BIN / "dagster-celery"), "worker", "start", "-A", "dagster_celery.app", "-y", str(celery_yaml),
                     "-n", f"{name}-{os.getpid()}@%h", "-q", env[CELERY_QUEUE_ENV], "--", "--pool=solo",
                     "--without-gossip", "--without-mingle"],
                    stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=REPO,
                    start_new_session=True), log))
        deadline = time.monotonic() + 90  # workers first: bounded wait until both say ready
        while not all(re.search(r"@\S+ ready\.", log.read_text(errors="replace")) for _, log in workers):
            for p, log in workers:
                assert p.poll() is None, f"worker exited {p.returncode}:\n{_tail(log)}"
            assert time.monotonic() < deadline, "\n".join(_tail(log) for _, log in workers)
            time.sleep(0.5)
        tags = {"dagster/asset_partition_range_start": "2010-03-01", "dagster/asset_partition_range_end": "2010-04-30"}
        r = subprocess.run([str(BIN / "dagster"), "job", "execute", "-m", "qt_jobs.definitions", "-j", SPINE_CELERY,
                            "--tags", json.dumps(tags)], env=env, cwd=REPO, capture_output=True, text=True,
                           timeout=600)
        assert r.returncode == 0, r.stderr[-3000:] + "\n".join(_tail(log) for _, log in workers)
        for k in [k for k in env if k.startswith("DAGSTER_PG_")]:  # the instance file reads them
            monkeypatch.setenv(k, env[k])
        inst = dg.DagsterInstance.from_config(str(home))
        try:
            [run] = inst.get_run_records()
            assert run.dagster_run.status == dg.DagsterRunStatus.SUCCESS
            starts = inst.all_logs(run.dagster_run.run_id, of_type=dg.DagsterEventType.STEP_START)
        finally:
            inst.dispose()
        step_pids = {e.dagster_event.pid for e in starts}
        # each step ran inside a Celery worker (solo pool: the worker's own process, a child of the
        # `dagster-celery worker start` we launched), and both workers took steps
        parents = {pid: _ppid(pid) for pid in step_pids}
        assert len(starts) >= 10 and set(parents.values()) == {p.pid for p, _ in workers}, parents
    finally:
        for p, _ in workers:
            _stop(p)
        drop_database(db_url)
        from kombu import Connection  # leave no queue of ours behind on the shared broker

        with Connection(url, connect_timeout=5) as conn:
            try:
                conn.default_channel.queue_delete(env[CELERY_QUEUE_ENV])
            except Exception:  # noqa: BLE001 - already gone (Redis deletes empty lists itself)
                pass
    assert (tmp_path / "warehouse" / "decisions" / "trend" / "session=2010-04-30" / "data.parquet").exists()
    assert (tmp_path / "warehouse" / "paper_broker.sqlite").exists()
