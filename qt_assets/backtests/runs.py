"""Running backtests, without Dagster: the bars and the benchmark from the warehouse, one strategy through the
engine (:func:`run_strategy`), every combination of a sweep in one compiled pass (:func:`run_sweep`), the model
strategy on a model's scores (:func:`backtest_scores`, what the promotion gate backtests), and the plots.
The assets (``assets.py``) turn these into reports.

``python -m qt_assets.backtests.runs`` compiles the numba kernels into their on-disk cache (:func:`warm_up`)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd

from qt_resources.config import ProjectConfig, StrategySection
from qt_resources.costs import CostModel
from qt_resources.warehouse import Warehouse


METRIC_ROWS = ["total_return", "cagr", "ann_volatility", "sharpe", "sortino", "calmar", "max_drawdown",
               "max_drawdown_sessions", "trades", "win_rate", "profit_factor", "expectancy", "expectancy_pct",
               "avg_holding_sessions", "turnover", "exposure", "avg_gross_exposure", "fees_paid", "alpha", "beta",
               "sessions"]



def model_strategy(cfg: ProjectConfig) -> StrategySection:
    """The model strategy the promotion gate backtests: the first model strategy of the config, else one
    built from the first model agent's selection and risk limits."""
    st = next((s for s in cfg.backtest.strategies if s.kind == "model"), None)
    if st is not None:
        return st
    agent = next(a for a in cfg.agents if a.kind == "model")
    return StrategySection(name=agent.name, kind="model", selection=agent.selection, risk=cfg.risk_for(agent))



def load_bars(warehouse: Warehouse, start: str | None = None):
    from qt_assets.backtests.engine import Bars

    df = warehouse.query(
        "select symbol, strftime(session, '%Y-%m-%d') as session, adj_open, adj_high, adj_low, adj_close "
        "from stg_prices where session >= cast(coalesce(?, '1900-01-01') as date) order by session, symbol", [start])
    if df.empty:
        raise LookupError("stg_prices has no bars; materialise prices and the dbt models first")
    return Bars.from_long(df)



def load_benchmark(warehouse: Warehouse) -> pd.Series:
    b = warehouse.query("select strftime(session, '%Y-%m-%d') as session, ret_1d from benchmark_daily order by session")
    return pd.Series(b["ret_1d"].to_numpy(), index=pd.DatetimeIndex(b["session"]), name="benchmark")



def run_strategy(cfg: ProjectConfig, st: StrategySection, bars, scores: pd.DataFrame | None = None):
    """(portfolio, weights) of one strategy on ``bars`` (model strategies: on the scores' sessions plus one
    bar to fill the last decision)."""
    from qt_assets.backtests.engine import Stops, simulate
    from qt_assets.backtests.strategies import strategy_weights

    risk = cfg.risk_for(st)
    w = strategy_weights(st, bars.close, risk, scores=scores)  # sized on the whole history (vol_target)
    if st.kind == "model":
        first, last = pd.Timestamp(scores["session"].min()), pd.Timestamp(scores["session"].max())
        later = bars.close.index[bars.close.index > last]
        bars = bars.slice(first, later[0] if len(later) else last)
    pf = simulate(w, bars, CostModel.from_config(cfg.backtest.costs), cfg.backtest.initial_cash,
                  execution=cfg.backtest.execution, stops=Stops(st.stops.sl, st.stops.tp, st.stops.trailing),
                  rebalance_band=st.rebalance_band, min_order_value=st.min_order_value,
                  order_sizing=cfg.backtest.order_sizing)
    return pf, w, bars



def buy_and_hold_equal(cfg: ProjectConfig, bars):
    from qt_assets.backtests.engine import simulate

    c = bars.close
    w = pd.DataFrame(1.0 / c.shape[1], index=c.index[:1], columns=c.columns)
    return simulate(w, bars, CostModel.from_config(cfg.backtest.costs), cfg.backtest.initial_cash,
                    execution=cfg.backtest.execution, order_sizing=cfg.backtest.order_sizing)



def benchmark_value(bench: pd.Series, index: pd.DatetimeIndex, init_cash: float) -> pd.Series:
    """Buy-and-hold of the benchmark from the close of the first session (no return on it, like the strategy,
    whose first decision fills on the second session)."""
    r = bench.reindex(index).fillna(0.0)
    r.iloc[0] = 0.0
    return init_cash * (1 + r).cumprod()



def backtest_scores(cfg: ProjectConfig, warehouse: Warehouse, scores: pd.DataFrame):
    """The model strategy's portfolio on ``scores`` (session, symbol, score): used by the promotion gate."""
    bars = load_bars(warehouse, str(scores["session"].min()))
    pf, _, _ = run_strategy(cfg, model_strategy(cfg), bars, scores)
    return pf



