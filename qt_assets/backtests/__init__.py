"""Backtests: the engine (engine.py: next-bar fills, costs, stops on vectorbt), the metrics (metrics.py, every
formula in its docstring), strategies and rules (strategies.py), the compiled sweep (sweep.py), walk-forward
(walk_forward.py), running them without Dagster (runs.py); assets.py holds the backtest and sweep reports.

``python -m qt_assets.backtests.runs`` compiles the numba kernels into their on-disk cache."""
