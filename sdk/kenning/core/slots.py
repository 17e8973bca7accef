"""``Slot``: a step the workflow's code issued and has not had the outcome of yet.

The code issues steps in its own order (their ``seq``); outcomes reach it in the order they
were first delivered (their ``ordinal``). A slot holds what the engine needs between the
two: how to deliver the outcome, the recorded outcome waiting for its turn on replay, the
wait the run holds for it (timer, event, retry), the activity to run and its attempt.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from kenning.core.definitions import ActivityDefinition
from kenning.core.models import CloudEventRecord, NewRun, Step, StepKind, Wait


class SlotState(enum.Enum):
    """Where a slot's outcome comes from."""

    REPLAY = "replay"  # recorded: delivered when its ordinal comes up
    CANCELLED = "cancelled"  # recorded as cancelled: the code will cancel it again
    WAITING = "waiting"  # live: a timer, an event or a retry delay holds it
    LAUNCH = "launch"  # live: an activity attempt to start
    RUNNING = "running"  # live: an activity attempt runs on the worker's loop
    READY = "ready"  # live: the outcome is known and waits to be committed and delivered


@dataclass(frozen=True, slots=True)
class ActivityCall:
    """An activity the code called, with its arguments."""

    definition: ActivityDefinition[Any, Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]


@dataclass(eq=False, slots=True)
class Slot:
    """One issued step (see the module docstring)."""

    seq: int
    kind: StepKind
    name: str
    deliver: Callable[[Step], None]
    state: SlotState
    recorded: Step | None = None
    wait: Wait | None = None
    call: ActivityCall | None = None
    attempt: int = 0  # the activity's last attempt started
    task: asyncio.Task[Any] | None = None
    outcome: Step | None = None
    outbox: Sequence[CloudEventRecord] = ()
    children: Sequence[NewRun] = ()
    # run when the code cancels the step (a child's result: the child is cancelled too)
    on_cancel: list[Callable[[], None]] = field(default_factory=list)

    def describe(self) -> str:
        """The step as errors name it: ``activity 'charge'``."""
        return f"{self.kind.value} '{self.name}'"
