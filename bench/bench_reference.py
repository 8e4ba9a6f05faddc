"""Reference-engine semantics: a strategy written only in qtos.yaml reproduces backtesting.py's SmaCross, in one run.

The strategy is `bench/reference_goog.yaml` (SMA 10/20 crossover, 20 bps commission per side, next-open fills,
all of the equity in whole shares, entry on the cross event), long/short and long-only. Both engines run it on the
GOOG daily bars bundled with backtesting.py (2004-08-19 .. 2013-03-01, 2,148 bars):

  * QTOS: `load_config` + `qt_assets.backtests.runs.run_strategy`, the path of every `backtest_report` asset;
  * peer: backtesting.py 0.6.6 `Backtest(GOOG, SmaCross, cash=10_000, commission=.002)`, its documented example
    (long-only: `buy()` on the cross up, `position.close()` on the cross down). Installed only as a bench extra
    (AGPL-3.0): `make install EXTRAS=bench`.

Printed per variant: final equity of both and their relative difference (goal: within 0.5 %), and the trades
compared one by one (entry bar, exit bar, side, shares). The same config with QTOS's other semantics
(`entry: state`, `shares: fractional`) is printed beside it, to show what each choice moves, and the engine's
earlier semantics (state entries, fractional shares sized on value before commission). Exits non-zero when a
variant misses the goal or its trades differ.

    .venv/bin/python bench/bench_reference.py [--config bench/reference_goog.yaml]
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("TQDM_DISABLE", "1")

GOAL = 0.005

try:  # the peer's strategy classes (module level, as backtesting.py expects)
    from backtesting import Strategy
    from backtesting.lib import crossover
    from backtesting.test import SMA

    class SmaCross(Strategy):
        n1, n2 = 10, 20

        def init(self):
            self.sma1 = self.I(SMA, self.data.Close, self.n1)
            self.sma2 = self.I(SMA, self.data.Close, self.n2)

        def next(self):
            if crossover(self.sma1, self.sma2):
                self.position.close()
                self.buy()
            elif crossover(self.sma2, self.sma1):
                self.position.close()
                self.sell()

    class SmaCrossLongOnly(SmaCross):
        def next(self):
            if crossover(self.sma1, self.sma2):
                self.buy()
            elif crossover(self.sma2, self.sma1):
                self.position.close()
except ImportError:  # reported in main()
    SmaCross = SmaCrossLongOnly = None


def peer(cls, goog: pd.DataFrame, cash: float, commission: float):
    from backtesting import Backtest

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "some trades remain open": compared as open below
        bt = Backtest(goog, cls, cash=cash, commission=commission)
        stats = bt.run()
    t = stats._trades
    trades = [(int(r.EntryBar), int(r.ExitBar), "long" if r.Size > 0 else "short", abs(int(r.Size))) for r in
              t.itertuples()]
    for tr in bt._results._strategy._broker.trades:  # still open at the end (not in stats._trades)
        trades.append((int(tr.entry_bar), None, "long" if tr.size > 0 else "short", abs(int(tr.size))))
    curve = stats._equity_curve["Equity"]
    return float(stats["Equity Final [$]"]), trades, curve, float(stats["Sharpe Ratio"])


def arithmetic_sharpe(v: pd.Series, init_cash: float) -> float:
    """QTOS's Sharpe (qt_assets/backtests/metrics.py): mean(r) / std(r, ddof 1) x sqrt(252), V_{-1} = initial cash."""
    r = np.diff(np.concatenate([[init_cash], v.to_numpy()])) / np.concatenate([[init_cash], v.to_numpy()[:-1]])
    return float(r.mean() / r.std(ddof=1) * np.sqrt(252))


