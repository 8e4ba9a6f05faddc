"""The whole graph at scale: the jobs `make demo` runs (research run over every session, trading run over the last
year), through Dagster on the embedded default instance (dagster.yaml: batched SQLite event log), on the seeded
synthetic universe (prices, news, Form 4: qt_resources/synthetic.py) of N symbols x Y years; then the daily
increment: one new session through prices -> alt data -> features -> decisions -> guarded targets -> orders
(the `daily_path` job for that one partition). Each size runs in a fresh child process.

Reported per size: per-stage seconds split into compute and event bookkeeping (from the run's event log, as
`make demo` prints them), partition events written, peak RSS of the run process (VmHWM) and per step (VmRSS
sampled every 0.2 s while the step ran); dbt's own subprocess is not included (RUSAGE_CHILDREN would carry the
parent's RSS over fork+exec); files in the warehouse, and the increment's seconds. The demo's config otherwise
(features, model, tuning, strategies, agents), benchmark equal_weight.

    .venv/bin/python bench/bench_scale.py [--symbols 50,100,500] [--years 20] [--end 2024-12-31] [--no-increment]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def write_config(tmp: Path, n: int, start: str, end: str) -> Path:
    from qt_resources.calendar import sessions

    raw = yaml.safe_load((REPO / "qtos.yaml").read_text())
    keys = sessions(start, end)
    raw["universe"] = {"symbols": [f"S{i:03d}" for i in range(n)], "benchmark": "equal_weight"}
    raw["data"] = {"provider": "synthetic", "seed": 7, "start": keys[0], "end": keys[-1]}
    raw["news"] = {"provider": "synthetic", "scorer": "lexicon"}
    raw["filings"] = {"provider": "synthetic"}
    raw["research"]["split"]["train_end"] = keys[int(len(keys) * 0.7)]
    raw["storage"] = {k: str(tmp / k) for k in ("warehouse_dir", "mlflow_dir", "reports_dir")}
    raw.get("backtest", {}).pop("walk_forward", None)  # not in the two demo runs measured here
    for st in raw.get("backtest", {}).get("strategies", []):
        # equal sizing over n symbols targets 1/n per position: the demo's 2 % band would swallow every order at
        # n > 50 (refused at config load), so it is halved below 1/n
        if st.get("kind") == "rule" and (st.get("sizing") or {}).get("kind", "equal") == "equal":
            st["rebalance_band"] = min(st.get("rebalance_band", 0.0), round(0.5 / n, 6))
    path = tmp / "qtos.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


class RssSampler:
    """VmRSS of this process every 0.2 s in a thread, so a peak can be put on the step that made it."""

    def __init__(self, every: float = 0.2):
        import threading

        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(every,), daemon=True)
        self._thread.start()

    def _run(self, every: float) -> None:
        while not self._stop.wait(every):
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    self.samples.append((time.time(), int(line.split()[1]) / 1024))

    def peak(self, start: float, end: float) -> float:
        return max((mb for t, mb in self.samples if start <= t <= end), default=float("nan"))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def step_peaks(instance, run_id: str, sampler: RssSampler) -> dict[str, float]:
    """Peak VmRSS (MB) sampled while each step of the run ran (its start..end in the run's step stats)."""
    return {s.step_key: sampler.peak(s.start_time or 0, s.end_time or 0) for s in instance.get_run_step_stats(run_id)}


def vm_hwm_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child(phase: str) -> None:
    """Run in a fresh process with QTOS_CONFIG / DAGSTER_HOME set; prints one JSON line."""
    import dagster as dg

    from qt_jobs.demo import RESEARCH_GROUPS, TRADING_GROUPS, run_full_graph, step_times
    from qt_resources.config import load_config

    cfg = load_config()
    out = {"phase": phase, "runs": []}
    sampler = RssSampler()
    t0 = time.perf_counter()
    with dg.DagsterInstance.get() as instance:
        if phase == "full":
            from qt_jobs.demo import full_graph_job

            keys = full_graph_job().partitions_def.get_partition_keys()
            plan = [("research", RESEARCH_GROUPS, keys[0], keys[-1]), ("trading", TRADING_GROUPS, keys[-252], keys[-1])]
            for name, groups, s, e in plan:
                t = time.perf_counter()
                res, _ = run_full_graph(s, e, instance=instance, log_level="WARNING", groups=groups)
                out["runs"].append({"name": name, "ok": res.success, "wall": time.perf_counter() - t,
                                    "steps": step_times(instance, res.run_id),
                                    "peaks": step_peaks(instance, res.run_id, sampler)})
                if not res.success:
                    break
        else:  # increment: the last configured session through the daily path
            from qt_jobs.definitions import defs
            from qt_jobs.jobs import DAILY_PATH

            job = defs.resolve_job_def(DAILY_PATH)
            key = job.partitions_def.get_partition_keys()[-1]
            t = time.perf_counter()
            res = job.execute_in_process(instance=instance, partition_key=key, raise_on_error=False,
                                         run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}},
                                                     "execution": {"config": {"in_process": {}}}})
            out["runs"].append({"name": f"increment {key}", "ok": res.success, "wall": time.perf_counter() - t,
                                "steps": step_times(instance, res.run_id),
                                "peaks": step_peaks(instance, res.run_id, sampler)})
    sampler.stop()
    out["wall"] = time.perf_counter() - t0
    out["rss_mb"] = vm_hwm_mb()
    out["files"] = sum(1 for p in Path(cfg.warehouse_dir).rglob("*") if p.is_file())
    print("RESULT " + json.dumps(out))


