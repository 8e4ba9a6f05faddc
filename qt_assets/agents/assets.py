"""Agents: every agent of the config becomes ``decisions/<agent>`` (its raw intents) and
``guarded_targets/<agent>`` (after allocation and the guardian), partitioned by session; plus ``market_regime``
and the ``trade_journal``.

Kinds (intents are target weights of equity; NaN = hold the current position):
- ``rule``: sma_cross / rsi_threshold / momentum_topk on adjusted closes <= D, through the backtests' own code
  (:func:`qt_assets.backtests.strategies.strategy_weights`: direction -> sizing -> caps).
- ``model``: ``models:/<model>@champion`` scores the session's ``features_daily`` rows; the top_k scores above
  min_score are sized as the model strategy of the backtests. Sessions before the version's out-of-sample start
  are in-sample for it: flat, and the reason says so. No champion: flat, with the reason. A symbol without a score
  (missing features) holds its position.
- ``llm``: one chat-completions call per session with the context blocks of the config rendered
  deterministically (:mod:`qt_assets.agents.llm`, rows dated <= D only); an invalid answer is a hold with the
  error recorded. Prompt and response are stored with the decision.
- ``hybrid``: the model agent's weights, then an LLM review that may approve, veto or scale each one down.

The decisions of session D and the book they act on are computed in one pass per run (an llm agent sees its
positions, orders and risk state), so both assets materialise together; the guardian's book is carried from
session to session in ``guardian_state/<agent>`` (a run must start right after a session already decided, or at
the first session). ``guarded_targets`` has a blocking check that the limits hold, so ``orders/<agent>`` never
runs on targets that break them.
"""


import json
import math
from dataclasses import dataclass

import dagster as dg
import numpy as np
import pandas as pd

from qt_assets.agents.guardian import EPS, Book, Guardian
from qt_assets.partition_events import partitioned_result
from qt_resources.config import AgentSection, ProjectConfig
from qt_resources.costs import CostModel
from qt_resources.llm import LLM
from qt_resources.registry import MlflowRegistry
from qt_resources.warehouse import Warehouse

DECISION_COLUMNS = ["agent", "session", "symbol", "kind", "score", "action", "target_weight", "confidence",
                    "reason", "model_version", "regime", "prompt", "response", "error"]
GUARDED_COLUMNS = ["agent", "session", "symbol", "intent_weight", "current_weight", "target_weight", "multiplier",
                   "risk_mode", "regime", "regime_confidence", "allocation", "stop", "order_side", "order_qty",
                   "rules", "detail", "equity", "drawdown", "session_pnl"]
TRADE_COLUMNS = ["agent", "session", "symbol", "entry_session", "entry_price", "exit_price", "exit_reason", "pnl",
                 "ret", "hold_sessions", "r", "stop", "plan_weight", "regime", "violations"]
TRADE_DTYPES = {**{c: "str" for c in ("agent", "session", "symbol", "entry_session", "exit_reason", "regime",
                                       "violations")},
                **{c: "float64" for c in ("entry_price", "exit_price", "pnl", "ret", "hold_sessions", "r", "stop",
                                          "plan_weight")}}
GUARD_FEATURES = ["atr_pct_14", "vol_20d"]  # ATR as a fraction of the close: stops in the broker's (raw) prices
MEMORY_KEEP = 200  # decisions kept in the book for the memory block (agents[].memory <= 50 shown)
BAR_COLUMNS = ["session", "symbol", "open", "high", "low", "close", "volume"]


def _keys(agent: str) -> tuple[dg.AssetKey, dg.AssetKey]:
    return dg.AssetKey(["decisions", agent]), dg.AssetKey(["guarded_targets", agent])


@dataclass
class AgentInputs:
    """What one run of an agent reads (all dated <= the last decision session)."""

    sessions: list[str]             # the sessions to decide, contiguous, sorted
    closes: pd.DataFrame            # adjusted closes, sessions x symbols, all stored history <= the last session
    bars: pd.DataFrame              # long BAR_COLUMNS as traded (unadjusted, what the broker fills at), <= the last session
    features: pd.DataFrame          # long: session, symbol, GUARD_FEATURES + model/agent features
    regime: pd.DataFrame            # session, label, confidence
    news: pd.DataFrame | None = None
    insider: pd.DataFrame | None = None
    actions: tuple = ()               # splits and cash dividends (qt_resources/corporate_actions.py), any ex-date


# --- intents ------------------------------------------------------------------------------------------
def _frame(agent: AgentSection, sessions: list[str], symbols: list[str]) -> pd.DataFrame:
    d = pd.DataFrame({"session": sessions}).merge(pd.DataFrame({"symbol": symbols}), how="cross")
    return d.assign(agent=agent.name, kind=agent.kind, score=np.nan, action="flat", target_weight=0.0,
                    confidence=np.nan, reason="", model_version="", regime="", prompt="", response="", error="")


def _actions(w: pd.Series) -> pd.Series:
    return pd.Series(np.where(w.isna(), "hold", np.where(w > 0, "buy", "flat")), index=w.index)


