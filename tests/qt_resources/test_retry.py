import time

import pytest

from qt_resources.retry import RateLimiter, TransientError, retry_call


def test_backoff_then_success_and_retry_after_is_honoured():
    waits, calls = [], iter([TransientError("429", retry_after=7.0), TransientError("503"), "ok"])

    def fn():
        v = next(calls)
        if isinstance(v, Exception):
            raise v
        return v

    assert retry_call(fn, what="x", base_delay=0.5, sleep=waits.append) == "ok"
    assert waits == [7.0, 1.0]  # server's Retry-After, then 0.5 * 2**1


def test_non_transient_error_is_not_retried():
    n = []

    def fn():
        n.append(1)
        raise ValueError("bad symbol")

    with pytest.raises(ValueError, match="bad symbol"):
        retry_call(fn, what="x", sleep=lambda s: None)
    assert len(n) == 1


def test_rate_limiter_spaces_calls():
    rl = RateLimiter(per_second=20)
    t0 = time.monotonic()
    for _ in range(5):
        rl.wait()
    assert time.monotonic() - t0 >= 4 / 20 - 1e-3
