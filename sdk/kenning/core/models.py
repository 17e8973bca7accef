"""Typed rows of the store: runs, history steps, events and the waits that join them."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


class RunStatus(enum.StrEnum):
    """Where a run is in its life. Kubernetes phases are the same words in CamelCase."""

    PENDING = "pending"
    RUNNING = "running"
    WAITING_FOR_EVENT = "waiting_for_event"
    WAITING_FOR_TIMER = "waiting_for_timer"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        """True for the three end states."""
        return self in _FINISHED

    @property
    def phase(self) -> str:
        """The Kubernetes phase: ``waiting_for_event`` -> ``WaitingForEvent``."""
        return "".join(part.capitalize() for part in self.value.split("_"))


_FINISHED = frozenset({RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED})


class StepKind(enum.StrEnum):
    """What a history entry records."""

    ACTIVITY = "activity"
    EVENT = "event"
    TIMEOUT = "timeout"
    TIMER = "timer"
    SEND = "send"
    PATCH = "patch"
    CHILD = "child"
    """A child run started: ``value`` is JSON ``{"run_id": ...}``, ``name`` its workflow."""
    CANCELLED = "cancelled"
    """A step the code cancelled before it completed (the loser of a race); ``name`` is the
    cancelled step's name, ``value`` JSON ``{"kind": <its kind>}``."""


class WaitKind(enum.StrEnum):
    """Why a suspended run waits."""

    EVENT = "event"
    TIMER = "timer"
    RETRY = "retry"


@dataclass(frozen=True, slots=True)
class Wait:
    """What a suspended run waits for, stored on its row.

    ``seq`` is the history position the wait will fill. ``wake_at`` is the timer's due time,
    the event wait's deadline, or the retry's next attempt (unix seconds).
    """

    seq: int
    kind: WaitKind
    wake_at: float | None = None
    event_type: str | None = None
    match: dict[str, Any] | None = None
    lookback: float | None = None
    started_at: float | None = None
    attempt: int = 0
    last_error: str | None = None
    # further event types a first-of-several wait takes (``event_type`` is the first)
    other_types: tuple[str, ...] = ()

    @property
    def event_types(self) -> tuple[str, ...]:
        """Every event type this wait takes, the first one first."""
        if self.event_type is None:
            return self.other_types
        return (self.event_type, *self.other_types)

    @property
    def step_name(self) -> str:
        """The history name of the step this wait fills: the event types joined by ``|``
        (an event wait), ``sleep`` (a timer), or the empty string (a retry)."""
        if self.kind is WaitKind.EVENT:
            return EVENT_TYPES_SEPARATOR.join(self.event_types)
        return "sleep" if self.kind is WaitKind.TIMER else ""


def earliest_wake(waits: Sequence[Wait]) -> float | None:
    """The earliest ``wake_at`` of ``waits``, or ``None``."""
    wakes = [w.wake_at for w in waits if w.wake_at is not None]
    return min(wakes) if wakes else None


EVENT_TYPES_SEPARATOR = "|"
"""Joins the event types of a first-of-several wait into its step's name."""

CHILD_FINISHED_TYPE = "kenning.child.finished"
"""The event a finished (completed, failed, cancelled) child run addresses to its parent:
``source`` ``/kenning/<namespace>/runs/<child>``, ``subject`` the child's run id, ``id``
``<child>/finished/<child chapter>``, data ``{"run_id", "status", "result", "error"}``
(``result`` is the child's result as JSON, or null)."""


@dataclass(frozen=True, slots=True)
class Run:
    """One workflow run as the store holds it."""

    run_id: str
    namespace: str
    workflow: str
    input: str
    status: RunStatus
    created_at: float
    epoch: int = 0
    result: str | None = None
    error: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    updated_at: float | None = None
    lease_owner: str | None = None
    lease_expires: float | None = None
    wait: Wait | None = None
    pool: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    # activity attempts started and not known to have ended, by history position
    activity_attempts: dict[int, int] = field(default_factory=dict)
    # claims since the run last made progress that found its previous worker lost
    recoveries: int = 0
    build_id: str | None = None
    upgrade: str = "pinned"
    # every wait the run is suspended on, by seq (``wait`` is the first of them)
    waits: tuple[Wait, ...] = ()
    # the ordinal the next step delivered to the code takes (see ``Step.ordinal``): an event
    # the store records while the run waits takes it
    wait_ordinal: int | None = None
    # the run that started this one as its child, if any
    parent_run_id: str | None = None
    # how many times the run continued as new: its current history is chapter ``chapter``
    chapter: int = 0


UPGRADE_PINNED = "pinned"
"""A run stays on the build it started on (the default)."""
UPGRADE_AUTO = "auto"
"""A run may be resumed by a worker of any build."""
UPGRADE_POLICIES = (UPGRADE_PINNED, UPGRADE_AUTO)