def rule_intents(cfg: ProjectConfig, agent: AgentSection, inp: AgentInputs) -> pd.DataFrame:
    from qt_assets.backtests.strategies import rule_direction, size_weights, slots

    st = agent.strategy()
    risk = cfg.risk_for(agent)
    closes = inp.closes
    p = st.rule_params()
    direction = rule_direction(st.rule, p, closes, False)
    w = size_weights(direction, closes, st.sizing, risk, slots(st, closes.shape[1]))
    idx = pd.DatetimeIndex(inp.sessions)
    dd = direction.reindex(idx).stack(future_stack=True).rename("score")
    ww = w.reindex(idx).stack(future_stack=True).rename("target_weight")
    out = pd.concat([dd, ww], axis=1).reset_index(names=["session", "symbol"])
    out["session"] = out["session"].dt.strftime("%Y-%m-%d")
    params = ", ".join(f"{k}={v:g}" for k, v in p.items())
    out["reason"] = [f"{st.rule}({params}): direction {d:+.0f} -> weight {x:.4f} ({st.sizing.kind} sizing)"
                     if not math.isnan(x) else f"{st.rule}({params}): direction {d:+.0f}, unchanged -> hold"
                     for d, x in zip(out["score"].fillna(0.0), out["target_weight"])]
    base = _frame(agent, inp.sessions, list(closes.columns)).drop(columns=["score", "target_weight", "reason"])
    d = base.merge(out, on=["session", "symbol"], how="left")
    d["action"] = _actions(d["target_weight"])
    return d


def model_intents(cfg: ProjectConfig, agent: AgentSection, inp: AgentInputs, model, version) -> pd.DataFrame:
    """Champion scores -> the model strategy's weights; in-sample sessions flat. ``model`` None: no champion."""
    from qt_assets.backtests.strategies import strategy_weights
    from qt_assets.research.training import predict

    symbols = list(inp.closes.columns)
    d = _frame(agent, inp.sessions, symbols)
    if model is None:
        return d.assign(reason=f"flat: no champion model ({version})", model_version="none")
    features = version.tags["features"].split(",")
    oos_start = version.tags["oos_start"]
    # the session before the run is scored too: sizing that holds while the selection is unchanged
    # (fixed_fraction) must see the previous session's selection
    before = sorted(x for x in inp.features["session"].unique() if x < inp.sessions[0])[-1:]
    f = inp.features[inp.features["session"].isin(set(inp.sessions) | set(before))].dropna(subset=features)
    if f.empty:
        return d.assign(target_weight=np.nan, action="hold", reason="hold: no feature rows for the session",
                        model_version=str(version.version))
    _, s = predict(model, f[features])
    scores = f[["session", "symbol"]].assign(score=s)
    w = strategy_weights(agent.strategy(), inp.closes, cfg.risk_for(agent), scores=scores)
    w.index = w.index.strftime("%Y-%m-%d")
    wl = w.stack(future_stack=True).rename("target_weight").rename_axis(["session", "symbol"]).reset_index()
    scores = scores.merge(wl, on=["session", "symbol"], how="left")
    scores["rank"] = scores.groupby("session")["score"].rank(ascending=False, method="first").astype(int)
    d = d.drop(columns=["score", "target_weight"]).merge(scores, on=["session", "symbol"], how="left")
    sel = agent.selection
    why = f"top_k={sel.top_k} above {sel.min_score:+.2f}"
    d["reason"] = [
        "hold: no score (missing features)" if math.isnan(sc) else
        f"rank {rk:.0f}, score {sc:+.4f}: selection unchanged ({why}) -> hold" if math.isnan(w) else
        f"rank {rk:.0f}, score {sc:+.4f}: in {why} -> weight {w:.4f}" if w > 0 else
        f"rank {rk:.0f}, score {sc:+.4f}: not in {why} -> 0"
        for sc, rk, w in zip(d["score"], d["rank"].fillna(0), d["target_weight"])]
    ins = d["session"] < oos_start
    d.loc[ins, "target_weight"] = 0.0
    gate = version.tags.get("gate_window", "none")
    d.loc[ins, "reason"] = (f"flat: session is before the trading window of model v{version.version} (in-sample, or "
                            f"in the gate window {gate} the promotion was scored on; trading from {oos_start})"
                            if gate != "none" else
                            f"flat: session is in-sample for model v{version.version} (out-of-sample from {oos_start})")
    d["model_version"] = str(version.version)
    d["action"] = _actions(d["target_weight"])
    return d.drop(columns=["rank"])


# --- one run ------------------------------------------------------------------------------------------
def _by_session(df: pd.DataFrame | None, cols: list[str]) -> dict[str, dict[str, tuple]]:
    if df is None or df.empty:
        return {}
    out: dict[str, dict[str, tuple]] = {}
    for row in df[["session", "symbol", *cols]].itertuples(index=False):
        out.setdefault(row[0], {})[row[1]] = tuple(None if (isinstance(v, float) and math.isnan(v)) else v
                                                    for v in row[2:])
    return out


