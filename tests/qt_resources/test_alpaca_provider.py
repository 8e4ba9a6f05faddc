import pandas as pd
import pytest

from qt_resources.prices import AlpacaPriceProvider, BundledPriceProvider, PriceDataError
from tests.alpaca_market_data_server import serve


@pytest.fixture(scope="module")
def alpaca_server():
    server, requests = serve()
    yield server, requests
    server.shutdown()


@pytest.fixture
def alpaca(alpaca_server):
    server, requests = alpaca_server
    server.faults.clear()
    return f"http://127.0.0.1:{server.server_address[1]}", requests


def test_alpaca_provider_speaks_the_real_client_and_matches_bundled(alpaca):
    url, requests = alpaca
    p = AlpacaPriceProvider(api_key="test-key", secret_key="test-secret", url_override=url)
    got = p.fetch(["AAPL", "IBM"], "2012-01-03", "2012-12-31")
    ref = BundledPriceProvider().fetch(["AAPL", "IBM"], "2012-01-03", "2012-12-31")
    pd.testing.assert_frame_equal(got, ref, check_exact=False, rtol=1e-9)
    bar_calls = [r for r in requests if r["path"] == "/v2/stocks/bars"]
    assert {r["query"]["adjustment"] for r in bar_calls} == {"raw", "all"}
    assert any("page_token" in r["query"] for r in bar_calls)  # pagination was followed


def test_alpaca_unknown_symbol_is_named(alpaca):
    url, _ = alpaca
    p = AlpacaPriceProvider(api_key="test-key", secret_key="test-secret", url_override=url)
    with pytest.raises(PriceDataError, match=r"alpaca: no bars for symbol\(s\) \['NOPE'\]"):
        p.fetch(["AAPL", "NOPE"], "2012-01-03", "2012-01-31")


def test_alpaca_retries_server_errors_then_succeeds(alpaca, alpaca_server):
    url, _ = alpaca
    alpaca_server[0].faults.extend([503, 500])
    p = AlpacaPriceProvider(api_key="test-key", secret_key="test-secret", url_override=url)
    got = p.fetch(["IBM"], "2012-01-03", "2012-01-31")
    assert len(got) == 20 and not alpaca_server[0].faults


def test_alpaca_gives_up_with_a_clear_error(alpaca, alpaca_server):
    url, _ = alpaca
    alpaca_server[0].faults.extend([502] * 10)
    p = AlpacaPriceProvider(api_key="test-key", secret_key="test-secret", url_override=url, max_attempts=2)
    with pytest.raises(RuntimeError, match=r"alpaca bars \['IBM'\] 2012-01-03..2012-01-31 \(raw\): gave up after 2 attempts"):
        p.fetch(["IBM"], "2012-01-03", "2012-01-31")
