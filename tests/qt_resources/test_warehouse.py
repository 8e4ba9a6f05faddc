"""The warehouse's session-partition files: what one write of many sessions stores, byte for byte."""

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from qt_resources.warehouse import DuckDBWarehouse


def session_keys(n: int) -> list[str]:
    return [d.strftime("%Y-%m-%d") for d in pd.bdate_range("2024-01-02", periods=n)]


def frame(n_sessions: int = 4) -> pd.DataFrame:
    """Symbol-major rows (as a provider returns them), mixed column types, NaN and None, the last session
    without rows of its own."""
    rng = np.random.default_rng(3)
    sessions = session_keys(n_sessions)
    rows = [(sym, s) for sym in ["MSFT", "AAPL", "IBM"] for s in sessions[:-1]]
    df = pd.DataFrame(rows, columns=["symbol", "session"])
    df["close"] = rng.normal(100, 5, len(df))
    df.loc[4, "close"] = np.nan
    df["volume"] = rng.integers(0, 10**6, len(df))
    df["flag"] = df["volume"] % 2 == 0
    df["note"] = [None if i % 3 else f"n{i}" for i in range(len(df))]
    return df


def per_session_reference(root, table: str, df: pd.DataFrame, sessions: list[str]) -> None:
    """What write_partitions wrote before it converted once: one pandas frame and conversion per session."""
    schema = pa.Schema.from_pandas(df, preserve_index=False)
    groups = dict(tuple(df.groupby("session", sort=False)))
    for s in sessions:
        target = root / table / f"session={s}" / "data.parquet"
        target.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pandas(groups.get(s, df.iloc[0:0]), schema=schema, preserve_index=False),
                       target)


@pytest.mark.parametrize("n_sessions", [4, 150])  # 150: written by a thread pool
def test_write_partitions_writes_the_same_bytes_as_one_frame_per_session(tmp_path, n_sessions):
    df = frame(n_sessions)
    sessions = session_keys(n_sessions)
    w = DuckDBWarehouse(root=str(tmp_path / "new"))
    assert w.write_partitions("t", df, sessions) == n_sessions
    per_session_reference(tmp_path / "ref", "t", df, sessions)
    for s in sessions:
        got = w.partition_file("t", s).read_bytes()
        assert got == (tmp_path / "ref" / "t" / f"session={s}" / "data.parquet").read_bytes(), s
    # each file holds its session's rows in their original order; the session without rows is an empty file
    for s in sessions:
        stored = pd.read_parquet(w.partition_file("t", s))
        pd.testing.assert_frame_equal(stored, df[df["session"] == s].reset_index(drop=True))
    assert len(pd.read_parquet(w.partition_file("t", sessions[-1]))) == 0
    assert not list((tmp_path / "new" / "t").rglob(".data.*"))  # no temporary file left


def test_write_partitions_of_an_empty_frame_and_stray_sessions(tmp_path):
    w = DuckDBWarehouse(root=str(tmp_path))
    empty = frame().iloc[0:0]
    assert w.write_partitions("t", empty, ["2024-01-02"]) == 1
    assert w.write_partitions("t", empty, session_keys(100)) == 100
    assert list(pd.read_parquet(w.partition_file("t", "2024-01-02")).columns) == list(empty.columns)
    with pytest.raises(ValueError, match="outside the partitions"):
        w.write_partitions("t", frame(), ["2024-01-02"])
