"""Market data: prices and the benchmark per XNYS session, behind blocking quality gates (assets.py); the
price checks themselves (price_quality.py) run without Dagster."""