def qtos(cfg, st, goog: pd.DataFrame, order_sizing: str | None = None):
    """(final equity, trades) of ``st`` through ``run_strategy``; ``order_sizing`` overrides the config's (only to
    show the engine's gross sizing, which no config selects)."""
    from qt_assets.backtests import runs
    from qt_assets.backtests.engine import Bars, simulate

    f = lambda c: goog[[c]].rename(columns={c: "GOOG"}).astype(float)  # noqa: E731
    bars = Bars(f("Open"), f("High"), f("Low"), f("Close"))
    if order_sizing is None:
        pf, _, _ = runs.run_strategy(cfg, st, bars)
    else:
        from qt_assets.backtests.strategies import strategy_weights
        from qt_resources.costs import CostModel

        pf = simulate(strategy_weights(st, bars.close, cfg.risk_for(st)), bars,
                      CostModel.from_config(cfg.backtest.costs), cfg.backtest.initial_cash,
                      execution=cfg.backtest.execution, order_sizing=order_sizing)
    trades = []
    for r in pf.exit_trades.records_arr:
        open_ = int(r["status"]) == 0
        trades.append((int(r["entry_idx"]), None if open_ else int(r["exit_idx"]),
                       "long" if int(r["direction"]) == 0 else "short", int(round(float(r["size"])))))
    if order_sizing is not None:
        return float(pf.qt_value.iloc[-1, 0]), sorted(trades, key=lambda t: t[0])
    from qt_assets.backtests.metrics import portfolio_metrics

    sharpe = float(portfolio_metrics(pf, cfg.backtest.initial_cash).iloc[0]["sharpe"])
    return float(pf.qt_value.iloc[-1, 0]), sorted(trades, key=lambda t: t[0]), pf.qt_value.iloc[:, 0], sharpe


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default=str(Path(__file__).with_name("reference_goog.yaml")))
    a = ap.parse_args()
    if SmaCross is None:
        print("peer: backtesting.py not installed (make install EXTRAS=bench)")
        return 2
    import backtesting
    from backtesting.test import GOOG

    from qt_resources.config import load_config

    cfg = load_config(a.config)
    bt = cfg.backtest
    commission = bt.costs.commission_bps / 1e4
    print(f"GOOG {GOOG.index[0].date()} .. {GOOG.index[-1].date()} ({len(GOOG)} bars); initial cash "
          f"{bt.initial_cash:,.0f}; commission {commission:.2%} per side; backtesting.py {backtesting.__version__}")
    failed = False
    for st in bt.strategies:
        cls = SmaCross if st.direction == "longshort" else SmaCrossLongOnly
        eq_peer, tr_peer, curve_peer, sharpe_peer = peer(cls, GOOG, bt.initial_cash, commission)
        eq, tr, curve, sharpe = qtos(cfg, st, GOOG)
        curve_diff = float(np.max(np.abs(curve.to_numpy() / curve_peer.to_numpy() - 1)))
        diff = eq / eq_peer - 1
        same = tr == tr_peer
        first = next((k for k, (x, y) in enumerate(zip(tr, tr_peer)) if x != y), None)
        print(f"\n{st.name} ({st.direction}, entry {st.entry}, {bt.shares} shares)")
        print(f"  final equity: QTOS {eq:,.2f}  backtesting.py {eq_peer:,.2f}  relative difference {diff:+.1e} "
              f"(goal within {GOAL:.1%}: {'met' if abs(diff) <= GOAL else 'NOT met'})")
        print(f"  trades: QTOS {len(tr)}  backtesting.py {len(tr_peer)}  "
              f"{'identical (entry bar, exit bar, side, shares)' if same else 'DIFFERENT'}")
        print(f"  equity curves: largest relative difference over {len(curve)} sessions {curve_diff:.1e}")
        print(f"  Sharpe: QTOS {sharpe:.4f} (arithmetic: mean/std x sqrt 252; on backtesting.py's curve "
              f"{arithmetic_sharpe(curve_peer, bt.initial_cash):.4f}); backtesting.py reports {sharpe_peer:.4f} "
              f"(geometric: annualised compounded return / its annualised volatility)")
        if not same:
            k = first if first is not None else min(len(tr), len(tr_peer))
            print(f"    first difference at trade {k}: QTOS {tr[k:k + 1]} backtesting.py {tr_peer[k:k + 1]}")
        failed |= abs(diff) > GOAL or not same or curve_diff > GOAL
        for label, upd, top in (("entry: state", {"entry": "state"}, {}),
                                ("shares: fractional", {}, {"shares": "fractional"}),
                                ("entry: state, shares: fractional", {"entry": "state"}, {"shares": "fractional"})):
            c2 = cfg.model_copy(update={"backtest": bt.model_copy(update=top)})
            e2, t2 = qtos(c2, st.model_copy(update=upd), GOOG)[:2]
            print(f"  with {label:<45} final equity {e2:>10,.2f} ({e2 / eq_peer - 1:+.2%} vs backtesting.py), "
                  f"{len(t2)} trades")
        e3, t3 = qtos(cfg, st.model_copy(update={"entry": "state"}), GOOG, order_sizing="gross")
        print(f"  with {'entry: state, sized before costs (before)':<45} final equity {e3:>10,.2f} "
              f"({e3 / eq_peer - 1:+.2%} vs backtesting.py), {len(t3)} trades")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
