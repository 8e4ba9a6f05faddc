"""Retries with exponential backoff and a minimum-interval rate limiter, shared by the HTTP providers."""

from __future__ import annotations

import math
import threading
import time
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Callable, TypeVar

T = TypeVar("T")

TRANSIENT_STATUS = {408, 425, 429, 500, 502, 503, 504}


class TransientError(RuntimeError):
    """Raised by callers to mark an error as worth retrying; ``retry_after`` in seconds if known."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class RetriesExhausted(RuntimeError):
    """``retry_call`` gave up: every attempt failed with a transient error, the last of which is ``__cause__``."""


def status_of(exc: BaseException) -> int | None:
    """HTTP status of a requests/alpaca-py/openai error, if it carries one."""
    for attr in ("status_code", "status"):
        v = getattr(exc, attr, None)
        if isinstance(v, int):
            return v
    resp = getattr(exc, "response", None)
    return getattr(resp, "status_code", None)


def parse_retry_after(value: str | None) -> float | None:
    """A ``Retry-After`` header value in seconds (delay-seconds or an HTTP-date; a past date gives 0), or None
    when absent or unparseable."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:  # "-0000": UTC
            when = when.replace(tzinfo=timezone.utc)
        return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def retry_after_of(exc: BaseException) -> float | None:
    if isinstance(exc, TransientError):
        return exc.retry_after
    resp = getattr(exc, "response", None)
    return parse_retry_after(getattr(resp, "headers", {}).get("Retry-After") if resp is not None else None)


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, (TransientError, ConnectionError, TimeoutError)):
        return True
    name = type(exc).__name__
    if name in {"ConnectionError", "Timeout", "ReadTimeout", "ConnectTimeout", "ChunkedEncodingError"}:
        return True
    return status_of(exc) in TRANSIENT_STATUS


def retry_call(fn: Callable[[], T], *, what: str, attempts: int = 4, base_delay: float = 0.5,
               max_delay: float = 30.0, sleep: Callable[[float], None] = time.sleep) -> T:
    """Call ``fn``; on a transient error wait ``base_delay * 2**k`` (or the server's Retry-After, capped at
    ``max_delay``) and try again, ``attempts`` times in all. A non-transient error is raised at once; when the
    last attempt fails transiently, RetriesExhausted (chained to that error) is raised."""
    for k in range(attempts):
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - classified below
            if not is_transient(exc) or k == attempts - 1:
                if is_transient(exc):
                    raise RetriesExhausted(f"{what}: gave up after {attempts} attempts: "
                                           f"{type(exc).__name__}: {exc}") from exc
                raise
            wait = retry_after_of(exc)
            sleep(min(max_delay, wait if wait is not None else base_delay * 2 ** k))
    raise AssertionError("unreachable")


class RateLimiter:
    """At most ``per_second`` calls a second across threads (a minimum interval between calls)."""

    def __init__(self, per_second: float):
        self.interval = 1.0 / per_second if per_second > 0 else 0.0
        self._next = 0.0
        self._lock = threading.Lock()

    def wait(self) -> None:
        with self._lock:
            now = time.monotonic()
            if self._next > now:
                time.sleep(self._next - now)
                now = time.monotonic()  # the real wake-up: a late one must not shorten the next interval
            self._next = now + self.interval
