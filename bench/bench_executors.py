"""Per-step overhead of Dagster's in-process, multiprocess and dagster-celery executors on a 10-asset chain of
trivial assets (bench/chain_defs.py), and run-launch latency through the queued run coordinator, all on the
production instance (deploy/production/dagster.yaml: PostgreSQL storage, a fresh database for the bench).

- executors: `dagster job execute -f bench/chain_defs.py -j chain_<executor>` (multiprocess also with the
  forkserver start method and preloaded modules); the run's own start/end times
  from the run storage (CLI start-up excluded); per step = run time / 10. Celery: two workers
  (`dagster-celery worker start`, solo pool) on the local Redis, started before the runs.
- launch latency: `dagster-webserver` + `dagster-daemon` on the same instance; a run of chain_in_process
  submitted through `DagsterGraphQLClient`; latency = submit -> run started (queued, dequeued by the daemon,
  launched in a new process), and submit -> success.

    .venv/bin/python bench/bench_executors.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
BIN = Path(sys.executable).parent
CHAIN = ROOT / "bench" / "chain_defs.py"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    import dagster as dg
    import yaml
    from dagster_graphql import DagsterGraphQLClient

    from tests.pg import PG_HOST, PG_PORT, PG_USER, _stop, drop_database, free_port, fresh_database

    tmp = Path(tempfile.mkdtemp(prefix="bench_exec_"))
    home = tmp / "home"
    home.mkdir()
    shutil.copy(ROOT / "deploy" / "production" / "dagster.yaml", home / "dagster.yaml")
    url = fresh_database("bench")
    pg = {"DAGSTER_PG_HOST": PG_HOST, "DAGSTER_PG_PORT": str(PG_PORT), "DAGSTER_PG_USER": PG_USER,
          "DAGSTER_PG_PASSWORD": "unused-with-trust-auth", "DAGSTER_PG_DB": url.rsplit("/", 1)[1]}
    os.environ.update(pg)
    env = {**os.environ, "DAGSTER_HOME": str(home), "QTOS_CELERY_BROKER": "redis://127.0.0.1:6379/7",
           "QTOS_CELERY_BACKEND": "redis://127.0.0.1:6379/8", "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    (tmp / "celery.yaml").write_text(yaml.safe_dump({"execution": {"config": {
        "broker": env["QTOS_CELERY_BROKER"], "backend": env["QTOS_CELERY_BACKEND"]}}}))
    procs = []
    print("command: .venv/bin/python bench/bench_executors.py --repeat", a.repeat)
    print(f"machine: {platform.platform()}; cpus {os.cpu_count()}; load average {os.getloadavg()[0]:.2f}")
    try:
        for n in ("w1", "w2"):
            log = open(tmp / f"{n}.log", "wb")
            procs.append(subprocess.Popen([str(BIN / "dagster-celery"), "worker", "start", "-A", "dagster_celery.app",
                                           "-y", str(tmp / "celery.yaml"), "-n", f"{n}-bench@%h", "--", "--pool=solo"],
                                          stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
                                          start_new_session=True))
        deadline = time.monotonic() + 90
        ready = re.compile(r"@\S+ ready\.")
        while not all(ready.search((tmp / f"{n}.log").read_text(errors="replace")) for n in ("w1", "w2")):
            assert time.monotonic() < deadline and all(p.poll() is None for p in procs), "celery workers not ready"
            time.sleep(0.5)
        inst = dg.DagsterInstance.from_config(str(home))
        rows = {}
        for ex in ("in_process", "multiprocess", "forkserver", "celery"):
            for _ in range(a.repeat):
                r = subprocess.run([str(BIN / "dagster"), "job", "execute", "-f", str(CHAIN), "-j", f"chain_{ex}"],
                                   env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
                assert r.returncode == 0, r.stderr[-2000:]
                rec = inst.get_run_records(limit=1)[0]
                assert rec.dagster_run.status == dg.DagsterRunStatus.SUCCESS
                rows.setdefault(ex, []).append(rec.end_time - rec.start_time)
        base = statistics.median(rows["in_process"])
        print("\n| executor | run s (median of %d) | per step s | vs in-process per step |" % a.repeat)
        print("|---|---:|---:|---:|")
        for ex, ts in rows.items():
            m = statistics.median(ts)
            print(f"| {ex} | {m:.2f} | {m / 10:.3f} | {m / base:.1f}× |")

        port = free_port()
        ws = tmp / "workspace.yaml"
        ws.write_text(yaml.safe_dump({"load_from": [{"python_file": {"relative_path": str(CHAIN),
                                                                     "location_name": "chain"}}]}))
        for cmd in ([str(BIN / "dagster-daemon"), "run", "-w", str(ws)],
                    [str(BIN / "dagster-webserver"), "-h", "127.0.0.1", "-p", str(port), "-w", str(ws)]):
            procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=tmp,
                                          start_new_session=True))
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=2)
                break
            except OSError:
                assert time.monotonic() < deadline, "webserver not up"
                time.sleep(0.5)
        client = DagsterGraphQLClient("127.0.0.1", port_number=port)
        started, done = [], []
        for _ in range(max(5, a.repeat)):
            t0 = time.time()
            run_id = client.submit_job_execution("chain_in_process", repository_location_name="chain",
                                                 repository_name="__repository__")
            while client.get_run_status(run_id).value not in ("SUCCESS", "FAILURE", "CANCELED"):
                assert time.time() - t0 < 300, "run did not finish"
                time.sleep(0.05)
            rec = inst.get_run_record_by_id(run_id)
            assert rec.dagster_run.status == dg.DagsterRunStatus.SUCCESS
            started.append(rec.start_time - t0)
            done.append(rec.end_time - t0)
        print("\n| queued run launch (GraphQL -> daemon -> run process), n=%d | median s | max s |" % len(started))
        print("|---|---:|---:|")
        print(f"| submit -> run started | {statistics.median(started):.2f} | {max(started):.2f} |")
        print(f"| submit -> run succeeded (10 trivial steps in process) | {statistics.median(done):.2f} | "
              f"{max(done):.2f} |")
        inst.dispose()
    finally:
        for p in procs:
            _stop(p)
        drop_database(url)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
