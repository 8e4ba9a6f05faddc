"""Config sections of agents: agents (rule / model / llm / hybrid), the market regime, allocation."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator

from qt_resources.config.backtest import RiskLimits, SelectionSection, SizingSection, StrategySection
from qt_resources.config.base import NAME_PATTERN, RuleName, _Model


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
    rebalance_band: float = Field(0.02, ge=0, le=1, description="keep a held position whose re-target changes its "
                                  "weight by less than this (entries are never held back by it)")
    expect_trades: bool = Field(True, description="false: a run that places no order and holds nothing is expected "
                                "(its targets_became_orders check passes); true: such a run warns and fails it")
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
