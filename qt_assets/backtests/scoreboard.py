"""One scoreboard for strategies and agents, without Dagster: every entry's equity curve cut to one common window,
the same metrics for all (``metrics.returns_metrics``), the deflated Sharpe ratio where a sweep chose the entry's
parameters, the config keys in which entries differ, and a plot. The ``scoreboard`` asset (``assets.py``) feeds it
the curves the ``backtest_report/<strategy>`` and ``agent_report/<agent>`` assets store.

Common window: from the latest first session to the earliest last session of all curves. Each curve is rebased
to that window: its return series starts at the window's first session (V_{-1} = the curve's value at the session
before the window, or its first value when the window starts at the curve's start), so no entry's results
outside the window count. Fewer than ``MIN_SESSIONS`` common sessions: no ranking, and the reason.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

MIN_SESSIONS = 20
SCORE_ROWS = ["sharpe", "sortino", "total_return", "cagr", "ann_volatility", "max_drawdown", "max_drawdown_sessions",
              "calmar"]


def common_window(curves: dict[str, pd.Series]) -> tuple[pd.Timestamp, pd.Timestamp] | None:
    """(first, last) session every curve covers, or None when they do not overlap."""
    first = max(c.index[0] for c in curves.values())
    last = min(c.index[-1] for c in curves.values())
    return (first, last) if first <= last else None


def on_window(curve: pd.Series, first, last) -> tuple[pd.Series, float]:
    """(``curve`` on [first, last], the value the window's first return is measured from)."""
    before = curve[curve.index < first]
    cut = curve[(curve.index >= first) & (curve.index <= last)]
    return cut, float(before.iloc[-1]) if len(before) else float(cut.iloc[0])


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = json.dumps(v, sort_keys=True, default=str) if isinstance(v, list) else v
    return out


SKIP = (".name", ".sweep.")  # the entry's own name (the row), the sweep grid (shown by the DSR column)


def config_deltas(configs: dict[str, dict]) -> pd.DataFrame:
    """Entries x the config keys whose values differ among the entries that have them (an entry without the key
    shows '-'): strategies and agents share the shape {strategy, backtest, risk} (an agent's signal is a strategy,
    ``AgentSection.strategy``), agents add their own section."""
    flat = {name: {k: v for k, v in flatten(c).items() if not any(x in k or k.endswith(x) for x in SKIP)}
            for name, c in configs.items()}
    keys = sorted(set().union(*flat.values())) if flat else []
    differ = [k for k in keys if len({json.dumps(f[k], default=str) for f in flat.values() if k in f}) > 1]
    return pd.DataFrame({k: [flat[n].get(k, "-") for n in flat] for k in differ}, index=list(flat))


def score(curves: dict[str, pd.Series], kinds: dict[str, str], sweeps: dict[str, np.ndarray] | None = None
          ) -> tuple[pd.DataFrame, tuple | None, str | None]:
    """(the ranked table, the common window, why there is no ranking or None). ``curves``: entry -> equity curve
    (DatetimeIndex); ``kinds``: entry -> 'strategy' / 'agent <kind>'; ``sweeps``: entry -> the per-session Sharpe
    ratios of its sweep's trials (combinations that traded), for the deflated Sharpe ratio."""
    from qt_assets.backtests.metrics import deflated_sharpe, returns_metrics

    if not curves:
        return pd.DataFrame(), None, "no strategy or agent has an equity curve yet"
    win = common_window(curves)
    if win is None:
        spans = ", ".join(f"{n} {c.index[0]:%Y-%m-%d}..{c.index[-1]:%Y-%m-%d}" for n, c in curves.items())
        return pd.DataFrame(), None, f"the curves share no session ({spans})"
    rows = {}
    for name, curve in curves.items():
        cut, start_value = on_window(curve, *win)
        if len(cut) < MIN_SESSIONS:
            return pd.DataFrame(), win, (f"the common window {win[0]:%Y-%m-%d}..{win[1]:%Y-%m-%d} has {len(cut)} "
                                         f"sessions (< {MIN_SESSIONS}): too short to rank")
        m = returns_metrics(cut.to_frame(), start_value).iloc[0]
        row = {"kind": kinds.get(name, ""), **{k: float(m[k]) for k in SCORE_ROWS}, "sessions": len(cut)}
        trials = (sweeps or {}).get(name)
        if trials is not None and len(trials):
            r = cut.to_numpy() / np.concatenate([[start_value], cut.to_numpy()[:-1]]) - 1
            row["dsr"], _ = deflated_sharpe(r, trials)
            row["sweep_trials"] = len(trials)
        rows[name] = row
    table = pd.DataFrame(rows).T
    for c in ("dsr", "sweep_trials"):
        if c not in table:
            table[c] = np.nan
    table = table.sort_values("sharpe", ascending=False, na_position="last")
    table.insert(0, "rank", range(1, len(table) + 1))
    return table, win, None


def scoreboard_png(curves: dict[str, pd.Series], win, table: pd.DataFrame, path: Path) -> bytes:
    """Every entry's equity on the common window, rebased to 1 at its start, in rank order."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5))
    for name in table.index:
        cut, start_value = on_window(curves[name], *win)
        ax.plot(cut.index, cut.to_numpy() / start_value, lw=1.3, label=f"{table.loc[name, 'rank']}. {name} "
                f"(Sharpe {float(table.loc[name, 'sharpe']):.2f})")
    ax.set_title(f"scoreboard: equity on the common window {win[0]:%Y-%m-%d}..{win[1]:%Y-%m-%d} (start = 1)",
                 fontsize=10)
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    path.write_bytes(buf.getvalue())
    return buf.getvalue()
