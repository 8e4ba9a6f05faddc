"""Jobs, schedules and the ``Definitions`` entry point (``qt_jobs.definitions``)."""

import os

# Offline quiet by default (MLflow only honours the string "true").
for _k, _v in {"DO_NOT_TRACK": "true", "MLFLOW_DISABLE_TELEMETRY": "true",
               "DBT_SEND_ANONYMOUS_USAGE_STATS": "false", "DAGSTER_DISABLE_TELEMETRY": "true"}.items():
    os.environ.setdefault(_k, _v)

import warnings

import dagster as _dg

# backfill_policy on @asset is marked beta; we rely on it deliberately for single-run range backfills.
warnings.filterwarnings("ignore", category=_dg.BetaWarning)
