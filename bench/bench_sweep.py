"""SMA-crossover parameter sweep: the vectorised sweep vs a per-combination loop vs backtesting.py, in one run.

Seeded synthetic daily bars (10 symbols x 10 years of XNYS-like sessions, consistent OHLC). Grid: 100 fast
windows x 100 slow windows (fast 2..101, slow 105..402 step 3: every pair valid) = 10,000 combinations; each
combination is one long-only 10-symbol portfolio with shared cash (equal sizing, 2 % rebalance band, 5 bps commission with a $1
minimum, 2 bps slippage, next-open fills), exactly as the `sweep_report` asset runs it (`run_sweep`).

  * sweep:       `qt_assets.backtests.runs.run_sweep` over the whole grid: one compiled kernel call (qt_assets/backtests/sweep.py)
                 on all cores numba sees, then again on one thread; metrics for every combination included.
  * loop:        the same engine called once per combination (weights + `simulate` + metrics), on a sample of
                 combinations; its time per combination is the plain-loop baseline.
  * single-symbol: the grid swept on each symbol alone (10 x 10,000 one-symbol backtests, the peer's unit) and
                 a loop of one-symbol backtests through the same engine.
  * peer:        backtesting.py's `Backtest.optimize` (SmaCross on ONE symbol, 5 bps commission) over a sample grid;
                 time per combination. Installed only as a bench extra (AGPL-3.0): `make install EXTRAS=bench`.

The kernels are compiled (or loaded from numba's on-disk cache) by a warm-up first, so compile time is not
counted (the warm-up time is printed too). Results: per-combination times and ratios.

    .venv/bin/python bench/bench_sweep.py [--symbols 10 --years 10 --fast 100 --slow 100 --loop-sample 60
                                           --peer-sample 100 --seed 7]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("TQDM_DISABLE", "1")  # the peer's progress bars


def synthetic_bars(n_sym: int, years: int, seed: int):
    from qt_assets.backtests.engine import Bars

    rng = np.random.default_rng(seed)
    n = 252 * years
    idx = pd.bdate_range("2010-01-04", periods=n)
    cols = [f"S{i:02d}" for i in range(n_sym)]
    mkt = rng.normal(0.0003, 0.01, (n, 1))
    lr = mkt + rng.normal(0.0, 0.015, (n, n_sym))
    close = 50 * np.exp(np.cumsum(lr, 0))
    open_ = np.vstack([close[:1], close[:-1]]) * np.exp(rng.normal(0, 0.004, (n, n_sym)))
    hi = np.maximum(open_, close) * np.exp(np.abs(rng.normal(0, 0.006, (n, n_sym))))
    lo = np.minimum(open_, close) * np.exp(-np.abs(rng.normal(0, 0.006, (n, n_sym))))
    f = lambda a: pd.DataFrame(a, index=idx, columns=cols)  # noqa: E731
    return Bars(f(open_), f(hi), f(lo), f(close))


def config(symbols, fast, slow, chunk_cells=2_000_000, threads=0):
    from qt_resources.config import parse_config

    return parse_config({
        "universe": {"symbols": symbols}, "data": {"start": "2010-01-04", "end": "2030-12-31"},
        "features": {"set": ["ret_1d"]}, "research": {"split": {"train_end": "2011-12-30"}},
        "agents": [{"name": "a", "kind": "model", "model": "qtos_xgb", "selection": {"top_k": 1}}],
        "risk": {"max_position_pct": 1.0, "max_gross_exposure": 1.0},
        "backtest": {"costs": {"commission_bps": 5, "min_commission": 1.0, "slippage_bps": 2},
                     "sweep_chunk_cells": chunk_cells, "sweep_threads": threads,
                     "strategies": [{"name": "sma", "kind": "rule", "rule": "sma_cross", "rebalance_band": 0.02,
                                     "sweep": {"fast": fast, "slow": slow}}]}})


def sma_np(x, n):
    return pd.Series(x).rolling(n).mean().to_numpy()


try:  # the peer's strategy class must be importable (backtesting.py optimises in worker processes)
    from backtesting import Strategy
    from backtesting.lib import crossover

    class SmaCross(Strategy):
        n1, n2 = 10, 120

        def init(self):
            self.s1 = self.I(sma_np, self.data.Close, self.n1)
            self.s2 = self.I(sma_np, self.data.Close, self.n2)

        def next(self):
            if crossover(self.s1, self.s2):
                self.buy()
            elif crossover(self.s2, self.s1):
                self.position.close()
except ImportError:  # pragma: no cover - bench extra not installed
    SmaCross = None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--symbols", type=int, default=10)
    ap.add_argument("--years", type=int, default=10)
    ap.add_argument("--fast", type=int, default=100)
    ap.add_argument("--slow", type=int, default=100)
    ap.add_argument("--loop-sample", type=int, default=60)
    ap.add_argument("--peer-sample", type=int, default=100)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--chunk-cells", type=int, default=2_000_000, help="backtest.sweep_chunk_cells")
    a = ap.parse_args()

    from qt_assets.backtests.runs import run_strategy, run_sweep, warm_up
    from qt_assets.backtests.metrics import portfolio_metrics

    print(f"load average {os.getloadavg()[0]:.2f}; {os.cpu_count()} cores")
    t = time.perf_counter()
    warm_up()
    print(f"warm-up (numba compile / cache load): {time.perf_counter() - t:.1f} s")
    bars = synthetic_bars(a.symbols, a.years, a.seed)
    fast = list(range(2, 2 + a.fast))
    slow = list(range(105, 105 + 3 * a.slow, 3))
    cfg = config(list(bars.close.columns), fast, slow, a.chunk_cells)
    st = cfg.backtest.strategies[0]
    n_combo = len(fast) * len(slow)
    print(f"bars: {len(bars.close)} sessions x {a.symbols} symbols; grid {len(fast)} x {len(slow)} = {n_combo} combinations")

    import numba

    t = time.perf_counter()
    table = run_sweep(cfg, st, bars)
    t_sweep = time.perf_counter() - t
    assert len(table) == n_combo
    per_sweep = t_sweep / n_combo
    print(f"sweep:  {t_sweep:.2f} s for {n_combo} combinations on {numba.config.NUMBA_NUM_THREADS} threads = "
          f"{per_sweep * 1e3:.3f} ms per combination ({per_sweep / a.symbols * 1e3:.4f} ms per combination x symbol); "
          f"best Sharpe {table['sharpe'].max():.2f}")
    cfg_1t = config(list(bars.close.columns), fast, slow, a.chunk_cells, threads=1)
    t = time.perf_counter()
    table_1t = run_sweep(cfg_1t, cfg_1t.backtest.strategies[0], bars)
    per_sweep_1t = (time.perf_counter() - t) / n_combo
    assert table_1t.equals(table)
    print(f"        one thread: {per_sweep_1t * n_combo:.2f} s = {per_sweep_1t * 1e3:.3f} ms per combination "
          "(same table)")

    rng = np.random.default_rng(a.seed)
    sample = table.iloc[rng.choice(n_combo, size=min(a.loop_sample, n_combo), replace=False)]
    t = time.perf_counter()
    worst = 0.0
    for _, row in sample.iterrows():
        one = st.model_copy(update={"params": {"fast": row["fast"], "slow": row["slow"]}, "sweep": {}})
        pf, _, _ = run_strategy(cfg, one, bars)
        m = portfolio_metrics(pf, cfg.backtest.initial_cash).iloc[0]
        worst = max(worst, abs(m["total_return"] - row["total_return"]))
    t_loop = time.perf_counter() - t
    per_loop = t_loop / len(sample)
    print(f"loop:   {t_loop:.1f} s for {len(sample)} combinations = {per_loop * 1e3:.1f} ms per combination "
          f"(same results as the sweep: max |total_return diff| {worst:.1e})")
    print(f"        -> sweep is {per_loop / per_sweep:.0f}x faster per combination than the loop "
          f"({per_loop / per_sweep_1t:.0f}x on one thread)")

    # the unit of backtesting.py: one symbol per backtest. Sweep the grid on each symbol alone (10 x 10,000
    # single-symbol backtests) and loop over single-symbol combinations through the same engine.
    t = time.perf_counter()
    for sym in bars.close.columns:
        one_bars = type(bars)(*(getattr(bars, k)[[sym]] for k in ("open", "high", "low", "close")))
        cfg1 = config([sym], fast, slow, a.chunk_cells)
        assert len(run_sweep(cfg1, cfg1.backtest.strategies[0], one_bars)) == n_combo
    t_sym = time.perf_counter() - t
    per_sym = t_sym / (n_combo * a.symbols)
    sym0 = bars.close.columns[0]
    bars0 = type(bars)(*(getattr(bars, k)[[sym0]] for k in ("open", "high", "low", "close")))
    cfg0 = config([sym0], fast, slow, a.chunk_cells)
    st0 = cfg0.backtest.strategies[0]
    t = time.perf_counter()
    for _, row in sample.iterrows():
        one = st0.model_copy(update={"params": {"fast": row["fast"], "slow": row["slow"]}, "sweep": {}})
        pf, _, _ = run_strategy(cfg0, one, bars0)
        portfolio_metrics(pf, cfg0.backtest.initial_cash)
    per_loop1 = (time.perf_counter() - t) / len(sample)
    print(f"single-symbol: sweep {t_sym:.1f} s for {n_combo} combinations x {a.symbols} symbols = {per_sym * 1e3:.3f} ms "
          f"per one-symbol backtest; loop {per_loop1 * 1e3:.1f} ms -> sweep {per_loop1 / per_sym:.0f}x faster")

    try:
        from backtesting import Backtest
    except ImportError:
        print("peer:   backtesting.py not installed (make install EXTRAS=bench); skipped")
        return

    sym = bars.close.columns[0]
    df = pd.DataFrame({"Open": bars.open[sym], "High": bars.high[sym], "Low": bars.low[sym], "Close": bars.close[sym],
                       "Volume": 1e6})
    side = max(2, int(np.sqrt(a.peer_sample)))
    pf_fast, pf_slow = fast[:: max(1, len(fast) // side)][:side], slow[:: max(1, len(slow) // side)][:side]
    import warnings

    warnings.filterwarnings("ignore")
    bt = Backtest(df, SmaCross, cash=100_000, commission=0.0005, finalize_trades=True)
    t = time.perf_counter()
    stats = bt.optimize(n1=pf_fast, n2=pf_slow, maximize="Sharpe Ratio", return_heatmap=True, max_tries=None)
    t_peer = time.perf_counter() - t
    n_peer = len(stats[1])
    per_peer = t_peer / n_peer
    print(f"\npeer:   backtesting.py {Backtest.__module__.split('.')[0]} optimize on 1 symbol: {t_peer:.1f} s for {n_peer} "
          f"combinations = {per_peer * 1e3:.1f} ms per combination")
    print(f"        -> sweep is {per_peer / per_sweep:.0f}x faster per combination (10 symbols vs its 1), "
          f"{per_peer / (per_sweep / a.symbols):.0f}x per combination x symbol; single-symbol sweep "
          f"{per_peer / per_sym:.0f}x per one-symbol backtest")


if __name__ == "__main__":
    main()
