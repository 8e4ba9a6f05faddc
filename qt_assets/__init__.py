"""Assets and asset checks, one module per pipeline stage (market_data, features, research, backtests,
agents, execution). Each module exposes a ``build_*`` factory taking the validated project config."""
