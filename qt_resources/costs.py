"""The one cost and fill model, shared by the vectorbt backtests (``qt_assets/backtests/engine.py``) and the paper broker.

A buy fills at ``ref * (1 + slippage + spread/2)``, a sell at ``ref * (1 - slippage - spread/2)``; the
commission is ``max(commission_bps * filled notional, min_commission)`` per order. The backtest engine
passes exactly these numbers to vectorbt (slippage on the price, the commission as the order's fixed fee), so a
paper run and a backtest on the same bars agree.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CostModel:
    commission_bps: float = 0.0
    slippage_bps: float = 0.0
    min_commission: float = 0.0
    spread_bps: float = 0.0

    @classmethod
    def from_config(cls, costs) -> "CostModel":
        return cls(costs.commission_bps, costs.slippage_bps, costs.min_commission, costs.spread_bps)

    @property
    def fee_rate(self) -> float:
        return self.commission_bps / 1e4

    @property
    def slippage_rate(self) -> float:
        return self.slippage_bps / 1e4

    @property
    def half_spread_rate(self) -> float:
        return self.spread_bps / 2e4

    @property
    def price_impact(self) -> float:
        """Fraction of the reference price paid on each side: slippage plus half the spread."""
        return self.slippage_rate + self.half_spread_rate

    def fill_price(self, side: str, ref_price: float) -> float:
        if side == "buy":
            return ref_price * (1 + self.price_impact)
        if side == "sell":
            return ref_price * (1 - self.price_impact)
        raise ValueError(f"side: {side!r} is not 'buy' or 'sell'")

    def commission(self, qty: float, fill_price: float) -> float:
        if qty == 0:
            return 0.0
        return max(abs(qty) * fill_price * self.fee_rate, self.min_commission)
