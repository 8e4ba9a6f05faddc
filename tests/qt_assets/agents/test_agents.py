"""Agents end to end in process (qt_assets/agents/assets.py run_agent): rule, model, llm and hybrid agents on synthetic
bars; the decision lookahead canary; the LLM agents against our chat-completions server; the limits check."""

import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from qt_assets.agents.assets import AgentInputs, limit_problems, run_agent
from qt_assets.agents.guardian import Book
from qt_assets.agents.regime import regime_frame
from qt_resources.config import parse_config
from qt_resources.llm import OpenAICompatibleLLM
from tests.conftest import REPO, repo_config
from tests.news_servers import serve_openai

SYMBOLS = ["AAA", "BBB", "CCC", "DDD", "EEE"]
N = 260
CUT = 200  # the canary's session D (index)


def make_cfg(agents, **over):
    raw = repo_config()
    raw.update(universe={"symbols": SYMBOLS, "benchmark": "equal_weight"},
               data={"provider": "bundled", "start": "2019-01-02", "end": "2020-12-31"},
               research={**raw["research"], "split": {"train_end": "2019-12-31", "embargo": 5}},
               backtest={"strategies": []}, agents=agents,
               regime={"trend_sma": 50, "breadth_sma": 20, "vol_history": 60}, **over)
    return parse_config(raw, "test", base_dir=REPO)


def market(seed=1, n=N):
    rng = np.random.default_rng(seed)
    idx = pd.bdate_range("2019-01-02", periods=n)
    r = rng.normal(0.0004, 0.015, (n, len(SYMBOLS))) + np.where(np.arange(n)[:, None] % 80 < 40, 0.002, -0.002)
    close = pd.DataFrame(50 * np.exp(np.cumsum(r, axis=0)), index=idx, columns=SYMBOLS)
    opn = close.shift(1).fillna(close.iloc[0]) * np.exp(rng.normal(0, 0.004, close.shape))
    return close, opn


def inputs(close: pd.DataFrame, opn: pd.DataFrame, cfg, sessions: list[str]) -> AgentInputs:
    hi, lo = np.maximum(close, opn) * 1.01, np.minimum(close, opn) * 0.99
    s = close.index.strftime("%Y-%m-%d")
    long = lambda w, name: w.set_axis(s).stack().rename(name)  # noqa: E731
    bars = pd.concat([long(opn, "open"), long(hi, "high"), long(lo, "low"), long(close, "close")], axis=1)
    bars = bars.rename_axis(["session", "symbol"]).reset_index().assign(volume=1e6)
    ret = close.pct_change()
    tr = pd.concat([hi - lo, (hi - close.shift()).abs(), (lo - close.shift()).abs()]).groupby(level=0).max()
    feats = {"atr_pct_14": tr.ewm(alpha=1 / 14, adjust=False).mean() / close, "vol_20d": ret.rolling(20).std() * math.sqrt(252),
             "ret_1d": ret, "ret_5d": close.pct_change(5), "ret_20d": close.pct_change(20),
             "sma_ratio_5_20": close.rolling(5).mean() / close.rolling(20).mean(),
             "sma_ratio_20_50": close.rolling(20).mean() / close.rolling(50).mean(),
             "rsi_14": 50 + 100 * ret.rolling(14).mean(), "news_count": ret * 0 + 1, "sentiment_mean": ret.rolling(3).mean(),
             "sentiment_mean_5d": ret.rolling(5).mean()}
    features = pd.concat([long(v, k) for k, v in feats.items()], axis=1).rename_axis(["session", "symbol"]).reset_index()
    level = (1 + ret.mean(axis=1).fillna(0)).cumprod()
    regime = regime_frame(level, close, cfg.regime)
    news = features[["session", "symbol", "news_count", "sentiment_mean", "sentiment_mean_5d"]]
    return AgentInputs(sessions=sessions, closes=close, bars=bars, features=features, regime=regime, news=news)


