"""The one project config (``qtos.yaml``), validated by pydantic.

Loading fails at definitions-load time with one line per problem that names the key path and the bad
value, e.g. ``agents[0].risk.max_position_pct: 1.7 is not <= 1``.
"""

from __future__ import annotations

import hashlib
import json
import os
from datetime import date
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from qt_resources.plugins import MODEL_FAMILIES, RULES, SIZING_KINDS, load_files, param_problems, typed

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG_PATH = REPO_ROOT / "qtos.yaml"
SYMBOL_PATTERN = r"^[A-Z][A-Z0-9.\-]{0,9}$"
NAME_PATTERN = r"^[a-z][a-z0-9_]{0,39}$"
# settings that cannot change any result (the model is the same for any thread count): not in fingerprint()
NOT_FINGERPRINTED = {"research": {"model": {"n_jobs"}}}


# names checked against the registries (qt_resources.plugins): the error lists the registered ones
RuleName = Annotated[str, AfterValidator(RULES.validator)]
SizingName = Annotated[str, AfterValidator(SIZING_KINDS.validator)]
FamilyName = Annotated[str, AfterValidator(MODEL_FAMILIES.validator)]


class ConfigError(ValueError):
    """An invalid project config; the message lists every problem with its key path."""

    def __init__(self, source: str, problems: list[str]):
        self.problems = problems
        super().__init__(f"Invalid project config {source}:\n" + "\n".join(f"  - {p}" for p in problems))


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ProjectSection(_Model):
    name: str = Field(
        "qtos", pattern=NAME_PATTERN, description=(
            "project name: the MLflow experiment and the Optuna study are named after it"))
    timezone: Literal["America/New_York"] = Field(
        "America/New_York", description=(
            "the exchange's time zone (sessions, closes, the decision cut-off)"))
    calendar: Literal["XNYS"] = Field("XNYS", description="the exchange calendar whose sessions partition the graph")


Symbol = Annotated[str, Field(pattern=SYMBOL_PATTERN)]


class Listing(_Model):
    listed: date | None = Field(None, description="first session the symbol traded (no row expected before it)")
    delisted: date | None = Field(None, description="last session the symbol traded (no row expected after it; "
                                                    "stored rows after it may be dropped by a re-fetch, logged)")

    @field_validator("delisted")
    @classmethod
    def _order(cls, v, info):
        listed = info.data.get("listed")
        if v and listed and v < listed:
            raise ValueError(f"is before listed {listed}")
        return v


class UniverseSection(_Model):
    symbols: list[Symbol] = Field(
        min_length=1, max_length=500, description=(
            "tickers traded and modelled (upper case, each once)"))
    benchmark: str = Field("equal_weight", pattern=r"^(equal_weight|sp500|[A-Z][A-Z0-9.\-]{0,9})$",
                           description="equal_weight | sp500 (S&P 500 index from the arch package) | a symbol")
    listings: dict[Symbol, Listing] = Field(default_factory=dict, description=(
        "explicit listing / delisting sessions per symbol, over the provider's own (e.g. for a csv provider, "
        "which knows none): the prices gates expect a row for every session in between"))

    @field_validator("symbols")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        dup = sorted({s for s in v if v.count(s) > 1})
        if dup:
            raise ValueError(f"lists {dup} more than once")
        return v

    @field_validator("listings")
    @classmethod
    def _listed_symbols(cls, v, info):
        unknown = sorted(set(v) - set(info.data.get("symbols") or []))
        if unknown:
            raise ValueError(f"names {unknown}, not in universe.symbols")
        return v


class DataSection(_Model):
    provider: Literal["bundled", "synthetic", "csv", "yfinance", "alpaca"] = Field(
        "bundled", description=(
            "price source: bundled (offline, real 2000-03..2013-03 prices of AAPL, GOOG, IBM, MSFT, FB), synthetic "
            "(offline, any symbols 1995-2030), csv (your files), yfinance or alpaca (extra live; Alpaca keys from "
            "ALPACA_API_KEY / ALPACA_SECRET_KEY)"))
    seed: int = Field(7, description="synthetic providers (prices, news, filings): the universe's seed")
    csv_path: str | None = Field(None, description="csv provider: a file or folder of CSVs, relative to the config")
    start: date = Field(description="first session of the partitions (the graph's history starts here)")
    end: date = Field(description="last session of the partitions")


class NewsSection(_Model):
    provider: Literal["bundled", "synthetic", "finnhub", "alpaca", "none"] = Field(
        "bundled", description=(
            "company news: bundled / synthetic (offline), finnhub (FINNHUB_API_KEY), alpaca, or none (no news assets;"
            " news_* features are refused)"))
    scorer: Literal["lexicon", "llm"] = Field(
        "lexicon", description=(
            "sentiment: lexicon (Loughran-McDonald word lists) or llm (needs llm.kind: openai)"))


class FilingsSection(_Model):
    provider: Literal["bundled", "synthetic", "edgar", "none"] = Field(
        "bundled", description=(
            "SEC Form 4 insider filings: bundled / synthetic (offline), edgar (SEC_EDGAR_USER_AGENT), or none (no "
            "filings assets; insider_* features are refused)"))


class LLMSection(_Model):
    """OpenAI-compatible chat completions (OpenAI, Ollama, vLLM); the key comes from $OPENAI_API_KEY."""

    kind: Literal["none", "openai"] = Field(
        "none", description=(
            "none, or openai: any OpenAI-compatible chat-completions endpoint (extra live)"))
    base_url: str = Field(
        "http://127.0.0.1:11434/v1", description=(
            "the endpoint's base URL (default: a local Ollama)"))
    model: str = Field("llama3.1", description="model name sent to the endpoint")
    temperature: float = Field(
        0.0, ge=0, le=2, description=(
            "sampling temperature (0: as deterministic as the endpoint allows)"))
    timeout_s: float = Field(20.0, gt=0, description="per-request timeout, seconds")