def run_child(phase: str, env: dict) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", phase], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=6 * 3600)
    line = next((l for l in proc.stdout.splitlines() if l.startswith("RESULT ")), None)
    if line is None:
        raise SystemExit(f"{phase} failed:\n{proc.stderr[-4000:]}")
    return json.loads(line[7:])


def report(n: int, years: int, res: dict) -> None:
    print(f"\n== {n} symbols x {years} years, {res['phase']}: wall {res['wall']:.1f} s, peak RSS of the run process "
          f"{res['rss_mb']:.0f} MB, {res['files']} warehouse files")
    for run in res["runs"]:
        comp = sum(d - (b or 0) for _, _, d, b, _ in run["steps"])
        book = sum(b or 0 for _, _, _, b, _ in run["steps"])
        events = sum(e for *_, e in run["steps"])
        print(f"  {run['name']}: {'SUCCESS' if run['ok'] else 'FAILED'} in {run['wall']:.1f} s; steps: compute "
              f"{comp:.1f} s, bookkeeping {book:.1f} s for {events} partition events")
        for step, status, dur, b, e in run["steps"]:
            bk = f"{b:7.2f} s ({1000 * b / e:.2f} ms/event)" if b is not None and e else ""
            print(f"    {step[:36]:<37}{status:<9}{dur:>8.1f} s{e:>7} ev  RSS {run['peaks'].get(step, float('nan')):6.0f} MB"
                  f"  {bk}")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--symbols", default="50,100,500")
    ap.add_argument("--years", type=int, default=20)
    ap.add_argument("--end", default="2024-12-31")
    ap.add_argument("--no-increment", action="store_true")
    ap.add_argument("--child")
    args = ap.parse_args()
    if args.child:
        child(args.child)
        return 0
    import pandas as pd

    from qt_resources.calendar import sessions

    ok = True
    start = (pd.Timestamp(args.end) - pd.DateOffset(years=args.years) + pd.Timedelta(days=1)).strftime("%Y-%m-%d")
    for n in [int(x) for x in args.symbols.split(",")]:
        tmp = Path(tempfile.mkdtemp(prefix=f"qtos-scale-{n}-"))
        keys = sessions(start, args.end)
        # the full runs end one session early; the increment then adds the last session
        cfg = write_config(tmp, n, keys[0], keys[-2])
        (tmp / "home").mkdir()
        (tmp / "home" / "dagster.yaml").write_text((REPO / "dagster.yaml").read_text())
        env = {**os.environ, "QTOS_CONFIG": str(cfg), "DAGSTER_HOME": str(tmp / "home"), "DO_NOT_TRACK": "true",
               "MLFLOW_DISABLE_TELEMETRY": "true", "DBT_SEND_ANONYMOUS_USAGE_STATS": "false"}
        res = run_child("full", env)
        report(n, args.years, res)
        ok &= all(r["ok"] for r in res["runs"])
        if not args.no_increment and ok:
            write_config(tmp, n, keys[0], keys[-1])
            inc = run_child("increment", env)
            report(n, args.years, inc)
            ok &= all(r["ok"] for r in inc["runs"])
        print(f"  (work folder {tmp})")
    print("\nall runs succeeded" if ok else "\nA RUN FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