def run_agent(cfg: ProjectConfig, agent: AgentSection, inp: AgentInputs, book: Book, *, model=None, version=None,
              llm: LLM | None = None, reset_kill_switch: bool = False, states: list | None = None,
              kill_switch: str | None = None) -> tuple[pd.DataFrame, pd.DataFrame, list]:
    """Decide and guard every session of ``inp.sessions`` in order; ``book`` is advanced in place (and, when
    ``states`` is a list, its JSON after each session appended as (session, json)).
    Returns (decisions, guarded targets, closed trades)."""
    symbols = list(inp.closes.columns)
    if agent.kind == "rule":
        intents = rule_intents(cfg, agent, inp)
    elif agent.kind in ("model", "hybrid"):
        intents = model_intents(cfg, agent, inp, model, version)
    else:
        intents = _frame(agent, inp.sessions, symbols).assign(target_weight=np.nan, action="hold")
    g = Guardian(agent, cfg.risk_for(agent), cfg.allocation, CostModel.from_config(cfg.backtest.costs), symbols, book)
    g.freeze = kill_switch  # the kill switch file (qt_resources/gates.py): books frozen, no orders
    g.pretrade = cfg.broker.pretrade
    todo = set(inp.sessions)
    bars = _by_session(inp.bars[inp.bars["session"].isin(todo)], ["open", "high", "low", "close"])
    feats = _by_session(inp.features[inp.features["session"].isin(todo)], GUARD_FEATURES)
    regime = {r.session: (r.label, float(r.confidence)) for r in inp.regime.itertuples(index=False)}
    system, ctx = "", None
    if agent.kind in ("llm", "hybrid"):
        from qt_assets.agents.llm import ContextData, load_prompt

        system = load_prompt(cfg.path(agent.prompt))
        ctx = ContextData(bars=inp.bars[BAR_COLUMNS], features=inp.features, news=inp.news, insider=inp.insider)
    per_session = {s: df for s, df in intents.groupby("session", sort=False)}
    decisions, rows = [], []
    for s in inp.sessions:
        if s not in regime:
            raise LookupError(f"decisions/{agent.name}: market_regime has no row for {s}; materialise it first")
        g.begin(s, bars.get(s, {}), regime[s], reset_kill_switch, actions=inp.actions)
        reset_kill_switch = False
        d = per_session[s].copy()
        d["regime"] = regime[s][0]
        if ctx is not None:
            d = _llm_decide(agent, s, symbols, d, ctx, g, system, llm)
        f, b = feats.get(s, {}), bars.get(s, {})
        atr = {k: v[0] * b[k][3] for k, v in f.items() if v[0] is not None and k in b}  # ATR in traded prices
        rows += g.decide(dict(zip(d["symbol"], d["target_weight"])), atr, {k: v[1] for k, v in f.items()})
        decisions.append(d)
        if states is not None:
            states.append((s, book.to_json()))
    trades = g.closed
    dec = pd.concat(decisions, ignore_index=True)[DECISION_COLUMNS] if decisions else pd.DataFrame(columns=DECISION_COLUMNS)
    guarded = pd.DataFrame(rows).assign(agent=agent.name)[GUARDED_COLUMNS] if rows else pd.DataFrame(columns=GUARDED_COLUMNS)
    return dec, guarded, trades


def _llm_decide(agent, session, symbols, d, ctx, g: Guardian, system: str, llm) -> pd.DataFrame:
    from qt_assets.agents.llm import BookState, hybrid_decisions, llm_decisions, render_context

    st = g.state()
    memory = g.book.memory
    book = BookState(positions=st["positions"], orders=st["orders"], risk_state=st["risk_state"],
                     memory=list(memory))
    signals = d[["symbol", "score", "target_weight"]] if agent.kind == "hybrid" else None
    user = render_context(agent, session, symbols, ctx, book, model_signals=signals)
    over = agent.llm  # the agent's model/temperature, per call
    if agent.kind == "llm":
        a = llm_decisions(llm, system, user, symbols, model=over.model, temperature=over.temperature)
    else:
        a = hybrid_decisions(llm, system, user, d[["symbol", "target_weight"]], agent.on_llm_error,
                             llm_model=over.model, temperature=over.temperature)
    a = a.set_index("symbol").reindex(d["symbol"])
    d = d.copy()
    d["target_weight"] = a["target_weight"].to_numpy(dtype=float)
    d["action"] = a["action"].to_numpy()
    d["confidence"] = a["confidence"].to_numpy(dtype=float)
    d["reason"] = a["reason"].fillna("").to_numpy() if agent.kind == "llm" else \
        [f"{r0} | llm: {r1}" for r0, r1 in zip(d["reason"], a["reason"].fillna(""))]
    d["error"] = a["error"].fillna("").to_numpy()
    d["prompt"] = f"SYSTEM:\n{system}\n\nUSER:\n{user}"
    d["response"] = a["raw"].fillna("").to_numpy()
    memory += [{"session": session, "symbol": r.symbol, "action": r.action,
                "target_weight": None if math.isnan(r.target_weight) else round(float(r.target_weight), 6),
                "reason": r.reason[:200]} for r in d.itertuples(index=False)]
    del memory[:-MEMORY_KEEP]
    return d


def no_champion_reason(registry: MlflowRegistry, name: str) -> str:
    chal = registry.alias_version(name, "challenger")
    if chal is None:
        return "nothing trained yet"
    return (f"challenger v{chal.version} {chal.tags.get('promotion_decision', 'not yet decided')}: "
            f"{chal.tags.get('promotion_reason', 'materialise model_promotion')}")


