"""Ledger maintenance as a Dagster job and schedule: compacting the ledger file (``ledger.compaction``).

Example:
    >>> schedule = build_flokan_ledger_compaction_schedule(cron_schedule="30 1 * * *")
    >>> schedule.job_name
    'flokan_ledger_compaction'
"""

import dagster as dg

from flokan_dagster.resource import FlokanResourceKeys


def build_flokan_ledger_compaction_job(
    name: str = "flokan_ledger_compaction", resource_keys: FlokanResourceKeys = FlokanResourceKeys()
) -> dg.JobDefinition:
    """Make a job of one op that compacts the ledger file when due (:meth:`CreditLedger.compact`).

    The op's output metadata says how many attempts were rewritten and how long the ledger was
    held; a ledger not due, or a shared PostgreSQL one, is left as it is (said in the log).

    Args:
        name: The job's name.
        resource_keys: Where the ``flokan_ledger`` resource is.
    """

    @dg.op(name=f"{name}_op", required_resource_keys={resource_keys.ledger},
           description="Rewrites the ledger file's attempts in (asset, SKU) order when 5% or more were written since.")  # fmt: skip
    def compact_ledger(context: dg.OpExecutionContext) -> dg.Output[None]:
        done = resource_keys.ledger_of(context.resources).get_ledger().compact()
        context.log.info(done.describe())
        return dg.Output(None, metadata={
            "compacted": done.compacted,
            "attempts": done.before.rows,
            "written_since_last": done.before.unsorted_rows,
            "seconds_held": round(done.seconds, 3),
        })  # fmt: skip

    @dg.job(name=name, description="Ledger maintenance: keeps a run's planning reading only its batch's rows.")
    def _job() -> None:
        compact_ledger()

    return _job


def build_flokan_ledger_compaction_schedule(
    *,
    cron_schedule: str = "0 2 * * *",
    execution_timezone: str = "UTC",
    name: str = "flokan_ledger_compaction_schedule",
    job_name: str = "flokan_ledger_compaction",
    default_status: dg.DefaultScheduleStatus = dg.DefaultScheduleStatus.STOPPED,
    resource_keys: FlokanResourceKeys = FlokanResourceKeys(),
) -> dg.ScheduleDefinition:
    """Make a schedule running :func:`build_flokan_ledger_compaction_job` (nightly by default).

    Pick a time outside refresh windows: the compaction holds the ledger (about 7 s per
    1,000,000 attempts); writers spool meanwhile and a run's planning waits for it.

    Args:
        cron_schedule: When to look (cron syntax; 02:00 by default): it compacts only when due.
        execution_timezone: Time zone of ``cron_schedule``.
        name: The schedule's name.
        job_name: The job's name.
        default_status: Whether the schedule starts running when deployed.
        resource_keys: Where the ``flokan_ledger`` resource is.
    """
    return dg.ScheduleDefinition(
        name=name,
        cron_schedule=cron_schedule,
        execution_timezone=execution_timezone,
        job=build_flokan_ledger_compaction_job(job_name, resource_keys),
        default_status=default_status,
    )
