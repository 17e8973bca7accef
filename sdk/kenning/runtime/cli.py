"""The ``kenning`` command line: serve workflows, start and inspect runs, send events."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

import click

from kenning.runtime import config
from kenning.runtime.app import App
from kenning.runtime.cli_common import (
    EXIT_CODES_HELP,
    CliFailure,
    F,
    KenningGroup,
    database_option,
    namespace_option,
    run_async,
)
from kenning.runtime.cli_operator import operator
from kenning.runtime.cli_outbox import outbox
from kenning.runtime.cli_retention import purge, retention
from kenning.runtime.cli_runs import runs, start
from kenning.runtime.cli_send import send
from kenning.runtime.cli_tenancy import WorkerBounds, worker_bounds_options
from kenning.runtime.loader import load_workflows
from kenning.runtime.tenancy import select_workflows
from kenning.runtime.worker import WorkerOptions
from kenning.stores import open_store

if TYPE_CHECKING:
    from aiohttp import web

    from kenning.core.store import Store

log = logging.getLogger(__name__)


@click.group(cls=KenningGroup, epilog=EXIT_CODES_HELP,
             context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, envvar=config.ENV_DEBUG,
              help="Show tracebacks of errors (and log at debug level).")
@click.option("--log-level", type=click.Choice(config.LOG_LEVELS, case_sensitive=False),
              envvar=config.ENV_LOG_LEVEL, show_envvar=True, default=None,
              help="Log level. Default: info for dev/worker/sink, warning otherwise.")
@click.version_option(package_name="kenning", prog_name="kenning")
@click.pass_context
def main(ctx: click.Context, debug: bool, log_level: str | None) -> None:
    """Kenning: durable async workflows for Python.

    Serve workflow code with `dev` (worker and sink in one process), `worker` and `sink`;
    start runs with `start`, look at them with `runs`, and send events with `send`.
    """
    serving = ctx.invoked_subcommand in ("dev", "worker", "sink")
    level = "debug" if debug else (log_level or ("info" if serving else "warning"))
    config.configure_logging(level.lower())


main.add_command(start)
main.add_command(runs)
runs.add_command(purge)
runs.add_command(retention)
main.add_command(send)
main.add_command(operator)
main.add_command(outbox)


# -- options of the serving commands -------------------------------------------------------
def _host_option(fn: F) -> F:
    return click.option("--host", envvar=config.ENV_HOST, default=config.DEFAULT_HOST,
                        show_default=True, show_envvar=True,
                        help="Interface the sink listens on (0.0.0.0 for all).")(fn)


def _port_option(fn: F) -> F:
    return click.option("--port", type=click.IntRange(0, 65535), envvar=list(config.ENV_PORT),
                        default=config.DEFAULT_PORT, show_default=True, show_envvar=True,
                        help="Port the sink listens on (0: any free port).")(fn)


def _worker_id_option(fn: F) -> F:
    return click.option("--worker-id", envvar=config.ENV_WORKER_ID, default=None,
                        show_envvar=True,
                        help="This worker's identity for leases; unique per process (an "
                             "id that still holds live leases is not shared: a fresh one "
                             "is taken and logged). Default: <hostname>-<pid>-<random>.")(fn)


def _token_option(fn: F) -> F:
    return click.option("--token", envvar=config.ENV_SINK_TOKEN, default=None,
                        show_envvar=True,
                        help="Require 'Authorization: Bearer <token>' on the sink.")(fn)


def _probe_options(fn: F) -> F:
    fn = click.option("--probe-host", envvar=config.ENV_PROBE_HOST,
                      default=config.DEFAULT_PROBE_HOST, show_default=True, show_envvar=True,
                      help="Interface of the probe server.")(fn)
    return click.option("--probe-port", type=click.IntRange(0, 65535),
                        envvar=config.ENV_PROBE_PORT, default=None, show_envvar=True,
                        help="Serve /healthz (loops alive), /readyz (store answers) and "
                             "/metrics (Prometheus) on this port. Default: no probe "
                             "server.")(fn)


def _probes_note(app: App, probe_host: str) -> str:
    """``, probes on http://host:port`` when ``app`` serves probes, else nothing."""
    if app.probe_address is None:
        return ""
    return f", probes on http://{probe_host}:{app.probe_address[1]}"