def limit_problems(guarded: pd.DataFrame, risk, band: float) -> list[str]:
    """Rows of guarded targets that break a limit (the blocking check)."""
    out = []
    for s, g in guarded.groupby("session"):
        w, cur = g["target_weight"].to_numpy(float), g["current_weight"].to_numpy(float)
        if g["rules"].astype(str).str.contains("kill_switch_file").all():
            continue  # frozen by the kill switch: positions as they are, no orders
        kept = np.abs(w - cur) <= EPS
        over = (w > risk.max_position_pct + EPS) & ~(kept & (w <= risk.max_position_pct + band + EPS))
        for sym in g["symbol"][over]:
            out.append(f"{s} {sym}: target above max_position_pct {risk.max_position_pct}")
        if w.sum() > risk.max_gross_exposure + band + 1e-9:
            out.append(f"{s}: gross {w.sum():.4f} above max_gross_exposure {risk.max_gross_exposure}")
        if risk.max_open_positions is not None and (w > EPS).sum() > risk.max_open_positions:
            out.append(f"{s}: {(w > EPS).sum()} positions above max_open_positions {risk.max_open_positions}")
        if (g["risk_mode"] == "halted").any() and (w > EPS).any():
            out.append(f"{s}: kill switch on but targets are not flat")
        if (w < -EPS).any():
            out.append(f"{s}: negative target (agents are long-only)")
    return out


# --- assets ---------------------------------------------------------------------------------------------
class AgentRunConfig(dg.Config):
    reset_kill_switch: bool = False  # re-arm an agent halted by the drawdown kill switch, from the first session
    start_fresh: bool = False  # a new book (initial cash, no positions) at the run's first session


def load_inputs(cfg: ProjectConfig, warehouse: Warehouse, agent: AgentSection, keys: list[str],
                model_features: list[str]) -> AgentInputs:
    first, last = keys[0], keys[-1]
    hist = warehouse.query(
        "select strftime(session, '%Y-%m-%d') as session, symbol, open, high, low, close, volume, adj_close "
        "from stg_prices where session <= cast(? as date) order by session, symbol", [last])
    closes = hist.pivot(index="session", columns="symbol", values="adj_close").reindex(columns=cfg.universe.symbols)
    closes.index = pd.DatetimeIndex(closes.index)
    cols = sorted(set(GUARD_FEATURES) | set(model_features) | set(agent.features))
    since = (pd.Timestamp(first) - pd.Timedelta(days=14)).strftime("%Y-%m-%d") if agent.kind in ("rule", "model") \
        else "1900-01-01"  # model agents score the session before the run too; llm agents see history
    feats = warehouse.query(
        f"select strftime(session, '%Y-%m-%d') as session, symbol, {', '.join(cols)} from features_daily "
        "where session between cast(? as date) and cast(? as date) order by session, symbol", [since, last])
    regime = warehouse.read_partitions("market_regime", keys)[["session", "label", "confidence"]]
    news = insider = None
    if agent.kind in ("llm", "hybrid") and "news" in agent.context:
        news = warehouse.query(
            "select strftime(session, '%Y-%m-%d') as session, symbol, news_count_1d as news_count, "
            "news_sentiment_1d as sentiment_mean, news_sentiment_5d as sentiment_mean_5d from features_daily "
            "where session <= cast(? as date) and news_count_1d > 0", [last])
    if agent.kind in ("llm", "hybrid") and "insider" in agent.context:
        insider = warehouse.query(
            "select strftime(session, '%Y-%m-%d') as session, symbol, insider_buys_90d, insider_sells_90d, "
            "insider_buyers_90d, insider_net_buy_90d_adv from features_daily where session <= cast(? as date)",
            [last])
    from qt_resources.corporate_actions import corporate_actions

    recent = hist[hist["session"] >= max([s for s in hist["session"].unique() if s < first], default=first)]
    actions = tuple(a for a in corporate_actions(recent) if a.ex_date >= first)
    return AgentInputs(sessions=keys, closes=closes, bars=hist[BAR_COLUMNS], features=feats, regime=regime, news=news,
                       actions=actions,
                       insider=insider)


def _load_book(cfg: ProjectConfig, warehouse: Warehouse, agent: AgentSection, keys: list[str],
               all_keys: list[str], start_fresh: bool = False) -> Book:
    """The book as it was after the session before ``keys[0]``. A new book when the run starts at the first
    session, when the agent has no stored state at all (its first run starts its book), or on request."""
    pos = {k: i for i, k in enumerate(all_keys)}
    idx = [pos[k] for k in keys]
    if idx != list(range(idx[0], idx[0] + len(idx))):
        raise dg.Failure(f"agent {agent.name}: sessions must be contiguous (the book carries from session to "
                         f"session); got {keys[0]}..{keys[-1]} with gaps")
    table = f"guardian_state/{agent.name}"
    stored = warehouse.stored_sessions(table)
    if idx[0] == 0 or start_fresh or not stored:
        return Book.new(cfg.broker.initial_cash)
    prev = all_keys[idx[0] - 1]
    if prev not in stored:
        raise dg.Failure(
            f"agent {agent.name}: no guardian state for {prev}, the session before {keys[0]} (stored: "
            f"{stored[0]}..{stored[-1]}): materialise decisions/{agent.name} + guarded_targets/{agent.name} from "
            f"the first session without state, or start a new book with run config start_fresh: true")
    return Book.from_json(warehouse.read_partitions(table, [prev])["book"].iloc[0])


