"""``replay``: run a recorded history through the current code of its workflow.

Nothing is executed for real: recorded steps return their recorded values (activities do not
run), and where the history ends the code is stopped the way a worker suspends a run. The
step sequence is what is checked; what the code does with recorded values may change freely.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from kenning.core.context import WorkflowContext
from kenning.core.definitions import WorkflowDefinition
from kenning.core.errors import ConfigurationError, NonDeterminismError
from kenning.core.execution import RunExecution
from kenning.core.history_doc import RecordedHistory
from kenning.core.models import ClaimedRun, Lease, RunStatus, Step, StepKind, Wait, WaitKind
from kenning.core.store import Store

HistorySource = RecordedHistory | Mapping[str, Any] | str | bytes | os.PathLike[str]


@dataclass(frozen=True, slots=True)
class ReplayResult:
    """What replaying a history found; returned only when the code fits the history.

    ``result`` is what the workflow returned (a completed history) and ``error`` what it
    raised (a failed one). ``stopped_at`` is the step where the history ends and the code
    went on to the step it waits for there (a waiting or unfinished run), else ``None``.
    """

    result: Any
    error: Exception | None
    stopped_at: int | None
    steps_replayed: int


class _ReplayExecution(RunExecution):
    """A run execution whose only source of step outcomes is the recorded history."""

    def __init__(self, definition: WorkflowDefinition[Any, Any], recorded: RecordedHistory):
        run = recorded.as_run()
        last = max((s.recorded_at for s in recorded.steps), default=run.created_at)
        # no store: nothing can be written, every outcome comes from the history
        super().__init__(cast(Store, None), definition,
                         ClaimedRun(run, Lease(run.run_id, "replay", run.epoch),
                                    list(recorded.steps)),
                         clock=lambda: last)
        self.recorded_history = recorded
        self.stopped_at: int | None = None

    def recorded(self, seq: int, kinds: Sequence[StepKind], name: str) -> Step | None:
        """The recorded step; past the history's end, check the code fits there."""
        step = super().recorded(seq, kinds, name)
        if step is None:
            self._check_end_fits(seq, kinds, name)
            self.stopped_at = seq if self.stopped_at is None else min(self.stopped_at, seq)
        return step

    async def replay(self) -> Any:
        """Drive the code through the history; its result, or ``_STOPPED`` where the history
        ends and the code waits on steps it did not record."""
        main = self.loop.create_task(self.run_code(WorkflowContext(self)))
        try:
            while True:
                self._activate()
                if self.fatal is not None:
                    raise self.fatal
                if self.continue_with is not None or main.done():
                    break
                if not self._replay:
                    return _STOPPED
                self._deliver_recorded()
            if self.continue_with is not None:
                return _STOPPED
            return main.result()
        finally:
            self.loop.dispose()

    def _check_end_fits(self, seq: int, kinds: Sequence[StepKind], name: str) -> None:
        recorded = self.recorded_history
        called = f"{kinds[0].value} '{name}'"
        if recorded.status is RunStatus.COMPLETED:
            self._mismatch(f"step {seq}: history ends there (the run completed), code called "
                           f"{called}")
        wait = next((w for w in recorded.waits if w.seq == seq), None)
        if recorded.waits and (wait is None or not _wait_fits(wait, kinds, name)):
            waits = ", ".join(f"step {w.seq}: {_describe(w)}" for w in recorded.waits)
            self._mismatch(f"step {seq}: the run waits at {waits}; code called {called}")

    def _mismatch(self, what: str) -> None:
        self.fail_with(NonDeterminismError(
            f"run {self.run.run_id} {what} — the workflow's code no longer fits this history"))
        assert self.fatal is not None
        raise self.fatal


_STOPPED = object()


def _wait_fits(wait: Wait, kinds: Sequence[StepKind], name: str) -> bool:
    if wait.kind is WaitKind.EVENT:
        return StepKind.EVENT in kinds and wait.step_name == name
    if wait.kind is WaitKind.TIMER:
        return StepKind.TIMER in kinds
    return StepKind.ACTIVITY in kinds  # a retry delay: the activity is called again there


def _describe(wait: Wait) -> str:
    if wait.kind is WaitKind.EVENT:
        return f"event '{wait.step_name}'"
    return "a timer" if wait.kind is WaitKind.TIMER else "an activity retry"


def load_history(source: HistorySource) -> RecordedHistory:
    """A ``RecordedHistory`` from a document, its JSON text, or a file holding it."""
    if isinstance(source, RecordedHistory):
        return source
    if isinstance(source, bytes):
        source = source.decode()
    if isinstance(source, str) and source.lstrip().startswith("{"):
        doc: Any = json.loads(source)
    elif isinstance(source, str | os.PathLike):
        try:
            doc = json.loads(Path(source).read_text())
        except OSError as exc:
            raise ConfigurationError(f"cannot read history file {source}: {exc}") from None
    else:
        doc = source
    return RecordedHistory.from_json(doc)


async def replay_async(
    workflow: WorkflowDefinition[Any, Any], history: HistorySource
) -> ReplayResult:
    """``replay`` on the running event loop (inside an async test)."""
    recorded = load_history(history)
    if recorded.workflow != workflow.name:
        raise ConfigurationError(
            f"the history of run {recorded.run_id} is of workflow '{recorded.workflow}', "
            f"not '{workflow.name}'")
    ex = _ReplayExecution(workflow, recorded)
    steps = len(recorded.steps)
    try:
        value = await ex.replay()
    except Exception as exc:
        if ex.fatal is not None:
            raise ex.fatal from None
        if recorded.status is RunStatus.FAILED:
            return ReplayResult(None, exc, None, steps)
        raise
    if value is _STOPPED:
        return ReplayResult(None, None, ex.stopped_at, steps)
    return ReplayResult(value, None, None, steps)


def replay(workflow: WorkflowDefinition[Any, Any], history: HistorySource) -> ReplayResult:
    """Run ``history`` through the current code of ``workflow``.

    ``history`` is what ``kenning runs history RUN --json`` prints: the parsed document, its
    JSON text, or the path of a file holding it. Raises ``NonDeterminismError`` naming the
    step where the code no longer fits; an exception the code raises on a history that did
    not fail propagates. A history that ends in a wait fits if the code reaches that wait.
    Works with or without a running event loop (then on a fresh one, in a thread).
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(replay_async(workflow, history))
    outcome: list[ReplayResult] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            outcome.append(asyncio.run(replay_async(workflow, history)))
        except BaseException as exc:  # handed to the caller's thread
            failure.append(exc)

    thread = threading.Thread(target=run, name="kenning-replay")
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return outcome[0]