class FeaturesSection(_Model):
    set: list[str] = Field(
        min_length=1, description=(
            "the model's features: columns documented on the features_daily dbt model "
            "(dbt_features/models/marts/schema.yml)"))


class LabelSection(_Model):
    kind: Literal["forward_return_class", "vol_scaled_class", "triple_barrier"] = Field(
        "forward_return_class",
        description="forward_return_class: fixed up/down thresholds on the h-session return; vol_scaled_class: "
                    "+-vol_k * sigma_20d * sqrt(h); triple_barrier: the first of the barriers "
                    "entry * (1 +- vol_k * sigma_20d * sqrt(h)) touched by the bars' high/low within h sessions "
                    "(up/down), else flat at the vertical barrier")
    price: Literal["close", "open"] = Field("close", description="close-to-close, or next-open-to-open entry")
    horizon: int = Field(5, ge=1, le=60, description="h: sessions ahead the label looks")
    up: float = Field(0.01, gt=0, lt=1, description="forward_return_class: a return above this is up")
    down: float = Field(-0.01, gt=-1, lt=0, description="forward_return_class: a return below this is down")
    vol_k: float = Field(1.0, gt=0, le=10, description="vol_scaled_class threshold / triple_barrier barrier "
                                                        "width: vol_k * sigma_20d * sqrt(h)")


class ModelSection(_Model):
    @model_validator(mode="before")
    @classmethod
    def _family_defaults(cls, data: Any) -> Any:
        """``params`` with the family's defaults filled in and its types applied, when they are all valid (else
        the cross-checks name the bad ones)."""
        if isinstance(data, dict):
            family, given = data.get("family", "xgboost"), data.get("params") or {}
            if isinstance(family, str) and family in MODEL_FAMILIES.names() and isinstance(given, dict):
                spec = MODEL_FAMILIES.get(family).params
                if not param_problems("", "", spec, given):
                    data = {**data, "params": typed(spec, given)}
        return data

    family: FamilyName = Field("xgboost", description="a registered model family (built in: xgboost; adding one: "
                                                       "docs/extending.md)")
    objective: Literal["classifier", "regressor"] = Field(
        "classifier", description="classifier: down/flat/up classes, score = P(up) - P(down); regressor: "
                                  "the forward return itself, score = the predicted return")
    name: str = Field("qtos_xgb", pattern=NAME_PATTERN, description="registered model name in MLflow")
    seed: int = Field(7, description="seed of xgboost and of Optuna's sampler")
    params: dict[str, int | float] = Field(
        default_factory=dict, description="the family's hyper-parameters (see Registered model families below; "
                                          "defaults from the family); tuned values override them")
    winsorize: float = Field(0.01, ge=0, lt=0.5, description="clip each feature to its train [q, 1-q] quantiles")
    n_jobs: int = Field(0, ge=0, le=512, description="xgboost threads per fit; 0 = auto: on fits of >= 50,000 rows "
                                                     "the cores other processes leave idle (measured over 0.1 s), "
                                                     "1 below. The model is the same for any value (tested), so "
                                                     "it is not part of the config fingerprint")


class SplitSection(_Model):
    train_end: date = Field(description="last training session (ignored when test_sessions is set)")
    valid_end: date | None = Field(None, description="validation window (early stopping) from train_end + embargo "
                                                      "to here; test starts an embargo after it. Default: no "
                                                      "validation window")
    embargo: int | None = Field(None, ge=0, le=250, description="sessions; default: label horizon")
    test_sessions: int | None = Field(None, ge=20, description=(
        "rolling split: the test window is the last N sessions of the data and training ends an embargo "
        "before it (train_end is then ignored), so a retrain on new data trains on it"))


class CVSection(_Model):
    folds: int = Field(4, ge=2, le=20, description="purged walk-forward folds inside the train window")
    min_train_sessions: int = Field(252, ge=20, description="sessions before the first validation fold")


class TuningSection(_Model):
    n_trials: int = Field(12, ge=0, le=1000, description="Optuna trials (seeded TPE); 0 = the configured params")
    timeout_s: float | None = Field(None, gt=0, description="stop tuning after this many seconds (null: no limit)")
    metric: Literal["rank_ic", "ic", "balanced_accuracy", "neg_log_loss"] = Field(
        "rank_ic", description=(
            "objective on the purged folds"))


class PromotionSection(_Model):
    """Gates a challenger must pass on the out-of-sample window to become champion (all must hold)."""

    min_ic: float | None = Field(0.0, description="rank IC of the score vs the forward return >= this")
    min_balanced_accuracy: float | None = Field(
        None, ge=0, le=1, description=(
            "balanced accuracy of the challenger >= this (null = off)"))
    vs_champion: list[Literal["rank_ic", "ic", "balanced_accuracy", "sharpe"]] = Field(
        default_factory=lambda: ["sharpe"],
        description="metrics on which the challenger must be >= the champion re-scored on the same window")


class RetrainSection(_Model):
    after_sessions: int = Field(21, ge=1, description="new-data sensor: retrain after this many new sessions")
    drift_psi: float = Field(0.25, gt=0, description="drift sensor: PSI above this on any model feature")
    drift_window: int = Field(63, ge=5, description="drift sensor: live sessions compared with the train window")
    drift_bins: int = Field(10, ge=2, le=100, description="PSI bins (quantiles of the train window)")


class ResearchSection(_Model):
    model: ModelSection = Field(default_factory=ModelSection, description="the model and its registered name")
    split: SplitSection = Field(description="train / validation / test split")
    cv: CVSection = Field(CVSection(), description="purged walk-forward folds for tuning")
    tuning: TuningSection = Field(TuningSection(), description="Optuna search")
    promotion: PromotionSection = Field(
        PromotionSection(), description=(
            "gates a challenger must pass to become champion"))
    retrain: RetrainSection = Field(RetrainSection(), description="new-data and drift sensors")


