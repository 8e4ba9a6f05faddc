import json
import time

import numpy as np
import pandas as pd
import pytest

from qt_resources.llm import NoLLM, OpenAICompatibleLLM
from qt_resources.news import (FIXTURE, NEWS_COLUMNS, SCORE_COLUMNS, SENTIMENT_COLUMNS, SENTIMENT_SCHEMA,
                               AlpacaNewsProvider, BundledNewsProvider, FinnhubNewsProvider, LexiconScorer,
                               LLMSentimentScorer, NewsDataError, aggregate_sentiment, dedupe_news,
                               make_news_provider, normalise_url)
from tests.news_servers import VALID_SENTIMENT, serve_alpaca_news, serve_finnhub, serve_openai

UNIVERSE = ["AAPL", "GOOG", "IBM", "MSFT"]
FINNHUB_TOKEN, LLM_KEY = "finnhub-test-token", "sk-test-llm-key"


@pytest.fixture
def serve():
    """Start loopback fakes; all are shut down after the test."""
    started = []

    def start(factory, **kw):
        started.append(factory(**kw))
        return started[-1]

    yield start
    for fake in started:
        fake.close()


@pytest.fixture(scope="module")
def bundled():
    return BundledNewsProvider().fetch(UNIVERSE, "2011-01-01", "2013-12-31")


def row(df, provider_id, symbol="AAPL"):
    hit = df[(df["provider_id"] == str(provider_id)) & (df["symbol"] == symbol)]
    assert len(hit) >= 1, (provider_id, symbol)
    return hit.iloc[0]


# ------------------------------------------------------------------ fixture, dedup, idempotence

def test_fixture_is_finnhub_shaped_and_provider_is_canonical(bundled):
    raw = json.loads(FIXTURE.read_text())
    items = [it for v in raw.values() for it in v]
    assert set(raw) == set(UNIVERSE) and 40 <= len(items) <= 80
    assert all(set(it) == {"category", "datetime", "headline", "id", "image", "related", "source", "summary",
                           "url"} and isinstance(it["datetime"], int) for it in items)
    assert list(bundled.columns) == NEWS_COLUMNS and len(bundled) == len(items)
    assert bundled["published_at"].str.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ").all()
    assert bundled["published_at"].min() >= "2011" and bundled["published_at"].max() < "2014"
    assert BundledNewsProvider().fetch(["FB"], "2012-01-01", "2012-12-31").empty  # no news is not an error


def test_dedupe_by_id_and_by_normalised_url_keeps_earliest_per_symbol(bundled):
    d = dedupe_news(bundled)
    assert len(bundled) - len(d) == 3
    assert (d["provider_id"] == "1100108").sum() == 1  # same id twice
    assert "1100110" in set(d["provider_id"]) and "1100111" not in set(d["provider_id"])  # same URL, later
    assert "1200104" in set(d["provider_id"]) and "1200105" not in set(d["provider_id"])
    # the same story under several symbols is one row per symbol, not a duplicate
    assert sorted(d.loc[d["provider_id"] == "1100901", "symbol"]) == ["AAPL", "GOOG", "MSFT"]
    assert not d.duplicated(["symbol", "provider", "provider_id"]).any()


def test_dedupe_keeps_the_earliest_even_when_the_later_copy_comes_first(bundled):
    pair = bundled[bundled["provider_id"].isin(["1100110", "1100111"])].iloc[::-1]
    assert dedupe_news(pair)["provider_id"].tolist() == ["1100110"]


@pytest.mark.parametrize("a, b", [
    ("https://news.example.com/2012/story", "http://www.news.example.com/2012/story/?utm_source=rss&utm_medium=x"),
    ("https://Example.com/a?id=3&x=1#frag", "example.com/a/?x=1&fbclid=zz&id=3"),
])
def test_normalise_url_equates_tracking_variants(a, b):
    assert normalise_url(a) == normalise_url(b)


def test_normalise_url_keeps_distinct_pages_distinct():
    assert normalise_url("https://example.com/a?id=3") != normalise_url("https://example.com/a?id=4")
    assert normalise_url("https://example.com/a") != normalise_url("https://example.com/b")


