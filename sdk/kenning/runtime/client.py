"""The client: start runs, look at them, wait for results, cancel, publish events."""

from __future__ import annotations

import asyncio
import contextlib
import re
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kenning.core import codec
from kenning.core.definitions import (
    WorkflowDefinition,
    check_upgrade,
    encode_input,
    seconds_of,
)
from kenning.core.errors import ConfigurationError, RunCancelled, RunFailed, RunNotFound
from kenning.core.models import (
    CHILD_FINISHED_TYPE,
    TARGET_RUN_EXTENSION,
    AcceptResult,
    Chapter,
    CloudEventRecord,
    NewRun,
    Notification,
    NotificationKind,
    Run,
    RunStatus,
    Step,
    Wait,
    WaitKind,
)
from kenning.core.store import Store


@dataclass(frozen=True, slots=True)
class WaitingFor:
    """One thing a suspended run waits for: an event (``kind`` "event": its types and
    match, and a deadline as ``wake_at``), a timer or a retry delay ("timer", "retry": the
    wake time), or a child run's end ("child": ``child_run_id``). ``seq`` is the step the
    wait fills."""

    kind: str
    event_type: str | None = None
    match: dict[str, Any] | None = None
    wake_at: datetime | None = None
    event_types: tuple[str, ...] = ()
    seq: int | None = None
    child_run_id: str | None = None

    @classmethod
    def of(cls, wait: Wait) -> WaitingFor:
        """The user's view of a stored wait."""
        if wait.kind is WaitKind.EVENT and wait.event_type == CHILD_FINISHED_TYPE \
                and wait.match and "subject" in wait.match:
            return cls(kind="child", wake_at=_dt(wait.wake_at), seq=wait.seq,
                       child_run_id=str(wait.match["subject"]))
        if wait.kind is WaitKind.EVENT:
            return cls(kind="event", event_type=wait.event_type, match=wait.match,
                       wake_at=_dt(wait.wake_at), event_types=wait.event_types, seq=wait.seq)
        return cls(kind=wait.kind.value, wake_at=_dt(wait.wake_at), seq=wait.seq)


@dataclass(frozen=True, slots=True)
class RunInfo:
    """A run as users see it; ``result`` is decoded JSON."""

    run_id: str
    workflow: str
    namespace: str
    status: RunStatus
    result: Any
    error: str | None
    # everything the run waits on while suspended, in step order (empty otherwise)
    waiting_for: tuple[WaitingFor, ...]
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    pool: str | None = None
    build_id: str | None = None
    upgrade: str = "pinned"
    # the run that started this one as its child, if any
    parent_run_id: str | None = None
    # how many times the run continued as new (its closed chapters)
    chapter: int = 0

    @classmethod
    def from_run(cls, run: Run) -> RunInfo:
        """The user's view of a stored run."""
        waiting: tuple[WaitingFor, ...] = ()
        if run.status in (RunStatus.WAITING_FOR_EVENT, RunStatus.WAITING_FOR_TIMER):
            waits = run.waits or ((run.wait,) if run.wait is not None else ())
            waiting = tuple(WaitingFor.of(w) for w in sorted(waits, key=lambda w: w.seq))
        return cls(
            run_id=run.run_id,
            workflow=run.workflow,
            namespace=run.namespace,
            status=run.status,
            result=codec.loads(run.result),
            error=run.error,
            waiting_for=waiting,
            created_at=datetime.fromtimestamp(run.created_at, UTC),
            started_at=_dt(run.started_at),
            finished_at=_dt(run.finished_at),
            pool=run.pool,
            build_id=run.build_id,
            upgrade=run.upgrade,
            parent_run_id=run.parent_run_id,
            chapter=run.chapter,
        )


START_MANY_CHUNK = 10_000  # runs per statement (and transaction) of ``start_many``


async def create_runs(store: Store, news: Sequence[NewRun]) -> list[bool]:
    """Create runs in chunks of ``START_MANY_CHUNK``; per run, whether it was created.
    Raises ``ConfigurationError`` when an id already belongs to another workflow (the
    chunks before it stay started)."""
    created: list[bool] = []
    for start in range(0, len(news), START_MANY_CHUNK):
        chunk = news[start:start + START_MANY_CHUNK]
        for new, (made, workflow) in zip(chunk, await store.create_runs(chunk), strict=True):
            if workflow != new.workflow:
                raise ConfigurationError(
                    f"run id '{new.run_id}' already belongs to workflow '{workflow}', "
                    f"not '{new.workflow}': use another id")
            created.append(made)
    return created


