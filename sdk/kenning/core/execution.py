"""Running one workflow run against its history: replay recorded steps, record new ones.

A ``RunExecution`` lives while its worker holds the run. The workflow's code runs on its own
``WorkflowLoop``, driven in activations: the code runs until every task of it waits on a
step; then the engine delivers one outcome (the next recorded one while replaying, else
the next one that is ready, committed first) and activates the code again. Activities run
on the worker's loop meanwhile. Steps are numbered in the order the code issues them and
delivered in the order they were first delivered, so a replay takes the same branches.
When nothing but waits (events, timers, retry delays) holds the code, the run is suspended
on all of them and the code is unwound with ``Suspended``, a ``BaseException`` that
``except Exception`` does not catch.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import traceback
from collections.abc import Awaitable, Callable, Collection, Coroutine, Sequence
from typing import Any, TypeVar

from kenning.core import codec
from kenning.core.activity_attempts import AttemptRunner
from kenning.core.committer import Abandoned, LeaseCommitter
from kenning.core.context import WorkflowContext, current_activity
from kenning.core.definitions import ActivityDefinition, WorkflowDefinition, decode_input
from kenning.core.errors import (
    ActivityError,
    NonDeterminismError,
    RunNotFound,
    StepInActivityError,
    WorkerLost,
    WorkflowBlocked,
)
from kenning.core.models import (
    ClaimedRun,
    CloudEventRecord,
    NewRun,
    RunStatus,
    Step,
    StepKind,
    Wait,
    WaitKind,
    earliest_wake,
)
from kenning.core.recovery import (
    DEFAULT_MAX_RECOVERIES,
    AttemptLog,
    poison_error,
    recovery_pause,
)
from kenning.core.slots import Slot, SlotState
from kenning.core.store import EventWaitResult, Store
from kenning.core.validation import MAX_RESULT_BYTES, check_size
from kenning.core.workflow_loop import new_workflow_loop

log = logging.getLogger(__name__)

T = TypeVar("T")
_FINISHED = ("completed", "failed")
_WAITING = ("waiting_for_event", "waiting_for_timer")
# while activities run and an event wait is open, look for its event this often (seconds)
EVENT_POLL_SECONDS = 1.0
_NO_DELIVERY = (StepKind.PATCH, StepKind.CANCELLED)


class Suspended(BaseException):
    """Unwinds a workflow whose run is now waiting; never seen by user code's handlers."""


class ContinueAsNew(BaseException):
    """Ends the run's current history and starts its workflow afresh (``continue_as_new``)."""


