"""A small loopback server speaking Alpaca's market-data wire format for GET /v2/stocks/bars
(multi-symbol, adjustment=raw|all, pagination via next_page_token), serving the bundled real prices."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pandas as pd

PAGE = 300  # bars per page, small on purpose so the client must follow next_page_token


class _Handler(BaseHTTPRequestHandler):
    data: pd.DataFrame
    requests: list
    faults: list  # status codes to answer with, one per request, before serving normally

    def log_message(self, *args):  # keep test output quiet
        pass

    def do_GET(self):
        url = urlparse(self.path)
        q = {k: v[0] for k, v in parse_qs(url.query).items()}
        self.requests.append({"path": url.path, "query": q, "key": self.headers.get("APCA-API-KEY-ID")})
        if self.faults:
            return self._send(self.faults.pop(0), {"message": "injected fault"})
        if url.path != "/v2/stocks/bars":
            return self._send(404, {"message": "not found"})
        if self.headers.get("APCA-API-KEY-ID") != "test-key" or self.headers.get("APCA-API-SECRET-KEY") != "test-secret":
            return self._send(403, {"message": "forbidden"})
        syms = q["symbols"].split(",")
        start = pd.Timestamp(q["start"]).tz_convert("America/New_York").strftime("%Y-%m-%d")
        end = pd.Timestamp(q["end"]).tz_convert("America/New_York").strftime("%Y-%m-%d")
        d = self.data
        d = d[d["ticker"].isin(syms) & (d["day"] >= start) & (d["day"] <= end)].sort_values(["ticker", "day"])
        offset = int(q.get("page_token") or 0)
        page = d.iloc[offset: offset + PAGE]
        factor = (page["adj_close"] / page["close"]) if q.get("adjustment") == "all" else 1.0
        bars: dict[str, list] = {}
        for r, f in zip(page.itertuples(), factor if hasattr(factor, "__iter__") else [1.0] * len(page)):
            ts = pd.Timestamp(r.day, tz="America/New_York").tz_convert("UTC").strftime("%Y-%m-%dT%H:%M:%SZ")
            bars.setdefault(r.ticker, []).append({"t": ts, "o": r.open * f, "h": r.high * f, "l": r.low * f,
                                                  "c": r.close * f, "v": int(r.volume), "n": 1, "vw": r.close * f})
        nxt = str(offset + PAGE) if offset + PAGE < len(d) else None
        return self._send(200, {"bars": bars, "next_page_token": nxt})

    def _send(self, code, body):
        raw = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)


def serve():
    from bokeh_sampledata import stocks

    data = stocks.data.assign(day=lambda d: d["date"].dt.strftime("%Y-%m-%d"))
    handler = type("H", (_Handler,), {"data": data, "requests": [], "faults": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    server.faults = handler.faults
    return server, handler.requests