# -- dev ---------------------------------------------------------------------------------
@main.command()
@click.argument("module_or_file")
@database_option
@_host_option
@_port_option
@_worker_id_option
@namespace_option("Namespace of the runs served and of events posted to /.")
@_token_option
@_probe_options
def dev(module_or_file: str, database: str, host: str, port: int, worker_id: str | None,
        namespace: str, token: str | None, probe_port: int | None, probe_host: str) -> None:
    """Serve MODULE_OR_FILE's workflows: worker and CloudEvents sink in one process.

    MODULE_OR_FILE is a dotted module (examples.payment) or a path (flows/payment.py);
    every @workflow it defines is served. Runs until SIGINT or SIGTERM, then hands its runs
    back and exits 0.
    """
    workflows = load_workflows(module_or_file)

    async def go() -> None:
        async with App(database, worker_id, namespace=namespace, workflows=workflows,
                       probe_port=probe_port, probe_host=probe_host) as app:
            runner = await _start_sink(app.store, host, port, namespace, token)
            try:
                names = ", ".join(wf.name for wf in workflows)
                click.echo(f"kenning dev: sink on {_listening(runner, host)}, worker "
                           f"{app.worker_id} serving {names} (database {_redact(database)}"
                           f"{_probes_note(app, probe_host)}); Ctrl-C to stop")
                await _until_signalled_or_failed(app)
            finally:
                await runner.cleanup()

    run_async(go())


# -- worker ------------------------------------------------------------------------------
@main.command()
@click.option("--module", "-m", "module_or_file", required=True, envvar=config.ENV_MODULE,
              show_envvar=True, metavar="MODULE_OR_FILE",
              help="Dotted module or .py file whose @workflow functions are served.")
@database_option
@_worker_id_option
@click.option("--max-runs", type=click.IntRange(min=1), default=WorkerOptions.max_runs,
              show_default=True, help="Most runs held at once.")
@click.option("--max-recoveries", type=click.IntRange(min=0),
              default=WorkerOptions.max_recoveries, envvar=config.ENV_MAX_RECOVERIES,
              show_envvar=True, show_default=True,
              help="Recovery attempts for a run whose worker keeps getting lost while "
                   "running it (a crash or hang in its code) before the run is failed.")
@click.option("--deadlock-threshold", type=click.FloatRange(min=0),
              default=WorkerOptions.deadlock_threshold, envvar=config.ENV_DEADLOCK_THRESHOLD,
              show_envvar=True, show_default=True,
              help="Seconds workflow or activity code may block the event loop before it is "
                   "reported with its stack (and counted in kenning_worker_loop_blocked_total); "
                   "0 turns the detector off.")
@click.option("--event-target", envvar=list(config.ENV_EVENT_TARGET), default=None,
              show_envvar=True,
              help="URL that events sent by workflows are POSTed to (a Knative broker). "
                   "Default: delivered to this store directly.")
