"""``kenning runs purge`` and ``kenning runs retention``: how long finished runs are kept."""

from __future__ import annotations

from datetime import UTC, datetime

import click

from kenning.runtime.cli_common import (
    CliFailure,
    database_option,
    namespace_option,
    open_client,
    run_async,
)
from kenning.runtime.retention import purge_finished_runs

DAY = 86_400.0


def parse_date(value: str) -> float:
    """An ISO date or date-time (UTC unless it says otherwise) as unix seconds."""
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise CliFailure(f"--finished-before {value!r} is not an ISO date such as 2026-01-31 "
                         "or 2026-01-31T12:00:00+00:00") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


@click.command("purge")
@click.option("--finished-before", "finished_before", required=True, metavar="DATE",
              help="Delete runs that finished before this ISO date or time (UTC by default).")
@namespace_option("Namespace whose runs are purged.")
@click.option("--all-namespaces", "-A", is_flag=True, help="Purge in every namespace.")
@database_option
def purge(finished_before: str, namespace: str, all_namespaces: bool, database: str) -> None:
    """Delete finished runs and their history now, in small batches; unfinished runs are
    never touched. Prints how many were deleted."""
    before = parse_date(finished_before)

    async def go() -> int:
        async with open_client(database, namespace) as client:
            return await purge_finished_runs(
                client.store, before=before, namespace=None if all_namespaces else namespace)

    click.echo(f"purged {run_async(go())} finished runs")


@click.command("retention")
@click.option("--days", type=click.FloatRange(min=0), default=None,
              help="Keep finished runs this many days, then purge them (0: keep forever). "
                   "Without it, print the namespace's retention.")
@namespace_option("Namespace whose retention is shown or set.")
@database_option
def retention(days: float | None, namespace: str, database: str) -> None:
    """Show or set how long the namespace keeps finished runs (default 30 days)."""
    async def go() -> float:
        async with open_client(database, namespace) as client:
            if days is not None:
                await client.store.set_finished_retention(namespace, days * DAY)
            return await client.store.finished_retention(namespace)

    seconds = run_async(go())
    kept = "forever" if seconds <= 0 else f"{seconds / DAY:g} days"
    click.echo(f"namespace '{namespace}' keeps finished runs {kept}")
