"""LLM and hybrid agents: the point-in-time prompt context and the parsing of the model's answer.

Pure functions (no Dagster, no warehouse): the caller loads the frames and the agent's book, and
:func:`render_context` turns them into a deterministic text for one decision session D. Every frame is cut to
``session <= D`` (and to the universe) before anything else, so nothing dated after D can reach the prompt.

:func:`llm_decisions` (kind ``llm``) asks for one decision per symbol: ``buy`` -> the answered target weight,
``sell`` -> 0, ``hold`` -> NaN (keep the current position). :func:`hybrid_decisions` (kind ``hybrid``) asks the
LLM to review the model agent's weights: ``approve`` keeps, ``veto`` zeroes and ``scale`` multiplies by a factor
in [0, 1], so the LLM can only reduce risk. Neither raises on an LLM failure: a failed call (transport, timeout,
429 after retries, invalid JSON, schema mismatch, a symbol answered twice) holds every symbol (or, for hybrid
with ``on_llm_error: model``, takes the model's weights) with the reason in ``error``.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from qt_resources.config import AgentSection
from qt_resources.llm import LLM, LLMResult

ACTIONS = ("buy", "sell", "hold")
VERDICTS = ("approve", "veto", "scale")
BAR_COLUMNS = ["open", "high", "low", "close", "volume"]
NEWS_COLUMNS = ["news_count", "sentiment_mean", "positive_share", "negative_share", "sentiment_mean_5d"]
NEWS_REQUIRED = ["news_count", "sentiment_mean", "sentiment_mean_5d"]
NEWS_SESSIONS = 5
ORDER_COLUMNS = ["symbol", "side", "qty", "status"]
MEMORY_COLUMNS = ["session", "symbol", "action", "target_weight", "reason"]
DECISION_OUTPUT = ["symbol", "action", "target_weight", "confidence", "reason", "error", "raw"]
HYBRID_OUTPUT = ["symbol", "action", "target_weight", "model_weight", "confidence", "reason", "error", "raw"]


@dataclass(frozen=True)
class ContextData:
    """Everything an llm/hybrid agent may be shown, over all sessions; build_context filters per session."""

    bars: pd.DataFrame            # long: session 'YYYY-MM-DD', symbol, open, high, low, close, volume
    features: pd.DataFrame | None = None   # long: session, symbol, <feature columns>
    news: pd.DataFrame | None = None       # long: session, symbol, news_count, sentiment_mean, sentiment_mean_5d
    insider: pd.DataFrame | None = None    # long: session, symbol, <insider feature columns>


@dataclass(frozen=True)
class BookState:
    """The agent's own account at the decision, from the guardian's book (the caller supplies it)."""

    positions: dict[str, float]      # symbol -> current weight of equity
    orders: list[dict]               # pending/last orders: {"symbol", "side", "qty", "status"}
    risk_state: dict                 # e.g. {"equity", "drawdown", "risk_mode", "regime", "multiplier"}
    memory: list[dict]               # the agent's last decisions: {"session", "symbol", "action", "target_weight",
    #                                  "reason"}


# ------------------------------------------------------------------ schemas

def _unique(symbols) -> list[str]:
    return list(dict.fromkeys(str(s) for s in symbols))


def _answer_schema(key: str, item: dict) -> dict:
    return {"type": "object", "additionalProperties": False, "required": [key],
            "properties": {key: {"type": "array", "items": {
                "type": "object", "additionalProperties": False, "required": list(item), "properties": item}}}}


def decision_schema(symbols: list[str]) -> dict:
    """Strict JSON schema (OpenAI strict structured output: closed objects, every property required) of an
    ``llm`` agent's answer: ``{"decisions": [{symbol, action, target_weight, confidence, reason}]}``."""
    return _answer_schema("decisions", {
        "symbol": {"type": "string", "enum": _unique(symbols)},
        "action": {"type": "string", "enum": list(ACTIONS)},
        "target_weight": {"type": "number", "minimum": 0, "maximum": 1},
        "confidence": {"type": "number", "minimum": 0, "maximum": 1},
        "reason": {"type": "string"},
    })