def build_agent_assets(cfg: ProjectConfig, partitions: dg.PartitionsDefinition, features_key: dg.AssetKey,
                       prices_key: dg.AssetKey | None = None, benchmark_key: dg.AssetKey | None = None) -> list:
    prices_key = prices_key or dg.AssetKey("stg_prices")
    benchmark_key = benchmark_key or dg.AssetKey("benchmark_daily")
    assets = [_regime_asset(cfg, partitions, prices_key, benchmark_key)]
    assets += [_agent_asset(cfg, a, partitions, features_key) for a in cfg.agents]
    assets += [_agent_report_asset(cfg, a) for a in cfg.agents]
    assets.append(_journal_asset(cfg))
    return assets


def agent_curve(guarded: pd.DataFrame) -> pd.Series:
    """The agent's book equity per session (marked at the session's close), from its guarded targets."""
    eq = guarded.groupby("session")["equity"].first().astype(float).sort_index()
    eq.index = pd.DatetimeIndex(eq.index)
    return eq.rename("equity")


def agent_metrics(curve: pd.Series, init_cash: float, trades: pd.DataFrame, guarded: pd.DataFrame,
                  bench: pd.Series | None) -> pd.Series:
    """The backtest metrics of an agent's own book (the rows of a strategy's report): returns metrics of the
    equity curve from ``init_cash``, trade metrics over its closed trades (the journal's), exposure (share of
    sessions holding a position) and alpha/beta to the benchmark. Fees and turnover are not kept by the book: NaN."""
    from qt_assets.backtests.metrics import benchmark_metrics, returns_metrics
    from qt_assets.backtests.runs import METRIC_ROWS

    m = returns_metrics(curve.to_frame(), init_cash).iloc[0].to_dict()
    j = journal(trades)
    held = guarded.assign(w=guarded["current_weight"].astype(float).abs()).groupby("session")["w"].sum()
    m.update({"trades": float(j["trades"]), "win_rate": j.get("win_rate", np.nan),
              "profit_factor": np.nan if j.get("profit_factor") is None else j["profit_factor"],
              "expectancy": j.get("expectancy", np.nan), "expectancy_pct": j.get("expectancy_pct", np.nan),
              "avg_holding_sessions": j.get("avg_hold_sessions", np.nan),
              "exposure": float((held > EPS).mean()) if len(held) else np.nan,
              "avg_gross_exposure": float(held.mean()) if len(held) else np.nan,
              "sessions": float(len(curve))})
    if bench is not None:
        r = curve / np.concatenate([[init_cash], curve.to_numpy()[:-1]]) - 1
        m.update(benchmark_metrics(r.to_frame(), bench.reindex(curve.index)).iloc[0].to_dict())
    return pd.Series({k: m.get(k, np.nan) for k in METRIC_ROWS}, dtype=float)


def _agent_report_asset(cfg: ProjectConfig, agent: AgentSection) -> dg.AssetsDefinition:
    key = dg.AssetKey(["agent_report", agent.name])

    @dg.asset(key=key, group_name="agents", deps=[dg.AssetKey(["guarded_targets", agent.name])], kinds={"parquet"},
              backfill_policy=dg.BackfillPolicy.single_run(),
              description=f"The backtest report of agent '{agent.name}' ({agent.kind}) on its own guarded book, as a "
                          f"strategy's: equity and drawdown against the benchmark, the metrics, the closed trades; "
                          f"its equity curve (agents/{agent.name}/equity) feeds the scoreboard.")
    def agent_report(context: dg.AssetExecutionContext, warehouse: Warehouse):
        from qt_assets.backtests.runs import benchmark_value, equity_png, finite, load_benchmark

        table = f"guarded_targets/{agent.name}"
        if not warehouse.stored_sessions(table):
            raise dg.Failure(f"agent {agent.name}: no guarded targets stored; materialise "
                             f"decisions/{agent.name} + guarded_targets/{agent.name} first")
        guarded = warehouse.read_partitions(table)
        trades = (warehouse.read_partitions(f"agent_trades/{agent.name}")
                  if warehouse.stored_sessions(f"agent_trades/{agent.name}") else pd.DataFrame(columns=TRADE_COLUMNS))
        curve = agent_curve(guarded)
        init = float(cfg.broker.initial_cash)
        bench = load_benchmark(warehouse)
        m = agent_metrics(curve, init, trades, guarded, bench)
        bv = benchmark_value(bench, curve.index, init)
        folder = cfg.reports_dir / "agents" / agent.name
        window = f"{curve.index[0]:%Y-%m-%d}..{curve.index[-1]:%Y-%m-%d}"
        png = equity_png({agent.name: curve, f"benchmark ({cfg.universe.benchmark})": bv},
                         f"agent {agent.name} ({agent.kind}), its guarded book, {window}", folder / "equity.png")
        trades.to_csv(folder / "trades.csv", index=False)
        warehouse.write_table(f"agents/{agent.name}/equity",
                              pd.DataFrame({"session": curve.index.strftime("%Y-%m-%d"), "value": curve.to_numpy()}))
        context.log.info(f"agent {agent.name}: total return {m['total_return']:.2%}, Sharpe {m['sharpe']:.2f}, "
                         f"{int(m['trades'])} closed trades over {window}")
        from qt_assets.backtests.assets import png_md

        return dg.MaterializeResult(metadata={
            **{k: finite(m[k]) for k in ("total_return", "cagr", "sharpe", "sortino", "max_drawdown", "calmar")},
            "trades": int(m["trades"]), "window": window,
            "metrics": dg.MetadataValue.md(m.to_frame(agent.name).to_markdown(floatfmt=".4f")),
            "equity_curve": png_md(png, "equity"),
            "report_path": dg.MetadataValue.path(str(folder / "equity.png")),
            "trades_path": dg.MetadataValue.path(str(folder / "trades.csv")),
            "agent_config": dg.MetadataValue.json(json.loads(agent.model_dump_json())),
            "config_fingerprint": cfg.fingerprint()})

    return agent_report


