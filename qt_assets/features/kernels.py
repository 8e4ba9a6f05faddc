"""The feature library's arithmetic: every price/volume feature of ``features_daily`` for one symbol's bars, in
compiled loops (numba), one pass per symbol, symbols in parallel.

The dbt Python model ``dbt_features/models/marts/features_daily.py`` reads the joined inputs in DuckDB, sorted by
(symbol, session), and calls :func:`compute`; the column semantics are documented in
``dbt_features/models/marts/schema.yml`` (the SQL model this replaced is in git history: the values equal it to
~1e-13 relative, BENCHMARKS.md). Everything here is point-in-time by construction: a row's value reads only rows
at or before it within its own symbol (windows end at the current row; recursions run forward).

Conventions, as the SQL had them (so NULL positions are unchanged): ``rn`` is the bar's 1-based number within its
symbol; a value is NULL (NaN here, NULL in the table) until its warm-up is complete; rolling aggregates skip
missing inputs (SQL aggregate semantics); exponential smoothers are seeded with the mean of their first ``n``
inputs at row ``s`` and then follow ``E_t = w E_{t-1} + (1 - w) x_t``.

Incremental runs compute a slice that starts ``lookback`` bars before the first changed session of each symbol
(``rn0`` > 1): the smoothers then start from 0 at the slice's first row and forget that start geometrically
(slowest weight 25/27: (25/27)^600 < 1e-19), so the rows written equal a full build to machine precision; OBV
continues from the stored value of the slice's first row, so it equals the full build bit for bit.

This module imports no Dagster, dbt or pandas (tests/test_layout.py).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

# Output columns in table order (after symbol, session; the alternative-data columns, the two cross-sectional
# ranks and input_hash follow, added by the model). The numba kernel writes them in this order.
PRICE_FEATURES = (
    "ret_1d", "ret_5d", "ret_10d", "ret_20d", "ret_60d",
    "logret_1d", "logret_5d", "logret_10d", "logret_20d", "logret_60d",
    "vol_20d", "vol_60d", "parkinson_vol_20d", "gk_vol_20d",
    "sma_ratio_5_20", "sma_ratio_20_50", "sma_ratio_50_200",
    "close_sma_5", "close_sma_20", "close_sma_60", "close_sma_200", "close_ema_12", "close_ema_26",
    "rsi_14", "macd", "macd_signal", "macd_hist", "bb_pctb_20", "bb_width_20", "atr_14", "atr_pct_14",
    "stoch_k_14", "stoch_d_3", "obv", "obv_chg_20", "volume_z_20", "dollar_volume_20",
    "kmid", "klen", "kup", "klow", "ksft",
    "close_to_max_20", "close_to_min_20", "close_to_max_60", "close_to_min_60", "range_pos_20",
    "qtlu_20", "qtld_20", "beta_60", "corr_60",
)
# insider values scaled by dollar_volume_20 (the kernel needs dvol_20 for them)
SCALED_ALT = ("insider_net_buy_30d_adv", "insider_net_buy_90d_adv")
KERNEL_COLUMNS = PRICE_FEATURES + SCALED_ALT
# inputs, in the order `compute` takes them
INPUTS = ("o", "h", "l", "px", "raw_close", "volume", "bench_ret", "net_buy_value_30d", "net_buy_value_90d")

_LN2 = math.log(2.0)
_SQRT252 = math.sqrt(252.0)
_NAN = np.nan


# ------------------------------------------------------------------------------------------------ windows
# Each helper fills out[a:b] for one symbol's rows [a, b) over a trailing window of w rows (clipped at a), skipping
# NaN inputs as SQL aggregates skip NULLs; the result is NaN where the window holds too few values. Every helper is
# O(1) per row (amortised): sums are running sums of deviations from a shift K, restarted (recomputed over the
# window, with K = the window's first value) every w rows, so rounding never accumulates over more than w updates
# and the shifted second moment does not cancel (its error is ~1e-16 relative to the variance, not to x^2).
@njit(cache=True, inline="always")
def _value(sign, v, k, s1, s2):
    """Add (sign 1) or remove (sign -1) one value from the shifted sums (multiplying by +-1 is exact)."""
    d = v - k
    return s1 + sign * d, s2 + sign * (d * d)


@njit(cache=True)
def _moments(x, a, b, w, mean, m2, cnt):
    """Trailing mean, sum of squared deviations from it, and the count of values."""
    k, s1, s2, n = 0.0, 0.0, 0.0, 0
    for i in range(a, b):
        if (i - a) % w == 0:  # restart: exact sums over the window ending at i
            lo = max(a, i - w + 1)
            k = 0.0
            for j in range(lo, i + 1):
                if x[j] == x[j]:
                    k = x[j]
                    break
            s1, s2, n = 0.0, 0.0, 0
            for j in range(lo, i + 1):
                if x[j] == x[j]:
                    s1, s2 = _value(1.0, x[j], k, s1, s2)
                    n += 1
        else:
            if x[i] == x[i]:
                s1, s2 = _value(1.0, x[i], k, s1, s2)
                n += 1
            j = i - w
            if j >= a and x[j] == x[j]:
                s1, s2 = _value(-1.0, x[j], k, s1, s2)
                n -= 1
        cnt[i] = n
        if n > 0:
            mean[i] = k + s1 / n
            m2[i] = max(s2 - s1 * s1 / n, 0.0)
        else:
            mean[i] = _NAN
            m2[i] = _NAN


@njit(cache=True)
def _mean(x, a, b, w, out, m2, cnt):
    _moments(x, a, b, w, out, m2, cnt)


@njit(cache=True)
def _std(x, a, b, w, ddof, out, mean, cnt):
    """Standard deviation (ddof 1: stddev_samp, 0: stddev_pop); mean receives the trailing mean."""
    _moments(x, a, b, w, mean, out, cnt)
    for i in range(a, b):
        n = cnt[i]
        out[i] = math.sqrt(out[i] / (n - ddof)) if n > ddof else _NAN


@njit(cache=True)
def _extreme(x, a, b, w, sign, out, dq):
    """Trailing max (sign 1) or min (sign -1): a monotonic queue of row numbers (dq: scratch, len >= b - a)."""
    head, tail = 0, 0
    for i in range(a, b):
        while head < tail and dq[head] <= i - w:
            head += 1
        v = x[i]
        if v == v:
            while head < tail and sign * x[dq[tail - 1]] <= sign * v:
                tail -= 1
            dq[tail] = i
            tail += 1
        out[i] = x[dq[head]] if head < tail else _NAN


@njit(cache=True)
def _interpolate(buf, n, q):
    pos = q * (n - 1)
    f = math.floor(pos)
    lo = int(f)
    hi = min(lo + 1, n - 1)
    return buf[lo] + (pos - f) * (buf[hi] - buf[lo])


@njit(cache=True)
def _quantiles(x, a, b, w, q_lo, q_hi, out_lo, out_hi):
    """quantile_cont (linear interpolation between the order statistics) at two levels, over a sorted copy of the
    window kept up to date (one removal and one insertion per row)."""
    buf = np.empty(w)
    n = 0
    for i in range(a, b):
        j = i - w
        if j >= a and x[j] == x[j]:  # remove the value leaving the window
            v = x[j]
            k = 0
            while buf[k] != v:
                k += 1
            for m in range(k, n - 1):
                buf[m] = buf[m + 1]
            n -= 1
        v = x[i]
        if v == v:
            k = n
            while k > 0 and buf[k - 1] > v:
                buf[k] = buf[k - 1]
                k -= 1
            buf[k] = v
            n += 1
        if n == 0:
            out_lo[i] = _NAN
            out_hi[i] = _NAN
        else:
            out_lo[i] = _interpolate(buf, n, q_lo)
            out_hi[i] = _interpolate(buf, n, q_hi)


@njit(cache=True, inline="always")
def _pair(sign, y, x, ky, kx, sx, sy, sxx, syy, sxy):
    """Add (sign 1) or remove (sign -1) one (y, x) pair from the shifted sums (multiplying by +-1 is exact)."""
    dx, dy = x - kx, y - ky
    return sx + sign * dx, sy + sign * dy, sxx + sign * (dx * dx), syy + sign * (dy * dy), sxy + sign * (dx * dy)


@njit(cache=True)
def _regression(y, x, a, b, w, slope, corr, pairs):
    """regr_slope(y, x), corr(y, x) and the number of complete (y, x) pairs over the trailing w rows (shifted
    running sums, restarted every w rows, as _moments)."""
    kx, ky, sx, sy, sxx, syy, sxy, n = 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0
    for i in range(a, b):
        if (i - a) % w == 0:
            lo = max(a, i - w + 1)
            kx, ky = 0.0, 0.0
            for j in range(lo, i + 1):
                if y[j] == y[j] and x[j] == x[j]:
                    kx, ky = x[j], y[j]
                    break
            sx, sy, sxx, syy, sxy, n = 0.0, 0.0, 0.0, 0.0, 0.0, 0
            for j in range(lo, i + 1):
                if y[j] == y[j] and x[j] == x[j]:
                    sx, sy, sxx, syy, sxy = _pair(1.0, y[j], x[j], ky, kx, sx, sy, sxx, syy, sxy)
                    n += 1
        else:
            if y[i] == y[i] and x[i] == x[i]:
                sx, sy, sxx, syy, sxy = _pair(1.0, y[i], x[i], ky, kx, sx, sy, sxx, syy, sxy)
                n += 1
            j = i - w
            if j >= a and y[j] == y[j] and x[j] == x[j]:
                sx, sy, sxx, syy, sxy = _pair(-1.0, y[j], x[j], ky, kx, sx, sy, sxx, syy, sxy)
                n -= 1
        pairs[i] = n
        if n == 0:
            slope[i] = _NAN
            corr[i] = _NAN
            continue
        cxx = sxx - sx * sx / n
        cyy = syy - sy * sy / n
        cxy = sxy - sx * sy / n
        slope[i] = cxy / cxx if cxx > 0 else _NAN
        corr[i] = cxy / math.sqrt(cxx * cyy) if cxx * cyy > 0 else _NAN


@njit(cache=True)
def _ewm(x, a, b, rn0, w, s, n, out):
    """Exponential smoother of weight w seeded at row rn = s with the mean of the n inputs rn = s-n+1..s (missing
    inputs count as 0, as the SQL's closed form had them); NaN before row s. A slice that starts after row 1
    (rn0 > 1) starts from 0 and has forgotten it long before its first written row (module docstring)."""
    e = 0.0
    for i in range(a, b):
        rn = rn0 + (i - a)
        v = x[i] if x[i] == x[i] else 0.0
        if rn0 == 1 and rn <= s:
            if rn > s - n:
                e += v / n
            out[i] = e if rn == s else _NAN
        else:
            e = w * e + (1.0 - w) * v
            out[i] = e if rn >= s else _NAN


# -------------------------------------------------------------------------------------------- one symbol
@njit(cache=True)
def _symbol(a, b, rn0, obv0, o, h, l, px, raw_close, volume, bench, nb30, nb90, out, t):
    """Every kernel column for one symbol's rows [a, b) (the callers pass the symbol's slices: a = 0); t is
    scratch space, one row per intermediate."""
    # bar-level inputs
    ret, gain, loss, tr, hl2, gk, step, dvol = t[0], t[1], t[2], t[3], t[4], t[5], t[6], t[7]
    for i in range(a, b):
        p1 = px[i - 1] if i > a else _NAN
        ret[i] = px[i] / p1 - 1.0
        d = px[i] - p1
        # greatest()/least() skip NULLs: 0 on the first bar
        gain[i] = max(d, 0.0) if d == d else 0.0
        loss[i] = max(-d, 0.0) if d == d else 0.0
        r = h[i] - l[i]
        if p1 == p1:
            r = max(r, abs(h[i] - p1), abs(l[i] - p1))
        tr[i] = r
        lhl = math.log(h[i] / l[i])
        hl2[i] = lhl * lhl
        lco = math.log(px[i] / o[i])
        gk[i] = 0.5 * lhl * lhl - (2.0 * _LN2 - 1.0) * lco * lco
        sg = 0.0 if d != d else (1.0 if d > 0 else (-1.0 if d < 0 else 0.0))
        step[i] = sg * volume[i]
        dvol[i] = raw_close[i] * volume[i]

    sma5, sma20, sma50, sma60, sma200 = t[8], t[9], t[10], t[11], t[12]
    m2, cnt, junk = t[43], t[44], t[45]  # scratch for the moments not kept
    _mean(px, a, b, 5, sma5, m2, cnt)
    _mean(px, a, b, 20, sma20, m2, cnt)
    _mean(px, a, b, 50, sma50, m2, cnt)
    _mean(px, a, b, 60, sma60, m2, cnt)
    _mean(px, a, b, 200, sma200, m2, cnt)
    sdp20, sd20, sd60 = t[13], t[14], t[15]
    _std(px, a, b, 20, 0, sdp20, junk, cnt)
    _std(ret, a, b, 20, 1, sd20, junk, cnt)
    _std(ret, a, b, 60, 1, sd60, junk, cnt)
    hl2_20, gk20 = t[16], t[17]
    _mean(hl2, a, b, 20, hl2_20, m2, cnt)
    _mean(gk, a, b, 20, gk20, m2, cnt)
    hh14, ll14, max20, min20, max60, min60 = t[18], t[19], t[20], t[21], t[22], t[23]
    dq = np.empty(b - a + 1, np.int64)
    _extreme(h, a, b, 14, 1.0, hh14, dq)
    _extreme(l, a, b, 14, -1.0, ll14, dq)
    _extreme(px, a, b, 20, 1.0, max20, dq)
    _extreme(px, a, b, 20, -1.0, min20, dq)
    _extreme(px, a, b, 60, 1.0, max60, dq)
    _extreme(px, a, b, 60, -1.0, min60, dq)
    q20, q80 = t[24], t[25]
    _quantiles(px, a, b, 20, 0.2, 0.8, q20, q80)
    vsum20, vavg20, vsd20, dvol20 = t[26], t[27], t[28], t[29]
    _std(volume, a, b, 20, 1, vsd20, vavg20, cnt)
    for i in range(a, b):
        vsum20[i] = vavg20[i] * cnt[i] if cnt[i] > 0 else _NAN
    _mean(dvol, a, b, 20, dvol20, m2, cnt)
    beta, corr, pairs = t[30], t[31], t[32]
    _regression(ret, bench, a, b, 60, beta, corr, pairs)
    e12, e26, atr, ag, al, sig, line, stk, std3, obv = t[33], t[34], t[35], t[36], t[37], t[38], t[39], t[40], t[41], t[42]
    _ewm(px, a, b, rn0, 11.0 / 13.0, 12, 12, e12)
    _ewm(px, a, b, rn0, 25.0 / 27.0, 26, 26, e26)
    _ewm(tr, a, b, rn0, 13.0 / 14.0, 15, 14, atr)
    _ewm(gain, a, b, rn0, 13.0 / 14.0, 15, 14, ag)
    _ewm(loss, a, b, rn0, 13.0 / 14.0, 15, 14, al)
    for i in range(a, b):
        line[i] = e12[i] - e26[i]
    _ewm(line, a, b, rn0, 8.0 / 10.0, 34, 9, sig)
    acc = obv0
    for i in range(a, b):
        v = step[i]
        if v == v:
            acc += v
        obv[i] = acc
        rng = hh14[i] - ll14[i]
        k = 100.0 * (px[i] - ll14[i]) / rng if rng != 0 else _NAN
        stk[i] = min(100.0, max(0.0, k)) if k == k else 0.0  # greatest(0, NULL) = 0, as the SQL had it
    _mean(stk, a, b, 3, std3, m2, cnt)

    for i in range(a, b):
        rn = rn0 + (i - a)
        c = px[i]

        col = 0
        for k in (1, 5, 10, 20, 60):  # the close k bars back within the slice
            if rn >= k + 1 and i - k >= a:
                out[col, i] = c / px[i - k] - 1.0
                out[col + 5, i] = math.log(c / px[i - k])
            else:
                out[col, i] = _NAN
                out[col + 5, i] = _NAN
            col += 1
        out[10, i] = sd20[i] * _SQRT252 if rn >= 21 else _NAN
        out[11, i] = sd60[i] * _SQRT252 if rn >= 61 else _NAN
        out[12, i] = math.sqrt(252.0 * hl2_20[i] / (4.0 * _LN2)) if rn >= 20 else _NAN
        out[13, i] = math.sqrt(252.0 * max(gk20[i], 0.0)) if rn >= 20 else _NAN
        out[14, i] = sma5[i] / sma20[i] if rn >= 20 else _NAN
        out[15, i] = sma20[i] / sma50[i] if rn >= 50 else _NAN
        out[16, i] = sma50[i] / sma200[i] if rn >= 200 else _NAN
        out[17, i] = c / sma5[i] if rn >= 5 else _NAN
        out[18, i] = c / sma20[i] if rn >= 20 else _NAN
        out[19, i] = c / sma60[i] if rn >= 60 else _NAN
        out[20, i] = c / sma200[i] if rn >= 200 else _NAN
        out[21, i] = c / e12[i] if rn >= 12 else _NAN
        out[22, i] = c / e26[i] if rn >= 26 else _NAN
        if rn >= 15:
            out[23, i] = 100.0 if al[i] == 0 else 100.0 - 100.0 / (1.0 + ag[i] / al[i])
        else:
            out[23, i] = _NAN
        out[24, i] = line[i] / c if rn >= 26 else _NAN
        out[25, i] = sig[i] / c if rn >= 34 else _NAN
        out[26, i] = (line[i] - sig[i]) / c if rn >= 34 else _NAN
        band = 4.0 * sdp20[i]
        out[27, i] = (c - (sma20[i] - 2.0 * sdp20[i])) / band if rn >= 20 and band != 0 else _NAN
        out[28, i] = band / sma20[i] if rn >= 20 else _NAN
        out[29, i] = atr[i] if rn >= 15 else _NAN
        out[30, i] = atr[i] / c if rn >= 15 else _NAN
        out[31, i] = stk[i] if rn >= 14 else _NAN
        out[32, i] = std3[i] if rn >= 16 else _NAN
        out[33, i] = obv[i]
        o20 = obv[i - 20] if i - 20 >= a else _NAN
        out[34, i] = (obv[i] - o20) / vsum20[i] if rn >= 21 and vsum20[i] != 0 else _NAN
        out[35, i] = (volume[i] - vavg20[i]) / vsd20[i] if rn >= 20 and vsd20[i] != 0 else _NAN
        out[36, i] = dvol20[i] if rn >= 20 else _NAN
        oi = o[i]
        out[37, i] = (c - oi) / oi
        out[38, i] = (h[i] - l[i]) / oi
        out[39, i] = (h[i] - max(oi, c)) / oi
        out[40, i] = (min(oi, c) - l[i]) / oi
        out[41, i] = (2.0 * c - h[i] - l[i]) / oi
        out[42, i] = c / max20[i] if rn >= 20 else _NAN
        out[43, i] = c / min20[i] if rn >= 20 else _NAN
        out[44, i] = c / max60[i] if rn >= 60 else _NAN
        out[45, i] = c / min60[i] if rn >= 60 else _NAN
        span = max20[i] - min20[i]
        out[46, i] = (c - min20[i]) / span if rn >= 20 and span != 0 else _NAN
        out[47, i] = q80[i] / c if rn >= 20 else _NAN
        out[48, i] = q20[i] / c if rn >= 20 else _NAN
        full = rn >= 61 and pairs[i] == 60
        out[49, i] = beta[i] if full else _NAN
        out[50, i] = corr[i] if full else _NAN
        dv = dvol20[i]
        out[51, i] = nb30[i] / dv if rn >= 20 and dv != 0 else _NAN
        out[52, i] = nb90[i] / dv if rn >= 20 and dv != 0 else _NAN


@njit(cache=True, parallel=True)
def _all_symbols(starts, rn0, obv0, o, h, l, px, raw_close, volume, bench, nb30, nb90, out):
    n_seg = len(starts) - 1
    for g in prange(n_seg):
        a, b = starts[g], starts[g + 1]
        t = np.empty((46, b - a))  # scratch
        _symbol(0, b - a, rn0[g], obv0[g], o[a:b], h[a:b], l[a:b], px[a:b], raw_close[a:b], volume[a:b],
                bench[a:b], nb30[a:b], nb90[a:b], out[:, a:b], t)


def compute(starts: np.ndarray, rn0: np.ndarray, obv0: np.ndarray, **inputs: np.ndarray) -> np.ndarray:
    """Kernel columns (``KERNEL_COLUMNS``, one row each) for rows sorted by (symbol, session).

    starts: offsets of each symbol's first row, plus the total (len = symbols + 1); rn0: the 1-based bar number of
    each symbol's first row here (1 for a full build); obv0: OBV stored at that row (0 for a full build);
    inputs: float64 arrays named as ``INPUTS`` (NaN = NULL)."""
    # writable C arrays: Arrow's zero-copy views are read-only, which numba would compile a second time for
    arrs = [np.require(inputs[k], np.float64, ["C", "W"]) for k in INPUTS]
    n = len(arrs[0])
    out = np.empty((len(KERNEL_COLUMNS), n))
    if n:
        _all_symbols(np.asarray(starts, np.int64), np.asarray(rn0, np.int64), np.asarray(obv0, np.float64),
                     *arrs, out)
    return out


@njit(cache=True, parallel=True)
def _validity(out, bits):
    """Arrow validity bitmaps (bit i of row c set where out[c, i] is not NaN, least significant bit first)."""
    n = out.shape[1]
    for c in prange(out.shape[0]):
        for byte in range(bits.shape[1]):
            v = 0
            for k in range(8):
                i = byte * 8 + k
                if i < n and out[c, i] == out[c, i]:
                    v |= 1 << k
            bits[c, byte] = v


def to_arrow(out: np.ndarray) -> list:
    """One float64 Arrow array per row of out, NaN as NULL, sharing out's memory (no copy of the values)."""
    import pyarrow as pa

    n = out.shape[1]
    bits = np.empty((out.shape[0], (n + 7) // 8), np.uint8)
    if n:
        _validity(out, bits)
    return [pa.Array.from_buffers(pa.float64(), n, [pa.py_buffer(bits[c]), pa.py_buffer(out[c])])
            for c in range(out.shape[0])]


@njit(cache=True)
def _percent_rank(order, day, x, out):
    """percent_rank() per day among the non-NaN values: (min rank - 1) / (n - 1), 0 when n = 1. order: the rows
    sorted by day (stable)."""
    n = len(order)
    i = 0
    while i < n:
        d = day[order[i]]
        j = i
        while j < n and day[order[j]] == d:
            j += 1
        vals = np.empty(j - i)
        for k in range(i, j):
            vals[k - i] = x[order[k]]
        srt = np.argsort(vals, kind="mergesort")  # NaN last
        m = 0
        for k in range(j - i):
            if vals[k] == vals[k]:
                m += 1
        rank = 0
        for k in range(j - i):
            r = order[i + srt[k]]
            if k < m:
                if k == 0 or vals[srt[k]] != vals[srt[k - 1]]:
                    rank = k
                out[r] = rank / (m - 1) if m > 1 else 0.0
            else:
                out[r] = _NAN
        i = j


def day_order(day: np.ndarray) -> np.ndarray:
    """Rows sorted by day, stable (shared by every rank column)."""
    return np.argsort(np.asarray(day), kind="stable")


def percent_rank(order: np.ndarray, day: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Cross-sectional percent rank of x per day (as SQL's percent_rank() over the non-NULL values)."""
    out = np.empty(len(x))
    if len(x):
        _percent_rank(np.require(order, np.int64, ["C", "W"]), np.require(day, np.int64, ["C", "W"]),
                      np.require(x, np.float64, ["C", "W"]), out)
    return out


def warm_up() -> None:
    """Compile the kernels into numba's on-disk cache (``make test`` and ``make demo`` do it once, so no dbt run
    pays the compilation)."""
    rng = np.random.default_rng(0)
    n = 300
    px = 50 * np.exp(np.cumsum(rng.normal(0, 0.01, n)))
    cols = {k: px * (1 + 0.01 * rng.random(n)) for k in INPUTS}
    cols["px"] = px
    out = compute(np.array([0, 250, n]), np.array([1, 9]), np.array([0.0, 1.0]), **cols)
    r = percent_rank(day_order(np.arange(n) % 7), np.arange(n) % 7, out[0])
    to_arrow(np.vstack([out, r[None, :]]))


if __name__ == "__main__":
    warm_up()
