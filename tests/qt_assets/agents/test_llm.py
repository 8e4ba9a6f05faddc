"""LLM/hybrid agents: point-in-time prompt context and answer parsing, against a real HTTP chat-completions fake
through the real ``OpenAICompatibleLLM`` (``openai`` client, retries, timeouts, jsonschema validation)."""

import json
import math

import numpy as np
import pandas as pd
import pytest

from qt_assets.agents.llm import (BookState, ContextData, decision_schema, hybrid_decisions, llm_decisions,
                                 load_prompt, render_context, review_schema)
from qt_resources.config import AgentSection
from qt_resources.llm import LLM, LLMResult, OpenAICompatibleLLM
from tests.conftest import REPO
from tests.news_servers import serve_openai

KEY = "sk-test-agent-llm-key-7f3a"
SYMBOLS = ["AAPL", "MSFT", "IBM"]
SESSIONS = [d.strftime("%Y-%m-%d") for d in pd.bdate_range("2024-01-02", periods=10)]
D = SESSIONS[5]  # 2024-01-09
AFTER = [s for s in SESSIONS if s > D]
CANARY = 31337.5  # a value only present after D
LLM_PROMPT = REPO / "prompts" / "llm_agent.md"
HYBRID_PROMPT = REPO / "prompts" / "hybrid_agent.md"
ALL_BLOCKS = ["market_data", "features", "positions", "orders", "risk_state", "news", "insider", "memory", "notes"]


@pytest.fixture
def serve():
    """Start loopback fakes; all are shut down after the test."""
    started = []

    def start(**kw):
        started.append(serve_openai(api_key=KEY, **kw))
        return started[-1]

    yield start
    for fake in started:
        fake.close()


def client(fake, **kw) -> OpenAICompatibleLLM:
    return OpenAICompatibleLLM(base_url=fake.url + "/v1", api_key=KEY, model="test-model",
                               **{"timeout_s": 0.5, "max_retries": 0, **kw})


def agent(**kw) -> AgentSection:
    base = {"name": "a", "kind": "llm", "prompt": "prompts/llm_agent.md", "context": ALL_BLOCKS,
            "features": ["ret_1d", "rsi_14"], "lookback": 3, "memory": 2, "notes": "Avoid earnings weeks."}
    return AgentSection(**{**base, **kw})


# ------------------------------------------------------------------ data

def frames() -> dict[str, pd.DataFrame]:
    """Every session of SESSIONS (D and after) for every symbol."""
    bars, feats, news, ins = [], [], [], []
    for j, sym in enumerate(SYMBOLS):
        for i, s in enumerate(SESSIONS):
            c = 100.0 + 10 * j + i + 0.125
            bars.append({"session": s, "symbol": sym, "open": c - 0.5, "high": c + 1, "low": c - 1, "close": c,
                         "volume": 1_000_000 + 1000 * i + j})
            feats.append({"session": s, "symbol": sym, "ret_1d": round(0.001 * (i + 1) * (j + 1), 6),
                          "rsi_14": 40.0 + i + j, "unused_feature": -7.77})
            news.append({"session": s, "symbol": sym, "news_count": i % 3, "sentiment_mean": np.nan if i % 3 == 0
                         else round(0.1 * (i - 4), 3), "sentiment_mean_5d": 0.05 * j, "headline_blob": "x"})
            if i % 2 == 0:  # insider rows on some sessions only
                ins.append({"session": s, "symbol": sym, "net_buy_value_90d": 1000.0 * (i + 1) * (j + 1),
                            "buy_count_90d": i + j})
    return {"bars": pd.DataFrame(bars), "features": pd.DataFrame(feats), "news": pd.DataFrame(news),
            "insider": pd.DataFrame(ins)}


def context(fr: dict[str, pd.DataFrame]) -> ContextData:
    return ContextData(bars=fr["bars"], features=fr["features"], news=fr["news"], insider=fr["insider"])


