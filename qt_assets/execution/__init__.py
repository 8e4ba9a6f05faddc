"""Execution: guarded targets into orders through the broker resource, idempotently, with the live gates and
the kill switch; reconciliation and the trade journal (assets.py)."""
