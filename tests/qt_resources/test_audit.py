"""The hash-chained audit log (qt_resources/audit.py) and the paper broker writing to it."""

import json
import multiprocessing as mp
import subprocess
import sys

import pytest

from qt_resources.audit import GENESIS, AuditLog, verify
from qt_resources.broker import OrderIntent, PaperBroker
from tests.conftest import REPO


def _lines(p):
    return p.read_text().splitlines()


def _log(tmp_path, n=5):
    log = AuditLog(tmp_path / "audit.jsonl")
    for i in range(n):
        log.append("order", "a", client_order_id=f"id{i}", qty=float(i + 1))
    return log


def test_chain_links_every_line(tmp_path):
    log = _log(tmp_path)
    recs = log.records()
    assert [r["seq"] for r in recs] == [1, 2, 3, 4, 5] and recs[0]["prev"] == GENESIS
    assert all(b["prev"] == a["hash"] for a, b in zip(recs, recs[1:]))
    assert verify(log.path) == (True, [])
    assert verify(tmp_path / "none.jsonl") == (True, [])


@pytest.mark.parametrize("tamper, where", [
    (lambda ls: ls.__setitem__(2, ls[2].replace('"qty":3.0', '"qty":30.0')), "line 3: hash does not match"),
    (lambda ls: ls.pop(1), "line 2: seq 3, expected 2"),
    (lambda ls: ls.insert(1, ls[1]), "line 3: seq 2, expected 3"),
    (lambda ls: ls.__setitem__(slice(1, 3), [ls[2], ls[1]]), "line 2: seq 3, expected 2"),
    (lambda ls: ls.__setitem__(4, "{not json"), "line 5: not JSON"),
])
def test_tampering_with_any_line_is_detected(tmp_path, tamper, where):
    log = _log(tmp_path)
    lines = _lines(log.path)
    tamper(lines)
    log.path.write_text("\n".join(lines) + "\n")
    ok, problems = verify(log.path)
    assert not ok and problems[0].startswith(where), problems


def test_an_edit_that_recomputes_its_own_hash_still_breaks_the_next_link(tmp_path):
    from qt_resources.audit import _digest

    log = _log(tmp_path)
    lines = [json.loads(x) for x in _lines(log.path)]
    lines[1]["data"]["qty"] = 99.0
    lines[1]["hash"] = _digest(lines[1]["prev"], lines[1])  # a forger fixes the edited line's own hash
    log.path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    ok, problems = verify(log.path)
    assert not ok and problems == ["line 3: prev does not match the hash of line 2 (the chain is broken here)"]


def test_verify_command_exit_codes(tmp_path):
    log = _log(tmp_path)
    run = lambda: subprocess.run([sys.executable, "-m", "qt_resources.audit", "verify", str(log.path)],  # noqa: E731
                                 cwd=REPO, capture_output=True, text=True)
    ok = run()
    assert ok.returncode == 0 and "intact (5 lines)" in ok.stdout
    log.path.write_text(log.path.read_text().replace('"qty":2.0', '"qty":2.5'))
    bad = run()
    assert bad.returncode == 1 and "TAMPERED: line 2" in bad.stdout


def _writer(path, k):
    log = AuditLog(path)
    for i in range(25):
        log.append("fill", f"w{k}", i=i)