def review_schema(symbols: list[str]) -> dict:
    """Strict JSON schema of a ``hybrid`` agent's review: ``{"reviews": [{symbol, verdict, scale, confidence,
    reason}]}``; ``scale`` is in [0, 1], so a review can only reduce a model weight."""
    return _answer_schema("reviews", {
        "symbol": {"type": "string", "enum": _unique(symbols)},
        "verdict": {"type": "string", "enum": list(VERDICTS)},
        "scale": {"type": "number", "minimum": 0, "maximum": 1},
        "confidence": {"type": "number", "minimum": 0, "maximum": 1},
        "reason": {"type": "string"},
    })


# ------------------------------------------------------------------ prompt plumbing

def load_prompt(path: str | Path) -> str:
    """The system prompt file's text (the caller resolves ``agent.prompt`` against the config's folder)."""
    return Path(path).read_text(encoding="utf-8")


# ------------------------------------------------------------------ rendering

def _day(value) -> str:
    return pd.Timestamp(value).strftime("%Y-%m-%d")


def _cell(v) -> str:
    """One value as text, by its own type (not the column's dtype, which rows after D could change)."""
    if v is None or v is pd.NaT or v is pd.NA:
        return "NA"
    if isinstance(v, (bool, np.bool_)):
        return "true" if v else "false"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        f = float(v)
        if math.isnan(f):
            return "NA"
        if math.isinf(f):
            return "inf" if f > 0 else "-inf"
        if f.is_integer() and abs(f) < 1e12:
            return str(int(f))
        return f"{f:.6g}"
    if isinstance(v, pd.Timestamp):
        return v.isoformat()
    if isinstance(v, (dict, list, tuple)):
        return json.dumps(v, sort_keys=True, default=str)
    return " ".join(str(v).split())  # one line: newlines/tabs collapse to single spaces


def _table(columns: list[str], rows: list[list]) -> str:
    """Compact CSV (quoted only where needed); rows sorted by their rendered cells."""
    cells = sorted([_cell(v) for v in r] for r in rows)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    w.writerows(cells)
    return buf.getvalue().rstrip("\n") + ("" if cells else "\n(no rows)")


def _frame_table(df: pd.DataFrame, columns: list[str], sort: list[str]) -> str:
    df = df.sort_values(sort, kind="mergesort")
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for row in df[columns].itertuples(index=False, name=None):
        w.writerow([_cell(v) for v in row])
    return buf.getvalue().rstrip("\n") + ("" if len(df) else "\n(no rows)")


def _point_in_time(df: pd.DataFrame | None, block: str, session: str, symbols: list[str]) -> pd.DataFrame:
    """``df`` cut to ``session <= D`` and the universe, with ``session`` as 'YYYY-MM-DD' text; raises
    ValueError naming ``block`` when the frame is missing or lacks the key columns."""
    if df is None:
        raise ValueError(f"{block}: the context block needs data, got None")
    missing = [c for c in ("session", "symbol") if c not in df.columns]
    if missing:
        raise ValueError(f"{block}: the frame has no {', '.join(missing)} column")
    s = df["session"]
    s = s.dt.strftime("%Y-%m-%d") if pd.api.types.is_datetime64_any_dtype(s) else s.astype(str).str.slice(0, 10)
    keep = (s <= session).to_numpy() & df["symbol"].astype(str).isin(symbols).to_numpy()
    out = df.loc[keep].copy()
    out["session"] = s[keep].to_numpy()
    out["symbol"] = out["symbol"].astype(str)
    return out


def _need(df: pd.DataFrame, block: str, columns: list[str]) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{block}: the frame has no column(s) {', '.join(missing)}")


def _last_sessions(df: pd.DataFrame, n: int) -> pd.DataFrame:
    keep = sorted(df["session"].unique())[-n:]
    return df[df["session"].isin(keep)]


def _signals_at(signals: pd.DataFrame, session: str, symbols: list[str]) -> pd.DataFrame:
    """The model's signals for D: rows of the universe (and, with a session column, of session D only)."""
    if "session" in signals.columns:
        sig = _point_in_time(signals, "model_signals", session, symbols)
        sig = sig[sig["session"] == session]
    else:
        _need(signals, "model_signals", ["symbol"])
        sig = signals[signals["symbol"].astype(str).isin(symbols)].assign(symbol=lambda d: d["symbol"].astype(str))
    _need(sig, "model_signals", ["target_weight"])
    return sig