class CostsSection(_Model):
    commission_bps: float = Field(
        5.0, ge=0, le=500, description=(
            "commission, basis points of notional (at least min_commission per order)"))
    min_commission: float = Field(0.0, ge=0, description="minimum commission per order, in account currency")
    slippage_bps: float = Field(2.0, ge=0, le=500, description="slippage against the fill price, basis points")
    spread_bps: float = Field(0.0, ge=0, le=1000, description="full bid-ask spread; half is paid on each fill")


class RiskLimits(_Model):
    """Position caps (every strategy and agent) and the guardian's rules (agents; ``qt_assets/agents/guardian.py``).
    A rule set to null is off."""

    max_position_pct: float = Field(0.25, gt=0, le=1, description="cap on any position's weight of equity")
    max_gross_exposure: float = Field(1.0, gt=0, le=1, description="cap on the sum of absolute weights")
    max_open_positions: int | None = Field(None, ge=1, description="more targets than this: the held ones first, "
                                                                   "then by weight; the rest are rejected")
    max_daily_loss_pct: float | None = Field(0.03, gt=0, lt=1, description="the session's loss (close to close) "
                                             "beyond this: no position may grow in that session's decisions")
    max_drawdown_pct: float | None = Field(0.25, gt=0, lt=1, description="drawdown from the equity peak beyond "
                                           "this: kill switch, every target 0 until reset (run config)")
    max_consecutive_losses: int | None = Field(4, ge=1, description="after this many losing trades in a row ...")
    cooldown_sessions: int = Field(5, ge=1, description="... no new entries for this many sessions")
    atr_stop_mult: float | None = Field(3.0, gt=0, le=20, description="stop = entry - mult x ATR(14) at entry; "
                                        "a close at or below it exits at the next open; 1 R = this distance")
    target_vol: float | None = Field(0.30, gt=0, le=5, description="per position: weight <= target_vol / vol_20d")
    kelly_fraction: float | None = Field(0.5, gt=0, le=1, description="weight <= fraction x Kelly f* of the agent's "
                                         "own last trades (f* = p - (1 - p) / b), once it has kelly_min_trades")
    kelly_min_trades: int = Field(20, ge=5, le=200, description="closed trades before the Kelly ceiling applies")
    kelly_window: int = Field(100, ge=5, le=200, description="the agent's last closed trades (>= kelly_min_trades)")
    kelly_floor: float = Field(0.02, ge=0, le=1, description="lowest Kelly ceiling, so a cold agent keeps "
                                                              "producing evidence with probe-sized positions")


class SelectionSection(_Model):
    top_k: int = Field(2, ge=1, description="at most this many positions: the best scores")
    min_score: float = Field(0.0, ge=-1, le=1, description="scores below this are not held")


# stop levels a sweep may vary besides the rule's params: key -> (low, high), both exclusive except tp's high
STOP_SWEEP: dict[str, tuple[float, float]] = {"sl": (0.0, 1.0), "tp": (0.0, 10.0)}


class SizingSection(_Model):
    """Signals to target weights: a registered sizing kind and its parameters. The built-in kinds' parameters
    are the keys below; a kind added by a plugin takes its own keys here, checked against its registry entry
    (docs/extending.md)."""
    model_config = ConfigDict(extra="allow", frozen=True)

    kind: SizingName = Field(
        "equal", description="a registered sizing kind; built in: equal: 1/slots per position (slots = top-k "
                             "picks, or the universe for per-symbol rules), re-targeted each session; "
                             "fixed_fraction: `fraction` of equity at entry, then left to drift until exit; "
                             "target_percent: `weight` per position, re-targeted; vol_target: min(max_weight, "
                             "target_vol / realised vol) per position, re-targeted")
    fraction: float = Field(0.1, gt=0, le=1, description="fixed_fraction: weight of each new position")
    weight: float = Field(0.1, gt=0, le=1, description="target_percent: weight of each position")
    target_vol: float = Field(0.15, gt=0, le=2, description="annualised, per position")
    vol_lookback: int = Field(20, ge=2, le=252, description="vol_target: sessions of the volatility estimate")
    max_weight: float = Field(0.5, gt=0, le=1, description="vol_target: cap on each position's weight")

    def kind_params(self) -> dict:
        """The parameters of this sizing kind (typed, defaults filled): the keys above for a built-in kind, the
        extra keys for a plugin's."""
        spec = SIZING_KINDS.get(self.kind)
        given = {k: getattr(self, k) for k in spec.params if k in type(self).model_fields}
        given.update({k: v for k, v in (self.model_extra or {}).items() if k in spec.params})
        return typed(spec.params, given)

    def problems(self, at: str) -> list[str]:
        """The extra keys against the kind's registry entry (the declared keys pydantic has checked)."""
        spec = SIZING_KINDS.get(self.kind)
        return param_problems(at, f"sizing kind {self.kind!r}", spec.params, self.model_extra or {})


class StopsSection(_Model):
    sl: float | None = Field(None, gt=0, lt=1, description="stop-loss, fraction below the entry (above for shorts)")
    tp: float | None = Field(None, gt=0, le=10, description="take-profit, fraction beyond the entry")
    trailing: bool = Field(False, description="the stop-loss trails the best price since entry")


