"""A loopback fake of the three SEC EDGAR endpoints the Form 4 provider uses, serving the bundled fixtures in
EDGAR's wire format:

* ``/files/company_tickers.json``: ``{"0": {"cik_str": 320193, "ticker": "AAPL", "title": ...}, ...}``;
* ``/submissions/CIK##########.json``: ``filings.recent`` (parallel arrays, newest first, plus a 10-K that must be
  skipped) and, for filings accepted before PAGE_SPLIT, an older-filings page listed in ``filings.files``;
* ``/Archives/edgar/data/{cik}/{accession without dashes}/{document}``: the raw XML; the ``xslF345X03/`` path that
  ``primaryDocument`` names is the HTML rendering, as on EDGAR.

Requests without an email in the User-Agent get 403, as on EDGAR. ``faults`` holds status codes served, in order,
to the next requests (a 429 carries ``Retry-After: 0``). ``requests`` records each request's path, User-Agent and
arrival time (``time.monotonic()``)."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pandas as pd

from qt_resources.filings import FIXTURES

PAGE_SPLIT = "2012-07-01"  # filings accepted (New York date) before this are on the older-filings page
XSL_DIR = "xslF345X03"
RENDERED = b"<html><body><table>FORM 4</table></body></html>"  # what EDGAR serves under XSL_DIR


def _filing_date(accepted: str) -> str:
    return pd.Timestamp(accepted).tz_convert("America/New_York").strftime("%Y-%m-%d")


def _block(filings: list[dict]) -> dict:
    """EDGAR's parallel-array filing list, newest first."""
    filings = sorted(filings, key=lambda f: f["acceptanceDateTime"], reverse=True)
    return {
        "accessionNumber": [f["accession"] for f in filings],
        "filingDate": [_filing_date(f["acceptanceDateTime"]) for f in filings],
        "reportDate": ["" for _ in filings],
        "acceptanceDateTime": [f["acceptanceDateTime"] for f in filings],
        "form": [f["form_type"] for f in filings],
        "primaryDocument": [f"{XSL_DIR}/{f['file']}" if f["form_type"].startswith("4") else f["file"] for f in filings],
    }


def _routes() -> dict[str, tuple[str, bytes]]:
    """Path -> (content type, body) for every URL the fake serves."""
    index = json.loads((FIXTURES / "index.json").read_text())
    tickers = {str(i): {"cik_str": v["cik"], "ticker": t, "title": v["title"]}
               for i, (t, v) in enumerate(index["tickers"].items())}
    routes = {"/files/company_tickers.json": ("application/json", json.dumps(tickers).encode())}
    for ticker, meta in index["tickers"].items():
        cik = meta["cik"]
        mine = [f for f in index["filings"] if f["cik"] == cik]
        annual = {"file": f"{ticker.lower()}-10k_2012.htm", "cik": cik, "accession": f"{cik:010d}-12-000100",
                  "form_type": "10-K", "acceptanceDateTime": "2012-10-31T20:02:11.000Z"}
        old = [f for f in mine if _filing_date(f["acceptanceDateTime"]) < PAGE_SPLIT]
        recent = [f for f in mine if f not in old] + [annual]
        filings = {"recent": _block(recent), "files": []}
        if old:
            page, block = f"CIK{cik:010d}-submissions-001.json", _block(old)
            filings["files"].append({"name": page, "filingCount": len(old), "filingFrom": min(block["filingDate"]),
                                     "filingTo": max(block["filingDate"])})
            routes[f"/submissions/{page}"] = ("application/json", json.dumps(block).encode())
        body = {"cik": str(cik), "name": meta["title"], "tickers": [ticker], "filings": filings}
        routes[f"/submissions/CIK{cik:010d}.json"] = ("application/json", json.dumps(body).encode())
        for f in mine:
            folder = f"/Archives/edgar/data/{cik}/{f['accession'].replace('-', '')}"
            routes[f"{folder}/{f['file']}"] = ("text/xml", (FIXTURES / f["file"]).read_bytes())
            routes[f"{folder}/{XSL_DIR}/{f['file']}"] = ("text/html", RENDERED)
    return routes


class _Handler(BaseHTTPRequestHandler):
    edgar: EdgarServer

    def log_message(self, *args):  # keep test output quiet
        pass

    def do_GET(self):
        edgar, agent = self.edgar, self.headers.get("User-Agent") or ""
        edgar.requests.append({"path": self.path, "user_agent": agent, "t": time.monotonic()})
        if edgar.faults:
            code = edgar.faults.pop(0)
            return self._send(code, "text/plain", b"fault", {"Retry-After": "0"} if code == 429 else {})
        if "@" not in agent:
            return self._send(403, "text/plain", b"Undeclared Automated Tool")
        if self.path not in edgar.routes:
            return self._send(404, "text/plain", b"not found")
        return self._send(200, *edgar.routes[self.path])

    def _send(self, code: int, content_type: str, body: bytes, headers: dict | None = None):
        self.send_response(code)
        for k, v in {"Content-Type": content_type, "Content-Length": str(len(body)), **(headers or {})}.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)


class EdgarServer:
    """The fake on 127.0.0.1 (random port) in a daemon thread; ``url`` is its base for both EDGAR hosts."""

    def __init__(self):
        self.requests: list[dict] = []
        self.faults: list[int] = []
        self.routes = _routes()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), type("H", (_Handler,), {"edgar": self}))
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def paths(self) -> list[str]:
        return [r["path"] for r in self.requests]

    def shutdown(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
