"""labels (dbt): the triple-barrier label on a hand-built price frame whose outcome is known in advance, a
brute-force reference for every row, and the forward-return / vol-scaled labels against pandas.

The frame: XNYS sessions from 2024-01-02, 40 bars per symbol. AAA and BBB close alternately +1% / -1%
(bar t up if t is odd), so every 20-return window holds ten of each and sigma_20d = 0.01 * sqrt(20/19) from bar
20 on; with h = 4 and vol_k = 1 the barriers sit at +-w, w = 2 sigma = 2.05%. Opens are the previous close,
highs/lows 0.2% beyond the bar's open/close, so an ordinary path stays within +-1.2% of any entry and touches
nothing. Events are single bars whose high/low/open sit 4% beyond the bar's close (>= 2.96% from any entry
within the window), so they touch a barrier for every label whose path holds them:
  AAA  bar 23 high, 24 low, 29 low, 31 high; a 2:1 split at bar 30 (raw prices = 2 x adjusted before it)
  BBB  bar 23 high and low (open inside), bar 28 gaps up at the open (+4%) and spikes low, bar 33 gaps down
RND is a seeded random walk (reference checks only), FLT a constant price (sigma 0).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest

from qt_assets.features.assets import DBT_DIR
from qt_resources.calendar import sessions as xnys_sessions

H, K, A = 4, 1.0, 0.01
N = 40
SIGMA = A * np.sqrt(20 / 19)
W = K * SIGMA * np.sqrt(H)
BASE_VARS = {"label_horizon": H, "label_up": 0.01, "label_down": -0.01, "label_vol_k": K}


# ----------------------------------------------------------------------------------------- the frame
def _bars(symbol: str, sessions: list[str]) -> pd.DataFrame:
    if symbol == "FLT":
        c = np.full(N, 50.0)
        o, hi, lo = c.copy(), c.copy(), c.copy()
    elif symbol == "RND":
        rng = np.random.default_rng(11)
        c = 80 * np.cumprod(1 + rng.normal(0, 0.015, N))
        o = np.r_[c[0], c[:-1]] * (1 + rng.normal(0, 0.005, N))
        hi = np.maximum(o, c) * (1 + rng.uniform(0, 0.015, N))
        lo = np.minimum(o, c) * (1 - rng.uniform(0, 0.015, N))
    else:
        c = 100 * np.cumprod([1.0] + [1 + A if t % 2 else 1 - A for t in range(1, N)])
        o = np.r_[c[0], c[:-1]]
        hi, lo = np.maximum(o, c) * 1.002, np.minimum(o, c) * 0.998
        if symbol == "AAA":
            hi[23] = c[23] * 1.04
            lo[24] = c[24] * 0.96
            lo[29] = c[29] * 0.96
            hi[31] = c[31] * 1.04
        else:  # BBB
            hi[23], lo[23] = c[23] * 1.04, c[23] * 0.96
            o[28] = c[27] * 1.04
            hi[28], lo[28] = o[28] * 1.002, c[28] * 0.96
            o[33] = c[32] * 0.96
            hi[33], lo[33] = max(o[33], c[33]) * 1.002, min(o[33], c[33]) * 0.998
    factor = np.where((symbol == "AAA") & (np.arange(N) < 30), 2.0, 1.0)  # raw = factor x adjusted
    return pd.DataFrame({"symbol": symbol, "session": sessions, "open": o * factor, "high": hi * factor,
                         "low": lo * factor, "close": c * factor, "adj_close": c, "volume": 1_000_000.0})


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    s = xnys_sessions("2024-01-02", "2024-03-29")[:N]
    assert len(s) == N and "2024-01-15" not in s  # MLK day is not a session
    return pd.concat([_bars(sym, s) for sym in ("AAA", "BBB", "FLT", "RND")], ignore_index=True)


@pytest.fixture(scope="module")
def build(frame, tmp_path_factory):
    """labels(**vars) -> the labels table built by dbt on the frame's warehouse (one dbt run per variant)."""
    from qt_resources.warehouse import DuckDBWarehouse

    root = tmp_path_factory.mktemp("labels_wh")
    DuckDBWarehouse(root=str(root)).write_partitions("prices", frame, sorted(frame["session"].unique()))
    env = {**os.environ, "QTOS_WAREHOUSE_DIR": str(root), "QTOS_DUCKDB_PATH": str(root / "qtos.duckdb"),
           "DBT_SEND_ANONYMOUS_USAGE_STATS": "false", "DO_NOT_TRACK": "true"}
    dbt = Path(sys.executable).parent / "dbt"
    cache: dict[str, pd.DataFrame] = {}

    def labels(**overrides) -> pd.DataFrame:
        vars_ = {**BASE_VARS, **overrides}
        key = json.dumps(vars_, sort_keys=True)
        if key not in cache:
            select = ["labels"] if cache else ["stg_prices", "labels"]
            r = subprocess.run([str(dbt) if dbt.exists() else "dbt", "build", "--select", *select,
                                "--vars", key, "--project-dir", str(DBT_DIR), "--profiles-dir", str(DBT_DIR),
                                "--target-path", str(root / "target"), "--log-path", str(root / "logs")],
                               env=env, capture_output=True, text=True, timeout=600)
            assert r.returncode == 0, r.stdout[-3000:]
            con = duckdb.connect(str(root / "qtos.duckdb"), read_only=True)
            try:
                cache[key] = con.execute("select l.*, strftime(l.session, '%Y-%m-%d') as s, "
                                         "strftime(l.label_session, '%Y-%m-%d') as ls, "
                                         "strftime(l.barrier_session, '%Y-%m-%d') as bs "
                                         "from labels l order by symbol, session").df()
            finally:
                con.close()
        return cache[key]

    return labels


