"""Production (Postgres) event log: Dagster's own, which implements ``store_event_batch``, plus the batching
settings (:func:`qt_jobs.event_log.ensure_batching_env`) in every process that opens the production instance
(``deploy/production/dagster.yaml``): webserver, daemon, code server, run and Celery workers alike."""

from __future__ import annotations

from dagster_postgres.event_log import PostgresEventLogStorage
from dagster_postgres.utils import get_token_provider_from_config, pg_url_from_config

from qt_jobs.event_log import ensure_batching_env


class BatchedPostgresEventLogStorage(PostgresEventLogStorage):
    def __init__(self, *args, **kwargs):
        ensure_batching_env()
        super().__init__(*args, **kwargs)

    @classmethod
    def from_config_value(cls, inst_data, config_value):
        return cls(inst_data=inst_data, postgres_url=pg_url_from_config(config_value),
                   should_autocreate_tables=config_value.get("should_autocreate_tables", True),
                   token_provider=get_token_provider_from_config(config_value))