def test_reingesting_a_window_is_idempotent():
    p = BundledNewsProvider()
    stored = dedupe_news(p.fetch(UNIVERSE, "2011-01-01", "2012-08-24"))
    again = dedupe_news(pd.concat([stored, p.fetch(UNIVERSE, "2011-01-01", "2012-08-24")]))
    pd.testing.assert_frame_equal(again, stored)
    grown = dedupe_news(pd.concat([stored, p.fetch(UNIVERSE, "2012-06-01", "2013-12-31")]))  # overlapping
    pd.testing.assert_frame_equal(grown, dedupe_news(p.fetch(UNIVERSE, "2011-01-01", "2013-12-31")))
    pd.testing.assert_frame_equal(dedupe_news(pd.concat([grown, grown])), grown)


# ------------------------------------------------------------------ point in time

@pytest.mark.parametrize("provider_id, symbol, published_at, session", [
    (1100114, "AAPL", "2012-10-25T19:59:00Z", "2012-10-25"),  # 15:59 New York: that session
    (1100115, "AAPL", "2012-10-25T20:01:00Z", "2012-10-26"),  # 16:01: the next one
    (1100117, "AAPL", "2013-01-23T21:30:00Z", "2013-01-24"),  # 16:30 EST (winter offset)
    (1100112, "AAPL", "2012-08-25T14:15:00Z", "2012-08-27"),  # Saturday -> Monday
    (1100116, "AAPL", "2012-11-23T18:30:00Z", "2012-11-26"),  # 13:30 after a 13:00 early close
    (1200109, "GOOG", "2012-07-04T15:00:00Z", "2012-07-05"),  # holiday
    (1200111, "GOOG", "2012-10-29T14:00:00Z", "2012-10-31"),  # exchange closed (Hurricane Sandy)
])
def test_available_session_follows_the_close_cutoff(bundled, provider_id, symbol, published_at, session):
    r = row(bundled, provider_id, symbol)
    assert (r["published_at"], r["available_session"]) == (published_at, session)


def test_fetch_window_is_new_york_dates():
    # 2012-10-25 16:01 New York is already 2012-10-25T20:01Z; a 21:00 New York item would be the next UTC day
    got = BundledNewsProvider().fetch(["AAPL"], "2012-10-25", "2012-10-25")
    assert got["provider_id"].tolist() == ["1100114", "1100115"]


def test_aggregate_for_a_session_uses_only_items_available_for_it(bundled):
    scored = LexiconScorer().score(dedupe_news(bundled))
    agg = aggregate_sentiment(scored, ["2012-10-25", "2012-10-26"], ["AAPL", "IBM"])
    assert list(agg.columns) == SENTIMENT_COLUMNS
    d25 = agg[(agg["symbol"] == "AAPL") & (agg["session"] == "2012-10-25")].iloc[0]
    before_close = row(scored, 1100114)
    assert d25["news_count"] == 1 and d25["sentiment_mean"] == before_close["sentiment"]
    d26 = agg[(agg["symbol"] == "AAPL") & (agg["session"] == "2012-10-26")].iloc[0]
    assert d26["news_count"] == 1 and d26["sentiment_mean"] == row(scored, 1100115)["sentiment"] == -1.0
    # adding everything published after D's close changes nothing for D
    only_known = scored[scored["available_session"] <= "2012-10-25"]
    pd.testing.assert_frame_equal(aggregate_sentiment(only_known, ["2012-10-25"], ["AAPL", "IBM"]),
                                  aggregate_sentiment(scored, ["2012-10-25"], ["AAPL", "IBM"]))
    ibm = agg[agg["symbol"] == "IBM"]  # no IBM news those days: zero counts, NaN means
    assert (ibm["news_count"] == 0).all() and ibm[["sentiment_mean", "positive_share"]].isna().all().all()


