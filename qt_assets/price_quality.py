"""Quality gates for daily prices: row rules, structural rules, and the split-aware extreme-move flag.

``validate_prices`` turns a provider's raw frame into (clean rows, quarantined rows with a reason, one
result per check). A session partition is written only if every row of it passes and every expected
symbol is present; otherwise the partition's stored file is left untouched (no partial overwrite of good
data) and its rows go to the quarantine table. Structural checks are blocking; the extreme-move check warns.
"""

from dataclasses import dataclass, field

import dagster as dg
import pandas as pd

from qt_resources.prices import PRICE_COLUMNS, PriceDataError

NUMERIC = ["open", "high", "low", "close", "adj_close", "volume"]
EXTREME_MOVE = 0.25  # |return| above this, not explained by a split/dividend adjustment, is flagged
MAX_LISTED = 20  # rows named in a check's metadata

# (check name, blocking, description)
CHECKS = [
    ("schema_and_types", True, "every value parses as a number/date of the right column"),
    ("prices_positive", True, "open, high, low, close, adj_close > 0 and not missing"),
    ("volume_non_negative", True, "volume >= 0 and not missing"),
    ("ohlc_consistent", True, "low <= open, close <= high"),
    ("unique_symbol_session", True, "one row per (symbol, session)"),
    ("sessions_are_xnys", True, "no row on a date that is not an XNYS session of the range"),
    ("symbols_in_universe", True, "no row for a symbol outside the configured universe"),
    ("sessions_complete", True, "every listed symbol has a row for every expected session"),
    ("extreme_moves_explained", False, f"|close-to-close move| > {EXTREME_MOVE:.0%} must be explained by a split/dividend adjustment"),
]


def check_specs(asset_key: str = "prices") -> list[dg.AssetCheckSpec]:
    return [dg.AssetCheckSpec(name, asset=asset_key, blocking=blocking, description=desc)
            for name, blocking, desc in CHECKS]


@dataclass
class Validation:
    clean: pd.DataFrame
    quarantine: pd.DataFrame
    written_sessions: list[str]
    held_sessions: list[str]  # partitions not written because of a failure
    failures: dict[str, list[str]] = field(default_factory=dict)  # check -> row descriptions
    warnings: dict[str, list[str]] = field(default_factory=dict)

    def check_results(self) -> list[dg.AssetCheckResult]:
        out = []
        for name, blocking, _ in CHECKS:
            rows = self.failures.get(name, []) + self.warnings.get(name, [])
            out.append(dg.AssetCheckResult(
                check_name=name, passed=not rows,
                severity=dg.AssetCheckSeverity.ERROR if blocking else dg.AssetCheckSeverity.WARN,
                metadata={"failing_rows": len(rows),
                          "rows": dg.MetadataValue.md("\n".join(f"- {r}" for r in rows[:MAX_LISTED])
                                                      + (f"\n- ... {len(rows) - MAX_LISTED} more" if len(rows) > MAX_LISTED else "")
                                                      if rows else "none")}))
        return out

    @property
    def passed(self) -> bool:
        return not self.failures


def _row(df: pd.DataFrame, i) -> str:
    return f"row {i}: {df.at[i, 'symbol']} {df.at[i, 'session']}"


