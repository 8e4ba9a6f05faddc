"""Append-only audit log with a hash chain: every intent, order, status transition and fill, one JSON line each.

Each line is ``{"seq", "at", "kind", "agent", "data", "prev", "hash"}`` where ``hash = sha256(prev + body)`` and
``body`` is the canonical JSON (sorted keys, no spaces) of the line without ``hash``; ``prev`` is the previous
line's hash (64 zeros for the first). Editing, inserting, deleting or reordering any line breaks the chain at
that line, and :func:`verify` names it. Writers take an exclusive ``flock`` on the file, read the last line's
hash and append, so several processes can share one log.

Verify from the shell: ``python -m qt_resources.audit verify <path> [--ledger=<ledger.sqlite>]`` (exit 0 when
intact, 1 with the first broken line otherwise). The chain cannot show that its tail was cut off; the broker's
ledger anchors it: each flush records the last line's (seq, hash) in the ledger, in the transaction that clears
the outbox, and ``--ledger`` checks the log against it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

GENESIS = "0" * 64


def _body(rec: dict) -> str:
    return json.dumps({k: v for k, v in rec.items() if k != "hash"}, sort_keys=True, separators=(",", ":"),
                      default=str)


def _digest(prev: str, rec: dict) -> str:
    return hashlib.sha256((prev + _body(rec)).encode()).hexdigest()


def _last(f) -> tuple[int, str]:
    """(seq, hash) of the file's last line (0, GENESIS when empty); reads backwards from the end."""
    f.seek(0, os.SEEK_END)
    size = f.tell()
    if size == 0:
        return 0, GENESIS
    block, data = 4096, b""
    pos = size
    while pos > 0:
        step = min(block, pos)
        pos -= step
        f.seek(pos)
        data = f.read(step) + data
        lines = data.rstrip(b"\n").split(b"\n")
        if len(lines) > 1 or pos == 0:
            last = json.loads(lines[-1])
            return int(last["seq"]), last["hash"]
    return 0, GENESIS  # pragma: no cover


def _reversed_lines(f, block: int = 65536):
    """The file's non-empty lines, last first."""
    f.seek(0, os.SEEK_END)
    pos, rest = f.tell(), b""
    while pos > 0:
        step = min(block, pos)
        pos -= step
        f.seek(pos)
        parts = (f.read(step) + rest).split(b"\n")
        rest = parts[0]
        for line in reversed(parts[1:]):
            if line.strip():
                yield line
    if rest.strip():
        yield rest


class AuditLog:
    """One audit log file (created on first append)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def append_many(self, records: list[tuple[str, str, dict]]) -> list[dict]:
        """Append (kind, agent, data) records atomically with respect to other writers; returns the lines."""
        if not records:
            return []
        self.path.parent.mkdir(parents=True, exist_ok=True)
        out = []
        with open(self.path, "a+b") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                seq, prev = _last(f)
                lines = []
                for kind, agent, data in records:
                    seq += 1
                    rec = {"seq": seq, "at": datetime.now(timezone.utc).isoformat(timespec="microseconds"),
                           "kind": kind, "agent": agent, "data": data, "prev": prev}
                    rec["hash"] = prev = _digest(rec["prev"], rec)
                    lines.append(json.dumps(rec, sort_keys=True, separators=(",", ":"), default=str))
                    out.append(rec)
                f.seek(0, os.SEEK_END)
                f.write(("\n".join(lines) + "\n").encode())
                f.flush()
                os.fsync(f.fileno())
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)
        return out

    def refs_since(self, source: str, since: str, margin_s: float = 0.05) -> set[str]:
        """``data._ref`` values of ``source`` in the lines appended at or after ``since`` (ISO time, minus a small
        margin): read backwards from the end, so the cost is the lines written since then, not the file. The
        records of an outbox row are appended after the row was written, on the same host's clock."""
        if not self.path.exists():
            return set()
        cutoff = (datetime.fromisoformat(since) - timedelta(seconds=margin_s)).isoformat(timespec="microseconds")
        prefix, found = f"{source}#", set()
        with open(self.path, "rb") as f:
            for line in _reversed_lines(f):
                rec = json.loads(line)
                if rec["at"] < cutoff:
                    break
                ref = (rec.get("data") or {}).get("_ref", "")
                if isinstance(ref, str) and ref.startswith(prefix):
                    found.add(ref)
        return found

    def append(self, kind: str, agent: str, **data) -> dict:
        return self.append_many([(kind, agent, data)])[0]

    def records(self) -> list[dict]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]


