"""Config sections of execution: pre-trade checks, Alpaca, the broker, storage."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from qt_resources.config.base import _Model


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
