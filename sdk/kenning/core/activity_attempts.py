"""Activities of one run: calls from the code, attempts on the worker's loop, retries.

The code's call issues an activity step; the engine starts its attempt on the worker's
event loop (activities do input and output; workflow code does not), records that the
attempt started before it runs, and turns its end into the step's outcome (a value, or the
error once the retry policy gives up) or a retry delay the run waits out like a timer.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from typing import TYPE_CHECKING, Any

from kenning.core import codec
from kenning.core.context import WorkflowContext, current_activity
from kenning.core.definitions import ActivityDefinition
from kenning.core.errors import ActivityError, TerminalError
from kenning.core.models import Step, StepKind, Wait, WaitKind
from kenning.core.recovery import worker_lost_during
from kenning.core.slots import ActivityCall, Slot, SlotState
from kenning.core.validation import MAX_RESULT_BYTES, check_size

if TYPE_CHECKING:
    from kenning.core.execution import RunExecution

log = logging.getLogger(__name__)

_Ended = tuple[Slot, int, str | None, Exception | None]


class AttemptRunner:
    """Starts, watches and ends the activity attempts of one run execution."""

    def __init__(self, execution: RunExecution) -> None:
        # weak: the execution owns the runner, and a cycle would outlive the run until the
        # next full garbage collection
        self._execution = weakref.ref(execution)
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._ended: list[_Ended] = []
        self._to_launch: list[Slot] = []  # slots whose next attempt is to start
        self._wake: asyncio.Event | None = None  # made when the engine first waits

    @property
    def execution(self) -> RunExecution:
        """The execution whose attempts these are."""
        execution = self._execution()
        if execution is None:
            raise RuntimeError("the run's execution has ended")
        return execution

    @property
    def running(self) -> bool:
        """Whether an attempt is running."""
        return bool(self._tasks)

    # -- the code's side ----------------------------------------------------------------
    async def call(self, defn: ActivityDefinition[Any, Any], args: tuple[Any, ...],
                   kwargs: dict[str, Any]) -> Any:
        """The activity's result (recorded, or from a new attempt); raises its error."""
        ex = self.execution
        seq = ex.take_seq(f"activity '{defn.name}'")
        recorded = ex.recorded(seq, (StepKind.ACTIVITY,), defn.name)
        retry = ex.stored_wait(seq, WaitKind.RETRY)
        slot, future = ex.future_slot(
            seq, StepKind.ACTIVITY, defn.name, recorded, wait=retry,
            state=SlotState.LAUNCH if retry is None else SlotState.WAITING)
        slot.call = ActivityCall(defn, args, kwargs)
        slot.attempt = retry.attempt if retry is not None else 0
        if slot.state is SlotState.LAUNCH:
            self._to_launch.append(slot)
        return outcome_of(defn, await future)

    # -- the engine's side --------------------------------------------------------------
    async def launch_all(self) -> None:
        """Start every attempt the code asked for, each recorded as started first.

        An attempt that is all the code waits on (the straight-line case) runs inline,
        without a task of its own: nothing else can happen meanwhile."""
        if not self._to_launch:
            return
        ex = self.execution
        starting: list[Slot] = []
        launching, self._to_launch = sorted(self._to_launch, key=lambda s: s.seq), []
        for slot in launching:
            if slot.state is not SlotState.LAUNCH or ex.slots.get(slot.seq) is not slot:
                continue
            assert slot.call is not None
            lost = ex.attempts.lost_attempt(slot.seq, slot.attempt)
            if lost is not None:  # a worker died during that attempt: it counts as failed
                ex.attempts.ended(slot.seq)
                self._failed(slot, lost, worker_lost_during(
                    lost, slot.call.definition.retry.max_attempts))
                continue
            slot.attempt += 1
            slot.state = SlotState.RUNNING
            starting.append(slot)
        if not starting:
            return
        for slot in starting:  # one write for all (most often none: recorded ahead)
            await ex.attempts.started(slot.seq, slot.attempt)
        alone = len(starting) == 1 and not self._tasks and not any(
            s.state is not SlotState.RUNNING for s in ex.slots.values())
        if alone:
            await self._run_attempt(starting[0])
            self._take_ends()
            return
        for slot in starting:
            if ex.slots.get(slot.seq) is slot:
                slot.task = asyncio.get_running_loop().create_task(
                    self._run_attempt(slot), name=f"kenning-activity-{ex.run.run_id}-{slot.seq}")
                self._tasks[slot.seq] = slot.task

    async def _run_attempt(self, slot: Slot) -> None:
        assert slot.call is not None
        defn = slot.call.definition
        actx = WorkflowContext(self.execution, activity_seq=slot.seq, attempt=slot.attempt)
        inside = current_activity.set(defn.name)  # steps called from here on are misuse
        text: str | None = None
        error: Exception | None = None
        try:
            coro = defn.fn(actx, *slot.call.args, **slot.call.kwargs)
            value = await (asyncio.wait_for(coro, defn.timeout) if defn.timeout else coro)
            text = codec.dumps(codec.to_jsonable(value))
            if len(text) > MAX_RESULT_BYTES // 4:  # cheap first: most results are small
                try:
                    check_size(f"activity '{defn.name}' result", text, MAX_RESULT_BYTES)
                except Exception as exc:
                    raise TerminalError(str(exc)) from None
        except Exception as exc:
            error = exc
        finally:
            current_activity.reset(inside)
        self._ended.append((slot, slot.attempt, text, error))
        if self._wake is not None:
            self._wake.set()

    async def wait_for_one(self, timeout: float | None) -> bool:
        """Wait up to ``timeout`` seconds (None: as long as it takes) for attempts to end and
        take their ends in; False when none ended in time."""
        if not self._ended:
            if self._wake is None:
                self._wake = asyncio.Event()
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except TimeoutError:
                return False
        self._take_ends()
        return True

    def _take_ends(self) -> None:
        ended, self._ended = self._ended, []
        for end in ended:
            self._take_end(*end)

    def _take_end(self, slot: Slot, attempt: int, text: str | None,
                  error: Exception | None) -> None:
        ex = self.execution
        if slot.task is not None and self._tasks.get(slot.seq) is slot.task:
            del self._tasks[slot.seq]
        if ex.slots.get(slot.seq) is not slot:
            return  # cancelled by the code meanwhile
        ex.attempts.ended(slot.seq)
        if ex.fatal is not None:
            return  # misuse inside the activity: no retry, the run fails
        if error is None:
            ex.ready(slot, Step(slot.seq, StepKind.ACTIVITY, slot.name, text, ex.clock()))
        else:
            self._failed(slot, attempt, error)

    def _failed(self, slot: Slot, attempt: int, exc: Exception) -> None:
        ex = self.execution
        assert slot.call is not None
        defn = slot.call.definition
        if isinstance(exc, TimeoutError) and defn.timeout is not None:
            message = f"timed out after {defn.timeout:g} s"
        else:
            message = str(exc)
        error_type = type(exc).__name__
        policy = defn.retry
        if isinstance(exc, (TerminalError, *policy.non_retryable)) \
                or attempt >= policy.max_attempts:
            error = codec.dumps({"type": error_type, "message": message, "attempts": attempt})
            ex.ready(slot, Step(slot.seq, StepKind.ACTIVITY, defn.name, None, ex.clock(),
                                error))
            return
        delay = policy.delay_after(attempt)
        log.info("run %s activity %s attempt %d failed (%s: %s); retry in %.3gs",
                 ex.run.run_id, defn.name, attempt, error_type, message, delay)
        slot.state = SlotState.WAITING
        slot.attempt = attempt
        slot.wait = Wait(seq=slot.seq, kind=WaitKind.RETRY, wake_at=ex.clock() + delay,
                         attempt=attempt, last_error=f"{error_type}: {message}")

    def retry_due(self, slot: Slot) -> None:
        """The retry delay of ``slot`` ran out: its next attempt starts."""
        slot.state, slot.wait = SlotState.LAUNCH, None
        self._to_launch.append(slot)

    def cancel(self, slot: Slot) -> None:
        """The code cancelled the activity's step: its running attempt is cancelled."""
        task = self._tasks.pop(slot.seq, None)
        if task is not None:
            task.cancel()
            self.execution.attempts.ended(slot.seq)

    def stop(self) -> None:
        """The execution ended: cancel the attempts still running."""
        for task in self._tasks.values():
            task.cancel()
        self._tasks.clear()


def outcome_of(defn: ActivityDefinition[Any, Any], step: Step) -> Any:
    """The recorded result of an activity step, or its error raised."""
    if step.error is not None:
        err = codec.loads(step.error)
        raise ActivityError(defn.name, err["type"], err["message"], err["attempts"])
    return codec.rebuild(
        codec.loads(step.value), defn.signature.return_type, f"activity '{defn.name}' result"
    )