class StrategySection(_Model):
    name: str = Field(pattern=NAME_PATTERN, description="asset key part: backtest_report/<name>")
    kind: Literal["rule", "model"] = Field(
        description=(
            "rule (a registered rule on the bars) or model (the registered model's scores)"))
    rule: RuleName | None = Field(
        None, description=(
            "rule strategies: a registered rule (built in: sma_cross, rsi_threshold, momentum_topk; "
            "adding one: docs/extending.md)"))
    params: dict[str, float] = Field(
        default_factory=dict, description=(
            "rule strategies: the rule's parameters (unknown ones are refused)"))
    model: str | None = Field(None, description="model strategies: registered model (default research.model.name)")
    selection: SelectionSection = Field(
        SelectionSection(), description=(
            "model strategies: which scores become positions"))
    direction: Literal["longonly", "longshort"] = Field(
        "longonly", description=(
            "longonly, or longshort (negative signals go short)"))
    sizing: SizingSection = Field(SizingSection(), description="signals to target weights")
    stops: StopsSection = Field(StopsSection(), description="stop-loss / take-profit")
    rebalance_band: float = Field(0.0, ge=0, le=1, description="skip re-targets whose weight change is below this")
    min_order_value: float = Field(0.0, ge=0, description="skip orders (other than exits) below this notional")
    risk: RiskLimits | None = Field(
        None, description=(
            "overrides of the top-level risk keys for this strategy (only the keys given)"))
    sweep: dict[str, list[float]] = Field(default_factory=dict, description="rule param (or stop level sl / tp) -> "
                                          "values; every combination is backtested in one compiled pass")

    def rule_params(self) -> dict[str, float]:
        """The rule's parameters with defaults filled in, typed."""
        return typed(RULES.get(self.rule).params, self.params)

    def for_combo(self, combo: dict) -> "StrategySection":
        """This strategy with one sweep combination applied (rule params; ``sl``/``tp`` into the stops), unswept."""
        stops = {k: float(v) for k, v in combo.items() if k in STOP_SWEEP}
        params = {k: v for k, v in combo.items() if k not in STOP_SWEEP}
        return self.model_copy(update={"params": {**self.params, **params}, "sweep": {},
                                       "stops": self.stops.model_copy(update=stops)})


class WalkForwardSection(_Model):
    strategy: str = Field(description="a model strategy of backtest.strategies")
    train_sessions: int = Field(504, ge=60, description="sessions each window trains on")
    test_sessions: int = Field(126, ge=5, description="sessions each window tests (and steps) by")
    start: date | None = Field(None, description="first test session (default: data.start + train + embargo)")


class BacktestSection(_Model):
    costs: CostsSection = Field(
        CostsSection(), description=(
            "the cost model shared by the backtests and the paper broker"))
    execution: Literal["next_open", "next_close"] = Field(
        "next_open", description=(
            "a decision made at D's close fills at D+1's open (next_open) or close (next_close)"))
    initial_cash: float = Field(100_000.0, gt=0, description="starting capital of every backtest")
    strategies: list[StrategySection] = Field(
        default_factory=list, description=(
            "rule and model strategies: each a backtest_report asset (and a sweep_report with a sweep)"))
    walk_forward: WalkForwardSection | None = Field(
        None, description=(
            "a model strategy retrained per rolling window (job walk_forward; null = off)"))
    sweep_chunk_cells: int = Field(2_000_000, ge=100_000, description="sweep memory bound for rules whose "
                                   "directions are ranked outside the kernel (momentum_topk): sessions x symbols x "
                                   "combinations per kernel call")
    sweep_threads: int = Field(0, ge=0, le=256, description="threads of the sweep kernel; 0 (or more than numba "
                                                             "has): every core numba sees (NUMBA_NUM_THREADS)")


CONTEXT_BLOCKS = ("market_data", "features", "model_signals", "positions", "orders", "risk_state", "news",
                  "insider", "memory", "notes")
RegimeLabel = Literal["risk_on", "neutral", "risk_off"]


class AgentLLMSection(_Model):
    """Per-agent overrides of the project's llm section."""

    model: str | None = Field(None, description="model name (null: llm.model)")
    temperature: float | None = Field(None, ge=0, le=2, description="sampling temperature (null: llm.temperature)")


class AgentSection(_Model):
    name: str = Field(
        pattern=NAME_PATTERN, description=(
            "asset key part: decisions/<name>, guarded_targets/<name>, orders/<name>"))
    kind: Literal["rule", "model", "llm", "hybrid"] = Field(
        description=(
            "rule, model (the champion's scores), llm (an LLM's plan) or hybrid (model scores vetted by an LLM)"))
    rule: RuleName | None = Field(None, description="rule agents: a registered rule, as for strategies")
    params: dict[str, float] = Field(default_factory=dict, description="rule agents: the rule's parameters")
    model: str | None = Field(None, description="model/hybrid agents: registered model, loaded @champion")
    selection: SelectionSection = Field(
        SelectionSection(), description=(
            "model/hybrid agents: which scores become positions"))
    sizing: SizingSection = Field(SizingSection(), description="signals to target weights")
    prompt: str | None = Field(None, description="llm/hybrid agents: system prompt file, relative to the config")
    context: list[Literal[CONTEXT_BLOCKS]] = Field(  # type: ignore[valid-type]
        default_factory=lambda: ["market_data", "features", "positions", "risk_state"],
        description="llm/hybrid: context blocks rendered into the prompt, in this order")
    features: list[str] = Field(default_factory=list, description="llm/hybrid: features in the features block")
    lookback: int = Field(5, ge=1, le=60, description="llm/hybrid: sessions of bars in the market_data block")
    memory: int = Field(5, ge=0, le=50, description="llm/hybrid: the agent's own last decisions in the memory block")
    notes: str = Field("", description="llm/hybrid: free text of the notes block")
    llm: AgentLLMSection = Field(
        AgentLLMSection(), description=(
            "llm/hybrid agents: overrides of the top-level llm model / temperature"))
    on_llm_error: Literal["hold", "model"] = Field(
        "hold", description="hybrid: when the LLM fails, hold (keep positions) or take the model's weights")
    allow_regimes: list[RegimeLabel] = Field(  # type: ignore[valid-type]
        default_factory=lambda: ["risk_on", "neutral", "risk_off"],
        description="regimes the agent's plan trades in; an entry made in another is an execution-discipline "
                    "violation (regime mismatch), which lowers its discipline score and so its allocation")
    rebalance_band: float = Field(0.02, ge=0, le=1, description="skip re-targets whose weight change is below this")
    min_order_value: float = Field(0.0, ge=0, description="orders below this notional are not placed (exits "
                                                          "to zero always are); the book and the broker alike")
    mode: Literal["paper", "live"] = Field("paper", description="live needs all three gates: QTOS_LIVE_TRADING=1, "
                                                                "this, and live_ack (or run tag qtos/live_ack) = name")
    live_ack: str | None = Field(None, description="must equal the agent's name for live trading")
    risk: RiskLimits | None = Field(
        None, description=(
            "overrides of the top-level risk keys for this agent (only the keys given)"))

    def strategy(self) -> StrategySection:
        """The agent's signal as a backtest strategy (rule and model agents share the strategies' code)."""
        if self.kind == "rule":
            return StrategySection(name=self.name, kind="rule", rule=self.rule, params=self.params,
                                   sizing=self.sizing, risk=self.risk, min_order_value=self.min_order_value)
        return StrategySection(name=self.name, kind="model", model=self.model, selection=self.selection,
                               sizing=self.sizing, risk=self.risk, min_order_value=self.min_order_value)


