"""``TestEnv``: an embedded app on a temporary SQLite file whose clock skips ahead.

While a test awaits something of the environment (``result``, ``wait_finished``,
``wait_status``), time skips: as soon as nothing else can happen (no run is runnable or
running, no change was committed for a moment) the clock jumps to the next due timer,
timeout or retry, so a five-minute timeout takes milliseconds. Otherwise the clock runs at
the pace of real time, so a test can send an event before a deadline passes.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from kenning.core.definitions import WorkflowDefinition, seconds_of
from kenning.core.models import Notification, RunStatus
from kenning.runtime.app import App
from kenning.runtime.client import RunInfo
from kenning.runtime.worker import WorkerOptions

QUIET_SECONDS = 0.02  # no commit for this long (and nothing runnable): nothing else happens
_TICK = 0.005


class SkippingClock:
    """Unix seconds that follow real time plus whatever was skipped."""

    def __init__(self, start: datetime | float | None = None) -> None:
        begin = (start.timestamp() if isinstance(start, datetime)
                 else time.time() if start is None else float(start))
        self._offset = begin - time.time()

    def __call__(self) -> float:
        return time.time() + self._offset

    def advance(self, seconds: float) -> None:
        """Move the clock forward by ``seconds``."""
        self._offset += seconds_of(seconds, "advance")

    def jump_to(self, moment: float) -> None:
        """Move the clock forward to ``moment`` (never back)."""
        self._offset += max(0.0, moment - self())


class TestEnv(App):
    """An ``App`` for tests, with a time-skipping clock: ``async with TestEnv(workflows=[...])``.

    It is a whole ``App``: ``start``, ``publish`` (send an event, ``to_run=`` addresses a
    run), ``get_run``, ``history``, ``cancel``. ``result`` and ``wait_status`` skip time
    while nothing else can happen; ``skip`` moves it on by hand. ``timeout`` bounds, in real
    seconds, every wait that is given none.
    """

    __test__ = False  # not a pytest test class

    def __init__(
        self,
        workflows: Iterable[WorkflowDefinition[Any, Any]] = (),
        *,
        start_time: datetime | float | None = None,
        namespace: str = "default",
        timeout: float = 30.0,
        worker_options: WorkerOptions | None = None,
        **app_options: Any,
    ) -> None:
        self.clock = SkippingClock(start_time)
        self._dir = Path(tempfile.mkdtemp(prefix="kenning-test-"))
        super().__init__(str(self._dir / "kenning.db"), "test-worker", namespace=namespace,
                         workflows=workflows, clock=self.clock,
                         worker_options=worker_options or WorkerOptions(poll_interval=0.25),
                         **app_options)
        self.timeout = timeout
        self._last_change = time.monotonic()
        self._unwatch: Callable[[], None] | None = None

    async def open(self) -> None:
        """Open the store and start the worker."""
        await super().open()
        self._unwatch = self.store.subscribe(self._on_change)

    async def close(self) -> None:
        """Stop the worker, close the store and delete the temporary database."""
        if self._unwatch is not None:
            self._unwatch()
        try:
            await super().close()
        finally:
            shutil.rmtree(self._dir, ignore_errors=True)

    def _on_change(self, note: Notification) -> None:
        self._last_change = time.monotonic()

    def now(self) -> datetime:
        """The environment's current time."""
        return datetime.fromtimestamp(self.clock(), UTC)

    async def skip(self, duration: timedelta | float) -> None:
        """Move time on by ``duration``; whatever falls due runs before this returns."""
        self.clock.advance(seconds_of(duration, "skip duration"))
        self._wake_worker()
        await self._until(self._idle, skip=False, what="the environment to settle")

    async def wait_finished(self, run_id: str, timeout: float | None = None) -> RunInfo:
        """Wait until the run finished, skipping time while nothing else can happen."""
        async def finished() -> bool:
            return (await self.get_run(run_id)).status.finished

        await self._until(finished, timeout=timeout, what=f"run {run_id} to finish",
                          run_id=run_id)
        return await self.get_run(run_id)

    async def wait_status(self, run_id: str, status: RunStatus,
                          timeout: float | None = None) -> RunInfo:
        """Wait until the run is in ``status``, skipping time while nothing else can happen."""
        async def reached() -> bool:
            return (await self.get_run(run_id)).status is status

        await self._until(reached, timeout=timeout, what=f"run {run_id} to be {status}",
                          run_id=run_id)
        return await self.get_run(run_id)

    # -- skipping -----------------------------------------------------------------------
    async def _until(self, done: Callable[[], Awaitable[bool]], *, skip: bool = True,
                     timeout: float | None = None, what: str, run_id: str | None = None
                     ) -> None:
        limit = self.timeout if timeout is None else timeout
        try:
            async with asyncio.timeout(limit):
                while not await done():
                    if skip and await self._idle() and not await done():
                        await self._skip_to_next_wake()
                    await asyncio.sleep(_TICK)
        except TimeoutError:
            state = ""
            if run_id is not None:
                info = await self.get_run(run_id)
                state = f"; it is {info.status}"
                events = [" or ".join(w.event_types) for w in info.waiting_for
                          if w.kind == "event"]
                if events:
                    state += (f", waiting for event '{', '.join(events)}' that nobody "
                              f"sent")
            raise TimeoutError(f"gave up waiting for {what} after {limit:g} s{state}") from None

    async def _idle(self) -> bool:
        """True when nothing can happen until time moves on."""
        if time.monotonic() - self._last_change < QUIET_SECONDS:
            return False
        if self.worker is not None and self.worker.active_runs:
            return False
        for status in (RunStatus.PENDING, RunStatus.RUNNING):
            if await self.store.list_runs(status=status, limit=1):
                return False
        wake = await self.store.next_wake_at()
        if wake is not None and wake <= self.clock():
            self._wake_worker()  # due but not yet claimed
            return False
        return time.monotonic() - self._last_change >= QUIET_SECONDS

    async def _skip_to_next_wake(self) -> None:
        wake = await self.store.next_wake_at()
        if wake is not None:
            self.clock.jump_to(wake)
            self._wake_worker()

    def _wake_worker(self) -> None:
        if self.worker is not None:
            self.worker.wake()
