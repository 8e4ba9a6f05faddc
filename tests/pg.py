"""PostgreSQL and MLflow-tracking-server helpers for tests.

CI (``.ci/run``) starts PostgreSQL on 127.0.0.1:5432 before ``make test``, so a test that needs it FAILS
(never skips) when it is not reachable. Override the server with ``QTOS_TEST_PG_HOST`` / ``_PORT`` /
``_USER`` (trust auth, no password).

    ensure_postgres()                      # fail clearly unless Postgres answers
    url = fresh_database("registry")       # postgresql+psycopg2://postgres@127.0.0.1:5432/qtos_test_registry_...
    drop_database(url)
    with postgres_database("x") as url: ...            # create + always drop
    with mlflow_server(tmp_path, url) as uri: ...      # `mlflow server` on 127.0.0.1:<free port>
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

PG_HOST = os.environ.get("QTOS_TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("QTOS_TEST_PG_PORT", "5432"))
PG_USER = os.environ.get("QTOS_TEST_PG_USER", "postgres")
ADMIN_DB = "postgres"
DB_PREFIX = "qtos_test_"


def _connect(dbname: str = ADMIN_DB, timeout: int = 3):
    import psycopg2

    return psycopg2.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname=dbname, connect_timeout=timeout)


def ensure_postgres() -> None:
    """pg_isready, from Python: fail the calling test with a clear message unless Postgres answers."""
    try:
        _connect().close()
        return
    except Exception as exc:  # psycopg2.OperationalError, or psycopg2 missing
        why = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
    pytest.fail(f"PostgreSQL is not reachable at {PG_USER}@{PG_HOST}:{PG_PORT} ({why}). CI starts it in "
                f".ci/run; locally run `service postgresql start` (check with `pg_isready -h {PG_HOST} "
                f"-p {PG_PORT}`).", pytrace=False)


def database_url(dbname: str) -> str:
    return f"postgresql+psycopg2://{PG_USER}@{PG_HOST}:{PG_PORT}/{dbname}"


def _dbname(url_or_name: str) -> str:
    name = url_or_name.rsplit("/", 1)[-1].split("?", 1)[0]
    if not re.fullmatch(r"[a-z0-9_]{1,63}", name):
        raise ValueError(f"unexpected database name {name!r}")
    return name


def _admin(sql: str) -> None:
    conn = _connect()
    try:
        conn.autocommit = True  # CREATE/DROP DATABASE cannot run inside a transaction
        with conn.cursor() as cur:
            cur.execute(sql)
    finally:
        conn.close()


def fresh_database(prefix: str) -> str:
    """Create an empty, uniquely named database ``qtos_test_<prefix>_<pid>_<rand>``; return its SQLAlchemy URL."""
    ensure_postgres()
    clean = re.sub(r"[^a-z0-9_]+", "_", prefix.lower()).strip("_")[:30] or "db"
    name = f"{DB_PREFIX}{clean}_{os.getpid()}_{secrets.token_hex(4)}"
    _admin(f'CREATE DATABASE "{name}"')
    return database_url(name)


def drop_database(url_or_name: str) -> None:
    """Drop a database made by :func:`fresh_database` (disconnecting any leftover sessions); idempotent."""
    name = _dbname(url_or_name)
    if not name.startswith(DB_PREFIX):
        raise ValueError(f"refusing to drop {name!r}: not a test database")
    _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def postgres_database(prefix: str) -> Iterator[str]:
    url = fresh_database(prefix)
    try:
        yield url
    finally:
        drop_database(url)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def listening_addresses(port: int) -> set[str]:
    """Local addresses with a TCP socket in LISTEN state on ``port`` (Linux /proc/net/tcp{,6})."""
    found = set()
    for table, v6 in (("/proc/net/tcp", False), ("/proc/net/tcp6", True)):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            addr_hex, port_hex = fields[1].split(":")
            if fields[3] != "0A" or int(port_hex, 16) != port:
                continue
            raw = bytes.fromhex(addr_hex)
            # /proc prints the address as host-order 32-bit words
            raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
            found.add(socket.inet_ntop(socket.AF_INET6 if v6 else socket.AF_INET, raw))
    return found


def _tail(path: Path, n: int = 40) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(lines[-n:])


def _stop(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """Terminate the server's whole process group (mlflow CLI, uvicorn worker, job runner)."""
    if proc.poll() is None or _group_alive(proc.pid):
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and (proc.poll() is None or _group_alive(proc.pid)):
                time.sleep(0.1)
            if proc.poll() is not None and not _group_alive(proc.pid):
                break
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=1)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # zombies still count for killpg(0); only count live members
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


@contextlib.contextmanager
def mlflow_server(tmp_path: Path, backend_uri: str, *, timeout: float = 60.0, job_execution: bool = False,
                  extra_args: tuple[str, ...] = ()) -> Iterator[str]:
    """Run ``mlflow server`` against ``backend_uri`` on 127.0.0.1:<free port>; yield its ``http://`` URI.

    Artifacts are proxied by the server (``--serve-artifacts``, MLflow 3's default) to
    ``<tmp_path>/mlflow-server/artifacts``; new experiments get the ``mlflow-artifacts:/`` root, so clients
    need no filesystem access. The log goes to ``<tmp_path>/mlflow-server/server.log`` and its tail is
    included in failure messages. The process group is always terminated on exit.

    ``job_execution=False`` sets ``MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false``: MLflow 3's GenAI job runner
    (7 huey consumer processes and a store under /dev/shm that MLflow never removes) is not needed for
    tracking/registry and only slows start-up and shutdown.
    """
    root = Path(tmp_path) / "mlflow-server"
    (root / "artifacts").mkdir(parents=True, exist_ok=True)
    log_path = root / "server.log"
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true", "PYTHONUNBUFFERED": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("MLFLOW_REGISTRY_URI", None)
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "true" if job_execution else "false"

    for attempt in range(3):  # the free port can be taken between probing and binding
        port = free_port()
        uri = f"http://127.0.0.1:{port}"
        cmd = [sys.executable, "-m", "mlflow", "server",
               "--backend-store-uri", backend_uri,
               "--artifacts-destination", str((root / "artifacts").resolve()),
               "--host", "127.0.0.1", "--port", str(port), "--workers", "1", *extra_args]
        with open(log_path, "ab") as log:
            log.write(f"\n$ {' '.join(cmd)}\n".encode())
            log.flush()
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=env, cwd=root, start_new_session=True)
        try:
            started = time.monotonic()
            while True:
                if proc.poll() is not None:
                    break
                try:
                    with urllib.request.urlopen(f"{uri}/health", timeout=2) as resp:
                        if resp.status == 200 and resp.read().strip() == b"OK":
                            break
                except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                    pass
                if time.monotonic() - started > timeout:
                    pytest.fail(f"mlflow server at {uri} not healthy after {timeout:.0f}s; log {log_path}:\n"
                                f"{_tail(log_path)}", pytrace=False)
                time.sleep(0.25)
            if proc.poll() is not None:
                if "address already in use" in _tail(log_path).lower() and attempt < 2:
                    continue
                pytest.fail(f"mlflow server exited with {proc.returncode} before becoming healthy; "
                            f"log {log_path}:\n{_tail(log_path)}", pytrace=False)
            yield uri
            return
        finally:
            _stop(proc)