def validate_prices(raw: pd.DataFrame, sessions: list[str], universe: list[str],
                    listed_from: dict[str, str] | None = None, previous: pd.DataFrame | None = None,
                    listed_until: dict[str, str] | None = None) -> Validation:
    """Validate ``raw`` (provider output, any dtypes) for the session partitions ``sessions``.

    ``listed_from``: first session each symbol traded (before it a missing row is not an error, e.g. IPO);
    a symbol with no entry is expected from its first row in ``raw``. ``listed_until``: last session a
    delisted symbol traded (after it no row is expected). ``previous``: stored rows of the
    session before the range, so the extreme-move check can see the first move."""
    missing_cols = [c for c in PRICE_COLUMNS if c not in raw.columns]
    if missing_cols:
        raise PriceDataError(f"price data is missing columns {missing_cols} (got {list(raw.columns)}); nothing written")
    df = raw[PRICE_COLUMNS].reset_index(drop=True).copy()
    df["symbol"] = df["symbol"].astype(str).str.strip()
    reasons: dict[int, list[str]] = {}
    fail: dict[str, list[str]] = {}

    def flag(check: str, mask: pd.Series, why) -> None:
        for i in mask[mask].index:
            text = why(i) if callable(why) else why
            reasons.setdefault(i, []).append(f"{check}: {text}")
            fail.setdefault(check, []).append(f"{_row(df, i)}: {text}")

    # types
    sess = pd.to_datetime(df["session"], errors="coerce", format="mixed")
    flag("schema_and_types", sess.isna(), lambda i: f"session={raw.at[i, 'session']!r} is not a date")
    df["session"] = sess.dt.strftime("%Y-%m-%d").where(sess.notna(), df["session"].astype(str))
    for col in NUMERIC:
        num = pd.to_numeric(df[col], errors="coerce")
        bad = num.isna() & df[col].notna() & (df[col].astype(str).str.strip().str.lower() != "nan")
        flag("schema_and_types", bad, lambda i, c=col: f"{c}={raw.at[i, c]!r} is not a number")
        df[col] = num.astype("float64")
    # values
    for col in ["open", "high", "low", "close", "adj_close"]:
        flag("prices_positive", df[col].isna() & ~_has(reasons, df.index, f"{col}="), f"{col} is missing")
        flag("prices_positive", df[col] <= 0, lambda i, c=col: f"{c}={df.at[i, c]} is not > 0")
    flag("volume_non_negative", df["volume"].isna() & ~_has(reasons, df.index, "volume="), "volume is missing")
    flag("volume_non_negative", df["volume"] < 0, lambda i: f"volume={df.at[i, 'volume']:g} is negative")
    lo_bad = (df["low"] > df[["open", "close"]].min(axis=1)) | (df["low"] > df["high"])
    hi_bad = df["high"] < df[["open", "close"]].max(axis=1)
    flag("ohlc_consistent", lo_bad | hi_bad, lambda i: (f"low={df.at[i, 'low']:g} open={df.at[i, 'open']:g} "
                                                         f"close={df.at[i, 'close']:g} high={df.at[i, 'high']:g}"))
    # structure
    dup = df.duplicated(["symbol", "session"], keep=False) & sess.notna()
    flag("unique_symbol_session", dup, lambda i: f"{int(((df['symbol'] == df.at[i, 'symbol']) & (df['session'] == df.at[i, 'session'])).sum())} rows")
    in_range = set(sessions)
    lo, hi = sessions[0], sessions[-1]
    within = df["session"].between(lo, hi)
    flag("sessions_are_xnys", sess.notna() & within & ~df["session"].isin(in_range), "not an XNYS session")
    flag("symbols_in_universe", ~df["symbol"].isin(universe), lambda i: f"{df.at[i, 'symbol']!r} is not in the universe {universe}")

    df = df[within | sess.isna()]  # rows outside the requested range are ignored, not stored
    listed = dict(listed_from or {})
    for sym in universe:
        if sym not in listed:
            seen = df.loc[df["symbol"] == sym, "session"]
            listed[sym] = seen.min() if len(seen) else None
    present = set(zip(df["symbol"].tolist(), df["session"].tolist()))
    until = listed_until or {}
    missing = [(sym, s) for sym in universe if listed.get(sym) for s in sessions
               if s >= listed[sym] and s <= until.get(sym, s) and (sym, s) not in present]
    if missing:
        fail["sessions_complete"] = [f"{sym} {s}: no row" for sym, s in missing]

    bad_idx = set(reasons) & set(df.index)
    held = sorted(({df.at[i, "session"] for i in bad_idx} | {s for _, s in missing}) & in_range)
    ok_rows = df[~df.index.isin(bad_idx) & df["session"].isin(in_range) & ~df["session"].isin(held)]
    quarantine = df.loc[sorted(bad_idx)].assign(reason=["; ".join(reasons[i]) for i in sorted(bad_idx)])
    quarantine = quarantine.astype({c: "float64" for c in NUMERIC})

    warns = _extreme_moves(ok_rows, previous)
    clean = ok_rows.astype({"volume": "int64"}).sort_values(["session", "symbol"], ignore_index=True)
    return Validation(clean, quarantine.reset_index(drop=True),
                      [s for s in sessions if s not in set(held)], held, fail, warns)


def _has(reasons: dict[int, list[str]], index: pd.Index, needle: str) -> pd.Series:
    """Rows of ``index`` with a reason containing ``needle`` (only flagged rows are looked at)."""
    hit = [i for i, rs in reasons.items() if any(needle in r for r in rs)]
    return pd.Series(index.isin(hit), index=index, dtype=bool)


def _extreme_moves(df: pd.DataFrame, previous: pd.DataFrame | None) -> dict[str, list[str]]:
    """Flag |close_t / close_{t-1} - 1| > EXTREME_MOVE where the adjusted series moved just as much: a
    split shows as a big raw move with a small adjusted move, so it is explained and not flagged."""
    frames = [f for f in (previous, df) if f is not None and len(f)]
    if not frames:
        return {}
    d = pd.concat(frames, ignore_index=True).sort_values(["symbol", "session"])
    g = d.groupby("symbol")
    raw_ret = g["close"].pct_change()
    adj_ret = g["adj_close"].pct_change()
    flagged = d[(raw_ret.abs() > EXTREME_MOVE) & (adj_ret.abs() > EXTREME_MOVE) & d["session"].isin(set(df["session"]))]
    rows = [f"{r.symbol} {r.session}: close {r.close:g}, move {adj_ret[i]:+.1%} with no split/dividend adjustment"
            for i, r in zip(flagged.index, flagged.itertuples())]
    return {"extreme_moves_explained": rows} if rows else {}