def test_aggregate_formulas_and_point_in_time_5d_window():
    days = ["2012-10-22", "2012-10-23", "2012-10-24", "2012-10-25", "2012-10-26", "2012-10-31", "2012-11-01"]
    items = pd.DataFrame({"symbol": "MSFT", "available_session": [days[0], days[1], days[1], days[4], days[6]],
                          "sentiment": [1.0, 0.5, -1.0, 0.0, -0.5]})
    agg = aggregate_sentiment(items, days, ["MSFT"]).set_index("session")
    assert agg["news_count"].tolist() == [1, 2, 0, 0, 1, 0, 1]
    assert agg.loc[days[1], "sentiment_mean"] == pytest.approx(-0.25)
    assert agg.loc[days[1], ["positive_share", "negative_share"]].tolist() == [0.5, 0.5]
    assert agg.loc[days[4], ["positive_share", "negative_share"]].tolist() == [0.0, 0.0]  # a 0.0 item is neither
    # item-weighted 5-session mean over sessions <= D (Oct 29-30 were closures, so Oct 31 follows Oct 26)
    assert agg.loc[days[4], "sentiment_mean_5d"] == pytest.approx((1 + 0.5 - 1 + 0) / 4)
    assert agg.loc[days[5], "sentiment_mean_5d"] == pytest.approx((0.5 - 1 + 0) / 3)  # Oct 22 left the window
    assert agg.loc[days[6], "sentiment_mean_5d"] == pytest.approx((0 - 0.5) / 2)
    # a single-session request (one partition) sees the same calendar window as a long one
    one = aggregate_sentiment(items, [days[5]], ["MSFT"])
    pd.testing.assert_frame_equal(one, agg.reset_index()[SENTIMENT_COLUMNS].iloc[[5]].reset_index(drop=True))
    with pytest.raises(ValueError, match="2012-10-29"):
        aggregate_sentiment(items, ["2012-10-29"], ["MSFT"])


# ------------------------------------------------------------------ Finnhub over HTTP

def finnhub(fake, **kw):
    return FinnhubNewsProvider(api_key=FINNHUB_TOKEN, base_url=fake.url + "/api/v1", **kw)


def test_finnhub_provider_equals_bundled_and_survives_429(serve, bundled):
    fake = serve(serve_finnhub, faults=[429, 429, 500])
    t0 = time.monotonic()
    got = finnhub(fake, max_requests_per_second=1000, backoff_s=0.01).fetch(UNIVERSE, "2011-01-01", "2013-12-31")
    assert time.monotonic() - t0 < 5
    pd.testing.assert_frame_equal(got.drop(columns="provider"), bundled.drop(columns="provider"))
    assert set(got["provider"]) == {"finnhub"}
    assert len(fake.requests) == len(UNIVERSE) + 3
    first = fake.requests[0]
    assert first["query"] == {"symbol": "AAPL", "from": "2011-01-01", "to": "2014-01-01"}
    assert first["headers"]["x-finnhub-token"] == FINNHUB_TOKEN and "token" not in first["query"]


def test_finnhub_respects_retry_after_zero_instead_of_backing_off(serve):
    fake = serve(serve_finnhub, faults=[429, 429])
    t0 = time.monotonic()
    finnhub(fake, max_requests_per_second=1000, backoff_s=3).fetch(["IBM"], "2011-01-01", "2011-12-31")
    assert time.monotonic() - t0 < 2.5 and len(fake.requests) == 3  # backoff alone would wait 3 + 6 s


def test_finnhub_final_failure_names_symbol_and_url_but_not_token(serve):
    fake = serve(serve_finnhub, faults=[500] * 10)
    p = finnhub(fake, max_requests_per_second=1000, backoff_s=0.01, max_retries=2)
    with pytest.raises(NewsDataError) as e:
        p.fetch(["MSFT"], "2012-01-01", "2012-12-31")
    msg = str(e.value)
    assert "MSFT" in msg and "/api/v1/company-news" in msg and "after 3 attempt(s)" in msg and "HTTP 500" in msg
    assert FINNHUB_TOKEN not in msg and len(fake.requests) == 3


def test_finnhub_bad_key_is_not_retried(serve):
    fake = serve(serve_finnhub, token="other")
    with pytest.raises(NewsDataError, match="HTTP 401") as e:
        finnhub(fake, max_requests_per_second=1000).fetch(["AAPL"], "2012-01-01", "2012-01-31")
    assert FINNHUB_TOKEN not in str(e.value) and len(fake.requests) == 1


def test_finnhub_rate_limiter_spaces_calls(serve):
    fake = serve(serve_finnhub)
    t0 = time.monotonic()
    finnhub(fake, max_requests_per_second=10).fetch(UNIVERSE, "2011-01-01", "2011-01-31")
    assert time.monotonic() - t0 >= 0.3  # 4 calls, at least 0.1 s apart
    assert FinnhubNewsProvider(api_key="k").max_requests_per_second == 0.9


# ------------------------------------------------------------------ Alpaca news through alpaca-py

