"""What the ``kenning`` commands share: exit codes, error lines, options, output helpers."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import traceback
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any, TypeVar

import click

from kenning.core.errors import (
    ConfigurationError,
    InvalidInput,
    KenningError,
    RunCancelled,
    RunFailed,
    RunNotFound,
    StoreUnavailable,
    WorkflowNotFound,
)
from kenning.runtime import config
from kenning.runtime.client import Client
from kenning.stores import open_store

log = logging.getLogger(__name__)

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_UNAVAILABLE = 4
EXIT_TIMEOUT = 5
EXIT_INTERRUPTED = 130

EXIT_CODES_HELP = f"""\b
Exit codes:
  {EXIT_OK}  success
  {EXIT_FAILED}  the run failed or was cancelled, the sink refused the event, other errors
  {EXIT_USAGE}  usage or configuration error (bad flag, invalid JSON or input,
     workflow code that cannot be loaded)
  {EXIT_NOT_FOUND}  no such run or workflow
  {EXIT_UNAVAILABLE}  store or sink unavailable
  {EXIT_TIMEOUT}  timed out (--timeout)

\b
Settings come from flags first, then KENNING_* environment variables (see each
command's --help). --debug (or KENNING_DEBUG=1) shows tracebacks."""


class CliFailure(Exception):
    """An error the CLI reports as one line with a given exit code."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.exit_code = exit_code


_CODES: Sequence[tuple[type[BaseException], int]] = (
    (RunNotFound, EXIT_NOT_FOUND),
    (WorkflowNotFound, EXIT_NOT_FOUND),
    (StoreUnavailable, EXIT_UNAVAILABLE),
    (InvalidInput, EXIT_USAGE),
    (ConfigurationError, EXIT_USAGE),
    (RunFailed, EXIT_FAILED),
    (RunCancelled, EXIT_FAILED),
    (KenningError, EXIT_FAILED),
    (TimeoutError, EXIT_TIMEOUT),
)


def describe_error(exc: BaseException) -> tuple[str, int]:
    """The one-line message and exit code of an exception raised by a command."""
    if isinstance(exc, CliFailure):
        return str(exc), exc.exit_code
    for kind, code in _CODES:
        if isinstance(exc, kind):
            return str(exc) or type(exc).__name__, code
    return f"unexpected {type(exc).__name__}: {exc} (run with --debug for the traceback)", \
        EXIT_FAILED


class KenningGroup(click.Group):
    """A click group whose commands' errors become one line on stderr and an exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        """Run the command; turn errors into ``error: ...`` and the documented exit code."""
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            ctx.exit(EXIT_INTERRUPTED)
        except Exception as exc:
            message, code = describe_error(exc)
            if ctx.find_root().params.get("debug"):
                traceback.print_exc(file=sys.stderr)
            click.echo(f"error: {message}", err=True)
            ctx.exit(code)


def parse_json_option(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    """Click callback: a JSON value given inline, as ``@path`` (a file) or ``@-`` (stdin).

    Invalid JSON is a usage error (exit code 2) that quotes the parser's complaint.
    """
    if value is None:
        return None
    text, where = value, ""
    if value.startswith("@"):
        source = value[1:]
        try:
            with click.open_file(source, encoding="utf-8") as fh:
                text = fh.read()
        except OSError as exc:
            raise click.BadParameter(f"cannot read {source}: {exc.strerror or exc}",
                                     ctx, param) from None
        where = f" in {source}"
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(
            f"not valid JSON{where}: {exc.msg} at line {exc.lineno} column {exc.colno} "
            f"({shorten(text, 40)!r})", ctx, param) from None


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run a command's coroutine to completion."""
    return asyncio.run(coro)


@asynccontextmanager
async def open_client(database: str, namespace: str, *,
                      create: bool = False) -> AsyncIterator[Client]:
    """A ``Client`` on an open store; unless ``create``, a missing SQLite file is an error."""
    if not create:
        config.require_existing_database(database)
    store = open_store(database)
    await store.open()
    try:
        yield Client(store, namespace=namespace)
    finally:
        await store.close()


# -- options shared by several commands ---------------------------------------------------
def database_option(fn: F) -> F:
    """``--database`` (``KENNING_DATABASE``)."""
    return click.option(
        "--database", envvar=config.ENV_DATABASE, default=config.DEFAULT_DATABASE,
        show_default=True, show_envvar=True, metavar="PATH_OR_URL",
        help="SQLite file or postgresql:// URL.")(fn)


def namespace_option(help: str = "Namespace of the runs.") -> Callable[[F], F]:
    """``--namespace`` (``KENNING_NAMESPACE``) with the given help text."""
    return click.option(
        "--namespace", "-n", envvar=config.ENV_NAMESPACE, default=config.DEFAULT_NAMESPACE,
        show_default=True, show_envvar=True, help=help)


def output_option(fn: F) -> F:
    """``--output table|json``."""
    return click.option(
        "--output", "-o", type=click.Choice(["table", "json"]), default="table",
        show_default=True, help="Output format.")(fn)


def timeout_option(fn: F) -> F:
    """``--timeout SECONDS`` (exit code 5 when it passes)."""
    return click.option(
        "--timeout", type=click.FloatRange(min=0), default=None, metavar="SECONDS",
        help="Give up after this many seconds (exit code 5). Default: wait forever.")(fn)


# -- output ------------------------------------------------------------------------------
def iso(moment: datetime | float | None) -> str | None:
    """ISO 8601 UTC with milliseconds and a ``Z``, or ``None``."""
    if moment is None:
        return None
    if not isinstance(moment, datetime):
        moment = datetime.fromtimestamp(moment, UTC)
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def age(moment: datetime, now: datetime | None = None) -> str:
    """A short age such as ``42s``, ``5m``, ``3h`` or ``2d`` (like kubectl)."""
    seconds = max(0, int(((now or datetime.now(UTC)) - moment).total_seconds()))
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def to_json(value: Any, *, indent: int | None = 2) -> str:
    """JSON text for output (non-JSON values as strings)."""
    return json.dumps(value, indent=indent, ensure_ascii=False, default=str)


def shorten(text: str, width: int) -> str:
    """``text`` on one line, cut to ``width`` characters with an ellipsis."""
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def print_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """Columns aligned with two spaces between them, kubectl style."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(headers)]
    for line in (headers, *rows):
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True))
                   .rstrip())
