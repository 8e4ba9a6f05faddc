"""Config sections of the data layer: project, universe (listings, delistings), data, news, filings, LLM."""

from __future__ import annotations

from datetime import date
from typing import Annotated, Literal

from pydantic import Field, field_validator

from qt_resources.config.base import NAME_PATTERN, SYMBOL_PATTERN, _Model


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
    start: date = Field(description="first session of the partitions: the first session features are used on "
                                    "(labels, training, backtests, agents)")
    warmup_sessions: int | None = Field(
        None, ge=0, le=2000, description=(
            "sessions of prices and benchmark fetched before data.start (asset price_warmup) so that every "
            "configured feature has converged on data.start (within 1e-6 of an unlimited history); never used for "
            "labels, training, backtests or agents. null: what the configured features need "
            "(qt_assets/features/warmup.py: 300 for EMAs, MACD, RSI, ATR; the window for the others); 0: off"))
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
