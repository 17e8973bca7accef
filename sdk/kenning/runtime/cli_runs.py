"""``kenning start`` and ``kenning runs ...``: runs in the store, no workflow code needed."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Sequence
from dataclasses import replace
from typing import Any, TextIO

import click

from kenning.core import codec
from kenning.core.definitions import encode_input, input_from_json
from kenning.core.errors import ConfigurationError, RunNotFound
from kenning.core.history_doc import RecordedHistory
from kenning.core.models import (
    UPGRADE_PINNED,
    UPGRADE_POLICIES,
    Chapter,
    NewRun,
    RunStatus,
    Step,
)
from kenning.runtime.cli_common import (
    EXIT_FAILED,
    EXIT_TIMEOUT,
    CliFailure,
    age,
    database_option,
    iso,
    namespace_option,
    open_client,
    output_option,
    parse_json_option,
    print_table,
    run_async,
    shorten,
    timeout_option,
    to_json,
)
from kenning.runtime.client import Client, RunInfo, WaitingFor, create_runs

log = logging.getLogger(__name__)


# -- start -------------------------------------------------------------------------------
@click.command()
@click.argument("workflow")
@click.option("--input", "-i", "input_value", callback=parse_json_option, default=None,
              metavar="JSON",
              help="Arguments: an array is positional, an object is keywords, anything else "
                   "is one argument. @FILE reads it from a file, @- from stdin.")
@click.option("--id", "run_id", default=None, help="Run id (idempotent: an existing run is "
              "returned, not started again). Default: a new unique id.")
@namespace_option()
@click.option("--pool", default=None,
              help="Pin the run to this WorkerPool's workers. Default: any pool of the "
                   "namespace that serves WORKFLOW.")
@click.option("--upgrade", type=click.Choice(UPGRADE_POLICIES), default=UPGRADE_PINNED,
              show_default=True,
              help="pinned: the run stays on the build it starts on; auto: workers of any "
                   "build may resume it.")
@database_option
@click.option("--wait", is_flag=True, help="Wait for the run to finish and print its result.")
@timeout_option
@click.option("--from-file", "from_file", type=click.File("r"), default=None, metavar="FILE",
              help='Start a run per line of FILE (JSON lines, - for stdin), each '
                   '{"input": ..., "id": ...} (both optional, as --input and --id), in '
                   'batches of one statement each; prints the ids.')
def start(workflow: str, input_value: Any, run_id: str | None, namespace: str,
          pool: str | None, upgrade: str, database: str, wait: bool, timeout: float | None,
          from_file: TextIO | None) -> None:
    """Start a run of WORKFLOW (by name) and print its id.

    A worker serving WORKFLOW picks it up. With --wait, also print the result as JSON; a
    failed or cancelled run exits with code 1.
    """
    if from_file is not None:
        if input_value is not None or run_id is not None or wait:
            raise CliFailure("--from-file starts many runs: it takes no --input, --id or --wait")
        start_from_file(workflow, from_file, namespace, database, pool=pool, upgrade=upgrade)
        return
    args, kwargs = input_from_json(input_value)
    payload = encode_input(args, kwargs)

    async def go() -> None:
        async with open_client(database, namespace, create=True) as client:
            new = NewRun(run_id=run_id or f"run-{uuid.uuid4().hex[:16]}", namespace=namespace,
                         workflow=workflow, input=payload, pool=pool or None, upgrade=upgrade)
            run, created = await client.store.create_run(new)
            if run.workflow != workflow:
                raise ConfigurationError(
                    f"run id '{run.run_id}' already belongs to workflow '{run.workflow}'")
            if not created:
                click.echo(f"run '{run.run_id}' already exists ({run.status}); not started "
                           f"again", err=True)
            click.echo(run.run_id)
            if wait:
                click.echo(to_json(await _result(client, run.run_id, timeout)))

    run_async(go())


def start_from_file(workflow: str, lines: TextIO, namespace: str, database: str, *,
                    pool: str | None = None, upgrade: str = UPGRADE_PINNED) -> None:
    """Start a run of ``workflow`` per JSON line (``{"input": ..., "id": ...}``)."""
    news = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            spec = json.loads(line)
        except ValueError as exc:
            raise CliFailure(f"line {number}: not JSON ({exc})") from None
        if not isinstance(spec, dict) or not set(spec) <= {"input", "id"}:
            raise CliFailure(f'line {number}: expected an object {{"input": ..., "id": ...}}')
        args, kwargs = input_from_json(spec.get("input"))
        news.append(NewRun(run_id=str(spec.get("id") or f"run-{uuid.uuid4().hex[:16]}"),
                           namespace=namespace, workflow=workflow,
                           input=encode_input(args, kwargs), pool=pool or None,
                           upgrade=upgrade))

    async def go() -> list[bool]:
        async with open_client(database, namespace, create=True) as client:
            return await create_runs(client.store, news)

    created = run_async(go())
    for new in news:
        click.echo(new.run_id)
    click.echo(f"started {sum(created)} runs ({len(created) - sum(created)} already existed)",
               err=True)


async def _result(client: Client, run_id: str, timeout: float | None) -> Any:
    """The run's result once it finished; ``CliFailure`` on timeout, failure, cancellation."""
    try:
        if timeout == 0 and not (await client.get_run(run_id)).status.finished:
            raise TimeoutError  # --timeout 0: look once, do not wait
        return await client.result(run_id, timeout)
    except TimeoutError:
        status = (await client.get_run(run_id)).status
        raise CliFailure(f"run '{run_id}' did not finish within {timeout:g}s "
                         f"(it is {status})", EXIT_TIMEOUT) from None