def _sym(l: pd.DataFrame, symbol: str) -> pd.DataFrame:
    g = l[l["symbol"] == symbol].reset_index(drop=True)
    assert len(g) == N
    return g


# ----------------------------------------------------------------------------------------- reference
def triple_barrier_reference(g: pd.DataFrame, h: int, k: float, price: str) -> pd.DataFrame:
    """Row-by-row walk of the documented rule over one symbol's adjusted bars (sorted by session)."""
    f = g["adj_close"] / g["close"]
    o, hi, lo, c = (g[x].to_numpy(float) * f.to_numpy() for x in ("open", "high", "low", "close"))
    s = g["session"].to_numpy()
    sigma = pd.Series(c).pct_change().rolling(20).std().to_numpy()
    n, rows = len(g), []
    for i in range(n):
        last = i + h + (price == "open")
        w = k * sigma[i] * np.sqrt(h)
        if last >= n or not (w > 0):
            rows.append((None, np.nan, None))
            continue
        if price == "open":
            entry, vertical = o[i + 1], o[last] / o[i + 1] - 1
            path = [(s[j], o[j], hi[j], lo[j]) for j in range(i + 1, last)] + [(s[last], o[last], o[last], o[last])]
        else:
            entry, vertical = c[i], c[last] / c[i] - 1
            path = [(s[j], o[j], hi[j], lo[j]) for j in range(i + 1, last + 1)]
        up, dn = entry * (1 + w), entry * (1 - w)
        out = (1, vertical, s[last])
        for sj, oj, hj, lj in path:
            tu, td = hj >= up, lj <= dn
            if tu and (not td or oj >= up):
                out = (2, max(oj, up) / entry - 1, sj)
                break
            if td:
                out = (0, min(oj, dn) / entry - 1, sj)
                break
        rows.append(out)
    return pd.DataFrame(rows, columns=["label_class", "fwd_return", "barrier_session"])


