"""Quality gates for daily prices: row rules, structural rules, and the split-aware extreme-move flag.

``validate_prices`` turns a provider's raw frame into (clean rows, quarantined rows with a reason, one
result per check). A session partition is written only if every row of it passes and every expected
symbol is present; otherwise the partition's stored file is left untouched (no partial overwrite of good
data) and its rows go to the quarantine table. Structural checks are blocking; the extreme-move check warns.
"""

from dataclasses import dataclass, field

import pandas as pd

from qt_resources.prices import PRICE_COLUMNS, PriceDataError, session_dates

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


@dataclass
class Validation:
    clean: pd.DataFrame
    quarantine: pd.DataFrame
    written_sessions: list[str]
    held_sessions: list[str]  # partitions not written because of a failure
    failures: dict[str, list[str]] = field(default_factory=dict)  # check -> row descriptions
    warnings: dict[str, list[str]] = field(default_factory=dict)
    dropped: list[str] = field(default_factory=list)  # stored rows not kept: delisted, or out of the universe

    def outcomes(self) -> list[tuple[str, bool, list[str]]]:
        """(check, blocking, failing or flagged rows) per check of CHECKS, in order."""
        return [(name, blocking, self.failures.get(name, []) + self.warnings.get(name, []))
                for name, blocking, _ in CHECKS]

    @property
    def passed(self) -> bool:
        return not self.failures


SOURCE = "_source"  # optional provider column: where a row came from, e.g. "prices.csv line 17"


def _row(df: pd.DataFrame, i) -> str:
    where = df.at[i, SOURCE] if SOURCE in df.columns and pd.notna(df.at[i, SOURCE]) else f"row {i}"
    return f"{where}: {df.at[i, 'symbol']} {df.at[i, 'session']}"