# -- runs --------------------------------------------------------------------------------
@click.group()
def runs() -> None:
    """List runs, look at one, cancel it or wait for its result."""


@runs.command("list")
@click.option("--status", type=click.Choice([s.value for s in RunStatus]), default=None,
              help="Only runs in this status.")
@click.option("--workflow", "-w", default=None, help="Only runs of this workflow.")
@click.option("--parent", default=None, metavar="RUN_ID",
              help="Only the child runs of this run.")
@namespace_option()
@click.option("--all-namespaces", "-A", is_flag=True, help="Runs of every namespace.")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True,
              help="At most this many runs, newest first.")
@output_option
@database_option
def list_runs(status: str | None, workflow: str | None, parent: str | None, namespace: str,
              all_namespaces: bool, limit: int, output: str, database: str) -> None:
    """List runs, newest first."""
    async def go() -> list[RunInfo]:
        async with open_client(database, namespace) as client:
            return await client.list_runs(
                namespace=None if all_namespaces else namespace,
                status=RunStatus(status) if status else None, workflow=workflow, parent=parent,
                limit=limit)

    infos = run_async(go())
    if output == "json":
        click.echo(to_json([run_json(i) for i in infos]))
        return
    headers = ["RUN ID", "WORKFLOW", "STATUS", "WAITING FOR", "AGE"]
    rows = [[i.run_id, i.workflow, i.status.value, shorten(describe_wait(i.waiting_for), 60),
             age(i.created_at)] for i in infos]
    if all_namespaces:
        headers.insert(0, "NAMESPACE")
        for row, info in zip(rows, infos, strict=True):
            row.insert(0, info.namespace)
    if not rows:
        click.echo("no runs", err=True)
        return
    print_table(headers, rows)


@runs.command("show")
@click.argument("run_id")
@output_option
@database_option
def show_run(run_id: str, output: str, database: str) -> None:
    """Show a run: status, workflow, what it waits for, result or error, times."""
    async def go() -> RunInfo:
        async with open_client(database, "default") as client:
            return await client.get_run(run_id)

    info = run_async(go())
    doc = run_json(info)
    if output == "json":
        click.echo(to_json(doc))
        return
    fields = [("run", info.run_id), ("workflow", info.workflow),
              ("namespace", info.namespace), ("status", info.status.value),
              ("waiting for", describe_wait(info.waiting_for) or "-"),
              ("parent", info.parent_run_id or "-"),
              ("chapter", f"{info.chapter} (continued as new {info.chapter} time(s))"
               if info.chapter else "0"),
              ("created", doc["created_at"]), ("started", doc["started_at"] or "-"),
              ("finished", doc["finished_at"] or "-")]
    if info.status is RunStatus.COMPLETED:
        fields.append(("result", to_json(info.result, indent=None)))
    if info.error is not None:
        fields.append(("error", info.error))
    for key, value in fields:
        click.echo(f"{key + ':':<13}{value}")


@runs.command("history")
@click.argument("run_id")
@output_option
@click.option("--json", "as_json", is_flag=True,
              help="Print the history document that kenning.testing.replay takes (same as "
                   "-o json): workflow, input, steps and waits.")
@click.option("--all", "all_chapters", is_flag=True,
              help="Also the closed chapters of a run that continued as new, oldest first "
                   "(with --json: {\"chapters\": [document, ...]}, the current one last).")
