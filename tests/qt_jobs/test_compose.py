"""docker-compose.yml checked against the settings the processes use (no Docker engine runs here): the env
names dagster.yaml and the resources read, ports bound to 127.0.0.1, volumes for state, no literal secrets."""

import re
import shlex
from pathlib import Path

import yaml

from tests.conftest import REPO

COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
PROD_YAML = (REPO / "deploy" / "production" / "dagster.yaml").read_text()


def _envs(node) -> set[str]:
    if isinstance(node, dict):
        return ({node["env"]} if set(node) == {"env"} else set()).union(*(_envs(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(_envs(v) for v in node))
    return set()


def test_the_stack_has_every_process():
    assert {"postgres", "mlflow", "code", "webserver", "daemon", "redis", "worker"} <= set(SERVICES)


def test_every_published_port_is_bound_to_loopback():
    published = [p for s in SERVICES.values() for p in s.get("ports", [])]
    assert published and all(str(p).startswith("127.0.0.1:") for p in published), published


def test_dagster_processes_get_every_env_name_the_instance_and_resources_read():
    needed = _envs(yaml.safe_load(PROD_YAML))
    assert needed == {"DAGSTER_PG_HOST", "DAGSTER_PG_PORT", "DAGSTER_PG_USER", "DAGSTER_PG_PASSWORD", "DAGSTER_PG_DB"}
    code = "".join(p.read_text() for d in ("qt_jobs", "qt_resources", "qt_assets", "qt_sensors")
                   for p in (REPO / d).rglob("*.py"))
    secrets = set(re.findall(r'(?:EnvVar|_env_or_none)\("([A-Z_]+)"\)', code))
    assert {"ALPACA_API_KEY", "OPENAI_API_KEY"} <= secrets
    for name in ("code", "webserver", "daemon", "worker"):
        env = SERVICES[name]["environment"]
        assert needed | {"DAGSTER_HOME", "MLFLOW_TRACKING_URI", "QTOS_CONFIG"} <= set(env), name
        runs_user_code = name in ("code", "worker")  # only these hold provider keys
        assert (secrets <= set(env)) if runs_user_code else not (secrets & set(env)), name
        assert env["DAGSTER_PG_HOST"] == "postgres" and env["DAGSTER_PG_USER"] == \
            SERVICES["postgres"]["environment"]["POSTGRES_USER"]
        assert env["DAGSTER_PG_DB"] == SERVICES["postgres"]["environment"]["POSTGRES_DB"]
        home = env["DAGSTER_HOME"]
        assert f"./deploy/production/dagster.yaml:{home}/dagster.yaml:ro" in SERVICES[name]["volumes"]


def test_no_secret_is_written_in_the_file():
    def walk(node, path=""):
        if isinstance(node, dict):
            for k, v in node.items():
                yield from walk(v, f"{path}.{k}")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                yield from walk(v, f"{path}[{i}]")
        else:
            yield path, str(node)

    for path, value in walk(COMPOSE):
        if re.search(r"PASSWORD|SECRET|_KEY$", path.rsplit(".", 1)[-1]):
            assert value.startswith("${") and value.endswith("}"), (path, value)
        assert not re.search(r"://[^/@\s]*:(?!\$\{)[^@\s]+@", value), (path, value)  # no inline password in a URL
        assert "${POSTGRES_PASSWORD" not in value or path.endswith(("PASSWORD", "PGPASSWORD")), path  # not in a command


def test_state_lives_in_named_volumes():
    assert {"pgdata", "mlartifacts", "qtos-warehouse"} <= set(COMPOSE["volumes"])
    assert "pgdata:/var/lib/postgresql/data" in SERVICES["postgres"]["volumes"]
    assert "mlartifacts:/mlartifacts" in SERVICES["mlflow"]["volumes"]
    for name in ("code", "worker"):  # the processes that run steps share the project's state
        mounts = {v.split(":")[1] for v in SERVICES[name]["volumes"] if not v.startswith(".")}
        assert {"/opt/qtos/warehouse", "/opt/qtos/reports", "/opt/qtos/mlflow", "/opt/dagster/home/storage"} <= mounts


def test_project_state_and_the_kill_switch_resolve_onto_shared_volumes(monkeypatch):
    from qt_resources.config import KILL_SWITCH_ENV, parse_config
    from tests.conftest import repo_config

    env = SERVICES["code"]["environment"]
    config_path = Path(env["QTOS_CONFIG"])
    monkeypatch.setenv(KILL_SWITCH_ENV, env[KILL_SWITCH_ENV])
    cfg = parse_config(repo_config(), str(config_path), base_dir=config_path.parent)  # as inside the container
    shared = {v.split(":")[1] for v in SERVICES["worker"]["volumes"] if not v.startswith(".")}
    for p in (cfg.warehouse_dir, cfg.reports_dir, cfg.mlflow_dir, cfg.kill_switch_path):
        assert any(str(p) == m or str(p).startswith(m + "/") for m in shared), p


def test_mlflow_accepts_the_host_the_other_containers_call_it_by():
    from urllib.parse import urlparse

    from mlflow.server.security_utils import is_allowed_host_header

    cmd = shlex.split(SERVICES["mlflow"]["command"])
    allowed = cmd[cmd.index("--allowed-hosts") + 1].split(",")
    host = urlparse(SERVICES["code"]["environment"]["MLFLOW_TRACKING_URI"]).netloc
    assert is_allowed_host_header(allowed, host)
    assert SERVICES["mlflow"]["environment"]["PGPASSWORD"].startswith("${POSTGRES_PASSWORD")


def test_the_image_leaves_secrets_and_local_state_out():
    ignored = set((REPO / ".dockerignore").read_text().split())
    assert {".env", ".venv", ".git", "warehouse", "KILL_SWITCH", "test-artifacts"} <= ignored
    docker = (REPO / "deploy" / "Dockerfile").read_text()
    assert "USER qtos" in docker and docker.index("requirements.lock") < docker.index("COPY . .")


def test_code_location_webserver_daemon_and_mlflow_agree():
    ws = yaml.safe_load((REPO / "deploy" / "production" / "workspace.yaml").read_text())["load_from"][0]["grpc_server"]
    code = shlex.split(SERVICES["code"]["command"])
    assert ws["host"] == "code" and code[code.index("-p") + 1] == str(ws["port"])
    local = yaml.safe_load((REPO / "workspace.yaml").read_text())["load_from"][0]["python_module"]
    assert code[code.index("-m") + 1] == local["module_name"]
    assert code[code.index("--location-name") + 1] == ws["location_name"] == local["location_name"]
    for name in ("webserver", "daemon"):
        assert "/opt/qtos/deploy/production/workspace.yaml" in SERVICES[name]["command"]
    mlflow = shlex.split(SERVICES["mlflow"]["command"])
    assert mlflow[:2] == ["mlflow", "server"] and mlflow[mlflow.index("--port") + 1] == "5000"
    assert SERVICES["code"]["environment"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert "/mlflow" in mlflow[mlflow.index("--backend-store-uri") + 1]
    assert "CREATE DATABASE mlflow" in (REPO / "deploy" / "postgres-init.sql").read_text()
    docker = (REPO / "deploy" / "Dockerfile").read_text()
    assert "requirements.lock" in docker and "deploy/production/dagster.yaml" in docker


def test_celery_workers_and_runs_read_the_same_broker():
    from qt_jobs.jobs import CELERY_BACKEND_ENV, CELERY_BROKER_ENV

    worker_cfg = yaml.safe_load((REPO / "deploy" / "celery.yaml").read_text())["execution"]["config"]
    assert worker_cfg == {"broker": {"env": CELERY_BROKER_ENV}, "backend": {"env": CELERY_BACKEND_ENV}}
    assert "deploy/celery.yaml" in SERVICES["worker"]["command"]
    for name in ("code", "daemon", "worker"):  # the run worker submits steps; the Celery workers take them
        env = SERVICES[name]["environment"]
        assert env[CELERY_BROKER_ENV].startswith("redis://redis:") and env[CELERY_BACKEND_ENV]


def test_the_code_location_command_of_the_compose_file_serves(tmp_path):
    """The compose `code` service's own command, run here (on loopback instead of 0.0.0.0): the gRPC code server
    loads QTOS and answers Dagster's health check, listening on 127.0.0.1 only."""
    import os
    import subprocess
    import sys
    import time

    from tests.conftest import SHORT_WINDOW, write_config
    from tests.pg import _stop, _tail, free_port, listening_addresses

    bin_ = Path(sys.executable).parent
    cmd = shlex.split(SERVICES["code"]["command"])
    port = free_port()
    cmd[cmd.index("-h") + 1], cmd[cmd.index("-p") + 1] = "127.0.0.1", str(port)
    env = {**os.environ, "QTOS_CONFIG": str(write_config(tmp_path, **SHORT_WINDOW)),
           "DAGSTER_HOME": str(tmp_path), "PATH": f"{bin_}{os.pathsep}{os.environ['PATH']}"}
    log = tmp_path / "code.log"
    with open(log, "wb") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=REPO, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            r = subprocess.run([str(bin_ / "dagster"), "api", "grpc-health-check", "-p", str(port)], env=env,
                               capture_output=True, text=True, timeout=60)
            if r.returncode == 0:
                break
            assert proc.poll() is None and time.monotonic() < deadline, _tail(log)
            time.sleep(1)
        import ipaddress

        addrs = {ipaddress.ip_address(a) for a in listening_addresses(port)}
        loop = {getattr(a, "ipv4_mapped", None) or a for a in addrs}  # gRPC listens v6 with a v4-mapped address
        assert addrs and all(a.is_loopback for a in loop), addrs
    finally:
        _stop(proc)
