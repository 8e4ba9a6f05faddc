"""``rsi_threshold`` {window, lower, upper}: Wilder RSI (alpha = 1/window, seeded by the first ``window``
changes' simple means, as the dbt feature ``rsi_14``); enter long when RSI < lower, exit when RSI > upper
(long/short: then go short, and cover/flip long when RSI < lower). The state persists between signals."""

import numpy as np

from qt_resources.plugins import Param, rule


def _lower_below_upper(p: dict) -> str | None:
    return f"lower: {p['lower']:g} is not below upper ({p['upper']:g})" if p["lower"] >= p["upper"] else None


def _ready(params: dict, close, cache: dict):
    from qt_assets.backtests.indicators import indicator
    from qt_assets.backtests.kernels import first_valid_rows_nb

    return first_valid_rows_nb(indicator("rsi", int(params["window"]), close, cache))


@rule("rsi_threshold", {"window": Param(14, int, 2, 500, "Wilder RSI window, sessions"),
                        "lower": Param(30.0, float, 0, 100, "enter long below this RSI"),
                        "upper": Param(70.0, float, 0, 100, "exit (long/short: go short) above this RSI")},
      description="long from RSI < lower until RSI > upper (long/short: then short)",
      check=_lower_below_upper, kernel="latch", ready=_ready)
def rsi_threshold(params: dict, close, longshort: bool, cache: dict) -> np.ndarray:
    from qt_assets.backtests.indicators import indicator
    from qt_assets.backtests.kernels import latch_direction_nb

    out = np.empty(close.shape)
    latch_direction_nb(indicator("rsi", int(params["window"]), close, cache), float(params["lower"]),
                       float(params["upper"]), longshort, out)
    return out
