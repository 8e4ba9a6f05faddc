"""Backtests with vectorbt: target weights -> portfolio with shared cash, executed on the NEXT bar's open.

Timing: a weight decided from session D's features (known after D's close) is ordered at D+1's open
(``weights.shift(1)`` with ``price=open``); the bar that produced a signal never fills it. Costs come
from the shared :class:`~qt_resources.costs.CostModel`.

Metrics (252 sessions a year, never calendar days): total return = V_end / V_0 - 1;
CAGR = (V_end / V_0) ** (252 / n_sessions) - 1; Sharpe = mean(r) / std(r) * sqrt(252) on daily returns;
max drawdown = min_t (V_t / max_{s<=t} V_s - 1); trades = closed and open round trips.
"""


import base64
import io
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd

from qt_assets.agents import target_weights
from qt_resources.config import ProjectConfig
from qt_resources.costs import CostModel
from qt_resources.warehouse import Warehouse

YEAR_SESSIONS = 252


def _vbt():
    import vectorbt as vbt

    vbt.settings.returns["year_freq"] = f"{YEAR_SESSIONS} days"
    vbt.settings.array_wrapper["freq"] = "1D"
    return vbt


def run_weights_backtest(weights: pd.DataFrame, open_: pd.DataFrame, close: pd.DataFrame, costs: CostModel,
                         init_cash: float):
    """``weights``: index sessions, columns symbols, weight decided after that session's close (NaN = no
    decision). Returns a vectorbt Portfolio executing each decision at the next session's open."""
    vbt = _vbt()
    size = weights.reindex(index=close.index, columns=close.columns).shift(1)
    return vbt.Portfolio.from_orders(
        close=close, price=open_, size=size, size_type="targetpercent", direction="longonly",
        group_by=True, cash_sharing=True, call_seq="auto", init_cash=init_cash, freq="1D",
        **costs.vectorbt_kwargs())


def portfolio_metrics(pf) -> dict[str, float]:
    value = pf.value()
    n = len(value)
    total = float(value.iloc[-1] / value.iloc[0] - 1) if n else float("nan")
    rets = value.pct_change().dropna()
    sd = rets.std()
    return {
        "total_return": float(pf.total_return()),
        "cagr": float((1 + total) ** (YEAR_SESSIONS / n) - 1) if n else float("nan"),
        "sharpe": float(rets.mean() / sd * np.sqrt(YEAR_SESSIONS)) if sd and sd > 0 else float("nan"),
        "max_drawdown": float(pf.max_drawdown()),
        "trades": int(pf.trades.count()),
        "fees_paid": float(pf.orders.records_readable["Fees"].sum()) if pf.orders.count() else 0.0,
        "sessions": n,
    }


def equity_png(value: pd.Series, bench: pd.Series, title: str, path: Path) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(9, 5.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax1.plot(value.index, value.values, label="strategy", lw=1.4)
    ax1.plot(bench.index, bench.values, label="equal-weight buy & hold", lw=1.0, alpha=0.8)
    ax1.set_title(title)
    ax1.set_ylabel("equity")
    ax1.legend(loc="upper left")
    ax1.grid(alpha=0.3)
    dd = value / value.cummax() - 1
    ax2.fill_between(dd.index, dd.values, 0, color="tab:red", alpha=0.4)
    ax2.set_ylabel("drawdown")
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue())
    return buf.getvalue()