def book() -> BookState:
    memory = [{"session": s, "symbol": sym, "action": "hold", "target_weight": np.nan, "reason": f"r {s} {sym}"}
              for s in SESSIONS[2:5] for sym in ("AAPL", "MSFT")]
    memory += [{"session": D, "symbol": "AAPL", "action": "buy", "target_weight": 0.2, "reason": "TODAY_DECISION"},
               {"session": AFTER[0], "symbol": "AAPL", "action": "sell", "target_weight": 0.0,
                "reason": "FUTURE_MEMORY"}]
    return BookState(positions={"MSFT": 0.1, "AAPL": 0.25},
                     orders=[{"symbol": "AAPL", "side": "buy", "qty": 12, "status": "filled"},
                             {"symbol": "IBM", "side": "sell", "qty": 3.5, "status": "pending", "session": AFTER[1]}],
                     risk_state={"regime": "neutral", "equity": 101234.5678, "drawdown": 0.031, "multiplier": 0.75,
                                 "risk_mode": "normal"},
                     memory=memory)


def perturb_after(fr: dict[str, pd.DataFrame], seed: int = 0) -> dict[str, pd.DataFrame]:
    """Rows after D replaced by canary values (strings in numeric columns too), plus extra future sessions and
    symbols, and every frame's rows shuffled."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, df in fr.items():
        past, future = df[df["session"] <= D], df[df["session"] > D].copy()
        for c in future.columns:
            if c not in ("session", "symbol"):
                future[c] = CANARY
        future = future.astype({c: object for c in future.columns if c not in ("session", "symbol")})
        if len(future):
            future.iloc[0, future.columns.get_loc(future.columns[-1])] = "FUTURE_STRING"
        extra = past.head(2).assign(session="2024-02-01")
        extra = extra.astype({c: object for c in extra.columns if c not in ("session", "symbol")})
        extra.iloc[:, 2:] = CANARY
        merged = pd.concat([past, future, extra], ignore_index=True)
        out[name] = merged.iloc[rng.permutation(len(merged))].reset_index(drop=True)
    return out


def truncate(fr: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    return {k: v[v["session"] <= D].reset_index(drop=True) for k, v in fr.items()}


def block(text: str, name: str) -> str:
    """The body of block ``name`` in a rendered context."""
    body = text.split(f"## {name}\n", 1)[1]
    return body.split("\n\n", 1)[0]


# ------------------------------------------------------------------ render_context

def test_render_context_is_deterministic_and_follows_the_configured_order():
    a = agent(context=["notes", "risk_state", "market_data", "positions"])
    one = render_context(a, D, SYMBOLS, context(frames()), book())
    two = render_context(a, D, list(reversed(SYMBOLS)), context(frames()), book())
    assert one == two
    heads = [line for line in one.splitlines() if line.startswith("## ")]
    assert heads == ["## notes", "## risk_state", "## market_data", "## positions"]
    assert "## features" not in one and "## memory" not in one
    assert block(one, "notes") == "Avoid earnings weeks."
    assert block(one, "risk_state").splitlines() == [
        "drawdown=0.031", "equity=101235", "multiplier=0.75", "regime=neutral", "risk_mode=normal"]
    assert block(one, "positions").splitlines() == ["symbol,weight", "AAPL,0.25", "MSFT,0.1"]
    last = one.rstrip("\n").splitlines()[-1]
    assert last.startswith("Universe: AAPL, IBM, MSFT. Answer with JSON matching the schema: one entry per symbol")


def test_render_context_blocks_show_point_in_time_values():
    text = render_context(agent(), D, SYMBOLS, context(frames()), book())
    md = block(text, "market_data").splitlines()
    assert md[0] == "session,symbol,open,high,low,close,volume"
    assert md[1] == "2024-01-05,AAPL,102.625,104.125,102.125,103.125,1003000"  # lookback 3: D-2 .. D
    assert len(md) == 1 + 3 * 3 and {r.split(",")[0] for r in md[1:]} == {"2024-01-05", "2024-01-08", D}
    assert [r.split(",")[1] for r in md[1:]] == ["AAPL"] * 3 + ["IBM"] * 3 + ["MSFT"] * 3
    assert block(text, "features").splitlines() == [
        "session,symbol,ret_1d,rsi_14", f"{D},AAPL,0.006,45", f"{D},IBM,0.018,47", f"{D},MSFT,0.012,46"]
    news = block(text, "news").splitlines()
    assert news[0] == "session,symbol,news_count,sentiment_mean,sentiment_mean_5d"  # only the sentiment columns
    assert len(news) == 1 + 5 * 3 and SESSIONS[0] not in block(text, "news")  # the last 5 sessions
    assert f"{SESSIONS[3]},AAPL,0,NA,0" in news  # NaN -> NA
    assert block(text, "insider").splitlines() == [  # latest row per symbol on or before D (D-1 here)
        "session,symbol,net_buy_value_90d,buy_count_90d", "2024-01-08,AAPL,5000,4", "2024-01-08,IBM,15000,6",
        "2024-01-08,MSFT,10000,5"]
    assert block(text, "orders").splitlines() == ["symbol,side,qty,status", "AAPL,buy,12,filled"]
    assert block(text, "memory").splitlines() == [  # the decisions of the last 2 sessions before D
        "session,symbol,action,target_weight,reason", "2024-01-05,AAPL,hold,NA,r 2024-01-05 AAPL",
        "2024-01-05,MSFT,hold,NA,r 2024-01-05 MSFT", "2024-01-08,AAPL,hold,NA,r 2024-01-08 AAPL",
        "2024-01-08,MSFT,hold,NA,r 2024-01-08 MSFT"]
    assert "TODAY_DECISION" not in text and "FUTURE_MEMORY" not in text and "-7.77" not in text


@pytest.mark.parametrize("seed", [0, 1])
def test_render_context_canary_nothing_after_d_changes_the_prompt(seed):
    a, fr = agent(), frames()
    full = render_context(a, D, SYMBOLS, context(fr), book())
    assert render_context(a, D, SYMBOLS, context(truncate(fr)), book()) == full
    perturbed = perturb_after(fr, seed)
    assert any((df["session"] > D).any() and (df == CANARY).any().any() for df in perturbed.values())
    assert render_context(a, D, SYMBOLS, context(perturbed), book()) == full
    for leak in ("31337", "FUTURE", "2024-02-01", *AFTER):
        assert leak not in full
    # sessions as datetimes are cut the same way
    as_dt = {k: v.assign(session=pd.to_datetime(v["session"])) for k, v in perturbed.items()}
    assert render_context(a, D, SYMBOLS, context(as_dt), book()) == full


def test_render_context_uses_a_later_session_when_asked():
    """The canary above is not vacuous: rendering at a later session does show the later values."""
    later = render_context(agent(), AFTER[-1], SYMBOLS, context(perturb_after(frames())), book())
    assert "31337.5" in later and AFTER[-1] in later


@pytest.mark.parametrize("name, field", [("features", "features"), ("news", "news"), ("insider", "insider")])
def test_render_context_missing_frame_names_the_block(name, field):
    fr = frames()
    data = ContextData(**{**{k: fr[k] for k in ("bars", "features", "news", "insider")}, field: None})
    with pytest.raises(ValueError, match=f"^{name}:"):
        render_context(agent(context=["market_data", name]), D, SYMBOLS, data, book())
    render_context(agent(context=["market_data"]), D, SYMBOLS, data, book())  # not chosen: fine


def test_render_context_hybrid_shows_model_signals_and_asks_for_reviews():
    sig = pd.DataFrame({"symbol": ["MSFT", "AAPL", "IBM"], "score": [0.2, 0.31, -0.1],
                        "target_weight": [0.25, 0.25, 0.0]})
    a = agent(kind="hybrid", model="qtos_xgb", prompt="prompts/hybrid_agent.md",
              context=["model_signals", "positions"])
    text = render_context(a, D, SYMBOLS, context(frames()), book(), model_signals=sig)
    assert block(text, "model_signals").splitlines() == [
        "symbol,score,target_weight", "AAPL,0.31,0.25", "IBM,-0.1,0", "MSFT,0.2,0.25"]
    last = text.rstrip("\n").splitlines()[-1]
    assert "AAPL=0.25, IBM=0, MSFT=0.25" in last
    assert all(w in last for w in ("approve", "veto", "scale", "never increase"))
    with pytest.raises(ValueError, match="^model_signals"):
        render_context(a, D, SYMBOLS, context(frames()), book())


# ------------------------------------------------------------------ llm_decisions

def decision(symbol, action, w=0.0, confidence=0.7, reason="because"):
    return {"symbol": symbol, "action": action, "target_weight": w, "confidence": confidence, "reason": reason}


def test_valid_answer_maps_actions_to_weights_and_request_is_structured(serve):
    answer = {"decisions": [decision("MSFT", "sell", 0.3, 0.6, "weak"), decision("AAPL", "buy", 0.2, 0.8, "strong"),
                            decision("IBM", "hold", 0.5, 0.4, "wait")]}
    fake = serve(script=[answer])
    a = agent(llm={"model": "agent-model", "temperature": 0.3})
    system = load_prompt(LLM_PROMPT)
    user = render_context(a, D, SYMBOLS, context(frames()), book())
    got = llm_decisions(client(fake), system, user, SYMBOLS, model=a.llm.model, temperature=a.llm.temperature)
    assert list(got.columns) == ["symbol", "action", "target_weight", "confidence", "reason", "error", "raw"]
    assert got["symbol"].tolist() == SYMBOLS and got["action"].tolist() == ["buy", "sell", "hold"]
    assert got["target_weight"].iloc[0] == 0.2 and got["target_weight"].iloc[1] == 0.0
    assert math.isnan(got["target_weight"].iloc[2])  # hold keeps the position
    assert got["confidence"].tolist() == [0.8, 0.6, 0.4] and got["reason"].tolist() == ["strong", "weak", "wait"]
    assert got["error"].isna().all() and (got["raw"].map(json.loads) == answer).all()
    assert len(fake.requests) == 1
    body = fake.requests[0]["body"]
    assert body["model"] == "agent-model" and body["temperature"] == 0.3
    assert body["messages"] == [{"role": "system", "content": system}, {"role": "user", "content": user}]
    assert system.startswith("You are a disciplined portfolio manager")
    fmt = body["response_format"]
    assert fmt["type"] == "json_schema" and fmt["json_schema"]["strict"] is True
    assert fmt["json_schema"]["schema"] == decision_schema(SYMBOLS)


def test_missing_symbol_and_zero_weight_buy_hold_with_error(serve):
    fake = serve(script=[{"decisions": [decision("AAPL", "buy", 0.0), decision("IBM", "buy", 0.15)]}])
    got = llm_decisions(client(fake), "sys", "user", SYMBOLS).set_index("symbol")
    assert got.loc["IBM", "action"] == "buy" and got.loc["IBM", "target_weight"] == 0.15
    assert pd.isna(got.loc["IBM", "error"])
    assert got.loc["MSFT", "action"] == "hold" and math.isnan(got.loc["MSFT", "target_weight"])
    assert got.loc["MSFT", "error"] == "no answer for MSFT" and got.loc["MSFT", "confidence"] == 0
    assert got.loc["AAPL", "action"] == "hold" and math.isnan(got.loc["AAPL", "target_weight"])
    assert "AAPL" in got.loc["AAPL", "error"] and "target_weight" in got.loc["AAPL", "error"]


@pytest.mark.parametrize("script, kw, error, calls", [
    (["invalid_json"], {}, "invalid JSON", 1),
    (["wrong_schema"], {}, "schema mismatch", 1),
    ([{"decisions": [{"symbol": "AAPL", "action": "buy"}]}], {}, "schema mismatch", 1),
    ([{"decisions": [decision("TSLA", "buy", 0.1)]}], {}, "schema mismatch", 1),
    ([{"decisions": [decision("AAPL", "buy", 1.5)]}], {}, "schema mismatch", 1),
    ([{"decisions": [decision("AAPL", "buy", 0.1), decision("MSFT", "sell"), decision("AAPL", "sell")]}], {},
     "symbol answered twice: AAPL", 1),
    (["slow"], {"timeout_s": 0.3, "max_retries": 0}, "APITimeoutError", 1),
    (["html_page"], {}, "the endpoint did not answer with a chat completion: 70 characters starting "
                        "'<html><head><title>Welcome", 1),
    (["huge_invalid"], {}, "invalid JSON", 1),
    ([429, 429, 429], {"max_retries": 2}, "RateLimitError", 3),
    ([500, 500], {"max_retries": 1}, "InternalServerError", 2),
])
def test_failures_hold_every_symbol_with_the_error(serve, script, kw, error, calls):
    fake = serve(script=script, slow_s=1.0)
    got = llm_decisions(client(fake, **kw), "sys", "user", SYMBOLS)
    assert got["symbol"].tolist() == SYMBOLS and (got["action"] == "hold").all()
    assert got["target_weight"].isna().all() and (got["confidence"] == 0).all()
    assert got["error"].map(lambda e: error in e).all() and got["error"].nunique() == 1
    assert len(fake.requests) == calls
    assert not got["error"].str.contains(KEY).any() and not got["raw"].astype(str).str.contains(KEY).any()
    assert got["raw"].dropna().map(len).le(4100).all()  # a runaway reply is cut, not stored whole


def test_single_429_is_retried_then_the_answer_is_used(serve):
    fake = serve(script=[429, {"decisions": [decision("AAPL", "buy", 0.1), decision("MSFT", "sell"),
                                             decision("IBM", "hold")]}])
    got = llm_decisions(client(fake, max_retries=2), "sys", "user", SYMBOLS)
    assert got["action"].tolist() == ["buy", "sell", "hold"] and got["error"].isna().all()
    assert len(fake.requests) == 2


class RaisingLLM(LLM):
    api_key: str

    def complete_json(self, system, user, schema):
        raise RuntimeError(f"connection to https://x/?key={self.api_key} failed")


class UnvalidatedLLM(LLM):
    """An implementation that does not check the schema itself."""

    answer: str

    def complete_json(self, system, user, schema):
        return LLMResult(ok=True, value=json.loads(self.answer), raw=self.answer)


def test_a_raising_or_unvalidated_llm_still_holds_and_never_leaks_the_key():
    got = llm_decisions(RaisingLLM(api_key=KEY), "s", "u", SYMBOLS)
    assert (got["action"] == "hold").all() and got["error"].str.contains("RuntimeError").all()
    assert not got["error"].str.contains(KEY).any()
    bad = UnvalidatedLLM(answer=json.dumps({"decisions": [decision("AAPL", "short", 0.5)]}))
    got = llm_decisions(bad, "s", "u", SYMBOLS)
    assert (got["action"] == "hold").all() and got["error"].str.startswith("schema mismatch").all()


def test_wrong_key_is_an_error_without_the_key(serve):
    fake = serve()
    llm = OpenAICompatibleLLM(base_url=fake.url + "/v1", api_key=KEY + "-wrong", model="m", timeout_s=0.5,
                              max_retries=0)
    got = llm_decisions(llm, "s", "u", SYMBOLS)
    assert got["error"].str.contains("AuthenticationError").all()
    assert not got["error"].str.contains(KEY).any() and not got["raw"].astype(str).str.contains(KEY).any()


# ------------------------------------------------------------------ hybrid_decisions

MODEL = pd.DataFrame({"symbol": ["AAPL", "MSFT", "IBM", "GOOG"], "target_weight": [0.25, 0.25, 0.0, 0.2]})


def review(symbol, verdict, scale=1.0, confidence=0.9, reason="ok"):
    return {"symbol": symbol, "verdict": verdict, "scale": scale, "confidence": confidence, "reason": reason}


def test_hybrid_approve_veto_scale_and_missing(serve):
    answer = {"reviews": [review("GOOG", "scale", 0.5, reason="news"), review("MSFT", "veto", 0.9),
                          review("AAPL", "approve", 0.1)]}
    fake = serve(script=[answer])
    system = load_prompt(HYBRID_PROMPT)
    got = hybrid_decisions(client(fake), system, "the context", MODEL, "hold")
    assert list(got.columns) == ["symbol", "action", "target_weight", "model_weight", "confidence", "reason",
                                 "error", "raw"]
    assert got["symbol"].tolist() == MODEL["symbol"].tolist()
    assert got["action"].tolist() == ["approve", "veto", "approve", "scale"]
    assert got["target_weight"].tolist() == [0.25, 0.0, 0.0, pytest.approx(0.1)]
    assert got["model_weight"].tolist() == MODEL["target_weight"].tolist()
    assert got["error"].isna().tolist() == [True, True, False, True] and got["error"].iloc[2] == "no review for IBM"
    assert got["reason"].iloc[3] == "news" and got["confidence"].iloc[2] == 0
    body = fake.requests[0]["body"]
    assert body["messages"][0] == {"role": "system", "content": system} and "never" in system
    assert body["messages"][1]["content"] == "the context"
    assert body["response_format"]["json_schema"]["schema"] == review_schema(MODEL["symbol"].tolist())


@pytest.mark.parametrize("scale", [0.0, 0.3, 1.0, 1.5, 7.0])
def test_hybrid_scale_never_raises_a_weight(serve, scale):
    fake = serve(script=[{"reviews": [review(s, "scale", scale) for s in MODEL["symbol"]]}])
    got = hybrid_decisions(client(fake), "s", "u", MODEL, "model")
    assert (got["target_weight"] <= got["model_weight"] + 1e-12).all()
    if scale > 1:  # out of the schema: the review fails, and on_error 'model' keeps the model weights
        assert (got["action"] == "model").all() and got["error"].str.contains("schema mismatch").all()
    else:
        assert (got["action"] == "scale").all()
        assert got["target_weight"].tolist() == pytest.approx((MODEL["target_weight"] * scale).tolist())


@pytest.mark.parametrize("script", [["invalid_json"], [429, 429],
                                    [{"reviews": [review("AAPL", "veto"), review("AAPL", "approve")]}]])
@pytest.mark.parametrize("on_error", ["hold", "model"])
def test_hybrid_failure_hold_or_model(serve, script, on_error):
    fake = serve(script=script)
    got = hybrid_decisions(client(fake, max_retries=1), "s", "u", MODEL, on_error)
    assert (got["action"] == on_error).all() and (got["confidence"] == 0).all()
    if on_error == "hold":
        assert got["target_weight"].isna().all()
    else:
        assert got["target_weight"].tolist() == MODEL["target_weight"].tolist()
    assert got["error"].notna().all() and got["error"].nunique() == 1
    assert not got["error"].str.contains(KEY).any() and not got["raw"].astype(str).str.contains(KEY).any()


def test_per_call_model_and_temperature_overrides_reach_the_request(serve):
    ok = {"decisions": [decision(s, "hold") for s in SYMBOLS]}
    fake = serve(script=[ok, {"reviews": [review(s, "approve") for s in MODEL["symbol"]]}])
    llm_decisions(client(fake), "s", "u", SYMBOLS, model="agent-model", temperature=0.7)
    hybrid_decisions(client(fake), "s", "u", MODEL, "hold", llm_model="hybrid-model", temperature=0.2)
    assert [(r["body"]["model"], r["body"]["temperature"]) for r in fake.requests] == [
        ("agent-model", 0.7), ("hybrid-model", 0.2)]


def test_schemas_are_strict_structured_output_compatible():
    def walk(node):
        if node.get("type") == "object":
            assert node["additionalProperties"] is False and sorted(node["required"]) == sorted(node["properties"])
            for child in node["properties"].values():
                walk(child)
        if node.get("type") == "array":
            walk(node["items"])

    for schema in (decision_schema(SYMBOLS), review_schema(SYMBOLS)):
        walk(schema)
    assert decision_schema(["A", "A", "B"])["properties"]["decisions"]["items"]["properties"]["symbol"]["enum"] == [
        "A", "B"]


def test_prompt_files_exist_and_explain_the_semantics():
    llm_text, hybrid_text = load_prompt(LLM_PROMPT), load_prompt(HYBRID_PROMPT)
    assert all(w in llm_text for w in ("`buy`", "`sell`", "`hold`", "fraction of account equity"))
    assert all(w in hybrid_text for w in ("`approve`", "`veto`", "`scale`", "never add"))