def _regime_asset(cfg: ProjectConfig, partitions, prices_key, benchmark_key) -> dg.AssetsDefinition:
    @dg.asset(name="market_regime", group_name="agents", partitions_def=partitions, deps=[prices_key, benchmark_key],
              backfill_policy=dg.BackfillPolicy.single_run(), kinds={"parquet"},
              description=f"Market regime per session ({cfg.regime.method}): trend (benchmark vs its "
                          f"{cfg.regime.trend_sma}-session SMA), volatility state, breadth (share of the universe "
                          f"above its {cfg.regime.breadth_sma}-session SMA) -> risk_on / neutral / risk_off, "
                          "confidence and drivers. Point in time: session D uses data <= D only.")
    def market_regime(context: dg.AssetExecutionContext, warehouse: Warehouse):
        from qt_assets.agents.regime import regime_frame

        keys = sorted(context.partition_keys)
        last = keys[-1]
        b = warehouse.query("select strftime(session, '%Y-%m-%d') as session, ret_1d from benchmark_daily "
                            "where session <= cast(? as date) order by session", [last])
        px = warehouse.query("select strftime(session, '%Y-%m-%d') as session, symbol, adj_close from stg_prices "
                             "where session <= cast(? as date)", [last])
        closes = px.pivot(index="session", columns="symbol", values="adj_close")
        idx = pd.DatetimeIndex(b["session"])
        level = pd.Series((1 + b["ret_1d"].fillna(0.0)).cumprod().to_numpy(), index=idx)
        closes.index = pd.DatetimeIndex(closes.index)
        r = regime_frame(level, closes.reindex(idx), cfg.regime)
        r = r[r["session"].isin(set(keys))]
        missing = sorted(set(keys) - set(r["session"]))
        if missing:
            raise dg.Failure(f"market_regime: no benchmark bar for {missing[:5]} (materialise the dbt models first)")
        warehouse.write_partitions("market_regime", r, keys)
        lr = r[r["session"] == last].iloc[0]
        return partitioned_result(context, {
            "sessions": len(keys), "latest_session": last, "label": str(lr["label"]),
            "confidence": float(lr["confidence"]), "drivers": dg.MetadataValue.json(json.loads(lr["drivers"])),
            "labels": dg.MetadataValue.json({k: int(v) for k, v in r["label"].value_counts().items()}),
            "method": cfg.regime.method})

    return market_regime


