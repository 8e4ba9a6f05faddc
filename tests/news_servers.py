"""Loopback fakes speaking real wire formats, for the news/LLM tests:

- Finnhub ``GET /api/v1/company-news`` serving the bundled fixture (token via ``token=`` or ``X-Finnhub-Token``;
  ``from``/``to`` are UTC dates; newest first); ``state["faults"]``: statuses to answer the next calls with
  (429 carries ``Retry-After: 0``).
- Alpaca ``GET /v1beta1/news`` (``symbols``, ``start``, ``end``, ``limit``, ``page_token``/``next_page_token``;
  pages of at most ``state["page_size"]`` items, newest first).
- OpenAI-compatible ``POST /v1/chat/completions`` with scripted replies (``state["script"]``, one per call,
  then ``"valid"``): a dict (sent as the JSON content), ``"valid"``, ``"invalid_json"``, ``"wrong_schema"``,
  ``"slow"`` (valid after ``state["slow_s"]`` seconds), ``429`` or ``500``.

Every request is recorded as ``{"method", "path", "query", "headers" (lower-case names), "body"}`` in
``Fake.requests``.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pandas as pd

from qt_resources.news import FIXTURE

VALID_SENTIMENT = {"score": 0.6, "label": "positive", "reason": "Results beat expectations."}


@dataclass
class Fake:
    server: ThreadingHTTPServer
    state: dict
    requests: list = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):  # keep test output quiet
        pass

    @property
    def fake(self) -> Fake:
        return self.server.fake

    def _record(self) -> tuple[str, dict, dict | None]:
        url = urlparse(self.path)
        q = {k: v[0] for k, v in parse_qs(url.query).items()}
        n = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(n)) if n else None
        self.fake.requests.append({"method": self.command, "path": url.path, "query": q,
                                   "headers": {k.lower(): v for k, v in self.headers.items()},
                                   "body": body})
        return url.path, q, body

    def _send(self, code: int, body, headers: dict | None = None) -> None:
        raw = json.dumps(body).encode()
        try:
            self.send_response(code)
            for k, v in {"Content-Type": "application/json", "Content-Length": str(len(raw)),
                         **(headers or {})}.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(raw)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout test)
            pass


def _start(handler: type[_Handler], state: dict) -> Fake:
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    fake = Fake(server=server, state=state)
    server.fake = fake
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
    return fake


# ------------------------------------------------------------------ Finnhub

class _Finnhub(_Handler):
    def do_GET(self):
        path, q, _ = self._record()
        if path != "/api/v1/company-news":
            return self._send(404, {"error": "not found"})
        if (q.get("token") or self.headers.get("X-Finnhub-Token")) != self.fake.state["token"]:
            return self._send(401, {"error": "Invalid API key"})
        faults = self.fake.state["faults"]
        if faults:
            code = faults.pop(0)
            return self._send(code, {"error": "API limit reached" if code == 429 else "internal error"},
                              {"Retry-After": "0"} if code == 429 else None)
        day = lambda it: pd.Timestamp(it["datetime"], unit="s").strftime("%Y-%m-%d")  # noqa: E731
        items = json.loads(FIXTURE.read_text()).get(q["symbol"], [])
        items = [it for it in items if q["from"] <= day(it) <= q["to"]]
        return self._send(200, sorted(items, key=lambda it: -it["datetime"]))


def serve_finnhub(token: str = "finnhub-test-token", faults: list[int] | None = None) -> Fake:
    """Base URL for ``FinnhubNewsProvider``: ``fake.url + "/api/v1"``."""
    return _start(_Finnhub, {"token": token, "faults": list(faults or [])})


# ------------------------------------------------------------------ Alpaca news

def alpaca_items_from_fixture() -> list[dict]:
    """The bundled fixture in Alpaca's news shape: one item per Finnhub id, ``symbols`` = every symbol it was
    listed under (so cross-company stories are multi-symbol items)."""
    by_id: dict[int, dict] = {}
    for sym, items in json.loads(FIXTURE.read_text()).items():
        for it in items:
            ts = pd.Timestamp(it["datetime"], unit="s", tz="UTC").strftime("%Y-%m-%dT%H:%M:%SZ")
            item = by_id.setdefault(it["id"], {
                "id": it["id"], "headline": it["headline"], "author": "Newsroom", "created_at": ts,
                "updated_at": ts, "summary": it["summary"], "content": "", "url": it["url"], "images": [],
                "symbols": [], "source": it["source"]})
            item["symbols"] = sorted({*item["symbols"], sym})
    return sorted(by_id.values(), key=lambda it: it["id"])


class _Alpaca(_Handler):
    def do_GET(self):
        path, q, _ = self._record()
        if path != "/v1beta1/news":
            return self._send(404, {"message": "not found"})
        st = self.fake.state
        if (self.headers.get("APCA-API-KEY-ID"), self.headers.get("APCA-API-SECRET-KEY")) != st["keys"]:
            return self._send(403, {"message": "forbidden."})
        wanted = set(q.get("symbols", "").split(","))
        start, end = pd.Timestamp(q["start"]), pd.Timestamp(q["end"])
        hits = [it for it in st["items"] if wanted & set(it["symbols"])
                and start <= pd.Timestamp(it["created_at"]) <= end]
        hits.sort(key=lambda it: (it["created_at"], it["id"]), reverse=True)
        offset, size = int(q.get("page_token") or 0), min(int(q.get("limit") or 50), st["page_size"])
        nxt = str(offset + size) if offset + size < len(hits) else None
        return self._send(200, {"news": hits[offset: offset + size], "next_page_token": nxt})


def serve_alpaca_news(items: list[dict] | None = None, keys=("test-key", "test-secret"), page_size: int = 7) -> Fake:
    """``url_override`` for ``AlpacaNewsProvider``: ``fake.url``."""
    return _start(_Alpaca, {"items": alpaca_items_from_fixture() if items is None else items,
                            "keys": tuple(keys), "page_size": page_size})


# ------------------------------------------------------------------ OpenAI-compatible chat completions

class _OpenAI(_Handler):
    def do_POST(self):
        path, _, body = self._record()
        if path != "/v1/chat/completions":
            return self._send(404, {"error": {"message": "not found", "type": "invalid_request_error"}})
        st = self.fake.state
        if self.headers.get("Authorization") != f"Bearer {st['api_key']}":
            return self._send(401, {"error": {"message": "Incorrect API key provided", "type": "invalid_api_key"}})
        reply = st["script"].pop(0) if st["script"] else "valid"
        if reply in (429, 500):
            return self._send(reply, {"error": {"message": "Rate limit reached" if reply == 429 else "server error",
                                                "type": "rate_limit_error" if reply == 429 else "server_error"}},
                              {"retry-after-ms": "10"})
        if reply == "html_page":  # a proxy or a misconfigured base_url: HTTP 200 with a web page
            raw = b"<html><head><title>Welcome</title></head><body>It works!</body></html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)
            return None
        if reply == "slow":
            time.sleep(st["slow_s"])
        if isinstance(reply, dict):
            content = json.dumps(reply)
        else:
            content = {"invalid_json": "Sure! The sentiment is positive.",
                       "huge_invalid": "x" * 100_000,
                       "wrong_schema": json.dumps({"sentiment": "positive", "confidence": 3})
                       }.get(reply, json.dumps(VALID_SENTIMENT))
        return self._send(200, {
            "id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()), "model": body["model"],
            "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                         "message": {"role": "assistant", "content": content, "refusal": None}}],
            "usage": {"prompt_tokens": 50, "completion_tokens": 20, "total_tokens": 70}})


def serve_openai(api_key: str = "sk-test-llm-key", script: list | None = None, slow_s: float = 2.0) -> Fake:
    """``base_url`` for ``OpenAICompatibleLLM``: ``fake.url + "/v1"``."""
    return _start(_OpenAI, {"api_key": api_key, "script": list(script or []), "slow_s": slow_s})