# (symbol, row) -> (class, row of the exit bar, exit price: "+w"/"-w" = at the barrier, "open" = the bar's
# open (gap), "vertical" = the vertical barrier's return)
EXPECTED = {
    "close": {
        ("AAA", 20): (2, 23, "+w"), ("AAA", 21): (2, 23, "+w"), ("AAA", 22): (2, 23, "+w"),  # upper first
        ("AAA", 23): (0, 24, "-w"),                                                         # lower first
        ("AAA", 24): (1, 28, "vertical"),                                                   # neither
        ("AAA", 25): (0, 29, "-w"), ("AAA", 28): (0, 29, "-w"),   # lower at 29 before the upper at 31
        ("AAA", 29): (2, 31, "+w"),                               # across the 2:1 split (adjusted prices)
        ("AAA", 31): (1, 35, "vertical"), ("AAA", 35): (1, 39, "vertical"),
        ("BBB", 20): (0, 23, "-w"), ("BBB", 22): (0, 23, "-w"),   # both on one bar, open inside: stop first
        ("BBB", 23): (1, 27, "vertical"),
        ("BBB", 24): (2, 28, "open"), ("BBB", 27): (2, 28, "open"),  # both on one bar that opened above upper
        ("BBB", 28): (1, 32, "vertical"),
        ("BBB", 29): (0, 33, "open"), ("BBB", 32): (0, 33, "open"),  # gap down through the lower barrier
        ("BBB", 33): (1, 37, "vertical"),
    },
    "open": {  # entry at the open of row + 1; the path ends with the exit open of row + 1 + h
        ("AAA", 20): (2, 23, "+w"),
        ("AAA", 22): (2, 23, "+w"),   # the entry bar's own high, after its open, counts
        ("AAA", 23): (0, 24, "-w"),   # ... and its low
        ("AAA", 24): (1, 29, "vertical"),
        ("AAA", 28): (0, 29, "-w"), ("AAA", 29): (2, 31, "+w"),
        ("AAA", 34): (1, 39, "vertical"),
        ("BBB", 20): (0, 23, "-w"),
        ("BBB", 22): (0, 23, "-w"),   # entry bar touches both; it opened at the entry (inside): stop first
        ("BBB", 23): (2, 28, "open"), # the exit open itself gaps above the upper barrier
        ("BBB", 24): (2, 28, "open"),
        ("BBB", 27): (0, 28, "-w"),   # entry at bar 28's gapped open: its low is now the only touch
        ("BBB", 28): (0, 33, "open"), # the exit open gaps below the lower barrier
        ("BBB", 29): (0, 33, "open"),
        ("BBB", 32): (2, 33, "+w"),   # entry at bar 33's gapped-down open; its close-side high touches upper
        ("BBB", 33): (1, 38, "vertical"),
    },
}


# ----------------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("price", ["close", "open"])
def test_triple_barrier_hand_computed(build, frame, price):
    l = build(label_kind="triple_barrier", label_price=price)
    sessions = sorted(frame["session"].unique())
    for (sym, i), (cls, j, how) in EXPECTED[price].items():
        g = frame[frame["symbol"] == sym].reset_index(drop=True)
        adj = lambda col, t: g.at[t, col] * g.at[t, "adj_close"] / g.at[t, "close"]  # noqa: E731
        entry = adj("open", i + 1) if price == "open" else adj("close", i)
        row = _sym(l, sym).iloc[i]
        want_ret = {"+w": W, "-w": -W, "open": adj("open", j) / entry - 1,
                    "vertical": row["fwd_return_oo" if price == "open" else "fwd_return_cc"]}[how]
        got = (row["label_class"], row["bs"], row["fwd_return"])
        assert got[0] == cls and got[1] == sessions[j], (sym, i, price, got, (cls, sessions[j]))
        assert got[2] == pytest.approx(want_ret, abs=1e-12), (sym, i, price, how)
        if how == "open":
            assert abs(got[2]) > W + 0.005  # a gap fill is beyond the barrier, not at it
        if how == "vertical":
            assert row["bs"] == row["ls"] and abs(got[2]) < W


@pytest.mark.parametrize("price", ["close", "open"])
def test_triple_barrier_sessions_and_nulls(build, frame, price):
    l = build(label_kind="triple_barrier", label_price=price)
    span = H + (price == "open")
    sessions = sorted(frame["session"].unique())
    for sym in ("AAA", "BBB", "RND"):
        g = _sym(l, sym)
        assert (g["ls"].iloc[:N - span] == sessions[span:]).all()  # label_session = the session span rows later
        tail = g.iloc[N - span:]
        assert tail["ls"].isna().all() and tail["label_class"].isna().all() and tail["fwd_return"].isna().all()
        assert tail["bs"].isna().all()
        head = g.iloc[:20]  # no sigma_20d yet: no label (label_session is still set)
        assert head["label_class"].isna().all() and head["fwd_return"].isna().all() and head["sigma_20d"].isna().all()
        body = g.iloc[20:N - span]
        assert body["label_class"].notna().all()
        assert (body["bs"] > body["s"]).all() and (body["bs"] <= body["ls"]).all()
        assert (g["horizon"] == H).all()
        if sym != "RND":
            np.testing.assert_allclose(body["sigma_20d"], SIGMA, rtol=1e-12)
            np.testing.assert_allclose(body["vol_threshold"], W, rtol=1e-12)
    flat = _sym(l, "FLT")  # sigma 0: no barrier width, no label
    assert (flat["sigma_20d"].iloc[20:] == 0).all() and flat["label_class"].isna().all()