@database_option
def run_history(run_id: str, output: str, as_json: bool, all_chapters: bool,
                database: str) -> None:
    """Show the steps a run recorded: activities, events, timers, timeouts."""
    async def go() -> list[tuple[Chapter | None, RecordedHistory]]:
        async with open_client(database, "default") as client:
            steps = await client.history(run_id)
            run = await client.store.get_run(run_id)
            if run is None:
                raise RunNotFound(f"no run with id '{run_id}'")
            found: list[tuple[Chapter | None, RecordedHistory]] = []
            if all_chapters:
                for chapter in await client.chapters(run_id):
                    closed = replace(run, input=chapter.input, status=RunStatus.COMPLETED,
                                     result=None, error=None, waits=(), wait=None)
                    found.append((chapter, RecordedHistory.of(
                        closed, await client.history(run_id, chapter=chapter.chapter))))
            found.append((None, RecordedHistory.of(run, steps)))
            return found

    chapters = run_async(go())
    if output == "json" or as_json:
        if all_chapters:
            click.echo(to_json({"run_id": run_id,
                                "chapters": [doc.to_json() for _, doc in chapters]}))
        else:
            click.echo(to_json(chapters[-1][1].to_json()))
        return
    for chapter, recorded in chapters:
        if all_chapters:
            title = (f"chapter {chapter.chapter}: closed {iso(chapter.closed_at)}, "
                     f"continued as new" if chapter is not None
                     else f"chapter {len(chapters) - 1}: current")
            click.echo(title)
        _print_steps(run_id, recorded.steps)
        if all_chapters and recorded is not chapters[-1][1]:
            click.echo("")


def _print_steps(run_id: str, steps: Sequence[Step]) -> None:
    if not steps:
        click.echo(f"run '{run_id}' has recorded no steps yet", err=True)
        return
    rows = [[str(s.seq), s.kind.value, s.name, _step_summary(s), iso(s.recorded_at) or ""]
            for s in steps]
    print_table(["SEQ", "KIND", "NAME", "VALUE", "TIME"], rows)


@runs.command("cancel")
@click.argument("run_id")
@click.option("--reason", default="cancelled from the command line", show_default=True,
              help="Recorded as the run's error.")
@database_option
def cancel_run(run_id: str, reason: str, database: str) -> None:
    """Cancel a run that has not finished (running or waiting)."""
    async def go() -> tuple[RunInfo, RunInfo]:
        async with open_client(database, "default") as client:
            before = await client.get_run(run_id)
            return before, await client.cancel(run_id, reason)

    before, after = run_async(go())
    if not before.status.finished:
        click.echo(f"cancelled run '{run_id}'")
    elif before.status is RunStatus.CANCELLED:
        click.echo(f"run '{run_id}' was already cancelled")
    else:
        raise CliFailure(f"run '{run_id}' already finished ({after.status}); nothing to cancel",
                         EXIT_FAILED)


@runs.command("result")
@click.argument("run_id")
@timeout_option
@database_option
def run_result(run_id: str, timeout: float | None, database: str) -> None:
    """Wait for a run to finish and print its result as JSON (exit 1 if it failed)."""
    async def go() -> Any:
        async with open_client(database, "default") as client:
            return await _result(client, run_id, timeout)

    click.echo(to_json(run_async(go())))


# -- formatting --------------------------------------------------------------------------
def describe_wait(waiting: Sequence[WaitingFor]) -> str:
    """The first wait (``order.paid where data.id="A" (until ...)``, ``timer at ...``,
    ``child run-1-0``) and how many more; empty if none."""
    if not waiting:
        return ""
    text = _describe_one(waiting[0])
    return text if len(waiting) == 1 else f"{text} (+{len(waiting) - 1} more)"


def _describe_one(waiting: WaitingFor) -> str:
    if waiting.kind == "child":
        return f"child {waiting.child_run_id}"
    if waiting.kind != "event":
        return f"{waiting.kind} at {iso(waiting.wake_at)}"
    text = " or ".join(waiting.event_types) or waiting.event_type or "an event"
    if waiting.match:
        text += " where " + ", ".join(f"{k}={to_json(v, indent=None)}"
                                      for k, v in waiting.match.items())
    if waiting.wake_at is not None:
        text += f" (until {iso(waiting.wake_at)})"
    return text


def _wait_json(waiting: WaitingFor) -> dict[str, Any]:
    out: dict[str, Any] = {"kind": waiting.kind, "seq": waiting.seq,
                           "wake_at": iso(waiting.wake_at)}
    if waiting.kind == "event":
        out.update(event_type=waiting.event_type, event_types=list(waiting.event_types),
                   match=waiting.match)
    if waiting.kind == "child":
        out["child_run_id"] = waiting.child_run_id
    return out


def run_json(info: RunInfo) -> dict[str, Any]:
    """A run as a JSON object."""
    return {
        "run_id": info.run_id, "workflow": info.workflow, "namespace": info.namespace,
        "status": info.status.value,
        "waiting_for": [_wait_json(w) for w in info.waiting_for],
        "parent_run_id": info.parent_run_id, "chapter": info.chapter,
        "result": info.result, "error": info.error,
        "created_at": iso(info.created_at), "started_at": iso(info.started_at),
        "finished_at": iso(info.finished_at),
        "pool": info.pool, "build_id": info.build_id, "upgrade": info.upgrade,
    }


def _step_summary(step: Step) -> str:
    if step.error is not None:
        error = codec.loads_or_text(step.error)
        if isinstance(error, dict) and "type" in error:
            error = f"{error['type']}: {error.get('message', '')}"
        return shorten(f"error: {error}", 60)
    return shorten(step.value or "", 60)