@_probe_options
@worker_bounds_options
def worker(module_or_file: str, database: str, worker_id: str | None, max_runs: int,
           max_recoveries: int, deadlock_threshold: float, event_target: str | None,
           probe_port: int | None, probe_host: str, bounds: WorkerBounds) -> None:
    """Run a worker (and the outbox dispatcher) for a module's workflows; no sink.

    It executes only the runs of its namespaces, of its pool (or naming none) and of its
    build (or not started yet). Stops gracefully on SIGTERM or SIGINT: held runs are
    handed back for another worker. Store outages are ridden out; a loop that dies of a
    bug exits 1, so that it is restarted.
    """
    workflows = select_workflows(load_workflows(module_or_file), bounds.workflows,
                                 source=f"module {module_or_file}")
    options = WorkerOptions(max_runs=max_runs, max_recoveries=max_recoveries,
                            deadlock_threshold=deadlock_threshold or None)

    async def go() -> None:
        # "" keeps App from falling back to $K_SINK when neither variable named it.
        async with App(database, worker_id, workflows=workflows, event_target=event_target or "",
                       worker_options=options, probe_port=probe_port,
                       probe_host=probe_host, namespace=bounds.namespaces[0],
                       namespaces=bounds.namespaces, pool=bounds.pool,
                       build_id=bounds.build_id, drain=bounds.drain) as app:
            names = ", ".join(wf.name for wf in workflows)
            target = event_target or "this store"
            click.echo(f"kenning worker {app.worker_id}: serving {names} "
                       f"({bounds.describe()}; database {_redact(database)}, events to "
                       f"{target}{_probes_note(app, probe_host)}); Ctrl-C to stop")
            await _until_signalled_or_failed(app)

    run_async(go())


# -- sink --------------------------------------------------------------------------------
@main.command()
@database_option
@_host_option
@_port_option
@_token_option
@namespace_option("Namespace of events posted to / (runs they start or wake).")
def sink(database: str, host: str, port: int, token: str | None, namespace: str) -> None:
    """Serve the CloudEvents sink only (no workflow code needed).

    Events posted to / go to --namespace; events posted to /namespaces/<ns> to <ns>.
    """
    async def go() -> None:
        store = open_store(database)
        await store.open()
        try:
            runner = await _start_sink(store, host, port, namespace, token)
            try:
                click.echo(f"kenning sink on {_listening(runner, host)} (database "
                           f"{_redact(database)}, namespace '{namespace}'); Ctrl-C to stop")
                await _until_signalled()
            finally:
                await runner.cleanup()
        finally:
            await store.close()

    run_async(go())


# -- helpers -----------------------------------------------------------------------------
async def _start_sink(store: Store, host: str, port: int, namespace: str,
                      token: str | None) -> web.AppRunner:
    from kenning.runtime.sink import create_sink_app, serve_sink

    web_app = create_sink_app(store, default_namespace=namespace, token=token)
    try:
        return await serve_sink(web_app, host, port)
    except OSError as exc:
        raise CliFailure(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc


def _listening(runner: web.AppRunner, host: str) -> str:
    """``http://host:port`` of the first bound address (the real port when 0 was asked)."""
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            return f"http://{host}:{address[1]}"
    return f"http://{host}"


def _redact(database: str) -> str:
    """The database setting without a password."""
    parts = urlsplit(database)
    if parts.password is None:
        return database
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


async def _until_signalled_or_failed(app: App) -> None:
    """Wait for SIGINT or SIGTERM; raise ``LoopFailed`` if a loop of ``app`` dies first."""
    signalled = asyncio.create_task(_until_signalled())
    failed = asyncio.create_task(app.watch())
    try:
        await asyncio.wait((signalled, failed), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (signalled, failed):
            task.cancel()
        await asyncio.gather(signalled, failed, return_exceptions=True)
    if failed.done() and not failed.cancelled() and failed.exception() is not None:
        raise failed.exception()  # type: ignore[misc]


async def _until_signalled() -> None:
    """Wait for SIGINT or SIGTERM; a second one interrupts the shutdown."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    caught: list[signal.Signals] = []

    def on_signal(sig: signal.Signals) -> None:
        caught.append(sig)
        stop.set()

    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):  # not on Windows
            loop.add_signal_handler(sig, on_signal, sig)
            installed.append(sig)
    try:
        await stop.wait()
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
    if caught:
        click.echo(f"kenning: {caught[0].name} received, stopping", err=True)


if __name__ == "__main__":
    main()