def test_alpaca_provider_real_client_pagination_and_multi_symbol_items(serve, bundled):
    fake = serve(serve_alpaca_news, page_size=7)
    p = AlpacaNewsProvider(api_key="test-key", secret_key="test-secret", url_override=fake.url)
    got = p.fetch(["AAPL", "MSFT"], "2011-01-01", "2013-12-31")
    assert len(fake.requests) > 1 and any(r["query"].get("page_token") for r in fake.requests)
    assert fake.requests[0]["headers"]["apca-api-key-id"] == "test-key"
    assert fake.requests[0]["query"]["symbols"] == "AAPL,MSFT"
    assert set(got["provider"]) == {"alpaca"} and set(got["symbol"]) == {"AAPL", "MSFT"}
    # the AAPL+GOOG+MSFT story: one row per requested symbol, none for GOOG
    assert sorted(got.loc[got["provider_id"] == "1100901", "symbol"]) == ["AAPL", "MSFT"]
    ref = dedupe_news(bundled[bundled["symbol"].isin(["AAPL", "MSFT"])])
    pd.testing.assert_frame_equal(dedupe_news(got).drop(columns="provider"), ref.drop(columns="provider"))


def test_alpaca_sub_second_after_close_is_next_session(serve):
    item = {"id": 7, "headline": "h", "author": "a", "created_at": "2012-10-25T20:00:00.4Z",
            "updated_at": "2012-10-25T20:00:00.4Z", "summary": "", "content": "", "url": "https://e.com/x",
            "images": [], "symbols": ["NOK", "MSFT", "AAPL"], "source": "benzinga"}
    fake = serve(serve_alpaca_news, items=[item])
    got = AlpacaNewsProvider(api_key="test-key", secret_key="test-secret", url_override=fake.url).fetch(
        ["AAPL", "MSFT"], "2012-10-25", "2012-10-25")
    assert got["symbol"].tolist() == ["AAPL", "MSFT"]  # NOK is outside the requested universe
    assert set(got["published_at"]) == {"2012-10-25T20:00:01Z"}  # rounded up, never down
    assert set(got["available_session"]) == {"2012-10-26"}  # 16:00:00.4 is after the close


def test_alpaca_errors_never_show_keys(serve):
    fake = serve(serve_alpaca_news)
    p = AlpacaNewsProvider(api_key="test-key", secret_key="wrong-secret", url_override=fake.url)
    with pytest.raises(NewsDataError, match="alpaca: news for") as e:
        p.fetch(["AAPL"], "2012-01-01", "2012-01-31")
    assert "wrong-secret" not in str(e.value) and "test-key" not in str(e.value)


def test_make_news_provider():
    assert isinstance(make_news_provider("bundled"), BundledNewsProvider)
    assert isinstance(make_news_provider("finnhub"), FinnhubNewsProvider)
    assert isinstance(make_news_provider("alpaca"), AlpacaNewsProvider)
    with pytest.raises(ValueError, match="unknown provider 'x'"):
        make_news_provider("x")


# ------------------------------------------------------------------ lexicon

@pytest.mark.parametrize("text, expected", [
    ("Apple posts strong gains and record profit", (1.0, 2, 0)),       # strong+, gains+
    ("Losses widen as the company faces litigation", (-1.0, 0, 2)),   # losses-, litigation-
    ("Strong growth offset by a decline in margins", (0.0, 1, 1)),    # strong+, decline-
    ("Profit improved but weak demand led to a recall", (-1 / 3, 1, 2)),  # improved+, weak-, recall-
    ("STRONG GAINS; Weak", (1 / 3, 2, 1)),                            # case-insensitive
    ("Shares were unchanged on Tuesday", (0.0, 0, 0)),                # no LM word: 0
])
def test_lexicon_scores_hand_checked_sentences(text, expected):
    score, pos, neg = LexiconScorer().score_text(text)
    assert (pos, neg) == expected[1:] and score == pytest.approx(expected[0])


def test_lexicon_scores_headline_plus_summary(bundled):
    items = bundled[bundled["provider_id"].isin(["1100115", "1100108"])].drop_duplicates("provider_id")
    scored = LexiconScorer().score(items)
    assert list(scored.columns) == NEWS_COLUMNS + SCORE_COLUMNS
    miss = scored.set_index("provider_id").loc["1100115"]  # "miss", "decline"(s) in headline + summary
    assert miss["sentiment"] == -1.0 and miss["negative_count"] >= 2 and miss["label"] == "negative"
    assert (scored["scorer"] == "lexicon").all() and scored["error"].isna().all()


# ------------------------------------------------------------------ LLM

