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
import json
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd

from qt_assets.backtests.runs import (METRIC_ROWS, benchmark_value, buy_and_hold_equal, equity_png, finite, heatmap_png,
                                      load_bars, load_benchmark, pick_best, run_strategy, run_sweep, shown)
from qt_resources.config import ProjectConfig, StrategySection
from qt_resources.registry import MlflowRegistry
from qt_resources.warehouse import Warehouse


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


def trades_check(trades: int, expected: bool) -> dg.AssetCheckResult:
    """placed_trades: a report with no trade fails (ERROR) unless the strategy expects none (expect_trades: false)."""
    ok = trades > 0 or not expected
    return dg.AssetCheckResult(check_name="placed_trades", passed=ok, severity=dg.AssetCheckSeverity.ERROR,
                               metadata={"trades": trades, "expect_trades": expected,
                                         "why": "placed trades" if trades else
                                         ("no trade, as the config expects" if not expected else
                                          "no trade: the strategy's targets never became orders")})


def strategy_config(cfg: ProjectConfig, st: StrategySection) -> dict:
    """What a backtest of ``st`` depends on in the config: the strategy, the backtest settings and its risk
    limits (compared between entries by the scoreboard and between materialisations by ``qt_jobs.compare``)."""
    bt = cfg.backtest
    return {"strategy": json.loads(st.model_dump_json(exclude={"risk"})),
            "backtest": {"costs": bt.costs.model_dump(), "execution": bt.execution, "shares": bt.shares,
                         "initial_cash": bt.initial_cash},
            "risk": cfg.risk_for(st).model_dump()}


def png_md(png: bytes, alt: str) -> dg.MetadataValue:
    return dg.MetadataValue.md(f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode()})")


def build_backtest_assets(cfg: ProjectConfig, features_key: dg.AssetKey) -> list:
    out = []
    for st in cfg.backtest.strategies:
        out.append(_report_asset(cfg, st, features_key))
        if st.kind == "rule" and st.sweep:
            out.append(_sweep_asset(cfg, st, features_key))
    if cfg.backtest.strategies or cfg.agents:
        out.append(_scoreboard_asset(cfg))
    return out


def _scoreboard_asset(cfg: ProjectConfig) -> dg.AssetsDefinition:
    strategies = [st.name for st in cfg.backtest.strategies]
    agents = [a.name for a in cfg.agents]
    deps = ([dg.AssetKey(["backtest_report", n]) for n in strategies]
            + [dg.AssetKey(["sweep_report", st.name]) for st in cfg.backtest.strategies if st.kind == "rule" and st.sweep]
            + [dg.AssetKey(["agent_report", n]) for n in agents])

    @dg.asset(name="scoreboard", group_name="scoreboard", deps=deps, kinds={"parquet"},
              backfill_policy=dg.BackfillPolicy.single_run(),
              description="Every strategy and agent ranked on one common window (the sessions all of them cover) "
                          "with the same metrics, the deflated Sharpe ratio where a sweep chose the parameters, the "
                          "config keys in which the entries differ, and their equity curves in one plot.")
    def scoreboard(context: dg.AssetExecutionContext, warehouse: Warehouse):
        from qt_assets.backtests.engine import YEAR_SESSIONS
        from qt_assets.backtests.scoreboard import config_deltas, score, scoreboard_png

        curves, kinds, configs, sweeps, missing = {}, {}, {}, {}, []
        by_name = {st.name: st for st in cfg.backtest.strategies}
        for name, table, kind in ([(n, f"backtests/{n}/equity", "strategy") for n in strategies]
                                  + [(n, f"agents/{n}/equity", "agent") for n in agents]):
            if not warehouse.table_exists(table):
                missing.append(name)
                continue
            df = warehouse.read_table(table)
            label = name if kind == "strategy" or name not in by_name else f"agent {name}"
            curves[label] = pd.Series(df["value"].to_numpy(dtype=float), index=pd.DatetimeIndex(df["session"]))
            if kind == "strategy":
                st = by_name[name]
                kinds[label] = f"strategy ({st.kind})"
                configs[label] = strategy_config(cfg, st)
                if st.kind == "rule" and st.sweep and warehouse.table_exists(f"backtests/{name}/sweep"):
                    sw = warehouse.read_table(f"backtests/{name}/sweep")
                    sr = sw.loc[sw["trades"] > 0, "sharpe"].to_numpy(dtype=float)
                    sweeps[label] = sr[np.isfinite(sr)] / np.sqrt(YEAR_SESSIONS)
            else:
                a = next(a for a in cfg.agents if a.name == name)
                kinds[label] = f"agent ({a.kind})"
                own = {k: v for k, v in json.loads(a.model_dump_json()).items()
                       if k in ("kind", "rebalance_band", "allow_regimes", "mode", "on_llm_error", "features")}
                signal = {**json.loads(a.strategy().model_dump_json(exclude={"risk"})),
                          "rebalance_band": a.rebalance_band}  # the agent's (it keeps a held position)
                configs[label] = {"strategy": signal,
                                  "backtest": {"costs": cfg.backtest.costs.model_dump(), "execution": "next_open",
                                               "shares": "whole", "initial_cash": cfg.broker.initial_cash},
                                  "risk": cfg.risk_for(a).model_dump(), "agent": own}
        table, win, why = score(curves, kinds, sweeps)
        md = {"entries": len(curves), "not_yet_materialised": ", ".join(missing) or "none"}
        if why is not None:
            context.log.warning(f"scoreboard: {why}")
            return dg.MaterializeResult(metadata={**md, "warning": why})
        window = f"{win[0]:%Y-%m-%d}..{win[1]:%Y-%m-%d}"
        warehouse.write_table("scoreboard", table.reset_index(names="entry").astype({"kind": str}))
        png = scoreboard_png(curves, win, table, cfg.reports_dir / "scoreboard.png")
        deltas = config_deltas(configs)
        best = table.index[0]
        context.log.info(f"scoreboard on {window}: 1. {best} (Sharpe {float(table['sharpe'].iloc[0]):.2f}) of "
                         f"{len(table)}")
        return dg.MaterializeResult(metadata={
            **md, "window": window, "sessions": int(table["sessions"].iloc[0]), "best": best,
            "ranking": dg.MetadataValue.md(table.to_markdown(floatfmt=".4f")),
            "config_deltas": dg.MetadataValue.md(deltas.to_markdown() if deltas.shape[1] else "no difference"),
            "equity_curves": png_md(png, "scoreboard"),
            "plot_path": dg.MetadataValue.path(str(cfg.reports_dir / "scoreboard.png")),
            "config_fingerprint": cfg.fingerprint()})

    return scoreboard