def validate_prices(raw: pd.DataFrame, sessions: list[str], universe: list[str],
                    listed_from: dict[str, str] | None = None, previous: pd.DataFrame | None = None,
                    listed_until: dict[str, str] | None = None, stored: pd.DataFrame | None = None) -> Validation:
    """Validate ``raw`` (provider output, any dtypes) for the session partitions ``sessions``.

    Which (symbol, session) rows are expected comes from what is known, never from the fetch alone:
    ``listed_from``: first session each symbol traded (before it a missing row is not an error, e.g. IPO);
    ``listed_until``: last session a delisted symbol traded (after it no row is expected). Without a listing
    date a symbol is expected from the earliest of: the range's first session if it traded in ``previous``
    (the stored rows of the session before the range), its first row in ``stored`` (the rows already stored
    for these sessions, columns symbol and session), its first row in ``raw``. Every stored row must come
    back (a re-fetch never shrinks a stored session) unless its symbol is delisted before that session; a
    universe symbol of which nothing at all is known fails ``sessions_complete`` and holds every session. A
    session with a failure keeps its stored file. ``raw`` may carry ``_source`` (e.g. "prices.csv line 17"),
    named in messages instead of the row number."""
    missing_cols = [c for c in PRICE_COLUMNS if c not in raw.columns]
    if missing_cols:
        raise PriceDataError(f"price data is missing columns {missing_cols} (got {list(raw.columns)}); nothing written")
    cols = PRICE_COLUMNS + ([SOURCE] if SOURCE in raw.columns else [])
    df = raw[cols].reset_index(drop=True).copy()
    df["symbol"] = df["symbol"].astype(str).str.strip()
    reasons: dict[int, list[str]] = {}
    fail: dict[str, list[str]] = {}

    def flag(check: str, mask: pd.Series, why) -> None:
        for i in mask[mask].index:
            text = why(i) if callable(why) else why
            reasons.setdefault(i, []).append(f"{check}: {text}")
            fail.setdefault(check, []).append(f"{_row(df, i)}: {text}")

    # types
    sess = session_dates(df["session"])
    flag("schema_and_types", sess.isna(), lambda i: f"session={raw.at[i, 'session']!r} is not a date")
    df["session"] = sess.dt.strftime("%Y-%m-%d").where(sess.notna(), df["session"].astype(str))
    for col in NUMERIC:
        num = pd.to_numeric(df[col], errors="coerce")
        bad = num.isna() & df[col].notna() & (df[col].astype(str).str.strip().str.lower() != "nan")
        flag("schema_and_types", bad, lambda i, c=col: f"{c}={raw.at[i, c]!r} is not a number")
        df[col] = num.astype("float64")
    frac = df["volume"].notna() & (df["volume"] != df["volume"].round())  # stored as whole shares: never truncated
    flag("schema_and_types", frac, lambda i: f"volume={raw.at[i, 'volume']!r} is not a whole number of shares")
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
    until = dict(listed_until or {})
    before = set(previous["symbol"]) if previous is not None and len(previous) else set()
    stored = stored if stored is not None and len(stored) else pd.DataFrame(columns=["symbol", "session"])
    stored = stored[stored["session"].isin(in_range)]
    first_stored = stored.groupby("symbol")["session"].min().to_dict()
    first_seen = df[sess.notna().reindex(df.index, fill_value=False)].groupby("symbol")["session"].min().to_dict()
    unknown = []
    for sym in universe:
        if sym in listed:
            continue
        known = ([lo] if sym in before else []) + [d[sym] for d in (first_stored, first_seen) if sym in d]
        listed[sym] = min(known) if known else None
        if not known and not (sym in until and until[sym] < lo):
            unknown.append(sym)
    present = set(zip(df["symbol"].tolist(), df["session"].tolist()))
    missing = [(sym, s) for sym in universe if listed.get(sym) for s in sessions
               if s >= listed[sym] and s <= until.get(sym, s) and (sym, s) not in present]
    stored_pairs = set(zip(stored["symbol"].tolist(), stored["session"].tolist()))
    members = set(universe)
    absent = stored_pairs - present
    # the explicit ways to shrink a stored session: a delisting date before it, or the symbol taken out of the universe
    dropped = sorted((sym, s) for sym, s in absent if sym not in members or s > until.get(sym, s))
    gaps = set(missing) | (absent - set(dropped))
    rows = [f"{sym} {s}: " + ("stored, absent from this fetch (kept)" if (sym, s) in stored_pairs else "no row")
            for sym, s in sorted(gaps, key=lambda p: (p[1], p[0]))]
    rows += [f"{sym}: no row in {lo}..{hi}, none stored, and no listing date known (set universe.listings."
             f"{sym}.listed / .delisted, or drop it from universe.symbols)" for sym in unknown]
    if rows:
        fail["sessions_complete"] = rows

    bad_idx = set(reasons) & set(df.index)
    held = sorted(({df.at[i, "session"] for i in bad_idx} | {s for _, s in gaps}
                   | (set(sessions) if unknown else set())) & in_range)
    ok_rows = df[~df.index.isin(bad_idx) & df["session"].isin(in_range) & ~df["session"].isin(held)]
    quarantine = df.loc[sorted(bad_idx)].assign(reason=["; ".join(reasons[i]) for i in sorted(bad_idx)])
    quarantine = quarantine.astype({c: "float64" for c in NUMERIC})

    warns = _extreme_moves(ok_rows, previous)
    clean = ok_rows.astype({"volume": "int64"}).sort_values(["session", "symbol"], ignore_index=True)
    notes = [f"{sym} {s}: stored row " + (f"after its delisting {until[sym]}" if sym in members
                                          else "of a symbol no longer in universe.symbols") + ", not kept"
             for sym, s in dropped]
    held_set = set(held)
    return Validation(clean.drop(columns=[SOURCE], errors="ignore"), quarantine.reset_index(drop=True),
                      [s for s in sessions if s not in held_set], held, fail, warns, notes)


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
