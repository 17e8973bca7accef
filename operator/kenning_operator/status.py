"""Pure functions from a stored run to its resource: run ids, status, conditions, Events."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kenning.core import codec
from kenning.core.models import CHILD_FINISHED_TYPE, Run, RunStatus, Wait, WaitKind
from kenning_operator.resources import RUN_ID_LABEL

SUCCEEDED = "Succeeded"
FAILED = "Failed"
SCHEDULABLE = "Schedulable"


@dataclass(frozen=True, slots=True)
class Schedulable:
    """Whether some pool serves a run's workflow, and why (the ``Schedulable`` condition)."""

    ok: bool
    reason: str
    message: str


def timestamp(ts: float | None) -> str | None:
    """RFC 3339 UTC of unix seconds, as Kubernetes writes times."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def run_id_for(*, name: str, uid: str, spec: Mapping[str, Any],
               labels: Mapping[str, str]) -> str:
    """The run a resource stands for: ``spec.runId``, the ``kenning.dev/run-id`` label, or
    one derived from the resource's uid (so a re-applied resource starts a new run but a
    resumed one never does)."""
    explicit = spec.get("runId") or labels.get(RUN_ID_LABEL)
    if explicit:
        return str(explicit)
    return f"{name[:40]}-{uid.replace('-', '')[:12]}"


_DNS_UNSAFE = re.compile(r"[^a-z0-9.-]+")


def mirror_name(run_id: str) -> str:
    """A resource name (DNS-1123 subdomain) for a run started outside Kubernetes."""
    name = _DNS_UNSAFE.sub("-", run_id.lower()).strip("-.")[:200]
    if name == run_id:
        return name
    digest = hashlib.sha256(run_id.encode()).hexdigest()[:8]
    return f"{name or 'run'}-{digest}"


def label_safe(value: str) -> bool:
    """Whether ``value`` may be a label value."""
    return bool(re.fullmatch(r"([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?", value))


def waiting_for(run: Run) -> dict[str, Any] | None:
    """``status.waitingFor`` of a suspended run: the first wait, a summary, every wait."""
    if run.status not in (RunStatus.WAITING_FOR_EVENT, RunStatus.WAITING_FOR_TIMER):
        return None
    waits = sorted(run.waits or ((run.wait,) if run.wait is not None else ()),
                   key=lambda w: w.seq)
    if not waits:
        return None
    entries = [_wait_entry(w) for w in waits]
    summary = _summary(waits[0])
    if len(waits) > 1:
        summary += f" (+{len(waits) - 1} more)"
    return {**entries[0], "summary": summary[:200], "count": len(waits), "waits": entries}


def _wait_entry(wait: Wait) -> dict[str, Any]:
    out: dict[str, Any] = {"kind": wait.kind.value, "seq": wait.seq}
    if wait.kind is WaitKind.EVENT and wait.event_type == CHILD_FINISHED_TYPE and wait.match:
        out["kind"] = "child"
        out["childRunId"] = str(wait.match.get("subject"))
    elif wait.kind is WaitKind.EVENT:
        out["eventType"] = wait.event_type
        if wait.other_types:
            out["eventTypes"] = list(wait.event_types)
        if wait.match:
            out["match"] = wait.match
    wake = timestamp(wait.wake_at)
    if wake:
        out["wakeAt"] = wake
    return out


def _summary(wait: Wait) -> str:
    wake = timestamp(wait.wake_at)
    if wait.kind is WaitKind.EVENT and wait.event_type == CHILD_FINISHED_TYPE and wait.match:
        return f"child {wait.match.get('subject')}"
    if wait.kind is WaitKind.EVENT:
        summary = f"event {' or '.join(wait.event_types)}"
        if wait.match:
            summary += " " + ",".join(f"{k}={v}" for k, v in sorted(wait.match.items()))
        return f"{summary} until {wake}" if wake else summary
    if wait.kind is WaitKind.RETRY:
        return f"retry at {wake}"
    return f"timer {wake}"


def _condition(kind: str, status: str, reason: str, message: str, generation: int | None,
               previous: Sequence[Mapping[str, Any]], now: str) -> dict[str, Any]:
    since = now
    for old in previous:
        if old.get("type") == kind and old.get("status") == status:
            since = str(old.get("lastTransitionTime") or now)
    return {"type": kind, "status": status, "reason": reason, "message": message[:1024],
            "lastTransitionTime": since, "observedGeneration": generation}


def conditions(run: Run, generation: int | None, schedulable: Schedulable | None,
               previous: Sequence[Mapping[str, Any]], now: str) -> list[dict[str, Any]]:
    """``Succeeded``, ``Failed`` and, while the run is pending, ``Schedulable``."""
    phase = run.status.phase
    error = run.error or ""
    if run.status is RunStatus.COMPLETED:
        ok = ("True", phase, "the run completed")
    elif run.status.finished:
        ok = ("False", phase, error or f"the run is {run.status.value}")
    else:
        ok = ("Unknown", phase, f"the run is {run.status.value.replace('_', ' ')}")
    failed = ("True", phase, error) if run.status is RunStatus.FAILED else \
        ("False", phase, "")
    out = [_condition(SUCCEEDED, *ok, generation, previous, now),
           _condition(FAILED, *failed, generation, previous, now)]
    if schedulable is not None:
        out.append(_condition(SCHEDULABLE, "True" if schedulable.ok else "False",
                              schedulable.reason, schedulable.message, generation,
                              previous, now))
    return out


def status_of(run: Run, *, generation: int | None, schedulable: Schedulable | None,
              previous_conditions: Sequence[Mapping[str, Any]], max_result_bytes: int,
              now: float) -> dict[str, Any]:
    """The whole ``status`` of a resource for ``run`` (a merge patch: ``None`` clears)."""
    result: Any = None
    truncated: bool | None = None
    if run.status is RunStatus.COMPLETED and run.result is not None:
        if len(run.result.encode()) <= max_result_bytes:
            result = codec.loads(run.result)
        else:
            truncated = True
    return {
        "phase": run.status.phase,
        "runId": run.run_id,
        "parentRunId": run.parent_run_id,
        "waitingFor": waiting_for(run),
        "result": result,
        "resultTruncated": truncated,
        "error": (run.error or "")[:4096] or None,
        "startedAt": timestamp(run.started_at),
        "finishedAt": timestamp(run.finished_at),
        "observedGeneration": generation,
        "conditions": conditions(run, generation, schedulable, previous_conditions,
                                 timestamp(now) or ""),
    }


def fingerprint(run: Run, generation: int | None, schedulable: Schedulable | None) -> str:
    """What must change for the status to be patched again: phase, wait, spec generation and
    schedulability — not every step of the run."""
    wait = run.wait if run.status in (RunStatus.WAITING_FOR_EVENT,
                                      RunStatus.WAITING_FOR_TIMER) else None
    key = [run.status.value, generation, wait.seq if wait else None,
           schedulable.reason if schedulable and run.status is RunStatus.PENDING else None]
    return json.dumps(key)


def transition_event(phase: str, run: Run) -> tuple[str, str, str]:
    """(type, reason, message) of the Kubernetes Event for a run entering ``phase``."""
    if run.status is RunStatus.FAILED:
        return "Warning", phase, f"run {run.run_id} failed: {(run.error or '')[:500]}"
    if run.status is RunStatus.CANCELLED:
        return "Warning", phase, f"run {run.run_id} cancelled: {(run.error or '')[:500]}"
    if run.status is RunStatus.COMPLETED:
        return "Normal", phase, f"run {run.run_id} completed"
    if run.status is RunStatus.PENDING and run.started_at is not None:
        return "Normal", "Resumed", f"run {run.run_id} is runnable again"
    detail = waiting_for(run)
    if detail:
        return "Normal", phase, f"run {run.run_id} waits for {detail['summary']}"
    return "Normal", phase, f"run {run.run_id} is {run.status.value.replace('_', ' ')}"


def _normal(value: Any) -> Any:
    """``value`` as it reads back from the API server: no nulls, integral floats as ints."""
    if isinstance(value, dict):
        return {k: _normal(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_normal(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def status_digest(status: Mapping[str, Any]) -> str:
    """A short digest of what a ``status`` says, the same for the status the operator
    would write and for that status as the API server lists it (nulls dropped, condition
    times left out): equal digests mean a patch would change nothing."""
    shown = _normal(dict(status))
    shown["conditions"] = [{k: v for k, v in c.items() if k != "lastTransitionTime"}
                           for c in shown.get("conditions") or () if isinstance(c, dict)]
    text = json.dumps(shown, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()