def _dated_ok(item: dict, session: str, strict: bool = False) -> bool:
    """An item of the book with a ``session`` key dated after D (or on D, when ``strict``) is dropped."""
    if item.get("session") is None:
        return True
    d = _day(item["session"])
    return d < session if strict else d <= session


def _block(name: str, agent: AgentSection, session: str, symbols: list[str], data: ContextData, book: BookState,
           model_signals: pd.DataFrame | None) -> str:
    if name == "market_data":
        bars = _point_in_time(data.bars, name, session, symbols)
        _need(bars, name, BAR_COLUMNS)
        return _frame_table(_last_sessions(bars, agent.lookback), ["session", "symbol", *BAR_COLUMNS],
                            ["symbol", "session"])
    if name == "features":
        if not agent.features:
            raise ValueError("features: the features block needs agent.features (at least one feature)")
        feats = _point_in_time(data.features, name, session, symbols)
        _need(feats, name, agent.features)
        feats = feats[feats["session"] == session].drop_duplicates("symbol", keep="last")
        grid = pd.DataFrame({"session": session, "symbol": sorted(symbols)})
        return _frame_table(grid.merge(feats[["symbol", *agent.features]], on="symbol", how="left"),
                            ["session", "symbol", *agent.features], ["symbol"])
    if name == "model_signals":
        if model_signals is None:
            raise ValueError("model_signals: the context block needs the model's signals, got None")
        sig = _signals_at(model_signals, session, symbols)
        cols = ["symbol", *(["score"] if "score" in sig.columns else []), "target_weight"]
        return _frame_table(sig, cols, ["symbol"])
    if name == "positions":
        return _table(["symbol", "weight"], [[str(k), v] for k, v in book.positions.items()])
    if name == "orders":
        return _table(ORDER_COLUMNS, [[o.get(c) for c in ORDER_COLUMNS] for o in book.orders
                                      if _dated_ok(o, session)])
    if name == "risk_state":
        lines = [f"{k}={_cell(v)}" for k, v in sorted(book.risk_state.items(), key=lambda kv: str(kv[0]))]
        return "\n".join(lines) if lines else "(none)"
    if name == "news":
        news = _point_in_time(data.news, name, session, symbols)
        _need(news, name, NEWS_REQUIRED)
        cols = [c for c in NEWS_COLUMNS if c in news.columns]
        return _frame_table(_last_sessions(news, NEWS_SESSIONS), ["session", "symbol", *cols], ["symbol", "session"])
    if name == "insider":
        ins = _point_in_time(data.insider, name, session, symbols)
        cols = [c for c in ins.columns if c not in ("session", "symbol")]
        latest = ins.sort_values(["symbol", "session"], kind="mergesort").drop_duplicates("symbol", keep="last")
        return _frame_table(latest, ["session", "symbol", *cols], ["symbol"])
    if name == "memory":
        past = [m for m in book.memory if _dated_ok(m, session, strict=True)]
        past = sorted(past, key=lambda m: (_day(m["session"]) if m.get("session") is not None else "",
                                           str(m.get("symbol"))))
        keep = sorted({_day(m["session"]) for m in past})[-agent.memory:] if agent.memory else []
        past = [m for m in past if _day(m["session"]) in set(keep)]  # the last ``agent.memory`` sessions
        return _table(MEMORY_COLUMNS, [[m.get(c) for c in MEMORY_COLUMNS] for m in past])
    if name == "notes":
        return agent.notes.strip() or "(none)"
    raise ValueError(f"{name}: not a context block")