class RegimeSection(_Model):
    """``market_regime``: trend (benchmark level vs its SMA), volatility state and breadth vote for a label;
    ``method: gmm`` labels by a Gaussian mixture refitted on trailing data instead."""

    method: Literal["rules", "gmm"] = Field(
        "rules", description=(
            "rules (trend + volatility + breadth vote) or gmm (Gaussian mixture)"))
    trend_sma: int = Field(
        200, ge=5, le=500, description=(
            "sessions of the benchmark's SMA (trend: level above / below it)"))
    breadth_sma: int = Field(
        50, ge=5, le=500, description=(
            "sessions of each symbol's SMA (breadth: share of symbols above theirs)"))
    vol_window: int = Field(20, ge=5, le=252, description="sessions of the benchmark's realised volatility")
    vol_method: Literal["percentile", "threshold"] = Field(
        "percentile", description=(
            "high volatility: above vol_threshold, or above the vol_percentile of its own history"))
    vol_threshold: float = Field(0.25, gt=0, le=5, description="annualised; vol_method threshold")
    vol_percentile: float = Field(0.8, gt=0, lt=1, description="of the trailing vol_history sessions")
    vol_history: int = Field(756, ge=20, description="percentile: trailing sessions the quantile is taken over")
    breadth_on: float = Field(0.6, ge=0, le=1, description="breadth at or above this: strong")
    breadth_off: float = Field(0.4, ge=0, le=1, description="breadth at or below this: weak")
    gmm_components: int = Field(3, ge=2, le=4, description="gmm: mixture components")
    gmm_window: int = Field(756, ge=60, description="gmm: trailing sessions each fit uses")
    gmm_refit: int = Field(63, ge=1, description="gmm: sessions between refits")
    seed: int = Field(7, description="gmm: random state of the fits")


REGIME_MULTIPLIER = {"risk_on": 1.0, "neutral": 0.75, "risk_off": 0.4}


class AllocationSection(_Model):
    """Position-size multiplier = regime x drawdown x discipline (``qt_assets/agents/guardian.py``)."""

    regime_multiplier: dict[RegimeLabel, Annotated[float, Field(ge=0, le=2)]] = Field(  # type: ignore[valid-type]
        default_factory=lambda: dict(REGIME_MULTIPLIER), description="labels left out keep their defaults")

    @field_validator("regime_multiplier")
    @classmethod
    def _all_labels(cls, v: dict) -> dict:
        return {**REGIME_MULTIPLIER, **v}
    drawdown_start: float = Field(0.05, ge=0, lt=1, description="drawdown where the scaling starts")
    drawdown_floor: float = Field(0.5, gt=0, le=1, description="multiplier at risk.max_drawdown_pct")
    discipline_threshold: float = Field(0.8, ge=0, le=1, description="discipline score below this scales down")
    discipline_floor: float = Field(0.5, gt=0, le=1, description="lowest discipline multiplier")
    discipline_min_trades: int = Field(
        10, ge=1, le=200, description=(
            "trades before the discipline score applies (multiplier 1 until then)"))
    discipline_window: int = Field(50, ge=1, le=200, description="the agent's last trades the score covers "
                                                                 "(>= discipline_min_trades)")
    early_exit_r: float = Field(0.5, ge=0, description="a discretionary exit with 0 < gain < this x R is early")
    oversize_tolerance: float = Field(0.1, ge=0, description="filled weight > plan x (1 + this) is oversize")


class PretradeSection(_Model):
    """Checks on every order before it reaches the broker (null = off); the agent's book applies the same ones."""

    max_order_notional: float | None = Field(None, gt=0, description="qty x last close above this: rejected")
    max_symbol_notional: float | None = Field(None, gt=0, description="a buy that takes the position's value "
                                                                     "(at the last close) above this: rejected")
    max_orders_per_session: int | None = Field(None, ge=1, description="an agent's orders beyond this many in one "
                                                                       "session (sells first): rejected")
    price_collar_pct: float | None = Field(None, gt=0, lt=1, description="at the fill: an open further than this "
                                           "from the price the order was sized on cancels the order")


class AlpacaSection(_Model):
    """``broker.kind: alpaca``: keys from the environment (ALPACA_API_KEY, ALPACA_SECRET_KEY), never from here.
    Orders go to the paper endpoint unless every live gate passes (then ``live_url``)."""

    paper_url: str | None = Field(None, description="base URL of the paper endpoint (None: Alpaca's)")
    live_url: str | None = Field(None, description="base URL of the live endpoint (None: Alpaca's)")
    time_in_force: Literal["day", "gtc", "opg", "cls"] = Field(
        "day", description="day: a market order sent after D's close queues for the next open")
    timeout_seconds: float = Field(10.0, gt=0, description="per-request timeout")
    max_attempts: int = Field(
        5, ge=1, le=20, description=(
            "attempts per order before it is left unresolved (looked up next run)"))
    backoff_seconds: float = Field(0.5, ge=0, description="first retry delay (doubles each attempt)")
    enforce_market_hours: bool = Field(True, description="false only to replay history against a sandbox "
                                                         "server; refused for live trading")