def model_and_version(close):
    """A small real classifier pipeline (as training registers: predict_proba over classes 0/1/2)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    cfg = make_cfg([{"name": "m", "kind": "model", "model": "qtos_xgb"}])
    cols = ["ret_1d", "ret_5d", "rsi_14"]
    f = inputs(close, close, cfg, []).features.dropna(subset=cols)
    train = f[f["session"] < "2019-06-01"]
    y = np.digitize(train["ret_5d"].shift(-5).fillna(0), [-0.01, 0.01])
    pipe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(train[cols], y)
    return pipe, SimpleNamespace(version="3", tags={"features": ",".join(cols), "oos_start": "2019-06-03"})


def decide(cfg, agent, close, opn, upto: int, **kw):
    sessions = list(close.index[:upto].strftime("%Y-%m-%d"))
    inp = inputs(close.iloc[:upto], opn.iloc[:upto], cfg, sessions)
    return run_agent(cfg, agent, inp, Book.new(cfg.broker.initial_cash), **kw)


RULE = {"name": "trend", "kind": "rule", "rule": "sma_cross", "params": {"fast": 10, "slow": 30}}
MODEL = {"name": "m", "kind": "model", "model": "qtos_xgb", "selection": {"top_k": 2}}


@pytest.mark.parametrize("spec", [RULE, {**RULE, "rule": "momentum_topk", "params": {"lookback": 20, "k": 2}},
                                  {**RULE, "rule": "rsi_threshold", "params": {"window": 14}}, MODEL])
def test_decision_lookahead_canary(spec):
    """Changing (or removing) every bar after session D leaves every decision and guarded target <= D unchanged."""
    cfg = make_cfg([spec], risk={"max_position_pct": 0.4, "max_open_positions": 3})
    agent = cfg.agents[0]
    close, opn = market()
    kw = dict(zip(("model", "version"), model_and_version(close))) if spec is MODEL else {}
    full_d, full_g, _ = decide(cfg, agent, close, opn, N, **kw)
    cut_d, cut_g, _ = decide(cfg, agent, close, opn, CUT, **kw)
    rng = np.random.default_rng(9)
    close2, opn2 = close.copy(), opn.copy()
    close2.iloc[CUT:] = close2.iloc[CUT:].to_numpy()[rng.permutation(N - CUT)] * 3.0
    opn2.iloc[CUT:] = opn2.iloc[CUT:] * 0.5
    alt_d, alt_g, _ = decide(cfg, agent, close2, opn2, N, **kw)
    d_end = close.index[CUT - 1].strftime("%Y-%m-%d")
    for full, other in [(full_d, cut_d), (full_g, cut_g), (full_d, alt_d), (full_g, alt_g)]:
        a = full[full["session"] <= d_end].reset_index(drop=True)
        b = other[other["session"] <= d_end].reset_index(drop=True)
        pd.testing.assert_frame_equal(a, b)
    assert (full_g["order_qty"] > 0).sum() > 5  # the agent trades
    assert not full_g[full_g["session"] > d_end].equals(alt_g[alt_g["session"] > d_end])  # later data matters


def test_model_agent_in_sample_sessions_are_flat_and_reasons_name_the_rank():
    cfg = make_cfg([MODEL])
    close, opn = market()
    model, version = model_and_version(close)
    d, g, _ = decide(cfg, cfg.agents[0], close, opn, 120, model=model, version=version)
    ins = d[d["session"] < "2019-06-03"]
    assert (ins["target_weight"] == 0).all() and ins["reason"].str.contains("in-sample for model v3").all()
    oos = d[d["session"] >= "2019-06-03"]
    assert (oos.groupby("session")["target_weight"].apply(lambda w: (w > 0).sum()) <= 2).all()
    assert oos["reason"].str.match(r"rank \d, score [+-]").all() and (oos["model_version"] == "3").all()
    assert not limit_problems(g, cfg.risk, cfg.agents[0].rebalance_band)


def test_limit_problems_catches_each_broken_limit():
    cfg = make_cfg([RULE], risk={"max_position_pct": 0.3, "max_gross_exposure": 0.8, "max_open_positions": 2})
    ok = pd.DataFrame({"session": "2020-01-02", "symbol": ["A", "B", "C"], "target_weight": [0.3, 0.3, 0.0],
                       "current_weight": [0.0, 0.31, 0.0], "risk_mode": "normal", "rules": ""})
    assert limit_problems(ok, cfg.risk, 0.02) == []
    kept_drift = ok.assign(target_weight=[0.3, 0.31, 0.0])  # a kept position drifting within the band
    assert limit_problems(kept_drift, cfg.risk, 0.02) == []
    cases = {"above max_position_pct": ok.assign(target_weight=[0.35, 0.3, 0.0]),
             "above max_gross_exposure": ok.assign(target_weight=[0.3, 0.3, 0.25]),
             "above max_open_positions": ok.assign(target_weight=[0.2, 0.2, 0.2]),
             "kill switch on": ok.assign(risk_mode="halted"),
             "negative target": ok.assign(target_weight=[0.3, -0.1, 0.0])}
    for what, frame in cases.items():
        assert any(what in p for p in limit_problems(frame, cfg.risk, 0.02)), what
    frozen = cases["above max_position_pct"].assign(rules="kill_switch_file", current_weight=[0.35, 0.3, 0.0])
    assert limit_problems(frozen, cfg.risk, 0.02) == []  # the kill switch keeps positions as they are


def answer(weights: dict) -> dict:
    return {"decisions": [{"symbol": s, "action": "buy" if w > 0 else "sell", "target_weight": w,
                           "confidence": 0.7, "reason": f"because {s}"} for s, w in weights.items()]}


def llm_cfg(agent, **over):
    return make_cfg([agent], llm={"kind": "openai", "base_url": "http://127.0.0.1:1/v1", "model": "m1",
                                  "timeout_s": 0.5}, **over)


@pytest.fixture
def fake():
    servers = []

    def start(script, slow_s=2.0):
        s = serve_openai(script=script, slow_s=slow_s)
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.close()


def test_llm_agent_every_failure_is_a_hold_and_prompts_are_stored(fake):
    spec = {"name": "analyst", "kind": "llm", "prompt": "prompts/llm_agent.md", "features": ["rsi_14", "ret_5d"],
            "context": ["market_data", "features", "positions", "orders", "risk_state", "news", "memory", "notes"],
            "notes": "Prefer liquid names.", "llm": {"temperature": 0.3}}
    cfg = llm_cfg(spec, risk={"max_position_pct": 0.3})
    close, opn = market()
    good = answer({"AAA": 0.2, "BBB": 0.2})
    script = [good, good, "invalid_json", "wrong_schema", 429, "slow", {"decisions": [{"symbol": "AAA"}]},
              answer({"AAA": 0.0, "BBB": 0.2})]  # one call per session; no retries, so each failure is final
    srv = fake(script, slow_s=1.5)
    llm = OpenAICompatibleLLM(base_url=srv.url + "/v1", api_key="sk-test-llm-key", model="m1", timeout_s=0.5,
                              max_retries=0)
    d, g, _ = decide(cfg, cfg.agents[0], close, opn, 8, llm=llm)
    per = d.groupby("session")
    sessions = sorted(d["session"].unique())
    first = per.get_group(sessions[0]).set_index("symbol")
    assert first.loc["AAA", "action"] == "buy" and first.loc["AAA", "target_weight"] == pytest.approx(0.2)
    assert first.loc["CCC", "action"] == "hold" and "no answer for CCC" in first.loc["CCC", "error"]
    errors = [per.get_group(s)["error"].iloc[0] for s in sessions[2:6]]
    assert "invalid JSON" in errors[0] and "schema" in errors[1]
    assert "RateLimit" in errors[2] or "429" in errors[2]
    assert "Timeout" in errors[3] or "timed out" in errors[3].lower()
    assert all((per.get_group(s)["action"] == "hold").all() for s in sessions[2:7])
    assert (d["prompt"].str.contains("## market_data") & d["prompt"].str.contains("Prefer liquid names.")).all()
    assert first["response"].iloc[0].startswith('{"decisions"')
    last = per.get_group(sessions[-1]).set_index("symbol")
    mem = last["prompt"].iloc[0].split("## memory")[1]
    assert f"{sessions[6]},AAA,hold" in mem and sessions[1] not in mem  # its own last 5 sessions of decisions
    assert last.loc["AAA", "action"] == "sell" and last.loc["AAA", "target_weight"] == 0.0
    body = srv.requests[-1]["body"]
    assert body["temperature"] == 0.3 and body["model"] == "m1"
    assert body["messages"][0]["content"] == (REPO / "prompts/llm_agent.md").read_text()
    # the book acted: AAA bought after session 1 and held through the failures (hold = keep)
    held = g[(g["symbol"] == "AAA") & g["session"].isin(sessions[2:7])]
    assert (held["current_weight"] > 0.1).all() and (held["order_qty"] == 0).all()
    assert "sk-test-llm-key" not in d.to_csv()


def test_llm_prompt_is_point_in_time(fake):
    """The prompt of session D is byte-identical whether or not the data after D exists or was changed."""
    spec = {"name": "analyst", "kind": "llm", "prompt": "prompts/llm_agent.md", "features": ["rsi_14"],
            "context": ["market_data", "features", "news", "positions", "risk_state", "memory"]}
    cfg = llm_cfg(spec)
    close, opn = market()
    srv = fake([answer({"AAA": 0.1})] * 40)
    llm = OpenAICompatibleLLM(base_url=srv.url + "/v1", api_key="sk-test-llm-key", model="m1", timeout_s=2)
    upto = 12
    a, _, _ = decide(cfg, cfg.agents[0], close.iloc[:upto + 5], opn.iloc[:upto + 5], upto + 5, llm=llm)
    b, _, _ = decide(cfg, cfg.agents[0], close.iloc[:upto], opn.iloc[:upto], upto, llm=llm)
    c2 = close.copy()
    c2.iloc[upto:] *= 7.0
    c, _, _ = decide(cfg, cfg.agents[0], c2.iloc[:upto + 5], opn.iloc[:upto + 5], upto + 5, llm=llm)
    d_end = close.index[upto - 1].strftime("%Y-%m-%d")
    pa, pb, pc = (x[x["session"] == d_end]["prompt"].iloc[0] for x in (a, b, c))
    assert pa == pb == pc
    assert a[a["session"] > d_end]["prompt"].iloc[0] != c[c["session"] > d_end]["prompt"].iloc[0]


def test_hybrid_agent_llm_can_veto_or_scale_down_only(fake):
    spec = {"name": "vetted", "kind": "hybrid", "model": "qtos_xgb", "prompt": "prompts/hybrid_agent.md",
            "selection": {"top_k": 2}, "context": ["model_signals", "features"], "features": ["ret_5d"]}
    cfg = llm_cfg(spec, risk={"max_position_pct": 0.5})
    close, opn = market()
    model, version = model_and_version(close)
    review = {"reviews": [{"symbol": s, "verdict": v, "scale": sc, "confidence": 0.5, "reason": v}
                          for s, v, sc in [("AAA", "veto", 0.0), ("BBB", "scale", 0.5), ("CCC", "scale", 1.0),
                                           ("DDD", "approve", 0.0), ("EEE", "approve", 1.0)]]}
    srv = fake([review] * 3 + ["invalid_json"])
    llm = OpenAICompatibleLLM(base_url=srv.url + "/v1", api_key="sk-test-llm-key", model="m1", timeout_s=2,
                              max_retries=0)
    start = list(close.index.strftime("%Y-%m-%d")).index("2019-06-03")
    sessions = list(close.index[start:start + 4].strftime("%Y-%m-%d"))
    inp = inputs(close.iloc[:start + 4], opn.iloc[:start + 4], cfg, sessions)
    d, g, _ = run_agent(cfg, cfg.agents[0], inp, Book.new(100_000), model=model, version=version, llm=llm)
    mw = pd.concat([run_agent(make_cfg([{**MODEL, "name": "vetted"}], risk={"max_position_pct": 0.5}),
                              make_cfg([{**MODEL, "name": "vetted"}]).agents[0], inp, Book.new(100_000), model=model,
                              version=version)[0]])
    both = d.merge(mw[["session", "symbol", "target_weight"]], on=["session", "symbol"], suffixes=("", "_model"))
    first3 = both[both["session"].isin(sessions[:3])].set_index(["session", "symbol"])
    for s in sessions[:3]:
        assert first3.loc[(s, "AAA"), "target_weight"] == 0.0
        assert first3.loc[(s, "BBB"), "target_weight"] == pytest.approx(0.5 * first3.loc[(s, "BBB"), "target_weight_model"])
    assert (both["target_weight"].fillna(0) <= both["target_weight_model"] + 1e-12).all()  # never above the model
    last = d[d["session"] == sessions[3]]
    assert (last["action"] == "hold").all() and last["target_weight"].isna().all()  # on_llm_error: hold
    assert last["error"].str.contains("invalid JSON").all()


def test_the_book_carries_from_session_to_session(tmp_path):
    import dagster as dg

    from qt_assets.agents.assets import _load_book
    from qt_resources.warehouse import DuckDBWarehouse

    cfg = make_cfg([RULE])
    agent = cfg.agents[0]
    wh = DuckDBWarehouse(root=str(tmp_path))
    keys = [f"2021-01-{d:02d}" for d in (4, 5, 6, 7, 8, 11)]
    assert _load_book(cfg, wh, agent, keys[2:4], keys).cash == cfg.broker.initial_cash  # first run: a new book
    b = Book.new(123.0)
    wh.write_partitions("guardian_state/trend", pd.DataFrame({"session": [keys[2]], "book": [b.to_json()]}), [keys[2]])
    assert _load_book(cfg, wh, agent, keys[3:5], keys).cash == 123.0  # continues from the session before
    with pytest.raises(dg.Failure, match=r"no guardian state for 2021-01-07, the session before 2021-01-08"):
        _load_book(cfg, wh, agent, keys[4:], keys)
    assert _load_book(cfg, wh, agent, keys[4:], keys, start_fresh=True).cash == cfg.broker.initial_cash
    with pytest.raises(dg.Failure, match="contiguous"):
        _load_book(cfg, wh, agent, [keys[3], keys[5]], keys)


def test_journal_by_hand():
    from qt_assets.agents.assets import journal

    t = pd.DataFrame({"pnl": [100.0, -50.0, 30.0, -20.0], "ret": [0.02, -0.01, 0.006, -0.004],
                      "hold_sessions": [5, 2, 3, 10], "violations": ["", "late_exit", "early_exit,oversize", ""]})
    j = journal(t)
    assert j["trades"] == 4 and j["win_rate"] == 0.5
    assert j["profit_factor"] == pytest.approx(130 / 70) and j["expectancy"] == pytest.approx(15.0)
    assert j["expectancy_pct"] == pytest.approx(0.003) and j["avg_hold_sessions"] == 5.0
    assert j["discipline_score"] == pytest.approx(1 - 3 / 4)
    assert j["violations"] == {"late_exit": 1, "early_exit": 1, "oversize": 1}
    assert journal(t.iloc[0:0]) == {"trades": 0}


@pytest.mark.parametrize("sizing", [{"kind": "fixed_fraction", "fraction": 0.2}, {"kind": "vol_target", "target_vol": 0.1},
                                    {"kind": "equal"}])
def test_a_session_decided_alone_equals_the_same_session_in_a_long_run(sizing):
    """Decisions and targets must not depend on how sessions are batched into runs (daily runs vs a backfill)."""
    cfg = make_cfg([{**MODEL, "sizing": sizing}], risk={"max_position_pct": 0.5})
    agent = cfg.agents[0]
    close, opn = market()
    model, version = model_and_version(close)
    upto = 150
    sessions = list(close.index[:upto].strftime("%Y-%m-%d"))
    inp = inputs(close.iloc[:upto], opn.iloc[:upto], cfg, sessions)
    d_all, g_all, _ = run_agent(cfg, agent, inp, Book.new(1e5), model=model, version=version)
    book = Book.new(1e5)
    run_agent(cfg, agent, inputs(close.iloc[:upto - 1], opn.iloc[:upto - 1], cfg, sessions[:-1]), book,
              model=model, version=version)
    book = Book.from_json(book.to_json())
    d_one, g_one, _ = run_agent(cfg, agent, inputs(close.iloc[:upto], opn.iloc[:upto], cfg, sessions[-1:]), book,
                                model=model, version=version)
    last = d_all[d_all["session"] == sessions[-1]].reset_index(drop=True)
    pd.testing.assert_frame_equal(last, d_one.reset_index(drop=True))
    gl = g_all[g_all["session"] == sessions[-1]].reset_index(drop=True)
    pd.testing.assert_frame_equal(gl, g_one.reset_index(drop=True), atol=1e-12)
    assert (d_all["target_weight"] > 0).any()


def test_an_agent_run_that_places_nothing_says_why():
    """Targets all swallowed by rules (named with their counts), a long run without any target, and the normal
    cases (an order planned, a position held, a short quiet run) that say nothing."""
    from qt_assets.agents.assets import QUIET_SESSIONS, agent_quiet
    from qt_assets.agents.guardian import Book

    def frame(n, intent=0.0, side=""):
        return pd.DataFrame({"session": [f"2024-01-{d + 1:02d}" for d in range(n)], "symbol": "AAA",
                             "intent_weight": intent, "order_side": side})

    flat = Book.new(1e5)
    why = agent_quiet(frame(3, intent=0.01), flat, {"max_position_pct": 2, "cooldown": 1})
    assert why.startswith("no order in 3 session(s) and no position, although the agent asked for 3 position(s)")
    assert "AAA 0.0100 on 2024-01-01" in why and why.endswith("(max_position_pct x2, cooldown x1)")
    assert "below one share" in agent_quiet(frame(2, intent=0.01), flat, {})
    assert agent_quiet(frame(QUIET_SESSIONS), flat, {}).endswith("the agent never asked for a position")
    assert agent_quiet(frame(QUIET_SESSIONS - 1), flat, {}) is None  # a short flat stretch is normal
    assert agent_quiet(frame(3, intent=0.01, side="buy"), flat, {}) is None
    held = Book.new(1e5)
    held.qty["AAA"] = 10.0
    assert agent_quiet(frame(QUIET_SESSIONS, intent=0.01), held, {"rebalance_band": 5}) is None