def equity_png(curves: dict[str, pd.Series], title: str, path: Path) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(9, 5.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    for i, (name, v) in enumerate(curves.items()):
        ax1.plot(v.index, v.values, label=name, lw=1.4 if i == 0 else 1.0, alpha=1.0 if i == 0 else 0.75)
    ax1.set_title(title, fontsize=10)
    ax1.set_ylabel("equity")
    ax1.legend(loc="upper left", fontsize=8)
    ax1.grid(alpha=0.3)
    v = next(iter(curves.values()))
    dd = v / v.cummax() - 1
    ax2.fill_between(dd.index, dd.values, 0, color="tab:red", alpha=0.4)
    ax2.set_ylabel("drawdown")
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)



def _save(fig, path: Path) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue())
    return buf.getvalue()



def heatmap_png(table: pd.DataFrame, metric: str, title: str, path: Path) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5.5))
    im = ax.imshow(table.to_numpy(dtype=float), origin="lower", aspect="auto", cmap="RdYlGn")
    ax.set_xticks(range(table.shape[1]), [f"{c:g}" for c in table.columns], rotation=90, fontsize=7)
    ax.set_yticks(range(table.shape[0]), [f"{c:g}" for c in table.index], fontsize=7)
    ax.set_xlabel(table.columns.name)
    ax.set_ylabel(table.index.name)
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, label=metric)
    fig.tight_layout()
    return _save(fig, path)



def finite(x):
    x = float(x)
    return x if np.isfinite(x) else None


def shown(x, spec: str = ".2f") -> str:
    """A metric for a log line or a report: "undefined" when it is NaN or infinite (a Sharpe of a flat book)."""
    x = float(x)
    return format(x, spec) if np.isfinite(x) else "undefined"


def pick_best(table: pd.DataFrame, metric: str = "sharpe") -> tuple[int | None, str]:
    """The row of a sweep's best combination by ``metric`` among those that traded and have the metric defined
    (position in ``table``), or None with the reason: a combination that never trades is not a candidate, so a
    sweep in which none trades names no best."""
    traded = table["trades"].to_numpy() > 0
    ok = traded & np.isfinite(table[metric].to_numpy(dtype=float))
    if not ok.any():
        why = (f"none of the {len(table)} combinations placed a trade" if not traded.any() else
               f"no combination that traded has a defined {metric}")
        return None, why
    vals = np.where(ok, table[metric].to_numpy(dtype=float), -np.inf)
    return int(vals.argmax()), f"{int(ok.sum())} of {len(table)} combinations traded"



def run_sweep(cfg: ProjectConfig, st: StrategySection, bars, bench: pd.Series | None = None):
    """Metrics of every combination of the sweep (one row each, params as columns), in one compiled pass
    (:mod:`qt_assets.backtests.sweep`)."""
    from qt_assets.backtests.strategies import sweep_grid
    from qt_assets.backtests.sweep import sweep_metrics

    combos = sweep_grid(st)
    if not combos:
        raise ValueError(f"backtest.strategies[{st.name}].sweep: no valid combination")
    bt = cfg.backtest
    m = sweep_metrics(st, cfg.risk_for(st), combos, bars, CostModel.from_config(bt.costs), bt.initial_cash,
                      bt.execution, bench, chunk_cells=bt.sweep_chunk_cells, threads=bt.sweep_threads,
                      order_sizing=bt.order_sizing)
    return pd.concat([pd.DataFrame(combos, index=m.index), m], axis=1)



def warm_up() -> None:
    """Compile vectorbt's, the engine's and the sweep's numba kernels (cached on disk) and build matplotlib's font
    cache once, so the first backtest report and sweep are fast (the sweep kernel alone compiles in ~25 s)."""
    import tempfile

    from qt_assets.backtests.engine import Bars, Stops, simulate
    from qt_assets.backtests.metrics import portfolio_metrics

    idx = pd.date_range("2020-01-01", periods=30, freq="B")
    px = pd.DataFrame(100.0 + np.arange(60).reshape(30, 2), index=idx, columns=["A", "B"])
    from qt_assets.backtests.strategies import size_weights
    from qt_resources.config import RiskLimits, SizingSection

    w = size_weights(pd.DataFrame(1.0, index=idx, columns=px.columns), px, SizingSection(), RiskLimits(), 2)
    bars = Bars(px, px, px, px)
    pf = simulate(w, bars, CostModel(1, 1), 1e4, stops=Stops(sl=0.1), order_sizing="whole")
    portfolio_metrics(pf, 1e4)
    from qt_assets.backtests.sweep import sweep_metrics
    from qt_resources.config import StrategySection

    st = StrategySection(name="warm", kind="rule", rule="sma_cross", sweep={"fast": [2], "slow": [5]})
    sweep_metrics(st, RiskLimits(), [{"fast": 2, "slow": 5}], bars, CostModel(1, 1), 1e4, "next_open",
                  bench=px["A"].pct_change())
    with tempfile.TemporaryDirectory() as d:
        equity_png({"a": pf.qt_value.iloc[:, 0]}, "warm-up", Path(d) / "warm.png")



if __name__ == "__main__":
    warm_up()
