"""Backtest assets: one ``backtest_report/<strategy>`` per strategy of ``backtest.strategies`` and one
``sweep_report/<strategy>`` per strategy with a ``sweep`` grid. Everything goes through the one engine
(:mod:`qt_assets.backtests.engine`: next-bar fills, the shared cost model, stops) with weights from
:mod:`qt_assets.backtests.strategies` and metrics from :mod:`qt_assets.backtests.metrics` (formulas in their docstrings).

- Rule strategies run over every stored session of the data; model strategies over the trained challenger's
  out-of-sample scores (``research/test_scores``), the window no model version was fit or tuned on.
- Each report: metrics table (strategy, equal-weight universe buy-and-hold, the configured benchmark
  buy-and-hold), equity curves with the drawdown underneath (PNG in the Dagster UI), the trades as a CSV file,
  stop exits; for a model strategy the same metrics are logged to the model version's MLflow run.
- A sweep runs every combination in one compiled pass on all cores (:mod:`qt_assets.backtests.sweep`: per combination the
  same direction, sizing, simulation and metric functions as a single backtest, so each row equals its own
  backtest), stores every combination's metrics, draws a Sharpe heat-map and reports the best combination with
  its probabilistic and deflated Sharpe ratios.
"""


import base64
import io
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd

from qt_resources.config import ProjectConfig, StrategySection
from qt_resources.costs import CostModel
from qt_resources.registry import MlflowRegistry
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
                  rebalance_band=st.rebalance_band, min_order_value=st.min_order_value)
    return pf, w, bars


def buy_and_hold_equal(cfg: ProjectConfig, bars):
    from qt_assets.backtests.engine import simulate

    c = bars.close
    w = pd.DataFrame(1.0 / c.shape[1], index=c.index[:1], columns=c.columns)
    return simulate(w, bars, CostModel.from_config(cfg.backtest.costs), cfg.backtest.initial_cash,
                    execution=cfg.backtest.execution)


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


def write_report(cfg: ProjectConfig, name: str, pf, bars, bench: pd.Series, folder: Path, title: str):
    """The report every backtest asset shows: the metrics table (strategy, equal-weight universe and benchmark
    buy-and-hold), the equity curves with the drawdown underneath (``folder/equity.png``) and the trades
    (``folder/trades.csv``). Returns (table, metadata)."""
    from qt_assets.backtests.metrics import portfolio_metrics, returns_metrics

    init = cfg.backtest.initial_cash
    ew_pf = buy_and_hold_equal(cfg, bars)
    bv = benchmark_value(bench, bars.close.index, init)
    bench_name = f"benchmark_{cfg.universe.benchmark}"
    table = pd.concat([portfolio_metrics(pf, init, bench).iloc[0].rename("strategy"),
                       portfolio_metrics(ew_pf, init, bench).iloc[0].rename("equal_weight_buy_hold"),
                       returns_metrics(bv.to_frame(), init).iloc[0].rename(bench_name)], axis=1).reindex(METRIC_ROWS)
    window = f"{bars.close.index[0]:%Y-%m-%d}..{bars.close.index[-1]:%Y-%m-%d}"
    png = equity_png({name: pf.qt_value.iloc[:, 0], "equal-weight buy & hold": ew_pf.qt_value.iloc[:, 0],
                      f"benchmark ({cfg.universe.benchmark})": bv}, f"{title}, {window}", folder / "equity.png")
    pf.exit_trades.records_readable.to_csv(folder / "trades.csv", index=False)
    m = table["strategy"]
    return table, {
        **{k: finite(m[k]) for k in ("total_return", "cagr", "sharpe", "sortino", "max_drawdown", "calmar",
                                     "turnover", "fees_paid")},
        "trades": int(m["trades"]),
        "window": window,
        "metrics": dg.MetadataValue.md(table.to_markdown(floatfmt=".4f")),
        "equity_curve": png_md(png, "equity"),
        "report_path": dg.MetadataValue.path(str(folder / "equity.png")),
        "trades_path": dg.MetadataValue.path(str(folder / "trades.csv")),
        "config_fingerprint": cfg.fingerprint(),
    }


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


def png_md(png: bytes, alt: str) -> dg.MetadataValue:
    return dg.MetadataValue.md(f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode()})")


def finite(x):
    x = float(x)
    return x if np.isfinite(x) else None


def build_backtest_assets(cfg: ProjectConfig, features_key: dg.AssetKey) -> list:
    out = []
    for st in cfg.backtest.strategies:
        out.append(_report_asset(cfg, st, features_key))
        if st.kind == "rule" and st.sweep:
            out.append(_sweep_asset(cfg, st, features_key))
    return out


def _describe(cfg: ProjectConfig, st: StrategySection) -> str:
    what = (f"model scores of the trained challenger ({st.model or cfg.research.model.name}), top_k="
            f"{st.selection.top_k}" if st.kind == "model" else f"rule {st.rule} {st.rule_params()}")
    c = cfg.backtest.costs
    return (f"{st.direction} {what}; sizing {st.sizing.kind}; fills at the {cfg.backtest.execution.replace('_', ' ')} "
            f"of the bar after the decision; {c.commission_bps} bps commission (min {c.min_commission}), "
            f"{c.slippage_bps} bps slippage, {c.spread_bps} bps spread")


