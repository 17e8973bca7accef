"""How the operator's loops ride out the store and the API server being unreachable.

A loop wraps each pass in ``Outage``: a failure the loop can outlast (the store unavailable,
the API server refusing or unreachable) is logged once when the outage starts, retried with
capped, jittered backoff, and logged once more when it ends. Anything else is a bug: it ends
the loop, and ``LoopSupervisor`` stops the operator so that its process exits non-zero and
Kubernetes restarts it, instead of leaving a process that looks alive and does nothing.
"""

from __future__ import annotations

import asyncio
import logging
import random
import sqlite3
import time
from collections.abc import Callable, Coroutine
from typing import Any

import aiohttp

from kenning.core.errors import StoreUnavailable
from kenning_operator.kube import KubeError

log = logging.getLogger(__name__)

TRANSIENT: tuple[type[BaseException], ...] = (StoreUnavailable, KubeError, OSError,
                                              TimeoutError, aiohttp.ClientError,
                                              sqlite3.Error)
"""Errors of the store or the API server that a loop waits out (the database drivers' own
errors included: an outage can surface as one the store did not translate)."""
try:
    import asyncpg
except ImportError:  # pragma: no cover - SQLite only
    pass
else:
    TRANSIENT += (asyncpg.PostgresError, asyncpg.InterfaceError,
                  asyncpg.exceptions.InternalClientError)


def transient(exc: BaseException) -> bool:
    """Whether ``exc`` is an outage to wait out rather than a bug."""
    return isinstance(exc, TRANSIENT)


class Outage:
    """One loop's view of an outage: backoff delays and one log line at each end."""

    def __init__(self, what: str, *, base: float = 0.1, cap: float = 2.0) -> None:
        self.what = what
        self.base = base
        self.cap = cap
        self.failures = 0
        """Consecutive failed passes (0: no outage)."""
        self.outages = 0
        """Outages seen so far."""
        self._since = 0.0

    @property
    def down(self) -> bool:
        """Whether the last pass failed."""
        return self.failures > 0

    def failed(self, exc: BaseException) -> float:
        """Note a failed pass; the seconds to wait before the next (capped, full jitter)."""
        if self.failures == 0:
            self.outages += 1
            self._since = time.monotonic()
            log.warning("%s: %s; retrying with backoff until it answers", self.what,
                        exc or type(exc).__name__)
        self.failures += 1
        return random.uniform(self.base / 2, min(self.cap, self.base * 2 ** self.failures))

    def succeeded(self) -> None:
        """Note a pass that worked (logs the end of an outage)."""
        if self.failures:
            log.warning("%s: working again after %.1fs (%d failed attempts)", self.what,
                        time.monotonic() - self._since, self.failures)
            self.failures = 0

    async def attempt(self, work: Callable[[], Coroutine[Any, Any, None]]) -> bool:
        """Run one pass; on an outage wait its backoff and return False (bugs propagate)."""
        try:
            await work()
        except TRANSIENT as exc:
            await asyncio.sleep(self.failed(exc))
            return False
        self.succeeded()
        return True


class LoopSupervisor:
    """Watches long-lived tasks: one that ends with an error (a bug) calls ``on_crash``."""

    def __init__(self, on_crash: Callable[[BaseException], None]) -> None:
        self._on_crash = on_crash
        self.crashed: BaseException | None = None
        """The first error a loop died of."""

    def watch(self, task: asyncio.Task[Any]) -> asyncio.Task[Any]:
        """Report ``task`` if it ever ends with an error."""
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is None:
            return
        log.critical("operator loop %s died of a bug; stopping the operator so that it is "
                     "restarted", task.get_name(), exc_info=exc)
        if self.crashed is None:
            self.crashed = exc
            self._on_crash(exc)
