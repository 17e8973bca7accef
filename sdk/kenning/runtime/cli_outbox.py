"""``kenning outbox ...``: events workflows emitted that wait to be published, or are dead."""

from __future__ import annotations

from typing import Any

import click

from kenning.core.models import OutboxEntry
from kenning.runtime.cli_common import (
    EXIT_USAGE,
    CliFailure,
    database_option,
    iso,
    open_client,
    output_option,
    print_table,
    run_async,
    shorten,
    to_json,
)


@click.group()
def outbox() -> None:
    """Events emitted by workflows: waiting to be published, or dead (refused for good)."""


def entry_json(entry: OutboxEntry) -> dict[str, Any]:
    """An outbox entry as JSON output."""
    return {"pk": entry.pk, "run_id": entry.run_id, "namespace": entry.namespace,
            "event": {"id": entry.event.id, "source": entry.event.source,
                      "type": entry.event.type},
            "attempts": entry.attempts, "next_attempt_at": iso(entry.next_attempt_at),
            "dead_at": iso(entry.dead_at), "last_error": entry.last_error}


@outbox.command("list")
@click.option("--dead", is_flag=True,
              help="Dead entries (their target refused them for good) instead of live ones.")
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True,
              help="At most this many entries, oldest first.")
@output_option
@database_option
def list_outbox(dead: bool, limit: int, output: str, database: str) -> None:
    """List outbox entries, oldest first: live ones, or dead ones with --dead."""
    async def go() -> list[OutboxEntry]:
        async with open_client(database, "default") as client:
            return await client.store.list_outbox(dead=dead, limit=limit)

    entries = run_async(go())
    if output == "json":
        click.echo(to_json([entry_json(e) for e in entries]))
        return
    if not entries:
        click.echo("no dead outbox entries" if dead else "the outbox is empty", err=True)
        return
    when = "DEAD SINCE" if dead else "NEXT ATTEMPT"
    print_table(["PK", "RUN ID", "EVENT TYPE", "EVENT ID", "ATTEMPTS", when, "LAST ERROR"],
                [[str(e.pk), e.run_id, e.event.type, e.event.id, str(e.attempts),
                  iso(e.dead_at if dead else e.next_attempt_at) or "-",
                  shorten(e.last_error or "-", 60)] for e in entries])


@outbox.command("retry")
@click.argument("pks", nargs=-1, type=int, metavar="[PK]...")
@click.option("--all-dead", is_flag=True, help="Retry every dead entry.")
@database_option
def retry_outbox(pks: tuple[int, ...], all_dead: bool, database: str) -> None:
    """Publish dead entries again (by PK, see 'outbox list --dead', or --all-dead)."""
    if bool(pks) == all_dead:
        raise CliFailure("give the PK of dead entries, or --all-dead (not both)", EXIT_USAGE)

    async def go() -> int:
        async with open_client(database, "default") as client:
            return await client.store.revive_outbox(None if all_dead else list(pks))

    revived = run_async(go())
    if pks and revived < len(set(pks)):
        raise CliFailure(f"{revived} of {len(set(pks))} entries were dead and are retried; "
                         "the others are not dead entries (see 'kenning outbox list --dead')")
    click.echo(f"{revived} dead entr{'y' if revived == 1 else 'ies'} will be published again "
               "by a running worker")
