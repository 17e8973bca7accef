"""``WorkflowContext``: what workflow and activity code sees of its run."""

from __future__ import annotations

import random as _random
import uuid as _uuid
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from kenning.core.errors import KenningError

if TYPE_CHECKING:
    from kenning.core.execution import RunExecution

_UUID_NAMESPACE = _uuid.UUID("6f1c1d0e-6b2f-4c53-9a43-6b656e6e696e")

# the name of the activity whose code runs in this task (and the tasks it creates): a step
# called while it is set comes from inside an activity, whatever ctx it was given
current_activity: ContextVar[str | None] = ContextVar("kenning_current_activity", default=None)


class WorkflowContext:
    """The handle a workflow passes to its steps; deterministic helpers for replay.

    Inside a workflow, ``now()``, ``uuid()`` and ``random()`` return the same values on
    every replay. Inside an activity (which never replays) they are the real thing, and
    ``idempotency_key`` and ``attempt`` describe the call.
    """

    def __init__(
        self, execution: RunExecution, *, activity_seq: int | None = None, attempt: int = 0
    ) -> None:
        self._execution = execution
        self._activity_seq = activity_seq
        self._attempt = attempt
        self._uuid_counter = 0
        self._random: _random.Random | None = None

    @property
    def run_id(self) -> str:
        """The id of the run."""
        return self._execution.run.run_id

    @property
    def namespace(self) -> str:
        """The namespace the run belongs to."""
        return self._execution.run.namespace

    @property
    def workflow_name(self) -> str:
        """The workflow's durable name."""
        return self._execution.run.workflow

    @property
    def in_activity(self) -> bool:
        """True inside an activity."""
        return self._activity_seq is not None

    @property
    def idempotency_key(self) -> str:
        """A key stable across an activity's retries: ``<run id>:<step>``."""
        if self._activity_seq is None:
            raise KenningError("idempotency_key exists only inside an activity")
        return f"{self.run_id}:{self._activity_seq}"

    @property
    def attempt(self) -> int:
        """The activity's attempt number, from 1 (0 outside an activity)."""
        return self._attempt

    def patched(self, change_id: str) -> bool:
        """True where the code change ``change_id`` applies: on live execution and on
        replay of a history recorded with it; False while replaying a history recorded
        before it. Keep both branches until no run from before the change is left."""
        if self.in_activity:
            raise KenningError("ctx.patched may only be called in a workflow, not in an "
                               "activity")
        from kenning.core.patching import patched

        return patched(self._execution, change_id)

    def now(self) -> datetime:
        """Workflow time: the time of the latest recorded step, the same on every replay."""
        if self.in_activity:
            return datetime.now(UTC)
        return datetime.fromtimestamp(self._execution.workflow_time, UTC)

    def uuid(self) -> _uuid.UUID:
        """A UUID that is the same on every replay of this run."""
        if self.in_activity:
            return _uuid.uuid4()
        self._uuid_counter += 1
        return _uuid.uuid5(_UUID_NAMESPACE, f"{self.run_id}/{self._uuid_counter}")

    def random(self) -> float:
        """A float in [0, 1) from a generator seeded by the run id (replay-stable)."""
        if self.in_activity:
            return _random.random()
        if self._random is None:
            self._random = _random.Random(self.run_id)
        return self._random.random()
