"""Child workflows: ``run_child`` and ``start_child`` of a ``WorkflowDefinition``.

Starting a child is a step: the child run is created in the same commit that records it,
pending, with ``parent_run_id`` set, under a deterministic id (``<parent id>-<step>`` unless
given). Its result is another step: a wait for the event the store addresses to the parent
when the child ends (``CHILD_FINISHED_TYPE``). A failed or cancelled child raises
``ChildWorkflowError``; cancelling that wait (the loser of a race) cancels the child;
cancelling the parent cancels its children in the store.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from kenning.core import codec
from kenning.core.context import WorkflowContext
from kenning.core.errors import ChildWorkflowError, ConfigurationError
from kenning.core.events import record_from_json
from kenning.core.models import CHILD_FINISHED_TYPE, NewRun, Step, StepKind, Wait, WaitKind
from kenning.core.slots import SlotState
from kenning.core.steps import step_execution

if TYPE_CHECKING:
    from kenning.core.definitions import WorkflowDefinition
    from kenning.core.execution import RunExecution

R = TypeVar("R")


class ChildHandle(Generic[R]):
    """A started child run: ``run_id``, and ``await handle.result()`` for its result."""

    def __init__(self, ctx: WorkflowContext, workflow: WorkflowDefinition[Any, R],
                 run_id: str) -> None:
        self._ctx = ctx
        self.workflow = workflow
        self.run_id = run_id
        self._outcome: asyncio.Future[Step] | None = None
        self._awaiting = 0

    async def result(self) -> R:
        """Wait durably for the child to end; its result, or ``ChildWorkflowError``.

        Several tasks may await it: the wait (and with it the child) is cancelled only when
        the last of them is cancelled; a later call waits again for the child's end."""
        if self._outcome is None or self._outcome.cancelled():
            self._outcome = _wait_for_child(step_execution(self._ctx, "a child's result"),
                                            self.run_id)
        outcome = self._outcome
        self._awaiting += 1
        try:
            step = await asyncio.shield(outcome)
        except asyncio.CancelledError:
            if self._awaiting == 1:
                outcome.cancel()  # nobody else waits for the child: it is cancelled too
            raise
        finally:
            self._awaiting -= 1
        assert step.value is not None
        data = codec.loads(record_from_json(step.value).data or "null")
        if data.get("status") != "completed":
            raise ChildWorkflowError(self.run_id, self.workflow.name,
                                     str(data.get("status")), data.get("error"))
        return codec.rebuild(data.get("result"),  # type: ignore[no-any-return]
                             self.workflow.signature.return_type,
                             f"child workflow '{self.workflow.name}' result")

    def __repr__(self) -> str:
        return f"<child {self.run_id} of workflow {self.workflow.name}>"


async def start_child(ctx: WorkflowContext, workflow: WorkflowDefinition[Any, R],
                      args: tuple[Any, ...], kwargs: dict[str, Any],
                      run_id: str | None) -> ChildHandle[R]:
    """Start a child run of ``workflow``; returns its handle once the start is recorded."""
    ex = step_execution(ctx, f"start_child('{workflow.name}')")
    if run_id is not None and (not isinstance(run_id, str) or not run_id):
        raise ConfigurationError("a child's run_id must be a non-empty string")
    seq = ex.take_seq(f"start_child('{workflow.name}')")
    recorded = ex.recorded(seq, (StepKind.CHILD,), workflow.name)
    slot, future = ex.future_slot(seq, StepKind.CHILD, workflow.name, recorded,
                                  state=SlotState.READY)
    if recorded is None:
        child_id = run_id or f"{ex.run.run_id}-{seq}"
        new = NewRun(run_id=child_id, namespace=ex.run.namespace, workflow=workflow.name,
                     input=workflow.encode_arguments(args, kwargs), upgrade=workflow.upgrade,
                     parent_run_id=ex.run.run_id)
        ex.ready(slot, Step(seq, StepKind.CHILD, workflow.name,
                            codec.dumps({"run_id": child_id}), ex.clock()), children=[new])
    step = await future
    assert step.value is not None
    return ChildHandle(ctx, workflow, str(codec.loads(step.value)["run_id"]))


def _wait_for_child(ex: RunExecution, child_id: str) -> asyncio.Future[Step]:
    seq = ex.take_seq(f"the result of child run {child_id}")
    recorded = ex.recorded(seq, (StepKind.EVENT,), CHILD_FINISHED_TYPE)
    wait = None
    if recorded is None:
        wait = ex.stored_wait(seq, WaitKind.EVENT) or Wait(
            seq=seq, kind=WaitKind.EVENT, event_type=CHILD_FINISHED_TYPE,
            match={"subject": child_id}, started_at=ex.clock())
    slot, future = ex.future_slot(seq, StepKind.EVENT, CHILD_FINISHED_TYPE, recorded,
                                  wait=wait)
    slot.on_cancel.append(lambda: ex.cancel_child(child_id))
    return future