@dataclass(frozen=True, slots=True)
class NewRun:
    """What a start asks the store to create; ``input`` is JSON text.

    ``build_id`` pins the run to a build at once (default: the build of the worker that
    first claims it); ``upgrade="auto"`` lets workers of any build resume it.
    """

    run_id: str
    namespace: str
    workflow: str
    input: str
    pool: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    build_id: str | None = None
    upgrade: str = UPGRADE_PINNED
    parent_run_id: str | None = None


@dataclass(frozen=True, slots=True)
class ClaimScope:
    """Which runs a worker may claim besides their workflow: namespace, pool and build.

    ``namespaces`` ``None`` means any. A run with no pool fits every pool; a run naming a
    pool fits only a worker of that pool. A run fits a worker of the build it started on;
    one that has not started yet, or is marked ``upgrade="auto"`` (on the run, or through a
    workflow in ``auto_upgrade``), fits any build. ``drain`` keeps a worker to the runs
    already started on its own build: an old version finishing its runs takes no new ones.
    The first claim records the worker's ``build_id`` on the run.
    """

    namespaces: tuple[str, ...] | None = None
    pool: str | None = None
    build_id: str | None = None
    auto_upgrade: tuple[str, ...] = ()
    drain: bool = False


@dataclass(frozen=True, slots=True)
class BuildCount:
    """Unfinished runs of one (namespace, pool, workflow, build, upgrade policy)."""

    namespace: str
    pool: str | None
    workflow: str
    build_id: str | None
    upgrade: str
    unfinished: int
    runnable: int


@dataclass(frozen=True, slots=True)
class Step:
    """One entry of a run's history. ``value`` and ``error`` are JSON text.

    ``seq`` is the order in which the code issued its steps; ``ordinal`` the order in which
    their outcomes were delivered to the code (they differ where steps run concurrently);
    ``None`` means ``seq`` (histories recorded before steps could run concurrently, and steps
    that deliver nothing: patch markers, cancellations)."""

    seq: int
    kind: StepKind
    name: str
    value: str | None
    recorded_at: float
    error: str | None = None
    ordinal: int | None = None

    @property
    def delivered_at(self) -> int:
        """The delivery position: ``ordinal``, or ``seq`` where none was recorded."""
        return self.seq if self.ordinal is None else self.ordinal


@dataclass(frozen=True, slots=True)
class Chapter:
    """A closed chapter of a run that continued as new: its input and its history."""

    run_id: str
    chapter: int
    input: str
    closed_at: float
    steps: int


@dataclass(frozen=True, slots=True)
class Lease:
    """A worker's hold on a run; every write under it is fenced by ``epoch``."""

    run_id: str
    owner: str
    epoch: int


@dataclass(frozen=True, slots=True)
class ClaimedRun:
    """A run a worker just claimed, with its whole history (loaded in one query)."""

    run: Run
    lease: Lease
    history: list[Step]


@dataclass(frozen=True, slots=True)
class CloudEventRecord:
    """A CloudEvent as Kenning stores it. ``data`` is JSON text of the decoded data, or
    ``None``; binary data travels base64 in ``data_base64``."""

    id: str
    source: str
    type: str
    specversion: str = "1.0"
    subject: str | None = None
    time: str | None = None
    datacontenttype: str | None = None
    dataschema: str | None = None
    data: str | None = None
    data_base64: str | None = None
    extensions: dict[str, str] = field(default_factory=dict)

    @property
    def target_run(self) -> str | None:
        """The run this event is addressed to (extension ``kenningrun``), if any."""
        return self.extensions.get(TARGET_RUN_EXTENSION)


TARGET_RUN_EXTENSION = "kenningrun"


class AcceptOutcome(enum.StrEnum):
    """What accepting one event did."""

    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"


@dataclass(frozen=True, slots=True)
class AcceptResult:
    """The outcome of accepting one event and the runs it resumed."""

    outcome: AcceptOutcome
    resumed_runs: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    """An event a workflow emitted, waiting to be published."""

    pk: int
    run_id: str
    namespace: str
    event: CloudEventRecord
    attempts: int
    next_attempt_at: float
    last_error: str | None = None
    dead_at: float | None = None


class NotificationKind(enum.StrEnum):
    """What changed in the store."""

    RUNNABLE = "runnable"
    CLAIMED = "claimed"
    WAITING = "waiting"
    FINISHED = "finished"
    TIMER = "timer"
    CANCELLED = "cancelled"
    OUTBOX = "outbox"


@dataclass(frozen=True, slots=True)
class Notification:
    """A change a listener hears about after it committed."""

    kind: NotificationKind
    run_id: str | None = None
    wake_at: float | None = None


@dataclass(frozen=True, slots=True)
class RunCount:
    """How many runs of one workflow in one namespace (and pool) need a worker now."""

    namespace: str
    workflow: str
    pool: str | None
    count: int
