"""The worker's deadlock detector: notices workflow code that blocks the event loop.

Workflow and activity code share the worker's event loop; code that blocks it (a
synchronous HTTP call, ``time.sleep``, a busy loop) stalls every run on the worker and the
lease renewals with them. A heartbeat task on the loop stamps the time; a watchdog thread
looks at the stamp and, when the loop has not turned for ``threshold`` seconds while a run's
code is on the loop thread's stack, logs the run and that stack once per stall, counts it,
and (``fail_runs``) makes the run fail at its next step with ``WorkflowBlocked``.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from types import FrameType

from prometheus_client import CollectorRegistry, Counter

from kenning.core.activity_attempts import AttemptRunner
from kenning.core.context import WorkflowContext
from kenning.core.errors import WorkflowBlocked
from kenning.core.execution import RunExecution

log = logging.getLogger(__name__)

# workflow code runs inside an activation, activity code inside an attempt's task
_ACTIVATE = RunExecution._activate.__code__
_ATTEMPT = AttemptRunner._run_attempt.__code__


@dataclass(frozen=True, slots=True)
class BlockedRun:
    """One stall the watchdog saw: the run, the activity (if any), how long, the stack."""

    run_id: str
    activity: str | None
    seconds: float
    stack: str


class LoopWatchdog:
    """Reports runs whose code keeps the event loop from turning for ``threshold`` seconds."""

    def __init__(self, threshold: float, *, fail_runs: bool = False,
                 registry: CollectorRegistry | None = None) -> None:
        self.threshold = threshold
        self.fail_runs = fail_runs
        self.reports: list[BlockedRun] = []
        self.registry = registry if registry is not None else CollectorRegistry()
        self.blocked_total = Counter(
            "kenning_worker_loop_blocked",
            "Times workflow or activity code blocked the worker's event loop past the "
            "threshold.", registry=self.registry)
        self._beat = time.monotonic()
        self._stop = threading.Event()

    async def run(self) -> None:
        """Beat on the loop and watch from a thread until cancelled."""
        loop_thread = threading.get_ident()
        self._stop.clear()
        self._beat = time.monotonic()
        thread = threading.Thread(target=self._watch, args=(loop_thread,), daemon=True,
                                  name="kenning-watchdog")
        thread.start()
        interval = min(self.threshold / 4, 0.25)
        try:
            while True:
                self._beat = time.monotonic()
                await asyncio.sleep(interval)
        finally:
            self._stop.set()  # the thread sees it within a tick and ends

    def _watch(self, loop_thread: int) -> None:
        reported_beat = None
        while not self._stop.wait(min(self.threshold / 4, 0.25)):
            beat = self._beat
            stalled = time.monotonic() - beat
            if stalled < self.threshold or beat == reported_beat:
                continue
            frame = sys._current_frames().get(loop_thread)
            found = _run_on_stack(frame) if frame is not None else None
            if found is None:
                continue  # the loop is slow, but not in a run's code
            reported_beat = beat
            self._report(found[0], found[1], stalled, frame)

    def _report(self, execution: RunExecution, activity: str | None, stalled: float,
                frame: FrameType | None) -> None:
        stack = "".join(traceback.format_stack(frame)) if frame is not None else ""
        run_id = execution.run.run_id
        where = f"activity '{activity}'" if activity else "workflow code"
        report = BlockedRun(run_id, activity, stalled, stack)
        self.reports.append(report)
        self.blocked_total.inc()
        log.error("run %s: %s has blocked the worker's event loop for %.1f s (threshold "
                  "%g s); every run on this worker waits meanwhile — use async calls or "
                  "asyncio.to_thread. Stack of the loop thread:\n%s",
                  run_id, where, stalled, self.threshold, stack)
        if self.fail_runs:
            execution.fail_with(WorkflowBlocked(
                f"run {run_id}: {where} blocked the worker's event loop for more than "
                f"{self.threshold:g} s; use async calls or asyncio.to_thread for blocking work"))


def _run_on_stack(frame: FrameType | None) -> tuple[RunExecution, str | None] | None:
    """The run (and activity) whose code the frame chain runs, innermost first."""
    activity: str | None = None
    context: WorkflowContext | None = None
    while frame is not None:
        local = frame.f_locals
        owner = local.get("self")
        if frame.f_code is _ACTIVATE and isinstance(owner, RunExecution):
            return owner, None
        if frame.f_code is _ATTEMPT and isinstance(owner, AttemptRunner):
            defn = local.get("defn")
            return owner.execution, None if defn is None else str(defn.name)
        ctx = local.get("ctx")
        if context is None and isinstance(ctx, WorkflowContext):
            context = ctx
            if ctx.in_activity:
                activity = frame.f_code.co_name
        frame = frame.f_back
    # an activity with a timeout runs in a task of its own: only its ctx names the run
    return None if context is None else (context._execution, activity)