def _agent_asset(cfg: ProjectConfig, agent: AgentSection, partitions, features_key) -> dg.AssetsDefinition:
    dkey, gkey = _keys(agent.name)
    regime_key = dg.AssetKey("market_regime")
    deps = [features_key, regime_key]
    if agent.kind in ("model", "hybrid"):
        deps.append(dg.AssetKey("model_promotion"))
    if agent.kind in ("llm", "hybrid"):
        deps += [dg.AssetKey(k) for k in ("news_sentiment", "insider_flow") if k.split("_")[0] in agent.context]
    what = {"rule": f"rule {agent.rule} {agent.params}", "model": f"models:/{agent.model}@champion",
            "llm": f"LLM with prompt {agent.prompt}", "hybrid": f"models:/{agent.model}@champion + LLM review"}
    risk = cfg.risk_for(agent)
    all_keys = partitions.get_partition_keys()

    @dg.multi_asset(
        name=f"agent_{agent.name}",
        specs=[
            dg.AssetSpec(dkey, deps=deps, group_name="agents", kinds={"parquet"},
                         description=f"Raw intents of agent '{agent.name}' ({agent.kind}: {what[agent.kind]}) per "
                                     "session and symbol: target weight (NaN = hold), action, score, reason"
                                     + (", prompt and response" if agent.kind in ("llm", "hybrid") else "") + "."),
            dg.AssetSpec(gkey, deps=[dkey, regime_key, features_key], group_name="agents", kinds={"parquet"},
                         description=f"Guarded target weights of agent '{agent.name}': allocation (regime x "
                                     "drawdown x discipline) and the guardian's rules, each clip recorded with its "
                                     "rule; the orders for the next open."),
        ],
        partitions_def=partitions,
        backfill_policy=dg.BackfillPolicy.single_run(),
        check_specs=[dg.AssetCheckSpec("limits_respected", asset=gkey, blocking=True,
                                       description="every guarded target obeys max_position_pct, max_gross_exposure, "
                                                   "max_open_positions and the kill switch"),
                     dg.AssetCheckSpec("targets_became_orders", asset=gkey, blocking=False,
                                       description="the run planned an order or holds a position; fails (warn) "
                                                   "when every target was swallowed by a rule, cap, the band or "
                                                   f"rounding, or when no target was asked for in "
                                                   f"{QUIET_SESSIONS}+ sessions (unless expect_trades: false)")]
        + ([dg.AssetCheckSpec("llm_calls_answered", asset=dkey, blocking=False,
                              description="every LLM call of the run gave a valid answer (a failed one holds its "
                                          "symbols, or falls back, with the error recorded on the decision)")]
           if agent.kind in ("llm", "hybrid") else []),
    )
    def agent_assets(context: dg.AssetExecutionContext, config: AgentRunConfig, warehouse: Warehouse,
                     model_registry: MlflowRegistry, llm: LLM):
        keys = sorted(context.partition_keys)
        book = _load_book(cfg, warehouse, agent, keys, all_keys, config.start_fresh)
        model = version = None
        model_features: list[str] = []
        if agent.kind in ("model", "hybrid"):
            try:
                model, version = model_registry.load_model(agent.model, "champion")
                model_features = version.tags["features"].split(",")
            except LookupError as e:
                version = no_champion_reason(model_registry, agent.model)
                context.log.warning(f"{agent.name}: {e}; {version}")
        inp = load_inputs(cfg, warehouse, agent, keys, model_features)
        from qt_resources.gates import kill_switch

        states: list = []
        ks = kill_switch(cfg)
        if ks:
            context.log.warning(f"{agent.name}: {ks}: books frozen, no orders")
        dec, guarded, trades = run_agent(cfg, agent, inp, book, model=model, version=version, llm=llm,
                                         reset_kill_switch=config.reset_kill_switch, states=states, kill_switch=ks)
        problems = limit_problems(guarded, risk, agent.rebalance_band)
        warehouse.write_partitions(f"decisions/{agent.name}", dec, keys)
        warehouse.write_partitions(f"guarded_targets/{agent.name}", guarded, keys)
        if problems:  # the check below blocks the orders; the book must not move on without them
            context.log.error(f"{agent.name}: guarded targets break limits, book state not stored: {problems[:5]}")
        else:  # the book after each session: a later run can resume from any of them
            warehouse.write_partitions(f"guardian_state/{agent.name}", pd.DataFrame(states, columns=["session", "book"]),
                                       keys)
        tr = pd.DataFrame([{**t.__dict__, "session": t.exit_session, "agent": agent.name,
                            "violations": ",".join(t.violations)} for t in trades], columns=TRADE_COLUMNS)
        tr = tr.astype(TRADE_DTYPES)
        warehouse.write_partitions(f"agent_trades/{agent.name}", tr, keys)  # by exit session; empty = none
        last = keys[-1]
        ld, lg = dec[dec["session"] == last], guarded[guarded["session"] == last]
        mv = str(version.version) if model is not None else "none"
        yield partitioned_result(context, asset_key=dkey, metadata={
            "agent": agent.name, "kind": agent.kind, "model_version": mv,
            **({"model_uri": f"models:/{agent.model}@champion"} if agent.kind in ("model", "hybrid") else {}),
            "sessions": len(keys), "rows": len(dec),
            "llm_errors": int((dec["error"].astype(str) != "").sum()),
            "latest_session": last, "regime": str(lg["regime"].iloc[0]) if len(lg) else "none",
            "latest_decisions": dg.MetadataValue.md(
                ld[["symbol", "action", "score", "target_weight", "reason"]].to_markdown(index=False)),
            "config_fingerprint": cfg.fingerprint()})
        if agent.kind in ("llm", "hybrid"):
            failed = dec[dec["error"].astype(str) != ""]
            if len(failed):
                context.log.warning(f"{agent.name}: {len(failed)} decision(s) in {failed['session'].nunique()} "
                                    f"session(s) without a valid LLM answer, e.g. {failed['session'].iloc[0]} "
                                    f"{failed['symbol'].iloc[0]}: {str(failed['error'].iloc[0])[:300]}")
            yield dg.AssetCheckResult(
                asset_key=dkey, check_name="llm_calls_answered", passed=failed.empty,
                severity=dg.AssetCheckSeverity.WARN,
                metadata={"decisions_without_answer": len(failed), "sessions": int(failed["session"].nunique()),
                          "first_errors": dg.MetadataValue.md("\n".join(
                              f"- {r.session} {r.symbol}: {str(r.error)[:200]}" for r in failed.head(10).itertuples())
                              or "none")})
        clipped = guarded[guarded["rules"] != ""]
        counts = clipped["rules"].str.split(",").explode().value_counts().to_dict() if len(clipped) else {}
        b = book
        quiet = agent_quiet(guarded, b, counts)  # nothing placed, nothing held: said in the log, metadata and a check
        yield partitioned_result(context, asset_key=gkey, metadata={
            "agent": agent.name, "sessions": len(keys), "model_version": mv,
            "equity": round(b.equity(), 2), "drawdown": round(float(lg["drawdown"].iloc[0]), 4) if len(lg) else 0.0,
            "risk_mode": str(lg["risk_mode"].iloc[0]) if len(lg) else "none",
            "halted": b.halted, "trades_closed_in_run": len(trades), "kill_switch": ks or "off",
            "rule_hits": dg.MetadataValue.json({k: int(v) for k, v in counts.items()}),
            "latest_targets": dg.MetadataValue.md(
                lg[["symbol", "intent_weight", "target_weight", "order_side", "order_qty", "rules"]]
                .to_markdown(index=False)),
            "allocation": str(lg["allocation"].iloc[0]) if len(lg) else "",
            **({"warning": quiet} if quiet else {})})
        if quiet:
            context.log.warning(f"{agent.name}: {quiet}")
        yield dg.AssetCheckResult(
            asset_key=gkey, check_name="targets_became_orders", passed=not quiet or not agent.expect_trades,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={"why": quiet or "orders were planned, or positions are held",
                      "expect_trades": agent.expect_trades})
        yield dg.AssetCheckResult(asset_key=gkey, check_name="limits_respected", passed=not problems,
                                  metadata={"problems": dg.MetadataValue.md("\n".join(f"- {p}" for p in problems[:50])
                                                                            or "none")})

    return agent_assets


