"""Compare two materialisations of one report asset: its metrics side by side and the config keys that changed.

    python -m qt_jobs.compare backtest_report/sma_cross            # the latest against the one before
    python -m qt_jobs.compare agent_report/trend --runs RUN_A RUN_B  # two given runs (ids or their first 8 chars)

Works for ``backtest_report/<strategy>`` (the ``strategy_config`` it records: the strategy, costs, execution,
shares and risk limits) and ``agent_report/<agent>`` (``agent_config``), on the Dagster instance of
``$DAGSTER_HOME`` (``make dagster-ui`` uses ``.dagster_home``). Prints two tables (markdown): every numeric
metadata entry of both, with the difference, and every config key whose value differs."""

from __future__ import annotations

import argparse
import json
import os
import sys

CONFIG_KEYS = ("strategy_config", "agent_config")


def flat(d, prefix: str = "") -> dict:
    out = {}
    for k, v in (d or {}).items():
        if isinstance(v, dict):
            out.update(flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def materialisations(instance, key, runs: list[str] | None = None) -> list:
    """(run id, metadata) of the asset's materialisations: the two given runs, else the latest two (newest last)."""
    import dagster as dg

    records = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=key), limit=1000).records
    found = [(r.run_id, r.asset_materialization.metadata) for r in records]  # newest first
    if runs:
        pick = []
        for want in runs:
            match = [f for f in found if f[0].startswith(want)]
            if not match:
                raise SystemExit(f"{key.to_user_string()}: no materialisation in run {want!r}")
            pick.append(match[0])
        return pick
    if len(found) < 2:
        raise SystemExit(f"{key.to_user_string()}: {len(found)} materialisation(s); two are needed to compare")
    return [found[1], found[0]]


def compare(a: dict, b: dict) -> tuple[list[tuple], list[tuple]]:
    """(metric rows (name, a, b, b - a), config rows (key, a, b)) of two metadata dicts."""
    def numbers(md):
        out = {}
        for k, v in md.items():
            x = getattr(v, "value", v)
            if isinstance(x, (int, float)) and not isinstance(x, bool):
                out[k] = float(x)
        return out

    na, nb = numbers(a), numbers(b)
    metrics = [(k, na.get(k), nb.get(k), (nb[k] - na[k]) if k in na and k in nb else None)
               for k in sorted(set(na) | set(nb))]
    ca = next((flat(getattr(a[k], "value", a[k])) for k in CONFIG_KEYS if k in a), {})
    cb = next((flat(getattr(b[k], "value", b[k])) for k in CONFIG_KEYS if k in b), {})
    changed = [(k, ca.get(k, "-"), cb.get(k, "-")) for k in sorted(set(ca) | set(cb))
               if json.dumps(ca.get(k, "-"), default=str) != json.dumps(cb.get(k, "-"), default=str)]
    return metrics, changed


def main(argv: list[str] | None = None) -> int:
    import dagster as dg

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("asset", help="asset key, e.g. backtest_report/sma_cross")
    ap.add_argument("--runs", nargs=2, metavar=("RUN_A", "RUN_B"), help="compare these two runs' materialisations")
    args = ap.parse_args(argv)
    if not os.environ.get("DAGSTER_HOME"):
        os.environ["DAGSTER_HOME"] = os.path.abspath(".dagster_home")
    key = dg.AssetKey(args.asset.split("/"))
    with dg.DagsterInstance.get() as instance:
        (run_a, md_a), (run_b, md_b) = materialisations(instance, key, args.runs)
    metrics, changed = compare(md_a, md_b)
    fmt = lambda x: "-" if x is None else f"{x:.6g}" if isinstance(x, float) else str(x)  # noqa: E731
    print(f"{args.asset}: A = run {run_a[:8]}, B = run {run_b[:8]}\n")
    print("| metric | A | B | B - A |\n|---|---|---|---|")
    for name, x, y, d in metrics:
        print(f"| {name} | {fmt(x)} | {fmt(y)} | {fmt(d)} |")
    print("\n| config key | A | B |\n|---|---|---|")
    for k, x, y in changed:
        print(f"| {k} | {x} | {y} |")
    if not changed:
        print("| (no config key differs) | | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