def test_concurrent_writers_keep_one_chain(tmp_path):
    path = tmp_path / "audit.jsonl"
    procs = [mp.get_context("spawn").Process(target=_writer, args=(path, k)) for k in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert verify(path) == (True, []) and len(_lines(path)) == 75


def test_paper_broker_audits_intents_orders_transitions_and_fills(tmp_path):
    b = PaperBroker(db_path=str(tmp_path / "b.sqlite"), audit_path=str(tmp_path / "audit.jsonl"),
                    commission_bps=5, min_commission=1.0)
    b.open_account("a")
    b.place_session_orders("a", "2021-01-04", [OrderIntent("AAA", "buy", 10, "target 0.1"),
                                               OrderIntent("BBB", "buy", 5, "target 0.2")])
    b.place_session_orders("a", "2021-01-04", [OrderIntent("AAA", "buy", 10, "again")])  # idempotent: nothing new
    b.fill_pending("a", "2021-01-05", {"AAA": 100.0})  # no price for BBB: its day order expires
    recs = AuditLog(tmp_path / "audit.jsonl").records()
    kinds = [(r["kind"], r["data"].get("status") or r["data"].get("symbol")) for r in recs]
    assert kinds == [("intent", "AAA"), ("order", "AAA"), ("transition", "new"), ("transition", "submitted"),
                     ("transition", "accepted"),
                     ("intent", "BBB"), ("order", "BBB"), ("transition", "new"), ("transition", "submitted"),
                     ("transition", "accepted"), ("transition", "filled"), ("fill", "AAA"), ("transition", "expired")]
    fill = recs[11]["data"]
    assert fill["qty"] == 10 and fill["price"] == 100.0 and fill["commission"] == 1.0
    assert fill["cash_after"] == pytest.approx(b.cash("a"))
    assert all(r["agent"] == "a" for r in recs) and verify(tmp_path / "audit.jsonl") == (True, [])


@pytest.mark.parametrize("dies", ["before the append", "after the append", "before the flush"])
def test_a_crash_around_the_audit_append_loses_and_duplicates_nothing(tmp_path, monkeypatch, dies):
    """The records go to an outbox in the ledger's own transaction; the flush appends them and clears the
    outbox under the ledger's write lock. Kill it at any point: the next flush completes it exactly once."""
    from qt_resources import audit as audit_mod

    path = tmp_path / "audit.jsonl"
    b = PaperBroker(db_path=str(tmp_path / "b.sqlite"), audit_path=str(path), commission_bps=5)
    b.open_account("a")
    b.place_session_orders("a", "2021-01-04", [OrderIntent("AAA", "buy", 10, "t")])
    before = len(AuditLog(path).records())
    real_append, real_flush = audit_mod.AuditLog.append_many, PaperBroker.flush_audit

    class Died(Exception):
        pass

    def append_then_die(self, records):
        if dies == "after the append":
            real_append(self, records)
        raise Died

    if dies == "before the flush":
        monkeypatch.setattr(PaperBroker, "flush_audit", lambda self: (_ for _ in ()).throw(Died()))
    else:
        monkeypatch.setattr(audit_mod.AuditLog, "append_many", append_then_die)
    with pytest.raises(Died):
        b.fill_pending("a", "2021-01-05", {"AAA": 100.0})
    monkeypatch.setattr(audit_mod.AuditLog, "append_many", real_append)
    monkeypatch.setattr(PaperBroker, "flush_audit", real_flush)
    assert PaperBroker(db_path=b.db_path).positions("a") == {"AAA": 10}  # the ledger committed regardless
    PaperBroker(db_path=b.db_path, audit_path=str(path)).flush_audit()  # the next process
    recs = AuditLog(path).records()
    kinds = [(r["kind"], r["data"].get("status") or r["data"].get("symbol")) for r in recs[before:]]
    assert kinds == [("transition", "filled"), ("fill", "AAA")]  # each exactly once
    refs = [r["data"]["_ref"] for r in recs]
    assert len(refs) == len(set(refs)) and verify(path) == (True, [])


def _rechain(lines: list[str]) -> list[str]:
    """A forger's rewrite: every line's prev/hash recomputed, so the chain alone is intact."""
    from qt_resources.audit import _digest

    out, prev = [], GENESIS
    for n, line in enumerate(lines, start=1):
        rec = json.loads(line)
        rec["seq"], rec["prev"] = n, prev
        rec["hash"] = prev = _digest(prev, rec)
        out.append(json.dumps(rec, sort_keys=True, separators=(",", ":")))
    return out


@pytest.mark.parametrize("tamper", ["cut_tail", "cut_and_rewrite", "rewrite_a_fill"])
def test_the_ledger_anchor_detects_what_the_chain_alone_cannot(tmp_path, tamper):
    from qt_resources.audit import ledger_anchors

    path = tmp_path / "audit.jsonl"
    b = PaperBroker(db_path=str(tmp_path / "b.sqlite"), audit_path=str(path), commission_bps=5)
    b.open_account("a")
    b.place_session_orders("a", "2021-01-04", [OrderIntent("AAA", "buy", 10, "t")])
    b.fill_pending("a", "2021-01-05", {"AAA": 100.0})
    lines = _lines(path)
    anchors = ledger_anchors(tmp_path / "b.sqlite", path)
    assert anchors == [b.audit_anchor()] and anchors[0][0] == len(lines)
    assert verify(path, anchors) == (True, [])
    if tamper == "cut_tail":
        kept = lines[:-2]
    elif tamper == "cut_and_rewrite":
        kept = _rechain(lines[:-3] + [lines[-1]])
    else:
        recs = [json.loads(x) for x in lines]
        for r in recs:
            if r["kind"] == "fill":
                r["data"]["price"] = 90.0
        kept = _rechain([json.dumps(r, sort_keys=True, separators=(",", ":")) for r in recs])
    path.write_text("\n".join(kept) + "\n")
    assert verify(path) == (True, [])  # the chain by itself is fooled
    ok, problems = verify(path, anchors)
    assert not ok
    assert ("rewritten" if tamper == "rewrite_a_fill" else "tail was cut off") in problems[0], problems
    cli = subprocess.run([sys.executable, "-m", "qt_resources.audit", "verify", str(path),
                          f"--ledger={tmp_path / 'b.sqlite'}"], cwd=REPO, capture_output=True, text=True)
    assert cli.returncode == 1 and "TAMPERED" in cli.stdout


def test_the_anchor_follows_every_flush_and_the_cli_reports_it(tmp_path):
    path = tmp_path / "audit.jsonl"
    b = PaperBroker(db_path=str(tmp_path / "b.sqlite"), audit_path=str(path))
    assert b.audit_anchor() is None
    b.open_account("a")
    b.place_session_orders("a", "2021-01-04", [OrderIntent("AAA", "buy", 10, "t")])
    first = b.audit_anchor()
    b.place_session_orders("a", "2021-01-05", [OrderIntent("BBB", "buy", 5, "t")])
    second = b.audit_anchor()
    assert second[0] > first[0] == int(json.loads(_lines(path)[first[0] - 1])["seq"])
    assert second == (len(_lines(path)), json.loads(_lines(path)[-1])["hash"])
    cli = subprocess.run([sys.executable, "-m", "qt_resources.audit", "verify", str(path),
                          f"--ledger={tmp_path / 'b.sqlite'}"], cwd=REPO, capture_output=True, text=True)
    assert cli.returncode == 0 and "1 ledger anchor(s) match" in cli.stdout
    missing = subprocess.run([sys.executable, "-m", "qt_resources.audit", "verify", str(path),
                              f"--ledger={tmp_path / 'nope.sqlite'}"], cwd=REPO, capture_output=True, text=True)
    assert missing.returncode == 2 and "nope.sqlite does not exist" in missing.stderr


def test_a_ledger_from_before_the_anchor_has_none_and_a_foreign_file_is_named(tmp_path):
    import sqlite3

    from qt_resources.audit import ledger_anchors

    old = tmp_path / "old.sqlite"
    sqlite3.connect(old).execute("create table orders (x)").connection.commit()
    assert ledger_anchors(old, tmp_path / "audit.jsonl") == []
    (tmp_path / "junk.sqlite").write_bytes(b"not a database" * 100)
    with pytest.raises(ValueError, match="junk.sqlite: file is not a database"):
        ledger_anchors(tmp_path / "junk.sqlite", tmp_path / "audit.jsonl")