def render_context(agent: AgentSection, session: str, symbols: list[str], data: ContextData, book: BookState,
                   model_signals: pd.DataFrame | None = None) -> str:
    """The user message for ``agent``'s decision at session D: the ``agent.context`` blocks in that order, each
    ``## <block>`` and a compact table (sorted rows, floats as ``{:.6g}``, NaN as ``NA``), then the answer
    instruction. Only data dated on or before D is used (every frame is cut to ``session <= D`` first; the
    memory block shows decisions before D). Deterministic: the same inputs give the same string.

    Blocks: market_data = the last ``agent.lookback`` sessions of bars; features = ``agent.features`` at D;
    model_signals = the model's score/target_weight at D (hybrid); positions/orders/risk_state/memory = the
    book (memory: the agent's decisions of its last ``agent.memory`` sessions); news = the last 5 sessions of the daily sentiment;
    insider = the latest row per symbol; notes = ``agent.notes``. A block whose frame is None raises
    ValueError naming the block; so does a hybrid agent without ``model_signals``."""
    if agent.kind not in ("llm", "hybrid"):
        raise ValueError(f"render_context: agent {agent.name!r} is kind {agent.kind!r}, not llm or hybrid")
    session = _day(session)
    universe = sorted(_unique(symbols))
    if agent.kind == "hybrid" and model_signals is None:
        raise ValueError("model_signals: a hybrid agent reviews the model's weights; got None")
    parts = [f"# Decision context for session {session} (data up to and including {session}; nothing later)"]
    for name in agent.context:
        parts.append(f"## {name}\n{_block(name, agent, session, universe, data, book, model_signals)}")
    if agent.kind == "llm":
        parts.append(
            f"Universe: {', '.join(universe)}. Answer with JSON matching the schema: one entry per symbol in the "
            f"universe, each with action buy|sell|hold (buy: hold target_weight of equity, > 0; sell: exit to 0; "
            f"hold: keep the current position), target_weight (fraction of equity, 0..1; used for buy only), "
            f"confidence (0..1) and a short reason.")
    else:
        sig = _signals_at(model_signals, session, universe)
        weights = dict(zip(sig["symbol"].astype(str), sig["target_weight"], strict=True))
        proposed = ", ".join(f"{s}={_cell(weights[s])}" for s in sorted(weights) if s in universe)
        parts.append(
            f"Universe: {', '.join(universe)}. The model proposes these target weights (fraction of equity): "
            f"{proposed or '(none)'}. Review each model-proposed position and answer with JSON matching the "
            f"schema: one entry per symbol, each with verdict approve (keep the model weight), veto (weight 0) or "
            f"scale (model weight x scale, scale in 0..1: you may only reduce, never increase), scale (used for "
            f"scale only), confidence (0..1) and a short reason.")
    return "\n\n".join(parts) + "\n"


# ------------------------------------------------------------------ answers

def _call(llm: LLM, system_prompt: str, user: str, schema: dict, model: str | None,
          temperature: float | None) -> LLMResult:
    """``llm.complete_json`` that never raises, re-validating the answer against ``schema`` (not every LLM
    implementation does). ``model``/``temperature`` are passed on only when set (per-call overrides)."""
    import jsonschema

    key = getattr(llm, "api_key", None)
    overrides = {k: v for k, v in (("model", model), ("temperature", temperature)) if v is not None}
    try:
        res = llm.complete_json(system_prompt, user, schema, **overrides)
    except Exception as e:  # noqa: BLE001 - an LLM implementation that raises still must not stop the agent
        msg = f"{type(e).__name__}: {e}"
        return LLMResult(ok=False, error=msg.replace(key, "***") if key else msg)
    if not res.ok:
        return res
    try:
        jsonschema.validate(res.value, schema)
    except jsonschema.ValidationError as e:
        return LLMResult(ok=False, error=f"schema mismatch: {e.message}", raw=res.raw)
    return res


def _by_symbol(items: list[dict]) -> tuple[dict[str, dict], str | None]:
    out: dict[str, dict] = {}
    for it in items:
        if it["symbol"] in out:
            return {}, f"symbol answered twice: {it['symbol']}"
        out[it["symbol"]] = it
    return out, None