KILL_SWITCH_ENV = "QTOS_KILL_SWITCH_FILE"


class BrokerSection(_Model):
    kind: Literal["paper", "alpaca"] = Field(
        "paper", description=(
            "paper (our persistent paper broker, the backtest's cost model) or alpaca (extra live)"))
    alpaca: AlpacaSection = Field(AlpacaSection(), description="broker.kind alpaca: endpoints, order type, retries")
    pretrade: PretradeSection = Field(PretradeSection(), description="checks on every order before the broker")
    initial_cash: float = Field(100_000.0, gt=0, description="capital each agent's ledger starts with")
    kill_switch_file: str = Field("KILL_SWITCH", description="while this file exists (relative to the config) no "
                                                             "agent places orders and open ones are canceled")


class StorageSection(_Model):
    """Paths are relative to the config file's folder."""

    warehouse_dir: str = Field("warehouse", description="Parquet partitions, DuckDB, ledgers, audit log")
    mlflow_dir: str = Field("mlflow", description="MLflow store and the Optuna study")
    reports_dir: str = Field("reports", description="equity plots, trade lists, sweep heat maps")


class ProjectConfig(_Model):
    project: ProjectSection = ProjectSection()
    universe: UniverseSection
    data: DataSection
    news: NewsSection = NewsSection()
    filings: FilingsSection = FilingsSection()
    llm: LLMSection = LLMSection()
    features: FeaturesSection
    label: LabelSection = LabelSection()
    research: ResearchSection
    backtest: BacktestSection = BacktestSection()
    agents: list[AgentSection] = Field(min_length=1)
    risk: RiskLimits = RiskLimits()
    regime: RegimeSection = RegimeSection()
    allocation: AllocationSection = AllocationSection()
    broker: BrokerSection = BrokerSection()
    storage: StorageSection = StorageSection()
    plugins: list[str] = Field(
        default_factory=list, exclude=True, description=(
            "the project's own rules, sizing kinds and model families: .py files, or folders of them, relative "
            "to this file, loaded before the rest is validated (docs/extending.md); their contents are part of "
            "the config fingerprint"))

    # where the file was loaded from; storage paths resolve against it
    base_dir: Path = Field(default=REPO_ROOT, exclude=True)

    # --- derived ---------------------------------------------------------------------------
    @property
    def label_span(self) -> int:
        """Sessions from a label's session to the session it becomes known (h, or h+1 for next-open entry)."""
        return self.label.horizon + (1 if self.label.price == "open" else 0)

    @property
    def embargo(self) -> int:
        e = self.research.split.embargo
        return self.label_span if e is None else e

    def path(self, rel: str) -> Path:
        p = Path(rel)
        return p if p.is_absolute() else (self.base_dir / p).resolve()

    @property
    def warehouse_dir(self) -> Path:
        return self.path(self.storage.warehouse_dir)

    @property
    def mlflow_dir(self) -> Path:
        return self.path(self.storage.mlflow_dir)

    @property
    def reports_dir(self) -> Path:
        return self.path(self.storage.reports_dir)

    @property
    def kill_switch_path(self) -> Path:
        """``$QTOS_KILL_SWITCH_FILE`` when set (a deployment puts it on a volume every process shares), else
        ``broker.kill_switch_file`` relative to the config."""
        return self.path(os.environ.get(KILL_SWITCH_ENV) or self.broker.kill_switch_file)

    def risk_for(self, who: AgentSection | StrategySection) -> RiskLimits:
        """The project's risk limits with the keys an agent or strategy sets itself laid over them."""
        if who.risk is None:
            return self.risk
        return self.risk.model_copy(update={k: getattr(who.risk, k) for k in who.risk.model_fields_set})

    def plugin_files(self) -> dict[str, str]:
        """The plugin files this config loads -> sha256 of their contents."""
        out = {}
        for raw in self.plugins:
            p = (self.base_dir / raw).resolve()
            for f in sorted(p.glob("*.py")) if p.is_dir() else [p]:
                out[str(f)] = hashlib.sha256(f.read_bytes()).hexdigest()
        return out

    def resolved(self) -> dict:
        d = self.model_dump(mode="json")
        return {**d, "plugins": self.plugins} if self.plugins else d

    def fingerprint(self) -> str:
        """Hash of what decides results; settings that cannot change them (training threads) are left out, the
        plugin files' contents are in."""
        d = self.model_dump(mode="json", exclude=NOT_FINGERPRINTED)
        if self.plugins:
            d["plugins"] = sorted(self.plugin_files().values())
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

    def cross_check(self, known_features: list[str] | None = None) -> list[str]:
        """Checks that involve more than one key; returns problems as 'path: message'."""
        problems: list[str] = []
        d = self.data
        if d.start >= d.end:
            problems.append(f"data.start: {d.start} is not before data.end ({d.end})")
        te = self.research.split.train_end
        if not (d.start < te < d.end):
            problems.append(f"research.split.train_end: {te} is not inside data.start..data.end ({d.start}..{d.end})")
        ve = self.research.split.valid_end
        if ve is not None and self.research.split.test_sessions is not None:
            problems.append("research.split.valid_end: not supported with test_sessions (rolling split)")
        if ve is not None and not (te < ve < d.end):
            problems.append(f"research.split.valid_end: {ve} is not between train_end ({te}) and data.end ({d.end})")
        if d.provider == "csv" and not d.csv_path:
            problems.append("data.csv_path: required when data.provider is 'csv'")
        for section, provider, prefix, block in (("news", self.news.provider, "news_", "news"),
                                                 ("filings", self.filings.provider, "insider_", "insider")):
            if provider != "none":
                continue
            for i, f in enumerate(self.features.set):
                if f.startswith(prefix):
                    problems.append(f"features.set[{i}]: {f!r} needs {section} data, but {section}.provider is 'none'")
            for i, a in enumerate(self.agents):
                if block in (a.context or []):
                    problems.append(f"agents[{i}].context: {block!r} needs {section} data, but {section}.provider "
                                    "is 'none'")
        if self.news.scorer == "llm" and self.llm.kind == "none":
            problems.append("news.scorer: 'llm' needs an llm section with kind: openai")
        e = self.research.split.embargo
        if e is not None and e < self.label_span:
            problems.append(f"research.split.embargo: {e} is less than the label's span ({self.label_span} sessions)")
        if self.label.down >= self.label.up:
            problems.append(f"label.down: {self.label.down} is not below label.up ({self.label.up})")
        if known_features is not None:
            for i, f in enumerate(self.features.set):
                if f not in known_features:
                    problems.append(
                        f"features.set[{i}]: {f!r} is not a feature of dbt_features "
                        f"(known: {', '.join(sorted(known_features))})"
                    )
        problems += self._check_model()
        problems += self._check_strategies()
        checks = [("risk", self.risk)] + [(f"agents[{i}].risk", self.risk_for(a)) for i, a in enumerate(self.agents)
                                          if a.risk is not None]
        for at, r in checks:
            if r.kelly_window < r.kelly_min_trades:
                problems.append(f"{at}.kelly_window: {r.kelly_window} is below kelly_min_trades ({r.kelly_min_trades}): "
                                "the Kelly ceiling would never apply")
        al = self.allocation
        if al.discipline_window < al.discipline_min_trades:
            problems.append(f"allocation.discipline_window: {al.discipline_window} is below discipline_min_trades "
                            f"({al.discipline_min_trades}): the score would never be rated")
        if self.regime.breadth_off >= self.regime.breadth_on:
            problems.append(f"regime.breadth_off: {self.regime.breadth_off} is not below regime.breadth_on "
                            f"({self.regime.breadth_on})")
        problems += self._check_agents(known_features)
        return problems

    def _check_rule(self, at: str, rule: str, params: dict, sweep: dict, longshort: bool) -> list[str]:
        """Rule params (and sweep values) against the registered rule's; its cross-parameter rule; its positions
        against the universe."""
        problems: list[str] = []
        spec = RULES.get(rule)
        owner = f"rule {rule!r}"
        problems += param_problems(f"{at}.params", owner, spec.params, params)
        for p, vals in sweep.items():
            if p in STOP_SWEEP:
                lo, hi = STOP_SWEEP[p]
                if not vals:
                    problems.append(f"{at}.sweep.{p}: empty list")
                problems += [f"{at}.sweep.{p}[{j}]: {v!r} is not in ({lo:g}, {hi:g}{']' if p == 'tp' else ')'}"
                             for j, v in enumerate(vals) if not (lo < v < hi or (p == "tp" and v == hi))]
            elif p not in spec.params:
                problems.append(f"{at}.sweep.{p}: unknown parameter of {owner} (known: {', '.join(spec.params)})")
            else:
                if not vals:
                    problems.append(f"{at}.sweep.{p}: empty list")
                problems += [f"{at}.sweep.{p}[{j}]: {why}" for j, v in enumerate(vals)
                             if (why := spec.params[p].problem(v)) is not None]
        if problems:
            return problems
        p = typed(spec.params, params)
        if spec.check is not None and (bad := spec.check(p)):
            problems.append(f"{at}.params.{bad}")
        n_sym = len(self.universe.symbols)
        if (n := spec.n_slots(p, longshort)) is not None and n > n_sym:
            if isinstance(spec.slots, str):
                problems.append(f"{at}.params.{spec.slots}: {p[spec.slots]} picks per side do not fit the {n_sym} "
                                f"symbols")
            else:
                problems.append(f"{at}.params: rule {rule!r} holds {n} positions with these params, more than the "
                                f"{n_sym} symbols")
        return problems

    def _check_agents(self, known_features: list[str] | None) -> list[str]:
        problems: list[str] = []
        seen: set[str] = set()
        n_sym = len(self.universe.symbols)
        for i, a in enumerate(self.agents):
            at = f"agents[{i}]"
            if a.name in seen:
                problems.append(f"{at}.name: {a.name!r} is used by another agent")
            seen.add(a.name)
            problems += a.sizing.problems(f"{at}.sizing")
            if a.kind == "rule":
                if a.rule is None:
                    problems.append(f"{at}.rule: required for kind 'rule' (one of {RULES.names()})")
                else:
                    problems += self._check_rule(at, a.rule, a.params, {}, False)
            elif a.rule is not None or a.params:
                problems.append(f"{at}: only rule agents take rule and params")
            if a.kind in ("model", "hybrid"):
                if a.model is None:
                    problems.append(f"{at}.model: required for kind {a.kind!r}")
                elif a.model != self.research.model.name:
                    problems.append(f"{at}.model: {a.model!r} is not a model this project trains "
                                    f"(research.model.name is {self.research.model.name!r})")
                if a.selection.top_k > n_sym:
                    problems.append(f"{at}.selection.top_k: {a.selection.top_k} is more than the {n_sym} symbols "
                                    f"of the universe")
            elif a.model is not None:
                problems.append(f"{at}.model: only model and hybrid agents take a model")
            if a.kind in ("llm", "hybrid"):
                if self.llm.kind == "none":
                    problems.append(f"{at}.kind: {a.kind!r} needs an llm section with kind: openai")
                if a.prompt is None:
                    problems.append(f"{at}.prompt: required for kind {a.kind!r} (a system prompt file)")
                elif not self.path(a.prompt).is_file():
                    problems.append(f"{at}.prompt: {a.prompt!r} is not a file ({self.path(a.prompt)})")
                if "model_signals" in a.context and a.kind == "llm":
                    problems.append(f"{at}.context: 'model_signals' needs a model (kind hybrid)")
                if "features" in a.context and not a.features:
                    problems.append(f"{at}.features: the features block needs at least one feature")
            if known_features is not None:
                for j, f in enumerate(a.features):
                    if f not in known_features:
                        problems.append(f"{at}.features[{j}]: {f!r} is not a feature of dbt_features "
                                        f"(known: {', '.join(sorted(known_features))})")
        return problems

    def _check_model(self) -> list[str]:
        """The model's params against its family's registry entry; tuning needs the family's search space."""
        m = self.research.model
        spec = MODEL_FAMILIES.get(m.family)
        problems = param_problems("research.model.params", f"model family {m.family!r}", spec.params, m.params)
        n = self.research.tuning.n_trials
        if n and spec.search is None:
            problems.append(f"research.tuning.n_trials: {n} trials, but model family {m.family!r} has no search "
                            f"space (set 0)")
        return problems

    def _check_strategies(self) -> list[str]:
        problems: list[str] = []
        names: set[str] = set()
        n_sym = len(self.universe.symbols)
        for i, st in enumerate(self.backtest.strategies):
            at = f"backtest.strategies[{i}]"
            if st.name in names:
                problems.append(f"{at}.name: {st.name!r} is used by another strategy")
            names.add(st.name)
            problems += st.sizing.problems(f"{at}.sizing")
            if st.kind == "model":
                if st.rule is not None or st.params or st.sweep:
                    problems.append(f"{at}: a model strategy takes no rule, params or sweep")
                if st.model is not None and st.model != self.research.model.name:
                    problems.append(f"{at}.model: {st.model!r} is not a model this project trains "
                                    f"(research.model.name is {self.research.model.name!r})")
                if st.selection.top_k * (2 if st.direction == "longshort" else 1) > n_sym:
                    problems.append(f"{at}.selection.top_k: {st.selection.top_k} picks per side do not fit the "
                                    f"{n_sym} symbols of the universe")
                continue
            if st.rule is None:
                problems.append(f"{at}.rule: required for kind 'rule' (one of {RULES.names()})")
                continue
            problems += self._check_rule(at, st.rule, st.params, st.sweep, st.direction == "longshort")
        wf = self.backtest.walk_forward
        if wf is not None:
            st = next((s for s in self.backtest.strategies if s.name == wf.strategy), None)
            if st is None or st.kind != "model":
                problems.append(f"backtest.walk_forward.strategy: {wf.strategy!r} is not a model strategy of "
                                f"backtest.strategies")
        return problems


