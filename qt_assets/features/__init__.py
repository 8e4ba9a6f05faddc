"""Features and labels: the dbt project dbt_features/ (DuckDB) as Dagster assets (assets.py), the one feature
library research, backtests and live decisions read."""
