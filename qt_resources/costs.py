"""The one cost and fill model, shared by the vectorbt backtests and the paper broker.

A buy fills at ``ref * (1 + slippage)``, a sell at ``ref * (1 - slippage)``; commission is
``commission_bps`` of the filled notional. vectorbt applies ``slippage`` and ``fees`` the same way
(price adjusted first, fees on the adjusted order value), so a paper run and a backtest on the same
bars agree.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CostModel:
    commission_bps: float = 0.0
    slippage_bps: float = 0.0

    @property
    def fee_rate(self) -> float:
        return self.commission_bps / 1e4

    @property
    def slippage_rate(self) -> float:
        return self.slippage_bps / 1e4

    def fill_price(self, side: str, ref_price: float) -> float:
        if side == "buy":
            return ref_price * (1 + self.slippage_rate)
        if side == "sell":
            return ref_price * (1 - self.slippage_rate)
        raise ValueError(f"side: {side!r} is not 'buy' or 'sell'")

    def commission(self, qty: float, fill_price: float) -> float:
        return abs(qty) * fill_price * self.fee_rate

    def vectorbt_kwargs(self) -> dict:
        return {"fees": self.fee_rate, "slippage": self.slippage_rate}