class Outcome(enum.StrEnum):
    """How an execution ended on this worker."""

    COMPLETED = "completed"
    FAILED = "failed"
    SUSPENDED = "suspended"
    ABANDONED = "abandoned"
    CONTINUED = "continued"


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
        self.loop = new_workflow_loop(self, f"run {self.run.run_id}")
        self.slots: dict[int, Slot] = {}
        self._next_seq = 0
        self._pending: list[Step] = []
        # lists, not deques: a few hundred executions are held at once, most of them short
        self._ready: list[Slot] = []
        # recorded outcomes in delivery order, the next one last
        self._replay = sorted((s for s in claimed.history if s.kind not in _NO_DELIVERY),
                              key=lambda s: (s.delivered_at, s.seq), reverse=True)
        self._next_ordinal = max((s.delivered_at for s in claimed.history), default=-1) + 1
        self._stored_waits = {wait.seq: wait for wait in self.run.waits}
        if self.run.wait is not None:
            self._stored_waits.setdefault(self.run.wait.seq, self.run.wait)
        self._timer_seqs: dict[asyncio.TimerHandle, int] = {}
        self._children_to_cancel: list[str] = []
        self.continue_with: str | None = None
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
        self.activities = AttemptRunner(self)

    # -- the run ------------------------------------------------------------------------
    async def execute(self) -> Outcome:
        """Run the workflow function to its end or until it waits."""
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
        main = self.loop.create_task(self.run_code(WorkflowContext(self)),
                                     name=f"kenning-workflow-{self.run.run_id}")
        try:
            return await self._drive(main)
        except Abandoned:
            self._unwind(Abandoned)
            return Outcome.ABANDONED
        finally:
            self.activities.stop()
            self.loop.dispose()
            self._release()

    def _release(self) -> None:
        """Let go of the code's steps: their futures and callbacks point back here, and a
        cycle would keep the whole execution until the next full garbage collection."""
        self.slots.clear()
        self._ready.clear()
        self._timer_seqs.clear()

    async def run_code(self, ctx: WorkflowContext) -> Any:
        """Call the workflow function with the run's input; check it used all its history."""
        args, kwargs = decode_input(self.run.input)
        args, kwargs = self.definition.signature.rebuild_arguments(args, kwargs)
        value = await self.definition.fn(ctx, *args, **kwargs)
        self._check_history_consumed()
        return value

    async def _drive(self, main: asyncio.Task[Any]) -> Outcome:
        while True:
            self._activate()
            if self._children_to_cancel:
                await self._cancel_children()
            if self.continue_with is not None:
                return await self._continue()
            if self.fatal is not None:
                return await self._fail(self.fatal)
            if main.done():
                return await self._finish(main)
            if self._replay:
                self._deliver_recorded()
                continue
            if await self._deliver_ready():
                continue
            await self.activities.launch_all()
            if self._ready or self._fire_due():
                continue
            if self.activities.running:
                await self._await_activities()
                continue
            waits = self._open_waits()
            if not waits:
                self.fail_with(self._blocked_error())
                continue
            if not await self._wait_or_suspend(waits):
                return Outcome.SUSPENDED

    def _activate(self) -> None:
        """Run the workflow's code until all its tasks wait on steps."""
        self.loop.activate()

    def call_activity(self, defn: ActivityDefinition[Any, Any], args: tuple[Any, ...],
                      kwargs: dict[str, Any]) -> Coroutine[Any, Any, Any]:
        """The code calls an activity (``ActivityDefinition.__call__``)."""
        return self.activities.call(defn, args, kwargs)

    # -- delivering outcomes ------------------------------------------------------------
    def _deliver_recorded(self) -> None:
        step = self._replay[-1]
        slot = self.slots.get(step.seq)
        if slot is None or slot.state is not SlotState.REPLAY:
            self.fail_with(NonDeterminismError(
                f"run {self.run.run_id} step {step.seq}: history has {step.kind.value} "
                f"'{step.name}' completed next, but the code {self._where_code_waits()} — the "
                f"workflow's code changed under a running run"))
            return
        self._replay.pop()
        self._deliver(slot, step)

    async def _deliver_ready(self) -> bool:
        """Commit and deliver the first live outcome that is ready; False if none is."""
        while self._ready and self.slots.get(self._ready[0].seq) is not self._ready[0]:
            self._ready.pop(0)  # the code cancelled it meanwhile
        if not self._ready:
            return False
        slot = self._ready.pop(0)
        out = slot.outcome
        assert out is not None
        step = Step(out.seq, out.kind, out.name, out.value, out.recorded_at, out.error,
                    self._next_ordinal)
        if step.kind in (StepKind.TIMER, StepKind.TIMEOUT):
            self.buffer(step)  # no side effect: committed with the next write
        else:
            await self._commit(step, slot.outbox, slot.children)
        self._next_ordinal += 1
        self._deliver(slot, step)
        return True

    def _deliver(self, slot: Slot, step: Step) -> None:
        del self.slots[slot.seq]
        self.workflow_time = max(self.workflow_time, step.recorded_at)
        slot.deliver(step)

    def ready(self, slot: Slot, outcome: Step, *, outbox: Sequence[CloudEventRecord] = (),
              children: Sequence[NewRun] = ()) -> None:
        """The outcome of a live step is known: commit and deliver it in its turn."""
        slot.state, slot.outcome = SlotState.READY, outcome
        slot.outbox, slot.children = outbox, children
        self._ready.append(slot)

    # -- waits --------------------------------------------------------------------------
    def _open_waits(self) -> list[Wait]:
        return [s.wait for s in sorted(self.slots.values(), key=lambda s: s.seq)
                if s.state is SlotState.WAITING and s.wait is not None]

    def _fire_due(self) -> bool:
        """Fire the earliest wait that is due (a timer, a deadline, a retry delay)."""
        now = self.clock()
        due = [s for s in self.slots.values() if s.state is SlotState.WAITING
               and s.wait is not None and s.wait.wake_at is not None and s.wait.wake_at <= now]
        if not due:
            return False
        slot = min(due, key=lambda s: (s.wait.wake_at, s.seq))  # type: ignore[union-attr]
        assert slot.wait is not None
        if slot.wait.kind is WaitKind.RETRY:
            self.activities.retry_due(slot)
        elif slot.wait.kind is WaitKind.TIMER:
            self.ready(slot, Step(slot.seq, StepKind.TIMER, slot.name, None, now))
        else:
            self.ready(slot, Step(slot.seq, StepKind.TIMEOUT, slot.name, None, now))
        return True

    def _next_wake(self) -> float | None:
        wakes = [s.wait.wake_at for s in self.slots.values() if s.state is SlotState.WAITING
                 and s.wait is not None and s.wait.wake_at is not None]
        return min(wakes) if wakes else None

    async def _await_activities(self) -> None:
        """Wait for an activity to end, a wait to fall due, or an event to arrive."""
        delay = None
        wake = self._next_wake()
        if wake is not None:
            delay = max(0.0, wake - self.clock())
        polling = any(w.kind is WaitKind.EVENT for w in self._open_waits())
        if polling:
            delay = EVENT_POLL_SECONDS if delay is None else min(delay, EVENT_POLL_SECONDS)
        if await self.activities.wait_for_one(delay) or not polling:
            return
        await self._wait_or_suspend(self._open_waits(), suspend=False)

    async def _wait_or_suspend(self, waits: list[Wait], *, suspend: bool = True) -> bool:
        """Take an event already there for one of ``waits``, or suspend the run on them
        (``suspend``); True when an event was taken."""
        steps = self._take_pending()
        seqs = [w.seq for w in waits if w.kind is WaitKind.EVENT]
        ordinal = self._next_ordinal
        result: EventWaitResult | None = await self._write(
            lambda: self.store.begin_waits(self.lease, waits, steps, next_ordinal=ordinal,
                                           suspend=suspend),
            seqs=seqs, on_recorded=EventWaitResult, settled=_WAITING if suspend else ())
        if result is not None and result.consumed is not None:
            step = result.consumed
            self.history[step.seq] = step
            self._next_ordinal = max(self._next_ordinal, step.delivered_at + 1)
            slot = self.slots[step.seq]
            self._deliver(slot, step)
            return True
        if suspend:
            self.suspended_until = earliest_wake(waits)
            self._unwind(Suspended)
        return False

    def stored_wait(self, seq: int, kind: WaitKind) -> Wait | None:
        """The stored wait for position ``seq`` if the run was suspended there."""
        wait = self._stored_waits.get(seq)
        return wait if wait is not None and wait.kind is kind else None

    def has_stored_wait(self, seq: int) -> bool:
        """Whether the run was suspended at position ``seq``."""
        return seq in self._stored_waits

    # -- timers (the loop's call_at) ----------------------------------------------------
    def workflow_now(self) -> float:
        """Workflow time (the loop's ``time()``)."""
        return self.workflow_time

    def start_timer(self, handle: asyncio.TimerHandle) -> None:
        """A durable timer step for ``handle`` (``asyncio.sleep``, ``wait_for``, ``sleep``)."""
        seq = self.take_seq("a timer")
        recorded = self.recorded(seq, (StepKind.TIMER,), "sleep")
        stored = self.stored_wait(seq, WaitKind.TIMER)
        wake_at = stored.wake_at if stored is not None and stored.wake_at is not None \
            else handle.when()
        self._timer_seqs[handle] = seq

        def fire(_step: Step) -> None:
            self._timer_seqs.pop(handle, None)
            self.loop.fire(handle)

        self.open_slot(seq, StepKind.TIMER, "sleep", recorded, deliver=fire,
                       wait=Wait(seq=seq, kind=WaitKind.TIMER, wake_at=wake_at))

    def cancel_timer(self, handle: asyncio.TimerHandle) -> None:
        """The code cancelled a timer before it fired."""
        seq = self._timer_seqs.pop(handle, None)
        if seq is not None:
            self.cancelled(seq)

    # -- slots --------------------------------------------------------------------------
    def open_slot(self, seq: int, kind: StepKind, name: str, recorded: Step | None, *,
                  deliver: Callable[[Step], None], wait: Wait | None = None,
                  state: SlotState = SlotState.WAITING) -> Slot:
        """Register an issued step; ``recorded`` is its recorded outcome, if any."""
        if recorded is not None:
            state = (SlotState.CANCELLED if recorded.kind is StepKind.CANCELLED
                     else SlotState.REPLAY)
            wait = None
        slot = Slot(seq, kind, name, deliver, state, recorded=recorded, wait=wait)
        self.slots[seq] = slot
        return slot

    def future_slot(self, seq: int, kind: StepKind, name: str, recorded: Step | None, *,
                    wait: Wait | None = None, state: SlotState = SlotState.WAITING
                    ) -> tuple[Slot, asyncio.Future[Step]]:
        """``open_slot`` for a step the code awaits: its outcome resolves the future, and
        cancelling the future (the code's task was cancelled) cancels the step."""
        future: asyncio.Future[Step] = self.loop.create_future()

        def deliver(step: Step) -> None:
            if not future.done():
                future.set_result(step)

        slot = self.open_slot(seq, kind, name, recorded, deliver=deliver, wait=wait,
                              state=state)
        future.add_done_callback(lambda f: self.cancelled(seq) if f.cancelled() else None)
        return slot, future

    def cancelled(self, seq: int) -> None:
        """The code cancelled the step at ``seq`` before its outcome reached it."""
        slot = self.slots.pop(seq, None)
        if slot is None or self._unwinding is not None:
            return
        if slot.state is SlotState.CANCELLED:
            return  # recorded so: the replay cancels it again
        if slot.state is SlotState.REPLAY:
            self.fail_with(NonDeterminismError(
                f"run {self.run.run_id} step {seq}: history has {slot.describe()} completed, "
                f"the code cancelled it before — the workflow's code changed under a running "
                f"run"))
            return
        self.activities.cancel(slot)
        self.buffer(Step(seq, StepKind.CANCELLED, slot.name,
                         codec.dumps({"kind": slot.kind.value}), self.clock()))
        for hook in slot.on_cancel:
            hook()

    def cancel_child(self, child_id: str) -> None:
        """The code cancelled its wait for a child: the child is cancelled too."""
        self._children_to_cancel.append(child_id)

    async def _cancel_children(self) -> None:
        ids, self._children_to_cancel = self._children_to_cancel, []
        for child_id in ids:
            with contextlib.suppress(RunNotFound):
                await self.store.cancel_run(
                    child_id, f"its parent run {self.run.run_id} stopped waiting for it")

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
        """The recorded step at ``seq``, checked against what the code asks for now (a
        recorded cancellation of the same step fits too)."""
        step = self.history.get(seq)
        if step is None:
            return None
        if (step.kind not in kinds and step.kind is not StepKind.CANCELLED) \
                or step.name != name:
            # fatal even if the code catches it: the run cannot go on from a wrong history
            self.fail_with(NonDeterminismError(
                f"run {self.run.run_id} step {seq}: history has {step.kind.value} "
                f"'{step.name}', code called {kinds[0].value} '{name}' — the workflow's code "
                f"changed under a running run"
            ))
            assert self.fatal is not None
            raise self.fatal
        return step

    def buffer(self, step: Step) -> None:
        """Record a step with the next commit (timer fired, cancelled: no side effect)."""
        self._pending.append(step)
        self.history[step.seq] = step

    def _take_pending(self) -> list[Step]:
        steps, self._pending = self._pending, []
        return steps

    async def _commit(self, step: Step, outbox: Sequence[CloudEventRecord] = (),
                      children: Sequence[NewRun] = ()) -> None:
        """Commit ``step`` (with buffered steps, emitted events, child runs) under the lease."""
        steps = [*self._take_pending(), step]
        attempts = self.attempts.ahead(self._next_seq)
        await self._write(lambda: self.store.append_steps(self.lease, steps, outbox,
                                                          attempts=attempts,
                                                          children=children),
                          seqs=(step.seq,))
        self.attempts.committed(attempts)
        self.history[step.seq] = step

    async def _write(self, make: Callable[[], Awaitable[T]], *, seqs: Collection[int] = (),
                     on_recorded: Callable[[Step], T] | None = None,
                     settled: Collection[str] = ()) -> T:
        """Commit under the lease, riding out outages while it holds (``LeaseCommitter``)."""
        return await self.committer.write(make, seqs=seqs, on_recorded=on_recorded,
                                          settled=settled)

    # -- ends ---------------------------------------------------------------------------
    async def _finish(self, main: asyncio.Task[Any]) -> Outcome:
        if main.cancelled():
            return await self._fail(self._blocked_error("its main task was cancelled"))
        exc = main.exception()
        if self._unwinding is not None:
            return self._swallowed()
        if exc is not None:
            if isinstance(exc, Exception):
                return await self._fail(self.fatal or exc)
            raise exc  # a BaseException of the interpreter (KeyboardInterrupt, SystemExit)
        if self._replay:
            step = self._replay[-1]
            self.fail_with(NonDeterminismError(
                f"run {self.run.run_id} step {step.seq}: history has {step.kind.value} "
                f"'{step.name}' completed, code returned before its outcome — the workflow's "
                f"code changed under a running run"))
            assert self.fatal is not None
            return await self._fail(self.fatal)
        try:
            result = check_size("result", codec.dumps(codec.to_jsonable(main.result())),
                                MAX_RESULT_BYTES)
        except Exception as error:
            return await self._fail(error)
        steps = self._take_pending()
        await self._write(
            lambda: self.store.finish_run(self.lease, RunStatus.COMPLETED, result=result,
                                          steps=steps),
            settled=_FINISHED,
        )
        return Outcome.COMPLETED

    async def _continue(self) -> Outcome:
        assert self.continue_with is not None
        payload = self.continue_with
        steps = self._take_pending()
        await self._write(lambda: self.store.continue_run(self.lease, payload, steps),
                          settled=("pending",))
        self._unwind(Suspended)
        return Outcome.CONTINUED

    def fail_with(self, error: Exception) -> None:
        """Fail the run with ``error`` at its next step or its end (misuse was detected)."""
        if self.fatal is None:
            self.fatal = error

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

    def _unwind(self, kind: type[Suspended | Abandoned]) -> None:
        """Raise ``kind`` in every task of the code still waiting, so that its ``finally``
        blocks run; tasks that swallow it and wait again are dropped."""
        if self._unwinding is not None:
            return
        self._unwinding, self._unwound_at = kind, self._next_seq - 1
        unwound = [t for t in self.loop.tasks if not t.done()]
        raised: list[BaseException] = []
        for _ in range(3):
            waiting = [t for t in unwound if not t.done()]
            if not waiting:
                break
            for task in waiting:
                waiter = getattr(task, "_fut_waiter", None)
                if waiter is not None and not waiter.done():
                    raised.append(kind())
                    waiter.set_exception(raised[-1])
            self.loop.activate()
        if any(not t.done() or _swallowed_by(t, kind) for t in unwound):
            self._swallowed()
        for error in raised:  # its frames hold the future that holds it: a cycle
            error.__traceback__ = None

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

    def _where_code_waits(self) -> str:
        issued = [s.describe() + f" (step {s.seq})" for s in sorted(
            self.slots.values(), key=lambda s: s.seq)]
        return f"waits on {', '.join(issued)}" if issued else "waits on no step"

    def _blocked_error(self, why: str | None = None) -> WorkflowBlocked:
        why = why or ("the workflow waits on something that is not a step (an asyncio "
                      "primitive nothing will set, a task nothing will finish)")
        return WorkflowBlocked(
            f"run {self.run.run_id}: {why}; workflow code may only wait on steps — "
            f"activities, wait_event, sleep, child workflows — and on tasks and primitives of "
            f"its own that those resolve")


def _swallowed_by(task: asyncio.Task[Any], kind: type[BaseException]) -> bool:
    """Whether ``task``, unwound with ``kind``, ended some other way (it caught it)."""
    if task.cancelled():
        return False
    return not isinstance(task.exception(), kind)