def _dt(ts: float | None) -> datetime | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC)


class Client:
    """Talks to the store directly; needs no workflow code except to validate input."""

    def __init__(self, store: Store, *, namespace: str = "default") -> None:
        self.store = store
        self.namespace = check_namespace(namespace)
        self._finish_waiters: dict[str, set[asyncio.Event]] = {}
        self._unsubscribe: Callable[[], None] | None = None

    async def start(
        self,
        workflow: WorkflowDefinition[Any, Any] | str,
        /,
        *args: Any,
        run_id: str | None = None,
        namespace: str | None = None,
        pool: str | None = None,
        upgrade: str | None = None,
        **kwargs: Any,
    ) -> str:
        """Start a run (idempotent on ``run_id``); returns its id.

        With a ``WorkflowDefinition`` the arguments are checked against its signature and
        types first; with a name they are stored as given. ``pool`` pins the run to that
        pool's workers; ``upgrade="auto"`` lets workers of any build resume it (default:
        the workflow's own policy, else ``"pinned"`` to the build it starts on).
        """
        policy = "pinned"
        if isinstance(workflow, WorkflowDefinition):
            name, payload = workflow.name, workflow.encode_arguments(args, kwargs)
            policy = workflow.upgrade
        elif isinstance(workflow, str) and workflow:
            name, payload = workflow, encode_input(args, kwargs)
        else:
            raise ConfigurationError("start needs a @workflow or a workflow name")
        if upgrade is not None:
            policy = check_upgrade(upgrade, f"start of '{name}'")
        new = NewRun(run_id=run_id or f"run-{uuid.uuid4().hex[:16]}",
                     namespace=check_namespace(namespace or self.namespace),
                     workflow=name, input=payload, pool=pool or None, upgrade=policy)
        run, _created = await self.store.create_run(new)
        if run.workflow != name:
            raise ConfigurationError(
                f"run id '{run.run_id}' already belongs to workflow '{run.workflow}'")
        return run.run_id

    async def start_many(
        self,
        workflow: WorkflowDefinition[Any, Any] | str,
        inputs: Iterable[Any],
        /,
        *,
        run_ids: Sequence[str] | None = None,
        namespace: str | None = None,
        pool: str | None = None,
        upgrade: str | None = None,
    ) -> list[str]:
        """Start a run per element of ``inputs`` in one round trip per
        ``START_MANY_CHUNK`` runs; returns their ids in order.

        Each element is the one argument of its run, or a tuple of its positional
        arguments. ``run_ids`` (as many as inputs) makes each start idempotent like
        ``start``: an existing id is returned, not started again. ``pool`` and ``upgrade``
        are as for ``start``.
        """
        policy = "pinned"
        if isinstance(workflow, WorkflowDefinition):
            name = workflow.name
            policy = workflow.upgrade
        elif isinstance(workflow, str) and workflow:
            name = workflow
        else:
            raise ConfigurationError("start_many needs a @workflow or a workflow name")

        def encode(item: Any) -> str:
            args = item if isinstance(item, tuple) else (item,)
            if isinstance(workflow, WorkflowDefinition):
                return workflow.encode_arguments(args, {})
            return encode_input(args, {})
        payloads = [encode(item) for item in inputs]
        if run_ids is not None and len(run_ids) != len(payloads):
            raise ConfigurationError(
                f"start_many: {len(run_ids)} run ids for {len(payloads)} inputs; "
                "give one id per input or none")
        ns = check_namespace(namespace or self.namespace)
        ids = list(run_ids) if run_ids is not None else [
            f"run-{uuid.uuid4().hex[:16]}" for _ in payloads]
        if upgrade is not None:
            policy = check_upgrade(upgrade, f"start_many of '{name}'")
        news = [NewRun(run_id=i, namespace=ns, workflow=name, input=p, pool=pool or None,
                       upgrade=policy) for i, p in zip(ids, payloads, strict=True)]
        await create_runs(self.store, news)
        return ids

    async def get_run(self, run_id: str) -> RunInfo:
        """The run's status, result, error and what it waits for."""
        run = await self.store.get_run(run_id)
        if run is None:
            raise RunNotFound(f"no run with id '{run_id}'")
        return RunInfo.from_run(run)

    async def list_runs(self, *, namespace: str | None = None, status: RunStatus | None = None,
                        workflow: str | None = None, parent: str | None = None,
                        limit: int = 100) -> list[RunInfo]:
        """Runs, newest first (``parent``: the child runs of that run)."""
        runs = await self.store.list_runs(namespace=namespace, status=status,
                                          workflow=workflow, parent=parent, limit=limit)
        return [RunInfo.from_run(r) for r in runs]

    async def history(self, run_id: str, *, chapter: int | None = None) -> list[Step]:
        """The run's recorded steps: its current history, or the closed ``chapter`` of a
        run that continued as new."""
        if await self.store.get_run(run_id) is None:
            raise RunNotFound(f"no run with id '{run_id}'")
        return await self.store.load_history(run_id, chapter=chapter)

    async def chapters(self, run_id: str) -> list[Chapter]:
        """The closed chapters of a run that continued as new, oldest first."""
        if await self.store.get_run(run_id) is None:
            raise RunNotFound(f"no run with id '{run_id}'")
        return await self.store.list_chapters(run_id)

    async def cancel(self, run_id: str, reason: str = "cancelled by request") -> RunInfo:
        """Cancel a run that has not finished (waiting or not)."""
        return RunInfo.from_run(await self.store.cancel_run(run_id, reason))

    async def wait_finished(self, run_id: str, timeout: float | None = None) -> RunInfo:
        """Wait until the run is completed, failed or cancelled."""
        finished = asyncio.Event()
        self._finish_waiters.setdefault(run_id, set()).add(finished)
        if self._unsubscribe is None:
            self._unsubscribe = self.store.subscribe(self._on_notification)
        try:
            async with asyncio.timeout(timeout):
                # the FINISHED notification wakes us; the slow poll covers a process we
                # cannot hear (another process on the same SQLite file)
                poll = 0.25
                while True:
                    info = await self.get_run(run_id)
                    if info.status.finished:
                        return info
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(finished.wait(), poll)
                    finished.clear()
                    poll = min(poll * 2, 2.0)
        finally:
            waiters = self._finish_waiters[run_id]
            waiters.discard(finished)
            if not waiters:
                del self._finish_waiters[run_id]

    def _on_notification(self, note: Notification) -> None:
        """One listener for every waiter of this client (not one per waiting call)."""
        if note.kind is NotificationKind.FINISHED and note.run_id is not None:
            for waiter in self._finish_waiters.get(note.run_id, ()):
                waiter.set()
        elif note.kind is NotificationKind.RUNNABLE and note.run_id is None:
            for waiters in self._finish_waiters.values():  # changes may have been missed
                for waiter in waiters:
                    waiter.set()

    async def result(self, run_id: str, timeout: float | None = None) -> Any:
        """The run's result; raises ``RunFailed``, ``RunCancelled`` or ``TimeoutError``."""
        info = await self.wait_finished(run_id, timeout)
        if info.status is RunStatus.FAILED:
            raise RunFailed(run_id, info.error or "unknown error")
        if info.status is RunStatus.CANCELLED:
            raise RunCancelled(run_id, info.error or "cancelled")
        return info.result

    async def publish(
        self,
        type: str,
        data: Any = None,
        *,
        source: str = "/kenning/client",
        id: str | None = None,
        subject: str | None = None,
        to_run: str | None = None,
        extensions: Mapping[str, str] | None = None,
        namespace: str | None = None,
    ) -> AcceptResult:
        """Deliver an event straight to the store, as the sink would."""
        ext = {k: str(v) for k, v in (extensions or {}).items()}
        if to_run is not None:
            ext[TARGET_RUN_EXTENSION] = to_run
        record = CloudEventRecord(
            id=id or str(uuid.uuid4()), source=source, type=type, subject=subject,
            time=datetime.now(UTC).isoformat().replace("+00:00", "Z"),
            datacontenttype="application/json", data=codec.dumps(codec.to_jsonable(data)),
            extensions=ext)
        results: Sequence[AcceptResult] = await self.store.accept_events(
            check_namespace(namespace or self.namespace), [record])
        return results[0]


_NAMESPACE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


def check_namespace(namespace: str) -> str:
    """Return ``namespace`` if it is a Kubernetes namespace name (DNS-1123 label)."""
    if not isinstance(namespace, str) or not _NAMESPACE.match(namespace):
        raise ConfigurationError(
            f"namespace {namespace!r} is not a valid Kubernetes namespace name: lower-case "
            f"letters, digits and '-', at most 63, starting and ending alphanumeric")
    return namespace


def timeout_seconds(value: Any) -> float | None:
    """Seconds from a timedelta or number (``None`` stays ``None``)."""
    return None if value is None else seconds_of(value, "timeout")
