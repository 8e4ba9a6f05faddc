"""An agent's book as the guardian keeps it: cash, whole-share positions, open and recent trades with their plan,
pending orders; stored as JSON between runs."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

KEEP_TRADES = 200  # recent trades kept in the state (>= kelly_window and discipline_window bounds)
EPS = 1e-12


@dataclass
class Trade:
    symbol: str
    entry_session: str
    entry_price: float
    qty: float
    stop: float | None
    r: float | None
    plan_weight: float
    regime: str
    entry_commission: float
    entry_seen: int = 0
    bought: float = 0.0
    breached: int | None = None  # book.sessions_seen at the first close at or below the stop
    violations: list[str] = field(default_factory=list)
    realised: float = 0.0
    exit_session: str | None = None
    exit_price: float | None = None
    exit_reason: str | None = None
    pnl: float | None = None
    ret: float | None = None
    hold_sessions: int | None = None


@dataclass
class Book:
    cash: float
    peak: float
    prev_equity: float
    qty: dict[str, float] = field(default_factory=dict)
    last_close: dict[str, float] = field(default_factory=dict)
    open: dict[str, Trade] = field(default_factory=dict)
    pending: list[dict] = field(default_factory=list)
    trades: list[Trade] = field(default_factory=list)  # recent trades (open ones too), oldest first
    consecutive_losses: int = 0
    cooldown_left: int = 0
    halted: bool = False
    halted_reason: str = ""
    sessions_seen: int = 0
    session: str | None = None
    memory: list[dict] = field(default_factory=list)  # an llm agent's own recent decisions (its memory block)

    @classmethod
    def new(cls, cash: float) -> "Book":
        return cls(cash=cash, peak=cash, prev_equity=cash)

    def apply_action(self, a) -> None:
        """A split or cash dividend on its ex-date, before the open (qt_resources/corporate_actions.py, as the paper
        broker applies it): a split multiplies the position, its open trade's shares and the quantity of a pending
        order, and divides their prices (entry, stop, R, last close, reference); a dividend pays position x amount
        into cash and into the open trade's result."""
        from qt_resources.corporate_actions import apply_to_position

        s = a.symbol
        q = self.qty.get(s, 0.0)
        t = self.open.get(s)
        if a.kind == "split":
            r = a.ratio
            if q:
                self.qty[s], _, _ = apply_to_position(q, 0.0, self.cash, a)
            if s in self.last_close:
                self.last_close[s] /= r
            if t is not None:
                t.qty, t.bought, t.entry_price = t.qty * r, t.bought * r, t.entry_price / r
                t.stop = None if t.stop is None else t.stop / r
                t.r = None if t.r is None else t.r / r
            for o in self.pending:
                if o["symbol"] == s:
                    o["qty"] = o["qty"] * r
                    if o.get("ref"):
                        o["ref"] = o["ref"] / r
        elif q:
            _, _, self.cash = apply_to_position(q, 0.0, self.cash, a)
            if t is not None:
                t.realised += q * a.amount

    def equity(self) -> float:
        return self.cash + sum(q * self.last_close.get(s, 0.0) for s, q in self.qty.items())

    def to_json(self) -> str:
        d = asdict(self)
        # open trades are always in `trades` (never trimmed): stored by index so they stay one object
        d["open"] = {s: self.trades.index(t) for s, t in self.open.items()}
        return json.dumps(d, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "Book":
        d = json.loads(text)
        trades = [Trade(**t) for t in d.pop("trades")]
        opened = {s: trades[i] for s, i in d.pop("open").items()}
        return cls(**d, trades=trades, open=opened)
