"""Config sections of backtests: costs, risk limits, selection, sizing (a registered kind), stops, strategies
(registered rules or the model), walk-forward."""

from __future__ import annotations

from datetime import date
from typing import Literal

from pydantic import ConfigDict, Field

from qt_resources.config.base import NAME_PATTERN, RuleName, SizingName, _Model
from qt_resources.plugins import RULES, SIZING_KINDS, param_problems, typed


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
    entry: Literal["state", "cross"] = Field(
        "state", description=(
            "rule strategies: state: hold a position for as long as the rule's condition holds (sma_cross enters on "
            "the first session where SMA(slow) exists); cross: enter only when the rule's direction changes after "
            "its signal first exists (the crossover event of other engines), then follow it"))
    rebalance_band: float = Field(0.0, ge=0, le=1, description="skip re-targets whose weight change is below this")
    min_order_value: float = Field(0.0, ge=0, description="skip orders (other than exits) below this notional")
    expect_trades: bool = Field(True, description="false: a backtest without any trade is expected (its "
                                "placed_trades check passes); true: such a report fails the check")
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
    @property
    def order_sizing(self) -> str:
        """The engine's ``order_sizing`` for this config: whole or net (fractional, sized after costs)."""
        return "whole" if self.shares == "whole" else "net"

    costs: CostsSection = Field(
        CostsSection(), description=(
            "the cost model shared by the backtests and the paper broker"))
    execution: Literal["next_open", "next_close"] = Field(
        "next_open", description=(
            "a decision made at D's close fills at D+1's open (next_open) or close (next_close)"))
    initial_cash: float = Field(100_000.0, gt=0, description="starting capital of every backtest")
    shares: Literal["whole", "fractional"] = Field(
        "whole", description=(
            "whole: target positions are floored to whole shares, as the paper and Alpaca brokers trade them "
            "(backtest = paper); fractional: exact target sizes. Either way a target is sized after costs: its "
            "shares plus their commission fit in the weight"))
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
