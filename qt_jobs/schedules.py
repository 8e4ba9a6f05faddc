"""Schedules on exchange sessions."""

import dagster as dg

from qt_jobs.jobs import DAILY_PATH
from qt_resources.calendar import is_session


def build_schedules(partitions: dg.PartitionsDefinition) -> list[dg.ScheduleDefinition]:
    keys = set(partitions.get_partition_keys())

    @dg.schedule(name="daily_after_close", job_name=DAILY_PATH, cron_schedule="15 17 * * 1-5",
                 execution_timezone="America/New_York",
                 description="After the New York close (17:15, also after early closes) on XNYS sessions only: "
                             "ingest the session, rebuild features, decide, order.")
    def daily_after_close(context: dg.ScheduleEvaluationContext):
        key = context.scheduled_execution_time.date().isoformat()  # in America/New_York
        if not is_session(key):
            return dg.SkipReason(f"{key} is not an XNYS session")
        if key not in keys:
            return dg.SkipReason(f"{key} is outside the configured sessions (data.start..data.end): extend data.end")
        return dg.RunRequest(run_key=f"daily:{key}", tags={"dagster/partition": key})

    return [daily_after_close]