def backtest_scores(warehouse: Warehouse, scores: pd.DataFrame, agent, risk, costs: CostModel, init_cash: float):
    """Backtest model scores (session, symbol, score) through an agent's selection and risk limits, with one
    more bar to fill the last decision. Returns (portfolio, equal-weight buy-and-hold portfolio, closes)."""
    first = scores["session"].min()
    bars = warehouse.query(
        "select symbol, strftime(session, '%Y-%m-%d') as session, adj_open, adj_close from stg_prices "
        "where session >= cast(? as date) order by session, symbol", [first])
    last_decision = scores["session"].max()
    later = sorted(s for s in bars["session"].unique() if s > last_decision)
    bars = bars[bars["session"] <= (later[0] if later else last_decision)]  # one bar to fill the last decision
    open_ = bars.pivot(index="session", columns="symbol", values="adj_open")
    close = bars.pivot(index="session", columns="symbol", values="adj_close")
    open_.index = close.index = pd.DatetimeIndex(close.index)
    w = target_weights(scores[["session", "symbol", "score"]], agent.selection, risk)
    weights = w.pivot(index="session", columns="symbol", values="target_weight").fillna(0.0)
    weights.index = pd.DatetimeIndex(weights.index)
    pf = run_weights_backtest(weights, open_, close, costs, init_cash)
    bench_pf = run_weights_backtest(pd.DataFrame(1.0 / close.shape[1], index=close.index[:1], columns=close.columns),
                                    open_, close, costs, init_cash)
    return pf, bench_pf, close


def build_backtest_assets(cfg: ProjectConfig, features_key: dg.AssetKey) -> list:
    agent = next(a for a in cfg.agents if a.kind == "model")
    risk = cfg.risk_for(agent)
    costs = CostModel(cfg.backtest.costs.commission_bps, cfg.backtest.costs.slippage_bps)

    @dg.asset(
        group_name="backtests",
        deps=[dg.AssetKey("trained_model"), features_key],
        backfill_policy=dg.BackfillPolicy.single_run(),
        kinds={"vectorbt"},
        description=(f"vectorbt backtest of the trained model's out-of-sample scores through agent "
                     f"'{agent.name}' selection (top_k={agent.selection.top_k}); next-bar open fills, "
                     f"{costs.commission_bps} bps commission + {costs.slippage_bps} bps slippage."),
    )
    def backtest_report(context: dg.AssetExecutionContext, warehouse: Warehouse):
        scores = warehouse.read_table("research/test_scores")
        pf, bench_pf, close = backtest_scores(warehouse, scores, agent, risk, costs, cfg.backtest.initial_cash)
        m, bm = portfolio_metrics(pf), portfolio_metrics(bench_pf)
        version = str(scores["model_version"].iloc[0])
        png_path = cfg.reports_dir / f"backtest_{cfg.research.model.name}_v{version}.png"
        png = equity_png(pf.value(), bench_pf.value(),
                         f"{cfg.research.model.name} v{version} via {agent.name}: out-of-sample "
                         f"{close.index[0]:%Y-%m-%d}..{close.index[-1]:%Y-%m-%d}", png_path)
        table = pd.DataFrame({"strategy": m, "equal_weight_buy_hold": bm})
        context.log.info(f"backtest: total return {m['total_return']:.2%}, Sharpe {m['sharpe']:.2f}, report {png_path}")
        return dg.MaterializeResult(metadata={
            **{k: (float(v) if isinstance(v, float) else v) for k, v in m.items()},
            "benchmark_total_return": bm["total_return"],
            "model_version": version,
            "window": f"{close.index[0]:%Y-%m-%d}..{close.index[-1]:%Y-%m-%d}",
            "metrics": dg.MetadataValue.md(table.to_markdown(floatfmt=".4f")),
            "equity_curve": dg.MetadataValue.md(f"![equity](data:image/png;base64,{base64.b64encode(png).decode()})"),
            "report_path": dg.MetadataValue.path(str(png_path)),
            "execution": "next session open (weights.shift(1), price=open)",
            "config_fingerprint": cfg.fingerprint(),
        })

    return [backtest_report]


def warm_up() -> None:
    """Compile vectorbt's numba kernels and build matplotlib's font cache once (both cached on disk), so the
    first backtest report is fast."""
    import tempfile

    idx = pd.date_range("2020-01-01", periods=30, freq="B")
    px = pd.DataFrame(100.0 + np.arange(60).reshape(30, 2), index=idx, columns=["A", "B"])
    pf = run_weights_backtest(pd.DataFrame(0.5, index=idx, columns=px.columns), px, px, CostModel(1, 1), 1e4)
    portfolio_metrics(pf)
    with tempfile.TemporaryDirectory() as d:
        equity_png(pf.value(), pf.value(), "warm-up", Path(d) / "warm.png")


if __name__ == "__main__":
    warm_up()
