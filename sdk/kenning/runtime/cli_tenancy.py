"""The options that bound a ``kenning worker``: namespaces, pool, build and workflows."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import click

from kenning.runtime import config
from kenning.runtime.cli_common import F
from kenning.runtime.tenancy import split_names


@dataclass(frozen=True)
class WorkerBounds:
    """What a worker serves, as the command line gave it."""

    namespaces: tuple[str, ...]
    pool: str | None
    build_id: str | None
    workflows: tuple[str, ...]
    drain: bool

    def describe(self) -> str:
        """One line for the start-up message."""
        parts = [f"namespace(s) {', '.join(self.namespaces)}",
                 f"pool {self.pool}" if self.pool else "no pool",
                 f"build {self.build_id}" if self.build_id else "no build id"]
        if self.drain:
            parts.append("draining: no new runs")
        return "; ".join(parts)


def _names(ctx: click.Context, param: click.Parameter, value: Any) -> tuple[str, ...]:
    return split_names(value)


def worker_bounds_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``--namespace`` (repeatable), ``--pool``, ``--build-id``, ``--workflows``, ``--drain``;
    the command receives them as one ``bounds: WorkerBounds`` argument."""
    options: list[Callable[[F], F]] = [
        click.option("--namespace", "-n", "namespaces", multiple=True,
                     envvar=config.ENV_NAMESPACE, show_envvar=True, callback=_names,
                     default=(config.DEFAULT_NAMESPACE,), show_default=True,
                     help="Namespace whose runs this worker executes; repeat it, or give "
                          "a comma-separated list, for several."),
        click.option("--pool", envvar=config.ENV_POOL, default=None, show_envvar=True,
                     help="This worker's WorkerPool: it takes the runs naming this pool "
                          "or none. Default: only runs naming no pool."),
        click.option("--build-id", envvar=config.ENV_BUILD_ID, default=None,
                     show_envvar=True,
                     help="This worker's build (code version). A run stays on the build "
                          "it started on unless marked upgrade: auto."),
        click.option("--workflows", "required", multiple=True, envvar=config.ENV_WORKFLOWS,
                     show_envvar=True, callback=_names, metavar="NAMES",
                     help="Serve only these workflows (comma-separated or repeated); the "
                          "worker refuses to start if the module lacks one. Default: "
                          "every @workflow of the module."),
        click.option("--drain", is_flag=True, envvar=config.ENV_DRAIN, show_envvar=True,
                     help="Take no new runs: finish those already started on --build-id "
                          "(the operator sets it on a pool's old versions)."),
    ]

    def wrapper(namespaces: tuple[str, ...], pool: str | None, build_id: str | None,
                required: tuple[str, ...], drain: bool, **kwargs: Any) -> Any:
        if drain and not build_id:
            raise click.UsageError("--drain needs --build-id: a draining worker finishes "
                                   "the runs started on its build")
        bounds = WorkerBounds(namespaces or (config.DEFAULT_NAMESPACE,), pool or None,
                              build_id or None, required, drain)
        return fn(bounds=bounds, **kwargs)

    wrapper.__name__ = fn.__name__
    wrapper.__doc__ = fn.__doc__
    decorated: Any = wrapper
    for option in reversed(options):
        decorated = option(decorated)
    return decorated  # type: ignore[no-any-return]