def _describe(cfg: ProjectConfig, st: StrategySection) -> str:
    what = (f"model scores of the trained challenger ({st.model or cfg.research.model.name}), top_k="
            f"{st.selection.top_k}" if st.kind == "model" else f"rule {st.rule} {st.rule_params()}")
    c = cfg.backtest.costs
    return (f"{st.direction} {what}; sizing {st.sizing.kind}; fills at the {cfg.backtest.execution.replace('_', ' ')} "
            f"of the bar after the decision; {c.commission_bps} bps commission (min {c.min_commission}), "
            f"{c.slippage_bps} bps slippage, {c.spread_bps} bps spread")


def _report_asset(cfg: ProjectConfig, st: StrategySection, features_key) -> dg.AssetsDefinition:
    deps = [features_key] + ([dg.AssetKey("trained_model")] if st.kind == "model" else [])

    key = dg.AssetKey(["backtest_report", st.name])

    @dg.asset(key=key, group_name="backtests", deps=deps, kinds={"vectorbt"},
              backfill_policy=dg.BackfillPolicy.single_run(),
              check_specs=[dg.AssetCheckSpec("placed_trades", asset=key, description=(
                  "the backtest placed at least one trade (fails on a report whose targets were all swallowed by "
                  "sizing, bands or caps, unless the strategy sets expect_trades: false)"))],
              description=f"Backtest of strategy '{st.name}': {_describe(cfg, st)}.")
    def report(context: dg.AssetExecutionContext, warehouse: Warehouse, model_registry: MlflowRegistry):
        from qt_assets.backtests.engine import stop_exits

        scores = warehouse.read_table("research/test_scores") if st.kind == "model" else None
        bars = load_bars(warehouse, str(scores["session"].min()) if scores is not None else cfg.data.start.isoformat())
        bench = load_benchmark(warehouse)
        pf, _, bars = run_strategy(cfg, st, bars, scores)
        folder = cfg.reports_dir / "backtests" / st.name
        table, meta = write_report(cfg, st.name, pf, bars, bench, folder, st.name)
        m = table["strategy"]
        v = pf.qt_value.iloc[:, 0]
        warehouse.write_table(f"backtests/{st.name}/equity",  # for the scoreboard
                              pd.DataFrame({"session": v.index.strftime("%Y-%m-%d"), "value": v.to_numpy()}))
        stops = stop_exits(pf)
        version = None
        if scores is not None:
            version = str(scores["model_version"].iloc[0])
            _log_to_mlflow(model_registry, st.model or cfg.research.model.name, version, st.name, m, folder / "equity.png")
        context.log.info(f"{st.name}: total return {shown(m['total_return'], '.2%')}, Sharpe {shown(m['sharpe'])}, "
                         f"{int(m['trades'])} trades over {meta['window']}")
        empty = {}
        if int(m["trades"]) == 0:
            empty["warning"] = (f"no trade in {meta['window']}: every target was swallowed (sizing, rebalance_band "
                                f"{st.rebalance_band:g}, min_order_value {st.min_order_value:g}) or no signal fired; "
                                "its metrics describe cash")
            context.log.warning(f"{st.name}: {empty['warning']}")
        return dg.MaterializeResult(check_results=[trades_check(int(m["trades"]), st.expect_trades)], metadata={
            **meta, **empty,
            "stop_exits": dg.MetadataValue.md(stops.groupby("kind").size().to_frame("exits").to_markdown()
                                              if len(stops) else "none"),
            "model_version": version or "n/a",
            "execution": f"{cfg.backtest.execution.replace('_', ' ')} of the bar after the decision",
            "strategy_config": dg.MetadataValue.json(strategy_config(cfg, st)),
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


def _sweep_asset(cfg: ProjectConfig, st: StrategySection, features_key) -> dg.AssetsDefinition:
    keys = list(st.sweep)

    @dg.asset(key=["sweep_report", st.name], group_name="backtests", deps=[features_key], kinds={"vectorbt"},
              backfill_policy=dg.BackfillPolicy.single_run(),
              description=(f"Parameter sweep of strategy '{st.name}' over {st.sweep}: every combination in one "
                           f"compiled pass on all cores; best by Sharpe with probabilistic and deflated Sharpe."))
    def sweep(context: dg.AssetExecutionContext, warehouse: Warehouse):
        from qt_assets.backtests.engine import YEAR_SESSIONS
        from qt_assets.backtests.metrics import deflated_sharpe, probabilistic_sharpe, returns_from_value

        bars = load_bars(warehouse, cfg.data.start.isoformat())  # never the warm-up sessions
        bench = load_benchmark(warehouse)
        table = run_sweep(cfg, st, bars, bench)
        table_path = warehouse.write_table(f"backtests/{st.name}/sweep", table)
        best_i, traded = pick_best(table)
        folder = cfg.reports_dir / "backtests" / st.name
        x, y = (keys + keys)[:2] if len(keys) == 1 else keys[:2]
        grid = table.pivot_table(index=y, columns=x, values="sharpe", aggfunc="max", dropna=False)
        png = heatmap_png(grid, "Sharpe", f"{st.name}: Sharpe by {y} x {x} ({len(table)} combinations)",
                          folder / "sweep_heatmap.png")
        top = table.sort_values("sharpe", ascending=False).head(10)
        if best_i is None:
            verdict = f"no best named: {traded}"
            context.log.warning(f"sweep {st.name}: {verdict}")
            return dg.MaterializeResult(metadata={
                "combinations": len(table), "combinations_traded": int((table["trades"] > 0).sum()),
                "best_params": None, "best_sharpe": None, "verdict": verdict, "warning": verdict,
                "heatmap": png_md(png, "sweep"), "table_path": dg.MetadataValue.path(str(table_path)),
                "config_fingerprint": cfg.fingerprint()})
        best = {k: float(table[k].iloc[best_i]) for k in keys}
        best_st = st.for_combo(best)
        pf, _, _ = run_strategy(cfg, best_st, bars)
        r = returns_from_value(pf.qt_value, cfg.backtest.initial_cash).iloc[:, 0].to_numpy()
        # the trials are the combinations that traded with a defined Sharpe (the others are not candidates)
        trials = table["sharpe"].to_numpy(dtype=float)[(table["trades"] > 0).to_numpy()]
        trial_srs = trials[np.isfinite(trials)] / np.sqrt(YEAR_SESSIONS)
        dsr, sr0 = deflated_sharpe(r, trial_srs)
        psr = probabilistic_sharpe(r, 0.0)
        verdict = ("best combination's Sharpe survives the selection among "
                   f"{len(trial_srs)} trials (DSR {dsr:.2f} >= 0.95)" if dsr >= 0.95 else
                   f"best combination is not significant after {len(trial_srs)} trials (DSR {dsr:.2f} < 0.95): "
                   "likely a lucky winner")
        context.log.info(f"sweep {st.name}: best {best} Sharpe {shown(table['sharpe'].iloc[best_i])} "
                         f"({traded}); {verdict}")
        return dg.MaterializeResult(metadata={
            "combinations": len(table),
            "combinations_traded": int((table["trades"] > 0).sum()),
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