@pytest.mark.parametrize("price", ["close", "open"])
def test_triple_barrier_matches_row_by_row_reference(build, frame, price):
    l = build(label_kind="triple_barrier", label_price=price)
    classes = set()
    for sym in ("AAA", "BBB", "FLT", "RND"):
        g = frame[frame["symbol"] == sym].reset_index(drop=True)
        ref, got = triple_barrier_reference(g, H, K, price), _sym(l, sym)
        assert (got["label_class"].isna() == ref["label_class"].isna()).all(), sym
        m = ref["label_class"].notna()
        assert (got.loc[m, "label_class"].astype(int) == ref.loc[m, "label_class"].astype(int)).all(), sym
        assert (got.loc[m, "bs"] == ref.loc[m, "barrier_session"]).all(), sym
        np.testing.assert_allclose(got.loc[m, "fwd_return"], ref.loc[m, "fwd_return"], atol=1e-12, err_msg=sym)
        classes |= set(ref.loc[m, "label_class"].astype(int))
    assert classes == {0, 1, 2}


def _pandas_returns(g: pd.DataFrame, h: int) -> tuple[pd.Series, pd.Series, pd.Series]:
    f = g["adj_close"] / g["close"]
    o, c = g["open"] * f, g["close"] * f
    return c.shift(-h) / c - 1, o.shift(-(h + 1)) / o.shift(-1) - 1, c.pct_change().rolling(20).std()


@pytest.mark.parametrize("kind, price", [("forward_return_class", "close"), ("vol_scaled_class", "open")])
def test_fixed_and_vol_scaled_labels_match_pandas(build, frame, kind, price):
    up, down, k = 0.005, -0.004, 0.5
    l = build(label_kind=kind, label_price=price, label_up=up, label_down=down, label_vol_k=k)
    assert l["barrier_session"].isna().all()
    classes = set()
    for sym in ("AAA", "BBB", "FLT", "RND"):
        got = _sym(l, sym)
        cc, oo, sigma = _pandas_returns(frame[frame["symbol"] == sym].reset_index(drop=True), H)
        np.testing.assert_allclose(got["fwd_return_cc"], cc, atol=1e-12, equal_nan=True)
        np.testing.assert_allclose(got["fwd_return_oo"], oo, atol=1e-12, equal_nan=True)
        np.testing.assert_allclose(got["sigma_20d"], sigma, atol=1e-12, equal_nan=True)
        r = cc if price == "close" else oo
        np.testing.assert_allclose(got["fwd_return"], r, atol=1e-12, equal_nan=True)
        if kind == "forward_return_class":
            want = np.where(r > up, 2, np.where(r < down, 0, 1)).astype(float)
            want[r.isna().to_numpy()] = np.nan
        else:
            t = k * sigma * np.sqrt(H)
            want = np.where(r > t, 2, np.where(r < -t, 0, 1)).astype(float)
            want[(r.isna() | t.isna()).to_numpy()] = np.nan
        np.testing.assert_array_equal(got["label_class"].to_numpy(float), want, err_msg=sym)
        classes |= set(want[~np.isnan(want)].astype(int))
    assert classes == {0, 1, 2}


def test_config_accepts_triple_barrier():
    from qt_resources.config import ConfigError, parse_config
    from tests.conftest import repo_config

    raw = repo_config()
    raw["label"] = {**raw["label"], "kind": "triple_barrier", "vol_k": 1.5}
    cfg = parse_config(raw, "test")
    assert cfg.label.kind == "triple_barrier" and cfg.label_span == cfg.label.horizon
    raw["label"]["kind"] = "barrier"
    with pytest.raises(ConfigError) as exc:
        parse_config(raw, "test")
    assert exc.value.problems == [
        "label.kind: 'barrier' is not one of 'forward_return_class', 'vol_scaled_class' or 'triple_barrier'"]
