"""Running one workflow run against its history: replay recorded steps, record new ones.

A ``RunExecution`` lives while its worker holds the run. Recorded steps return their
recorded values; new steps are committed under the lease before the code goes on. When the
run must wait (event, timer, retry delay) its state is committed and the coroutine is
unwound with ``Suspended``, a ``BaseException`` that ``except Exception`` does not catch.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import traceback
from collections.abc import Awaitable, Callable, Collection, Sequence
from typing import Any, TypeVar

from kenning.core import codec
from kenning.core.committer import Abandoned, LeaseCommitter
from kenning.core.context import WorkflowContext, current_activity
from kenning.core.definitions import ActivityDefinition, WorkflowDefinition, decode_input
from kenning.core.errors import (
    ActivityError,
    NonDeterminismError,
    StepInActivityError,
    TerminalError,
    WorkerLost,
)
from kenning.core.models import (
    ClaimedRun,
    CloudEventRecord,
    RunStatus,
    Step,
    StepKind,
    Wait,
    WaitKind,
)
from kenning.core.recovery import (
    DEFAULT_MAX_RECOVERIES,
    AttemptLog,
    poison_error,
    recovery_pause,
    worker_lost_during,
)
from kenning.core.store import EventWaitResult, Store
from kenning.core.validation import MAX_RESULT_BYTES, check_size

log = logging.getLogger(__name__)

T = TypeVar("T")
_FINISHED = ("completed", "failed")


class Suspended(BaseException):
    """Unwinds a workflow whose run is now waiting; never seen by user code's handlers."""


class Outcome(enum.StrEnum):
    """How an execution ended on this worker."""

    COMPLETED = "completed"
    FAILED = "failed"
    SUSPENDED = "suspended"
    ABANDONED = "abandoned"


