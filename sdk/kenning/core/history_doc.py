"""A run's history as a portable JSON document.

``kenning runs history RUN --json`` prints it and ``kenning.testing.replay`` reads it, so a
history recorded in production can be replayed through new code in a unit test. The document
carries everything replay needs (workflow name, input, creation time, steps, the waits the
run was suspended on); values are plain JSON and times unix seconds. ``format`` and
``version`` identify it: a reader refuses a version newer than it knows.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kenning.core import codec
from kenning.core.errors import ConfigurationError
from kenning.core.models import Run, RunStatus, Step, StepKind, Wait, WaitKind

HISTORY_FORMAT = "kenning.history"
HISTORY_VERSION = 2  # 2: step ordinals, first-of-several waits (a 1 reads as 2)

_WAIT_FIELDS = ("seq", "kind", "wake_at", "event_type", "match", "lookback", "started_at",
                "attempt", "last_error", "other_types")


@dataclass(frozen=True, slots=True)
class RecordedHistory:
    """A run's recorded history with what replaying it needs. ``input`` is JSON text."""

    run_id: str
    workflow: str
    namespace: str
    input: str
    status: RunStatus
    created_at: float
    steps: list[Step] = field(default_factory=list)
    waits: list[Wait] = field(default_factory=list)
    result: str | None = None
    error: str | None = None

    @classmethod
    def of(cls, run: Run, steps: list[Step]) -> RecordedHistory:
        """The history of ``run`` as the store holds it."""
        waiting = run.status in (RunStatus.WAITING_FOR_EVENT, RunStatus.WAITING_FOR_TIMER)
        return cls(run_id=run.run_id, workflow=run.workflow, namespace=run.namespace,
                   input=run.input, status=run.status, created_at=run.created_at,
                   steps=list(steps),
                   waits=(list(run.waits) or ([run.wait] if run.wait else [])) if waiting
                   else [],
                   result=run.result, error=run.error)

    def as_run(self) -> Run:
        """A stored-run view of the history (for replaying it)."""
        return Run(run_id=self.run_id, namespace=self.namespace, workflow=self.workflow,
                   input=self.input, status=self.status, created_at=self.created_at,
                   result=self.result, error=self.error,
                   wait=self.waits[0] if self.waits else None, waits=tuple(self.waits))

    def to_json(self) -> dict[str, Any]:
        """The JSON document (``format``, ``version``, run, input, waits, steps)."""
        return {
            "format": HISTORY_FORMAT, "version": HISTORY_VERSION,
            "run_id": self.run_id, "workflow": self.workflow, "namespace": self.namespace,
            "status": self.status.value, "created_at": self.created_at,
            "input": codec.loads(self.input),
            "result": codec.loads(self.result), "error": self.error,
            "waits": [_wait_json(w) for w in self.waits],
            "steps": [_step_json(s) for s in self.steps],
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> RecordedHistory:
        """Read a document written by ``to_json``; ``ConfigurationError`` says what is wrong."""
        if not isinstance(doc, Mapping) or doc.get("format") != HISTORY_FORMAT:
            raise ConfigurationError(
                f"not a Kenning history: expected an object with \"format\": "
                f"\"{HISTORY_FORMAT}\", as `kenning runs history RUN --json` prints it")
        version = doc.get("version")
        if not isinstance(version, int) or version > HISTORY_VERSION:
            raise ConfigurationError(
                f"history format version {version!r} is not one this Kenning reads "
                f"(up to {HISTORY_VERSION}); upgrade kenning to replay it")
        try:
            return cls(
                run_id=str(doc["run_id"]), workflow=str(doc["workflow"]),
                namespace=str(doc.get("namespace") or "default"),
                input=codec.dumps(doc["input"]), status=RunStatus(doc["status"]),
                created_at=float(doc["created_at"]),
                steps=[_step(s) for s in doc["steps"]],
                waits=[_wait(w) for w in doc.get("waits") or []],
                result=None if doc.get("result") is None else codec.dumps(doc["result"]),
                error=doc.get("error"))
        except (KeyError, TypeError, ValueError) as exc:
            what = f"missing {exc}" if isinstance(exc, KeyError) else str(exc)
            raise ConfigurationError(f"invalid Kenning history: {what}") from None


def _step_json(step: Step) -> dict[str, Any]:
    out = {"seq": step.seq, "kind": step.kind.value, "name": step.name,
           "value": codec.loads(step.value), "error": codec.loads(step.error),
           "recorded_at": step.recorded_at}
    if step.ordinal is not None:
        out["ordinal"] = step.ordinal
    return out


def _step(item: Mapping[str, Any]) -> Step:
    value, error, ordinal = item.get("value"), item.get("error"), item.get("ordinal")
    return Step(seq=int(item["seq"]), kind=StepKind(item["kind"]), name=str(item["name"]),
                value=None if value is None else codec.dumps(value),
                recorded_at=float(item["recorded_at"]),
                error=None if error is None else codec.dumps(error),
                ordinal=None if ordinal is None else int(ordinal))


def _wait_json(wait: Wait) -> dict[str, Any]:
    out = {name: getattr(wait, name) for name in _WAIT_FIELDS}
    out["other_types"] = list(wait.other_types)
    return out


def _wait(item: Mapping[str, Any]) -> Wait:
    values: dict[str, Any] = {name: item[name] for name in _WAIT_FIELDS[2:]
                              if item.get(name) is not None}
    if "other_types" in values:
        values["other_types"] = tuple(str(t) for t in values["other_types"])
    return Wait(seq=int(item["seq"]), kind=WaitKind(item["kind"]), **values)