# --- errors ---------------------------------------------------------------------------------
def _loc_to_path(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "<root>"


_OPS = {"less_than_equal": "<=", "less_than": "<", "greater_than_equal": ">=", "greater_than": ">"}


def _describe(err: dict) -> str:
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
    typ, value, ctx = err["type"], err.get("input"), err.get("ctx") or {}
    msg = err["msg"]
    path = _loc_to_path(loc)
    if typ in _OPS:
        bound = next(iter(ctx.values()))
        if isinstance(bound, float) and bound.is_integer():
            bound = int(bound)
        return f"{path}: {value!r} is not {_OPS[typ]} {bound}"
    if typ == "missing":
        return f"{path}: required key is missing"
    if typ == "extra_forbidden":
        return f"{path}: unknown key (value {value!r})"
    if typ == "value_error":
        return f"{path}: {value!r} {msg.removeprefix('Value error, ')}"
    if typ == "string_pattern_mismatch":
        return f"{path}: {value!r} does not match {ctx.get('pattern')}"
    if typ == "literal_error":
        return f"{path}: {value!r} is not one of {ctx.get('expected')}"
    return f"{path}: {value!r} is invalid: {msg}"


def parse_config(raw: Any, source: str = "<dict>", base_dir: Path = REPO_ROOT,
                 known_features: list[str] | None = None) -> ProjectConfig:
    if not isinstance(raw, dict):
        raise ConfigError(source, [f"<root>: expected a mapping of sections, got {type(raw).__name__}"])
    plugins = raw.get("plugins") or []
    if isinstance(plugins, list) and all(isinstance(p, str) for p in plugins):
        problems = load_files(plugins, base_dir)  # before validation: the config may name what they register
        if problems:
            raise ConfigError(source, problems)
    try:
        cfg = ProjectConfig.model_validate({**raw, "base_dir": base_dir})
    except ValidationError as exc:
        raise ConfigError(source, [_describe(e) for e in exc.errors()]) from None
    from qt_resources.extras import missing_extras

    problems = cfg.cross_check(known_features) + missing_extras(cfg)
    if problems:
        raise ConfigError(source, problems)
    return cfg


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader refusing a key given twice in one mapping (plain YAML keeps the last silently)."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            try:
                key = self.construct_object(key_node, deep=True)
                hash(key)
            except Exception:  # noqa: BLE001 - the base class reports unhashable keys with its own message
                continue
            if key in seen:
                raise DuplicateKeyError(key, seen[key] + 1, key_node.start_mark.line + 1)
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


class DuplicateKeyError(yaml.YAMLError):
    def __init__(self, key, first: int, second: int):
        super().__init__(f"key {key!r} is given twice, on line {first} and on line {second}")
        self.key, self.first, self.second = key, first, second


def load_config(path: str | os.PathLike | None = None, known_features: list[str] | None = None) -> ProjectConfig:
    """Load and validate the project config (``$QTOS_CONFIG`` or ``qtos.yaml`` at the repo root)."""
    p = Path(path or os.environ.get("QTOS_CONFIG") or DEFAULT_CONFIG_PATH).resolve()
    if not p.exists():
        raise ConfigError(str(p), ["<file>: does not exist (set QTOS_CONFIG or create qtos.yaml)"])
    try:
        raw = yaml.load(p.read_text(), Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except DuplicateKeyError as exc:
        raise ConfigError(str(p), [f"<yaml>: {exc}: remove one (YAML would keep the last silently)"]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown position"
        raise ConfigError(str(p), [f"<yaml>: not valid YAML at {where}: {getattr(exc, 'problem', exc)}"]) from None
    return parse_config(raw, str(p), p.parent, known_features)