class RunExecution:
    """Drives one claimed run until it finishes, suspends or loses its lease."""

    def __init__(
        self,
        store: Store,
        definition: WorkflowDefinition[Any, Any],
        claimed: ClaimedRun,
        clock: Callable[[], float],
        *,
        lease_expiry: Callable[[], float | None] | None = None,
        max_recoveries: int = DEFAULT_MAX_RECOVERIES,
    ) -> None:
        self.store = store
        self.definition = definition
        self.run = claimed.run
        self.lease = claimed.lease
        self.clock = clock
        self.committer = LeaseCommitter(store, claimed.lease, claimed.run.lease_expires,
                                        lease_expiry)
        self.history = {step.seq: step for step in claimed.history}
        self.workflow_time = self.run.created_at
        self.suspended_until: float | None = None
        self._next_seq = 0
        self._pending: list[Step] = []
        # misuse found while the code ran: the run fails with it at its next step or its end
        self.fatal: Exception | None = None
        # set once the engine unwinds the code (Suspended, Abandoned); code that swallows the
        # unwind meets it again at its next step and nothing more is recorded
        self._unwinding: type[Suspended | Abandoned] | None = None
        self._unwound_at = 0
        self._swallow_reported = False
        self.max_recoveries = max_recoveries
        self.attempts = AttemptLog(self.committer, self.run.activity_attempts,
                                   self.history.__contains__)

    # -- the run ------------------------------------------------------------------------
    async def execute(self) -> Outcome:
        """Run the workflow function to its end or its next wait."""
        ctx = WorkflowContext(self)
        recoveries = self.run.recoveries
        if recoveries > self.max_recoveries:
            return await self._fail(poison_error(self.run.run_id, recoveries,
                                                 self.max_recoveries))
        if recoveries:
            pause = recovery_pause(recoveries)
            log.warning("run %s: its previous worker was lost (%d time(s) in a row, at most %d "
                        "recoveries); resuming it in %.1f s", self.run.run_id, recoveries,
                        self.max_recoveries, pause)
            await asyncio.sleep(pause)
        try:
            value = await self.run_code(ctx)
            result = check_size("result", codec.dumps(codec.to_jsonable(value)),
                                MAX_RESULT_BYTES)
        except Suspended:
            return Outcome.SUSPENDED
        except Abandoned:
            return Outcome.ABANDONED
        except Exception as exc:
            if self._unwinding is not None:
                return self._swallowed()
            return await self._fail(self.fatal or exc)
        if self._unwinding is not None:
            return self._swallowed()
        if self.fatal is not None:
            return await self._fail(self.fatal)
        steps = self._take_pending()
        await self._write(
            lambda: self.store.finish_run(self.lease, RunStatus.COMPLETED, result=result,
                                          steps=steps),
            settled=_FINISHED,
        )
        return Outcome.COMPLETED

    async def run_code(self, ctx: WorkflowContext) -> Any:
        """Call the workflow function with the run's input; check it used all its history."""
        args, kwargs = decode_input(self.run.input)
        args, kwargs = self.definition.signature.rebuild_arguments(args, kwargs)
        value = await self.definition.fn(ctx, *args, **kwargs)
        self._check_history_consumed()
        return value

    def fail_with(self, error: Exception) -> None:
        """Fail the run with ``error`` at its next step or its end (misuse was detected)."""
        if self.fatal is None:
            self.fatal = error

    def _unwind(self, kind: type[Suspended | Abandoned]) -> None:
        if self._unwinding is None:
            self._unwinding, self._unwound_at = kind, self._next_seq - 1

    def _swallowed(self) -> Outcome:
        assert self._unwinding is not None
        if not self._swallow_reported:
            self._swallow_reported = True
            state = "suspended" if self._unwinding is Suspended else "with its new owner"
            log.error(
                "run %s step %d: the workflow's code caught the engine's %s (a BaseException) "
                "and went on; the run stays %s and nothing after that step was recorded — "
                "catch Exception, not BaseException, around steps", self.run.run_id,
                self._unwound_at, self._unwinding.__name__, state)
        return Outcome.SUSPENDED if self._unwinding is Suspended else Outcome.ABANDONED

    async def _fail(self, exc: Exception) -> Outcome:
        error = f"{type(exc).__name__}: {exc}"
        if not isinstance(exc, NonDeterminismError | ActivityError | WorkerLost):
            log.info("run %s failed: %s", self.run.run_id, "".join(
                traceback.format_exception(type(exc), exc, exc.__traceback__, limit=-3)))
        steps = self._take_pending()
        try:
            await self._write(
                lambda: self.store.finish_run(self.lease, RunStatus.FAILED, error=error,
                                              steps=steps),
                settled=_FINISHED,
            )
        except Abandoned:
            return Outcome.ABANDONED
        return Outcome.FAILED

    # -- history ------------------------------------------------------------------------
    def _check_history_consumed(self) -> None:
        extra = sorted(seq for seq in self.history if seq >= self._next_seq)
        if extra:
            step = self.history[extra[0]]
            self.fail_with(NonDeterminismError(
                f"run {self.run.run_id} step {step.seq}: history has {step.kind.value} "
                f"'{step.name}', code returned without it — the workflow's code changed under "
                f"a running run"
            ))
            assert self.fatal is not None
            raise self.fatal

    def take_seq(self, step: str = "a step") -> int:
        """The next history position for ``step`` (what the code calls, for errors)."""
        if self._unwinding is not None:
            self._swallowed()
            raise self._unwinding  # the code swallowed the unwind: it goes on unwinding
        if self.fatal is not None:
            raise self.fatal
        outer = current_activity.get()
        if outer is not None:
            self.fail_with(StepInActivityError(
                f"run {self.run.run_id}: activity '{outer}' called {step}; only workflow code "
                f"may call steps — call the inner code as a plain function (an activity's "
                f"own function is its `__wrapped__`), or call it from the workflow"))
            assert self.fatal is not None
            raise self.fatal
        seq = self._next_seq
        self._next_seq += 1
        return seq

    def recorded(self, seq: int, kinds: Sequence[StepKind], name: str) -> Step | None:
        """The recorded step at ``seq``, checked against what the code asks for now."""
        step = self.history.get(seq)
        if step is None:
            return None
        if step.kind not in kinds or step.name != name:
            # fatal even if the code catches it: the run cannot go on from a wrong history
            self.fail_with(NonDeterminismError(
                f"run {self.run.run_id} step {seq}: history has {step.kind.value} "
                f"'{step.name}', code called {kinds[0].value} '{name}' — the workflow's code "
                f"changed under a running run"
            ))
            assert self.fatal is not None
            raise self.fatal
        self.workflow_time = max(self.workflow_time, step.recorded_at)
        return step

    def wait_at(self, seq: int, kind: WaitKind) -> Wait | None:
        """The stored wait for position ``seq`` if the run was suspended there."""
        wait = self.run.wait
        return wait if wait is not None and wait.seq == seq and wait.kind == kind else None

    def buffer(self, step: Step) -> None:
        """Record a step with the next commit (timer fired, timeout: no side effect)."""
        self._pending.append(step)
        self.history[step.seq] = step
        self.workflow_time = max(self.workflow_time, step.recorded_at)

    def _take_pending(self) -> list[Step]:
        steps, self._pending = self._pending, []
        return steps

    async def commit(self, step: Step, outbox: Sequence[CloudEventRecord] = ()) -> None:
        """Commit ``step`` (with buffered steps and emitted events) under the lease."""
        steps = [*self._take_pending(), step]
        attempts = self.attempts.ahead(self._next_seq)
        await self._write(lambda: self.store.append_steps(self.lease, steps, outbox,
                                                          attempts=attempts),
                          seq=step.seq)
        self.attempts.committed(attempts)
        self.history[step.seq] = step
        self.workflow_time = max(self.workflow_time, step.recorded_at)

    async def suspend(self, wait: Wait) -> None:
        """Commit a timer or retry wait and unwind the workflow."""
        steps = self._take_pending()
        await self._write(lambda: self.store.suspend(self.lease, wait, steps),
                          settled=("waiting_for_timer",))
        self.suspended_until = wait.wake_at
        self._unwind(Suspended)
        raise Suspended

    async def begin_event_wait(self, wait: Wait) -> Step:
        """Consume an event already there, or commit the wait and unwind."""
        steps = self._take_pending()
        result: EventWaitResult | None = await self._write(
            lambda: self.store.begin_event_wait(self.lease, wait, steps),
            seq=wait.seq, on_recorded=EventWaitResult, settled=("waiting_for_event",))
        if result is None or result.consumed is None:
            self.suspended_until = wait.wake_at
            self._unwind(Suspended)
            raise Suspended
        step = result.consumed
        self.history[step.seq] = step
        self.workflow_time = max(self.workflow_time, step.recorded_at)
        return step

    async def _write(self, make: Callable[[], Awaitable[T]], *, seq: int | None = None,
                     on_recorded: Callable[[Step], T] | None = None,
                     settled: Collection[str] = ()) -> T:
        """Commit under the lease, riding out outages while it holds (``LeaseCommitter``)."""
        try:
            return await self.committer.write(make, seq=seq, on_recorded=on_recorded,
                                              settled=settled)
        except Abandoned:
            self._unwind(Abandoned)
            raise

    # -- activities ---------------------------------------------------------------------
    async def call_activity(
        self, defn: ActivityDefinition[Any, Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        """Return the recorded result of this call, or run the activity and record it."""
        seq = self.take_seq(f"activity '{defn.name}'")
        step = self.recorded(seq, (StepKind.ACTIVITY,), defn.name)
        if step is not None:
            return self._activity_outcome(defn, step)
        retry_wait = self.wait_at(seq, WaitKind.RETRY)
        if retry_wait is not None and (retry_wait.wake_at or 0) > self.clock():
            await self.suspend(retry_wait)
        ended = retry_wait.attempt if retry_wait else 0
        lost = self.attempts.lost_attempt(seq, ended)
        if lost is not None:  # a worker died during that attempt: it counts as failed
            self.attempts.ended(seq)
            await self._activity_failed(defn, seq, lost,
                                        worker_lost_during(lost, defn.retry.max_attempts))
            raise AssertionError("unreachable")
        attempt = ended + 1
        await self.attempts.started(seq, attempt)
        actx = WorkflowContext(self, activity_seq=seq, attempt=attempt)
        inside = current_activity.set(defn.name)
        try:
            coro = defn.fn(actx, *args, **kwargs)
            value = await (asyncio.wait_for(coro, defn.timeout) if defn.timeout else coro)
            text = codec.dumps(codec.to_jsonable(value))
            if len(text) > MAX_RESULT_BYTES // 4:  # cheap first: most results are small
                try:
                    check_size(f"activity '{defn.name}' result", text, MAX_RESULT_BYTES)
                except Exception as exc:
                    raise TerminalError(str(exc)) from None
        except Exception as exc:
            self.attempts.ended(seq)
            if self.fatal is not None:  # misuse inside the activity: no retry, the run fails
                raise self.fatal from None
            await self._activity_failed(defn, seq, attempt, exc)
            raise AssertionError("unreachable") from None
        finally:
            current_activity.reset(inside)
        self.attempts.ended(seq)
        if self.fatal is not None:
            raise self.fatal
        step = Step(seq, StepKind.ACTIVITY, defn.name, text, self.clock())
        await self.commit(step)
        return self._activity_outcome(defn, step)

    def _activity_outcome(self, defn: ActivityDefinition[Any, Any], step: Step) -> Any:
        if step.error is not None:
            err = codec.loads(step.error)
            raise ActivityError(defn.name, err["type"], err["message"], err["attempts"])
        return codec.rebuild(
            codec.loads(step.value), defn.signature.return_type, f"activity '{defn.name}' result"
        )

    async def _activity_failed(
        self, defn: ActivityDefinition[Any, Any], seq: int, attempt: int, exc: Exception
    ) -> None:
        if isinstance(exc, TimeoutError) and defn.timeout is not None:
            message = f"timed out after {defn.timeout:g} s"
        else:
            message = str(exc)
        error_type = type(exc).__name__
        policy = defn.retry
        final = (
            isinstance(exc, (TerminalError, *policy.non_retryable))
            or attempt >= policy.max_attempts
        )
        if final:
            error = codec.dumps({"type": error_type, "message": message, "attempts": attempt})
            await self.commit(Step(seq, StepKind.ACTIVITY, defn.name, None, self.clock(), error))
            raise ActivityError(defn.name, error_type, message, attempt)
        delay = policy.delay_after(attempt)
        log.info("run %s activity %s attempt %d failed (%s: %s); retry in %.3gs",
                 self.run.run_id, defn.name, attempt, error_type, message, delay)
        await self.suspend(Wait(seq=seq, kind=WaitKind.RETRY, wake_at=self.clock() + delay,
                                attempt=attempt, last_error=f"{error_type}: {message}"))

