"""Allocation, the guardian and execution discipline: an agent's raw intents -> guarded target weights
(``book.py`` the book, ``allocation.py`` step 3, ``rules.py`` step 4, ``core.py`` the session).

The guardian keeps each agent's own **book**: cash, whole-share positions, open trades with their planned stop,
orders decided after session D's close that fill at D+1's open, all through the shared
:class:`~qt_resources.costs.CostModel` and the paper broker's fill rules (sells first, buys cut to the cash,
whole shares, target qty = floor(weight x equity / close)). Each session D (:meth:`Guardian.step`):

1. **Fills at D's open** of the orders decided at D-1. A new entry's stop is ``fill - atr_stop_mult x ATR14``
   (ATR of the decision session); 1 R is that distance. Every trade is checked against its plan
   (execution discipline): *missing stop* (no stop could be set), *oversize* (filled weight > planned weight x
   (1 + oversize_tolerance)), *regime mismatch* (entered in a regime outside the agent's ``allow_regimes``),
   and at exit *late exit* (still held after the first open following a close at or below the stop, e.g. the
   exit order expired for want of a price) and *early exit* (a signal exit with
   0 < gain < early_exit_r x R). A losing trade extends the run of consecutive losses; at
   ``max_consecutive_losses`` a cooldown of ``cooldown_sessions`` sessions starts.
2. **Mark at D's close**: equity = cash + sum(qty x last close); daily P&L vs D-1's close; peak; drawdown.
3. **Allocation**: multiplier = regime x drawdown x discipline, each with a reason code:
   regime: ``allocation.regime_multiplier[label]``; drawdown: 1 up to ``drawdown_start``, then linearly down to
   ``drawdown_floor`` at ``risk.max_drawdown_pct``; discipline: score = 1 - violations / trades over the last
   ``discipline_window`` trades, multiplier max(discipline_floor, score) below ``discipline_threshold`` (1 until
   ``discipline_min_trades`` trades). Risk mode: normal (>= 0.999), reduced (>= 0.6), defensive, halted.
4. **Guard** every symbol's intent (NaN = hold the current weight), in this order, recording each rule that
   changes a target: ``kill_switch`` (drawdown >= max_drawdown_pct: every target 0, latched until reset),
   ``atr_stop`` (close <= stop: exit, and the exit stays due until it fills), ``vol_target`` (w <= target_vol / vol_20d), ``kelly_ceiling``
   (w <= clip(kelly_fraction x f*, kelly_floor, 1) with f* = p - (1 - p) / b over the last kelly_window trades,
   p the win rate and b average win / average loss, once kelly_min_trades trades exist), ``allocation``
   (x multiplier, intents only), ``max_position_pct``, ``daily_loss_limit`` (session loss beyond the limit: no
   target above the current weight), ``cooldown`` (no new entries), ``max_open_positions`` (held positions
   first, then by weight); then a re-target within ``rebalance_band`` of the current weight keeps the position
   (so a held position may drift over a cap by less than the band before it is trimmed); finally
   ``max_gross_exposure`` (scaled down when the gross exceeds the limit by more than the band).
5. **Orders** for D+1's open: target qty - held qty, whole shares. While the kill switch file exists
   (:mod:`qt_resources.gates`) the book is frozen: open orders are canceled, every target is the current
   weight (rule ``kill_switch_file``) and no order is placed, exactly as ``orders/<agent>`` then does.

Point in time: step D reads bars, features and the regime of sessions <= D only, and its intents.
"""

from qt_assets.agents.guardian.allocation import allocation, discipline, kelly_ceiling
from qt_assets.agents.guardian.book import EPS, KEEP_TRADES, Book, Trade
from qt_assets.agents.guardian.core import Guardian

__all__ = ["EPS", "KEEP_TRADES", "Book", "Guardian", "Trade", "allocation", "discipline", "kelly_ceiling"]