def _report_asset(cfg: ProjectConfig, st: StrategySection, features_key) -> dg.AssetsDefinition:
    deps = [features_key] + ([dg.AssetKey("trained_model")] if st.kind == "model" else [])

    @dg.asset(key=["backtest_report", st.name], group_name="backtests", deps=deps, kinds={"vectorbt"},
              backfill_policy=dg.BackfillPolicy.single_run(),
              description=f"Backtest of strategy '{st.name}': {_describe(cfg, st)}.")
    def report(context: dg.AssetExecutionContext, warehouse: Warehouse, model_registry: MlflowRegistry):
        from qt_assets.backtests.engine import stop_exits

        scores = warehouse.read_table("research/test_scores") if st.kind == "model" else None
        bars = load_bars(warehouse, str(scores["session"].min()) if scores is not None else None)
        bench = load_benchmark(warehouse)
        pf, _, bars = run_strategy(cfg, st, bars, scores)
        folder = cfg.reports_dir / "backtests" / st.name
        table, meta = write_report(cfg, st.name, pf, bars, bench, folder, st.name)
        m = table["strategy"]
        stops = stop_exits(pf)
        version = None
        if scores is not None:
            version = str(scores["model_version"].iloc[0])
            _log_to_mlflow(model_registry, st.model or cfg.research.model.name, version, st.name, m, folder / "equity.png")
        context.log.info(f"{st.name}: total return {m['total_return']:.2%}, Sharpe {m['sharpe']:.2f} over {meta['window']}")
        return dg.MaterializeResult(metadata={
            **meta,
            "stop_exits": dg.MetadataValue.md(stops.groupby("kind").size().to_frame("exits").to_markdown()
                                              if len(stops) else "none"),
            "model_version": version or "n/a",
            "execution": f"{cfg.backtest.execution.replace('_', ' ')} of the bar after the decision",
        })

    return report


def _log_to_mlflow(registry: MlflowRegistry, name: str, version: str, strategy: str, m: pd.Series, png: Path) -> None:
    """The backtest metrics on the model version's training run, prefixed ``bt_<strategy>_``."""
    client = registry.client()
    run_id = client.get_model_version(name, version).run_id
    for k, v in m.items():
        if v is not None and np.isfinite(float(v)):
            client.log_metric(run_id, f"bt_{strategy}_{k}", float(v))
    client.log_artifact(run_id, str(png), artifact_path=f"backtests/{strategy}")


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
                      bt.execution, bench, chunk_cells=bt.sweep_chunk_cells, threads=bt.sweep_threads)
    return pd.concat([pd.DataFrame(combos, index=m.index), m], axis=1)


def _sweep_asset(cfg: ProjectConfig, st: StrategySection, features_key) -> dg.AssetsDefinition:
    keys = list(st.sweep)

    @dg.asset(key=["sweep_report", st.name], group_name="backtests", deps=[features_key], kinds={"vectorbt"},
              backfill_policy=dg.BackfillPolicy.single_run(),
              description=(f"Parameter sweep of strategy '{st.name}' over {st.sweep}: every combination in one "
                           f"compiled pass on all cores; best by Sharpe with probabilistic and deflated Sharpe."))
    def sweep(context: dg.AssetExecutionContext, warehouse: Warehouse):
        from qt_assets.backtests.engine import YEAR_SESSIONS
        from qt_assets.backtests.metrics import deflated_sharpe, probabilistic_sharpe, returns_from_value

        bars = load_bars(warehouse)
        bench = load_benchmark(warehouse)
        table = run_sweep(cfg, st, bars, bench)
        table_path = warehouse.write_table(f"backtests/{st.name}/sweep", table)
        best_i = int(table["sharpe"].fillna(-np.inf).to_numpy().argmax())
        best = {k: float(table[k].iloc[best_i]) for k in keys}
        best_st = st.for_combo(best)
        pf, _, _ = run_strategy(cfg, best_st, bars)
        r = returns_from_value(pf.qt_value, cfg.backtest.initial_cash).iloc[:, 0].to_numpy()
        trial_srs = table["sharpe"].to_numpy() / np.sqrt(YEAR_SESSIONS)
        dsr, sr0 = deflated_sharpe(r, trial_srs)
        psr = probabilistic_sharpe(r, 0.0)
        folder = cfg.reports_dir / "backtests" / st.name
        x, y = (keys + keys)[:2] if len(keys) == 1 else keys[:2]
        grid = table.pivot_table(index=y, columns=x, values="sharpe", aggfunc="max")
        png = heatmap_png(grid, "Sharpe", f"{st.name}: Sharpe by {y} x {x} ({len(table)} combinations)",
                          folder / "sweep_heatmap.png")
        top = table.sort_values("sharpe", ascending=False).head(10)
        verdict = ("best combination's Sharpe survives the selection among "
                   f"{len(table)} trials (DSR {dsr:.2f} >= 0.95)" if dsr >= 0.95 else
                   f"best combination is not significant after {len(table)} trials (DSR {dsr:.2f} < 0.95): "
                   "likely a lucky winner")
        context.log.info(f"sweep {st.name}: best {best} Sharpe {table['sharpe'].iloc[best_i]:.2f}; {verdict}")
        return dg.MaterializeResult(metadata={
            "combinations": len(table),
            "best_params": dg.MetadataValue.json({k: float(v) for k, v in best.items()}),
            "best_sharpe": finite(table["sharpe"].iloc[best_i]),
            "best_psr": finite(psr),
            "deflated_sharpe": finite(dsr),
            "expected_max_sharpe_annual": finite(sr0 * np.sqrt(YEAR_SESSIONS)),
            "verdict": verdict,
            "top10": dg.MetadataValue.md(top[keys + ["sharpe", "cagr", "max_drawdown", "trades", "turnover"]]
                                         .to_markdown(index=False, floatfmt=".4f")),
            "heatmap": png_md(png, "sweep"),
            "table_path": dg.MetadataValue.path(str(table_path)),
            "config_fingerprint": cfg.fingerprint(),
        })

    return sweep


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
    pf = simulate(w, bars, CostModel(1, 1), 1e4, stops=Stops(sl=0.1))
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