QUIET_SESSIONS = 20  # a run this long without any wish for a position is worth saying


def agent_quiet(guarded: pd.DataFrame, book, rule_hits: dict) -> str | None:
    """Why a run of an agent placed nothing and holds nothing, or None: its targets were all swallowed (by the
    guardian's rules, caps, the band or whole-share rounding: ``rule_hits`` names the rules that fired), or it
    never asked for a position over ``QUIET_SESSIONS`` sessions or more."""
    if book.qty and any(abs(q) > 0 for q in book.qty.values()):
        return None
    if (guarded["order_side"].astype(str) != "").any():
        return None
    wanted = guarded[guarded["intent_weight"].astype(float).abs() > EPS]
    n = guarded["session"].nunique()
    if len(wanted):
        hits = ", ".join(f"{k} x{v}" for k, v in sorted(rule_hits.items(), key=lambda kv: -kv[1])) or \
            "no rule fired: the targets were below one share or min_order_value"
        return (f"no order in {n} session(s) and no position, although the agent asked for {len(wanted)} "
                f"position(s) (e.g. {wanted['symbol'].iloc[0]} {float(wanted['intent_weight'].iloc[0]):.4f} on "
                f"{wanted['session'].iloc[0]}): every target was swallowed ({hits})")
    if n >= QUIET_SESSIONS:
        return f"no order, no position and no target in {n} sessions: the agent never asked for a position"
    return None


def journal(trades: pd.DataFrame) -> dict:
    """Win rate, profit factor, expectancy (mean P&L per trade, and mean return), average hold in sessions and
    the discipline score (1 - violations / trades) over an agent's closed trades."""
    if trades.empty:
        return {"trades": 0}
    pnl = trades["pnl"].astype(float)
    wins, losses = pnl[pnl > 0], pnl[pnl <= 0]
    v = trades["violations"].fillna("").map(lambda x: len([p for p in x.split(",") if p]))
    return {"trades": len(trades), "win_rate": float((pnl > 0).mean()),
            "profit_factor": float(wins.sum() / -losses.sum()) if losses.sum() < 0 else None,  # undefined
            "expectancy": float(pnl.mean()), "expectancy_pct": float(trades["ret"].astype(float).mean()),
            "avg_hold_sessions": float(trades["hold_sessions"].astype(float).mean()),
            "total_pnl": float(pnl.sum()), "discipline_score": max(0.0, 1 - float(v.sum()) / len(trades)),
            "violations": {k: int(n) for k, n in trades["violations"].fillna("").str.split(",").explode()
                           .replace("", np.nan).dropna().value_counts().items()}}


NARRATIVE_SCHEMA = {"type": "object", "additionalProperties": False, "required": ["narrative"],
                    "properties": {"narrative": {"type": "string"}}}


def _journal_asset(cfg: ProjectConfig) -> dg.AssetsDefinition:
    agents = [a.name for a in cfg.agents]

    @dg.asset(name="trade_journal", group_name="agents", kinds={"parquet"}, backfill_policy=dg.BackfillPolicy.single_run(),
              deps=[_keys(a)[1] for a in agents],
              description="Per agent, over the closed trades of its guarded book: win rate, profit factor, "
                          "expectancy, average hold, discipline score and violations; an LLM narrative when an "
                          "llm is configured.")
    def trade_journal(context: dg.AssetExecutionContext, warehouse: Warehouse, llm: LLM):
        rows = {}
        for a in agents:
            t = warehouse.read_partitions(f"agent_trades/{a}") if warehouse.stored_sessions(f"agent_trades/{a}") \
                else pd.DataFrame(columns=TRADE_COLUMNS)
            rows[a] = journal(t)
        table = pd.DataFrame({a: {k: v for k, v in r.items() if k != "violations"} for a, r in rows.items()}).T
        warehouse.write_table("trade_journal", table.reset_index(names="agent"))
        md = {"journal": dg.MetadataValue.md(table.to_markdown(floatfmt=".4f")),
              "violations": dg.MetadataValue.json({a: r.get("violations", {}) for a, r in rows.items()})}
        res = llm.complete_json("You are a trading coach. Summarise each agent's journal in three sentences: "
                                "edge, risk, discipline. Numbers only from the table.",
                                table.to_csv(), NARRATIVE_SCHEMA)
        md["narrative"] = res.value["narrative"] if res.ok else f"no narrative: {res.error}"
        return dg.MaterializeResult(metadata=md)

    return trade_journal