def ledger_anchors(ledger: str | os.PathLike, log: str | os.PathLike) -> list[tuple[int, str]]:
    """The anchor a broker ledger (SQLite) holds for ``log``: [(seq, hash)] of the last line it wrote, or []."""
    import sqlite3

    if not Path(ledger).exists():
        raise FileNotFoundError(f"ledger {ledger} does not exist")
    con = sqlite3.connect(f"file:{ledger}?mode=ro", uri=True)
    try:
        try:
            rows = con.execute("select seq, hash from audit_anchor where log=?", (str(Path(log).resolve()),)).fetchall()
        except sqlite3.OperationalError as e:
            if "no such table" not in str(e):
                raise ValueError(f"ledger {ledger}: {e}") from e
            rows = []  # a ledger from before the anchor: nothing anchored yet
        except sqlite3.DatabaseError as e:
            raise ValueError(f"ledger {ledger}: {e}") from e
    finally:
        con.close()
    return [(int(s), h) for s, h in rows]


def verify(path: str | os.PathLike, anchors: list[tuple[int, str]] = ()) -> tuple[bool, list[str]]:
    """(intact, problems): every line parses, seq counts 1, 2, ..., prev is the previous hash and hash matches
    the line's content; and every anchor (seq, hash) -- what a ledger recorded, in its own transaction, as the
    last line it wrote -- is a line of the log with that hash. The chain alone cannot tell a log whose tail was
    cut off (or cut and rewritten with fresh hashes) from a shorter one; an anchor can, up to the line it names
    (lines written after the ledger's last flush are not covered). A missing file is an empty log."""
    p = Path(path)
    if not p.exists():
        return (not anchors), [f"line {s}: anchored by a ledger, but the log {p} does not exist" for s, _ in anchors]
    prev, problems, hashes = GENESIS, [], {}
    for n, line in enumerate(p.read_text().splitlines(), start=1):
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            problems.append(f"line {n}: not JSON ({e.msg})")
            break
        if rec.get("seq") != n:
            problems.append(f"line {n}: seq {rec.get('seq')!r}, expected {n} (a line was inserted or removed)")
        if rec.get("prev") != prev:
            problems.append(f"line {n}: prev does not match the hash of line {n - 1} (the chain is broken here)")
        if _digest(rec.get("prev", ""), rec) != rec.get("hash"):
            problems.append(f"line {n}: hash does not match its content (the line was edited)")
        if problems:
            break
        prev = rec["hash"]
        hashes[n] = rec["hash"]
    if not problems:
        for seq, h in anchors:
            if seq not in hashes:
                problems.append(f"line {seq}: anchored by a ledger, but the log ends at line {len(hashes)} "
                                "(its tail was cut off)")
            elif hashes[seq] != h:
                problems.append(f"line {seq}: its hash differs from the one its ledger anchored (the log was "
                                "rewritten from here or before)")
    return not problems, problems


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    ledgers = [a.split("=", 1)[1] for a in args if a.startswith("--ledger=")]
    args = [a for a in args if not a.startswith("--ledger=")]
    if len(args) != 2 or args[0] != "verify":
        print("usage: python -m qt_resources.audit verify <audit log path> [--ledger=<broker ledger .sqlite>]...",
              file=sys.stderr)
        return 2
    try:
        anchors = [a for led in ledgers for a in ledger_anchors(led, args[1])]
    except (FileNotFoundError, ValueError) as e:
        print(f"{args[1]}: cannot verify: {e}", file=sys.stderr)
        return 2
    ok, problems = verify(args[1], anchors)
    n = len(AuditLog(args[1]).records()) if ok else None
    anchored = f", {len(anchors)} ledger anchor(s) match" if ledgers else "; no ledger anchor checked"
    print(f"{args[1]}: intact ({n} lines){anchored}" if ok else f"{args[1]}: TAMPERED: " + "; ".join(problems))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
