"""What bounds a worker: its namespaces, pool, build and workflows, and a unique identity."""

from __future__ import annotations

import logging
import os
import secrets
import socket
from collections.abc import Iterable, Sequence
from typing import Any

from kenning.core.definitions import WorkflowDefinition
from kenning.core.errors import ConfigurationError
from kenning.core.store import Store

log = logging.getLogger(__name__)


def default_worker_id() -> str:
    """``<hostname>-<pid>-<random suffix>``: unique per process, even across restarts."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


async def unique_worker_id(store: Store, worker_id: str) -> str:
    """``worker_id``, or a fresh id derived from it when runs are still leased to it.

    Live leases under the id mean another process uses it (or one that used it died less
    than a lease ago): taking it over would let two processes steal each other's runs, so
    this process takes ``<id>-<random suffix>`` and says so. Runs a dead holder left
    resume once their leases expire."""
    held = await store.count_live_leases(worker_id)
    if not held:
        return worker_id
    fresh = f"{worker_id}-{secrets.token_hex(3)}"
    log.warning("worker id '%s' still holds %d live lease(s): another process uses it, or "
                "one that did died moments ago; this process works as '%s' instead (give "
                "each process its own id, or leave it unset)", worker_id, held, fresh)
    return fresh


def split_names(values: Iterable[str] | str | None) -> tuple[str, ...]:
    """Names from repeated and/or comma-separated values, in order, without repeats."""
    if values is None:
        return ()
    items = [values] if isinstance(values, str) else list(values)
    names: dict[str, None] = {}
    for item in items:
        for part in item.split(","):
            if part.strip():
                names[part.strip()] = None
    return tuple(names)


def select_workflows(workflows: Sequence[WorkflowDefinition[Any, Any]],
                     required: Sequence[str], *, source: str) -> list[WorkflowDefinition[Any, Any]]:
    """The workflows named in ``required`` (all of them, or ``ConfigurationError`` naming
    the missing ones); every workflow when ``required`` is empty."""
    if not required:
        return list(workflows)
    by_name = {wf.name: wf for wf in workflows}
    missing = [name for name in required if name not in by_name]
    if missing:
        known = ", ".join(sorted(by_name)) or "none"
        raise ConfigurationError(
            f"{source} lacks workflow(s) {', '.join(missing)} that this worker must serve "
            f"(it defines: {known}); deploy an image whose module defines them, or remove "
            f"them from the pool's spec.workflows")
    return [by_name[name] for name in required]
