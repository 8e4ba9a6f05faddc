"""1,000 order intents through the paper broker end to end: submit (one SQLite transaction per session, with
the "session done" marker), fill at the next session's open through the shared cost model, audit log appended
after each commit. Prints throughput and per-order latency (p50 / p95), with the audit log on and off (the
baseline measured in the same run), one order per session and ten per session.

Then the same intents through the Alpaca broker: the real alpaca-py client over HTTP to our Alpaca-compatible
server on 127.0.0.1 (tests/alpaca_trading_server.py; ``enforce_market_hours: false``, the sandbox replay
setting, since the sessions are historical). Per order: the ledger writes around the POST, the POST, then the
read-back of its fill by client order id.

    .venv/bin/python bench/bench_broker.py [--orders 1000 --seed 7]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def run(n_orders: int, per_session: int, audit: bool, seed: int) -> dict:
    from qt_resources.audit import verify
    from qt_resources.broker import OrderIntent, PaperBroker
    from qt_resources.calendar import sessions

    rng = np.random.default_rng(seed)
    tmp = Path(tempfile.mkdtemp(prefix="bench_broker_"))
    b = PaperBroker(db_path=str(tmp / "b.sqlite"), audit_path=str(tmp / "audit.jsonl") if audit else None,
                    initial_cash=1e9, commission_bps=5, slippage_bps=2, min_commission=1.0)
    b.open_account("bench")
    n_sessions = n_orders // per_session
    days = sessions("2000-01-03", "2030-12-31", "XNYS")[:n_sessions + 1]
    symbols = [f"S{i:02d}" for i in range(per_session)]
    lat = []
    t_all = time.perf_counter()
    for k in range(n_sessions):
        intents = [OrderIntent(s, "buy", float(rng.integers(1, 100)), "bench") for s in symbols]
        opens = {s: float(rng.uniform(10, 100)) for s in symbols}
        t = time.perf_counter()
        b.place_session_orders("bench", days[k], intents)
        fills = b.fill_pending("bench", days[k + 1], opens)
        dt = time.perf_counter() - t
        assert len(fills) == per_session
        lat += [dt / per_session] * per_session  # per order: the session's time shared by its orders
    wall = time.perf_counter() - t_all
    orders = b.orders("bench")
    assert len(orders) == n_orders and (orders["status"] == "filled").all()  # no lost or duplicate order
    ok = verify(tmp / "audit.jsonl")[0] if audit else True
    assert ok
    lat_ms = np.array(lat) * 1e3
    return {"wall": wall, "throughput": n_orders / wall, "p50": float(np.percentile(lat_ms, 50)),
            "p95": float(np.percentile(lat_ms, 95)), "audit_lines": len((tmp / "audit.jsonl").read_text().splitlines())
            if audit else 0}


def run_alpaca(n_orders: int, per_session: int, seed: int) -> dict:
    from qt_resources.alpaca_broker import AlpacaBroker
    from qt_resources.broker import OrderIntent
    from qt_resources.calendar import sessions
    from tests.alpaca_trading_server import AlpacaTradingServer

    rng = np.random.default_rng(seed)
    tmp = Path(tempfile.mkdtemp(prefix="bench_alpaca_"))
    n_sessions = n_orders // per_session
    days = sessions("2000-01-03", "2030-12-31", "XNYS")[:n_sessions]
    symbols = [f"S{i:02d}" for i in range(per_session)]
    with AlpacaTradingServer(cash=1e12) as srv:
        b = AlpacaBroker(db_path=str(tmp / "a.sqlite"), audit_path=str(tmp / "audit.jsonl"), api_key="test-key",
                         secret_key="test-secret", url_override=srv.url, enforce_market_hours=False,
                         initial_cash=1e12)
        b.open_account("bench")
        lat = []
        t_all = time.perf_counter()
        for k in range(n_sessions):
            intents = [OrderIntent(s, "buy", float(rng.integers(1, 100)), "bench") for s in symbols]
            t = time.perf_counter()
            b.place_session_orders("bench", days[k], intents)
            srv.fill_all({s: float(rng.uniform(10, 100)) for s in symbols})  # the broker's side: not timed
            t_fill = time.perf_counter()
            fills = b.sync("bench")
            dt = (t_fill - t) + (time.perf_counter() - t_fill)
            assert len(fills) == per_session
            lat += [dt / per_session] * per_session
        wall = time.perf_counter() - t_all
        orders = b.orders("bench")
        assert len(orders) == n_orders and (orders["status"] == "filled").all()
        assert sum(len(v) for v in srv.orders_by_coid().values()) == n_orders  # none duplicated at the broker
        requests = len(srv.requests)
    lat_ms = np.array(lat) * 1e3
    return {"wall": wall, "throughput": n_orders / wall, "p50": float(np.percentile(lat_ms, 50)),
            "p95": float(np.percentile(lat_ms, 95)), "audit_lines": requests}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--orders", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=7)
    a = ap.parse_args()
    print(f"command: .venv/bin/python bench/bench_broker.py --orders {a.orders} --seed {a.seed}")
    print(f"machine: {platform.platform()}; cpus {os.cpu_count()}; load average {os.getloadavg()[0]:.2f}")
    print("| orders per session | audit log | orders/s | p50 ms/order | p95 ms/order | wall s | audit lines |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    for per in (1, 10):
        for audit in (False, True):
            r = run(a.orders, per, audit, a.seed)
            print(f"| {per} | {'on' if audit else 'off'} | {r['throughput']:.0f} | {r['p50']:.2f} | {r['p95']:.2f} | "
                  f"{r['wall']:.2f} | {r['audit_lines']} |")
    print("\nAlpaca broker (alpaca-py over loopback HTTP to our server; audit log on)")
    print("| orders per session | orders/s | p50 ms/order | p95 ms/order | wall s | HTTP requests |")
    print("|---:|---:|---:|---:|---:|---:|")
    for per in (1, 10):
        r = run_alpaca(a.orders, per, a.seed)
        print(f"| {per} | {r['throughput']:.0f} | {r['p50']:.2f} | {r['p95']:.2f} | {r['wall']:.2f} | "
              f"{r['audit_lines']} |")


if __name__ == "__main__":
    main()