def llm_decisions(llm: LLM, system_prompt: str, user: str, symbols: list[str], *, model: str | None = None,
                  temperature: float | None = None) -> pd.DataFrame:
    """One ``complete_json`` call with :func:`decision_schema`; one row per symbol (in ``symbols`` order) with
    symbol, action, target_weight, confidence, reason, error, raw. ``buy`` -> the answered target_weight (a buy
    with weight 0 is an error for that symbol and holds), ``sell`` -> 0.0, ``hold`` -> NaN (keep the current
    position). A failed call or a symbol answered twice holds every symbol with confidence 0 and the reason in
    ``error``; a symbol missing from a valid answer holds with ``no answer for <symbol>``. ``model``/
    ``temperature``: per-call overrides (the agent's ``llm`` section), passed to ``complete_json`` when set.
    Never raises."""
    symbols = _unique(symbols)
    if not symbols:
        return pd.DataFrame(columns=DECISION_OUTPUT)
    res = _call(llm, system_prompt, user, decision_schema(symbols), model, temperature)
    answers, error = _by_symbol(res.value["decisions"]) if res.ok else ({}, res.error)
    rows = []
    for sym in symbols:
        a = answers.get(sym)
        if error is not None or a is None:
            rows.append([sym, "hold", np.nan, 0.0, "", error or f"no answer for {sym}"])
        elif a["action"] == "buy" and not a["target_weight"] > 0:
            rows.append([sym, "hold", np.nan, 0.0, a["reason"],
                         f"buy without a positive target_weight for {sym} ({_cell(a['target_weight'])})"])
        else:
            w = {"buy": float(a["target_weight"]), "sell": 0.0, "hold": np.nan}[a["action"]]
            rows.append([sym, a["action"], w, float(a["confidence"]), a["reason"], None])
    out = pd.DataFrame(rows, columns=DECISION_OUTPUT[:-1])
    out["target_weight"] = out["target_weight"].astype("float64")
    out["confidence"] = out["confidence"].astype("float64")
    out["raw"] = res.raw
    return out


def hybrid_decisions(llm: LLM, system_prompt: str, user: str, model: pd.DataFrame, on_error: str, *,
                     llm_model: str | None = None, temperature: float | None = None) -> pd.DataFrame:
    """The LLM's review of the model agent's weights (``model``: symbol, target_weight), one call with
    :func:`review_schema`: approve -> the model weight, veto -> 0.0, scale -> model weight x scale (scale in
    [0, 1], so never above the model weight). A failed call or a symbol reviewed twice -> ``on_error``
    ``'hold'`` (every target NaN, action 'hold') or ``'model'`` (the model weights, action 'model'), with the
    reason in ``error``; a symbol missing from a valid answer is approved with ``no review for <symbol>``.
    ``llm_model``/``temperature``: per-call overrides of the LLM's model and temperature, passed on when set.
    Columns: symbol, action, target_weight, model_weight, confidence, reason, error, raw. Raises ValueError only
    for bad arguments (``on_error``, duplicate symbols in ``model``), never because of the LLM."""
    if on_error not in ("hold", "model"):
        raise ValueError(f"on_error: {on_error!r} is not 'hold' or 'model'")
    symbols = [str(s) for s in model["symbol"]]
    if len(set(symbols)) != len(symbols):
        raise ValueError("model: a symbol appears more than once")
    if not symbols:
        return pd.DataFrame(columns=HYBRID_OUTPUT)
    weights = dict(zip(symbols, model["target_weight"].astype("float64"), strict=True))
    res = _call(llm, system_prompt, user, review_schema(symbols), llm_model, temperature)
    answers, error = _by_symbol(res.value["reviews"]) if res.ok else ({}, res.error)
    rows = []
    for sym in symbols:
        mw, a = weights[sym], answers.get(sym)
        if error is not None:
            rows.append([sym, on_error, mw if on_error == "model" else np.nan, mw, 0.0, "", error])
        elif a is None:
            rows.append([sym, "approve", mw, mw, 0.0, "", f"no review for {sym}"])
        else:
            factor = {"approve": 1.0, "veto": 0.0, "scale": min(max(float(a["scale"]), 0.0), 1.0)}[a["verdict"]]
            rows.append([sym, a["verdict"], mw * factor if factor else 0.0, mw, float(a["confidence"]), a["reason"],
                         None])
    out = pd.DataFrame(rows, columns=HYBRID_OUTPUT[:-1])
    for c in ("target_weight", "model_weight", "confidence"):
        out[c] = out[c].astype("float64")
    out["raw"] = res.raw
    return out
