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


# ------------------------------------------------------------------ the UIs as a person sees them (Chromium)

ARTIFACTS = REPO / "test-artifacts" / "ui"


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    if not (Path("/usr/bin/chromium").exists() and Path("/usr/bin/chromedriver").exists()):
        pytest.fail("Debian's chromium and chromium-driver are needed (.ci/run installs them: "
                    "apt-get install -y chromium chromium-driver)", pytrace=False)
    opts = webdriver.ChromeOptions()
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
              "--disable-background-networking", "--disable-component-update", "--disable-sync",
              "--disable-dev-shm-usage", "--window-size=1600,1000"):
        opts.add_argument(a)
    opts.binary_location = "/usr/bin/chromium"
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
    driver.set_page_load_timeout(60)
    shutil.rmtree(ARTIFACTS, ignore_errors=True)  # no stale screenshot survives a failed run
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    try:
        yield driver
    finally:
        driver.quit()


def _until(what: str, fn, timeout: float = 60.0, every: float = 0.5):
    """Poll ``fn`` until it returns something truthy (a page re-rendering under us counts as "not yet")."""
    from selenium.common.exceptions import StaleElementReferenceException

    deadline = time.monotonic() + timeout
    while True:
        try:
            got = fn()
        except StaleElementReferenceException:
            got = None
        if got:
            return got
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f}s waiting for {what}"
        time.sleep(every)


def _body(d) -> str:
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By

    try:
        return d.find_element(By.TAG_NAME, "body").text
    except StaleElementReferenceException:  # the page re-rendered under us: read it again next time
        return ""


def _click(what: str, find) -> None:
    """Find and click, again if the element went stale between the two."""
    def attempt():
        el = find()
        if el:
            el.click()
            return True
    _until(what, attempt)


def _button(d, *texts):
    from selenium.webdriver.common.by import By

    return next((b for b in d.find_elements(By.TAG_NAME, "button") if b.text.strip() in texts and b.is_enabled()),
                None)


def test_dagster_ui_shows_every_asset_group_and_a_loaded_location(stack, browser):
    from qt_jobs.definitions import load_definitions

    graph = load_definitions(stack["env"]["QTOS_CONFIG"]).resolve_asset_graph()
    groups = {graph.get(k).group_name for k in graph.get_all_asset_keys()}
    base = f"http://127.0.0.1:{stack['port']}"
    browser.get(f"{base}/locations")
    _until("the code location row", lambda: "qtos" in _body(browser) and "Loaded" in _body(browser))
    browser.save_screenshot(str(ARTIFACTS / "dagster_locations.png"))
    assert "Error" not in _body(browser).split("Status", 1)[1].split("Join", 1)[0]
    browser.get(f"{base}/asset-groups")
    _until("every asset group in the lineage", lambda: groups <= set(_body(browser).split("\n")))
    assert "Join the Dagster community" not in _body(browser)  # nux off in the production instance
    browser.save_screenshot(str(ARTIFACTS / "dagster_asset_graph.png"))


def test_a_materialisation_launched_from_the_dagster_ui_succeeds(stack, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    from tests.pg import _connect

    key = "2010-03-03"
    browser.get(f"http://127.0.0.1:{stack['port']}/assets/prices")
    _click("the Materialize button", lambda: _button(browser, "Materialize…"))
    dialog = _until("the launch dialog", lambda: browser.find_elements(By.CSS_SELECTOR, "[role=dialog]"))[0]
    _click("the partition selector", lambda: dialog.find_element(By.XPATH, ".//*[contains(text(),'Select a partition')]"))
    browser.switch_to.active_element.send_keys(key)
    _click("the partition option", lambda: next((e for e in browser.find_elements(
        By.XPATH, f"//*[normalize-space(text())='{key}']") if e.is_displayed()), None))
    browser.switch_to.active_element.send_keys(Keys.ESCAPE)
    _until("one partition selected", lambda: "1 partition" in dialog.text)
    browser.save_screenshot(str(ARTIFACTS / "dagster_launch_dialog.png"))
    _click("the launch button", lambda: _button(browser, "Launch backfill", "Launch run", "Launch 1 run"))

    def done():
        with _connect(stack["db"]) as con, con.cursor() as cur:
            cur.execute("select r.status from runs r join run_tags t on t.run_id = r.run_id "
                        "where t.key = 'dagster/partition' and t.value = %s", (key,))
            return [s for (s,) in cur.fetchall() if s in ("SUCCESS", "FAILURE", "CANCELED")]

    assert _until("the run launched from the UI to finish", done, timeout=240, every=1) == ["SUCCESS"]
    assert (stack["tmp"] / "warehouse" / "prices" / f"session={key}" / "data.parquet").exists()
    browser.get(f"http://127.0.0.1:{stack['port']}/runs")
    _until("the run in the runs list", lambda: "Success" in _body(browser))
    browser.save_screenshot(str(ARTIFACTS / "dagster_runs.png"))


def test_mlflow_ui_shows_the_registered_model_and_its_aliases(tmp_path, browser):
    from mlflow import MlflowClient

    from tests.pg import mlflow_server

    with mlflow_server(tmp_path, f"sqlite:///{tmp_path / 'mlflow.db'}") as uri:
        c = MlflowClient(tracking_uri=uri, registry_uri=uri)
        run = c.create_run(c.create_experiment("qtos"))
        c.set_terminated(run.info.run_id)
        c.create_registered_model("qtos_xgb")
        for _ in range(2):
            c.create_model_version("qtos_xgb", source=f"runs:/{run.info.run_id}/model", run_id=run.info.run_id)
        c.set_registered_model_alias("qtos_xgb", "champion", "1")
        c.set_registered_model_alias("qtos_xgb", "challenger", "2")
        browser.get(f"{uri}/#/models/qtos_xgb")
        def aliases_shown():
            t = _body(browser)
            return t if "@ champion" in t and "@ challenger" in t else None

        text = _until("the model page with its aliases", aliases_shown)
        browser.save_screenshot(str(ARTIFACTS / "mlflow_model.png"))
    # each alias on its own version's row (the list is newest first: version 2 / challenger, version 1 / champion)
    assert text.index("Version 2") < text.index("@ challenger") < text.index("Version 1") < text.index("@ champion")