def llm(fake, **kw):
    return OpenAICompatibleLLM(base_url=fake.url + "/v1", api_key=LLM_KEY, model="test-model", **kw)


def test_llm_valid_answer_is_parsed_and_request_is_structured(serve):
    fake = serve(serve_openai)
    res = llm(fake).complete_json("sys", "user text", SENTIMENT_SCHEMA)
    assert res.ok and res.value == VALID_SENTIMENT and res.error is None and json.loads(res.raw) == VALID_SENTIMENT
    req = fake.requests[0]
    assert req["path"] == "/v1/chat/completions" and req["headers"]["authorization"] == f"Bearer {LLM_KEY}"
    body = req["body"]
    assert body["model"] == "test-model" and body["temperature"] == 0.0
    assert [m["role"] for m in body["messages"]] == ["system", "user"] and body["messages"][1]["content"] == "user text"
    fmt = body["response_format"]
    assert fmt["type"] == "json_schema" and fmt["json_schema"]["strict"] is True
    assert fmt["json_schema"]["schema"] == SENTIMENT_SCHEMA


@pytest.mark.parametrize("script, kw, error, calls", [
    (["invalid_json"], {}, "invalid JSON", 1),
    (["wrong_schema"], {}, "schema mismatch", 1),
    ([{"score": 3, "label": "positive", "reason": "x"}], {}, "schema mismatch", 1),  # out of [-1, 1]
    ([429, 429, 429], {"max_retries": 2}, "RateLimitError", 3),
    ([500, 500], {"max_retries": 1}, "InternalServerError", 2),
    (["slow", "slow"], {"timeout_s": 0.3, "max_retries": 1}, "APITimeoutError", 2),
])
def test_llm_failures_are_results_not_exceptions(serve, script, kw, error, calls):
    fake = serve(serve_openai, script=script, slow_s=1.5)
    res = llm(fake, **kw).complete_json("sys", "user", SENTIMENT_SCHEMA)
    assert not res.ok and res.value is None and error in res.error and len(fake.requests) == calls
    assert LLM_KEY not in res.error and LLM_KEY not in (res.raw or "")


def test_llm_429_then_success_is_retried(serve):
    fake = serve(serve_openai, script=[429])
    assert llm(fake, max_retries=2).complete_json("s", "u", SENTIMENT_SCHEMA).ok and len(fake.requests) == 2


def test_llm_wrong_key_is_an_error_without_the_key(serve):
    fake = serve(serve_openai, api_key="sk-server-side")
    res = llm(fake).complete_json("s", "u", SENTIMENT_SCHEMA)
    assert not res.ok and "AuthenticationError" in res.error and LLM_KEY not in res.error


def test_llm_scorer_uses_answers_and_falls_back_to_lexicon_with_error(serve, bundled):
    items = bundled[bundled["provider_id"].isin(["1100114", "1100115", "1100117"])]
    fake = serve(serve_openai, script=["valid", "invalid_json", 429, 429, 429])
    got = LLMSentimentScorer(llm=llm(fake, max_retries=2)).score(items).set_index("provider_id")
    lex = LexiconScorer().score(items).set_index("provider_id")
    assert got.loc["1100114", ["sentiment", "label", "scorer", "reason"]].tolist() == [
        0.6, "positive", "llm", VALID_SENTIMENT["reason"]]
    assert pd.isna(got.loc["1100114", "error"])
    for pid, err in [("1100115", "invalid JSON"), ("1100117", "RateLimitError")]:
        assert got.loc[pid, "scorer"] == "lexicon" and got.loc[pid, "sentiment"] == lex.loc[pid, "sentiment"]
        assert err in got.loc[pid, "error"] and LLM_KEY not in got.loc[pid, "error"]
    assert (got["negative_count"] == lex["negative_count"]).all()  # lexicon counts are always kept
    assert "Company: AAPL" in fake.requests[0]["body"]["messages"][1]["content"]


def test_no_llm_falls_back_deterministically(bundled):
    items = bundled.head(5)
    res = NoLLM().complete_json("s", "u", SENTIMENT_SCHEMA)
    assert not res.ok and res.value is None and "lexicon" in res.error
    got = LLMSentimentScorer(llm=NoLLM()).score(items)
    lex = LexiconScorer().score(items)
    np.testing.assert_array_equal(got["sentiment"], lex["sentiment"])
    assert (got["scorer"] == "lexicon").all() and got["error"].str.startswith("NoLLM").all()
