"""The ``WorkflowRun`` and ``WorkerPool`` resources as pydantic models.

The CRDs in ``crds/`` are generated from these models (``python -m kenning_operator.crdgen``);
the CEL rules that the API server enforces are declared here next to the fields they guard,
and the same constraints are checked in Python when the operator reads a resource.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, field_validator, model_validator
from pydantic.alias_generators import to_camel

GROUP = "kenning.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

RUN_ID_LABEL = f"{GROUP}/run-id"
"""Label of a ``WorkflowRun`` that names the run it mirrors (runs started outside Kubernetes)."""
PARENT_LABEL = f"{GROUP}/parent-run"
"""Label of a child run's ``WorkflowRun``: its parent's run id (``-l kenning.dev/parent-run=``)."""
POOL_LABEL = f"{GROUP}/pool"
CR_UID_LABEL = f"{GROUP}/cr-uid"
FINALIZER = f"{GROUP}/cancel-run"
"""Kenning's finalizer on a ``WorkflowRun``: deleting the resource cancels its run first."""
"""Label of a stored run that was started for a ``WorkflowRun`` (its uid)."""
CR_NAME_LABEL = f"{GROUP}/cr-name"
MANAGED_BY = "kenning-operator"

Phase = Literal["Pending", "Running", "WaitingForEvent", "WaitingForTimer",
                "Completed", "Failed", "Cancelled"]
FINISHED_PHASES: frozenset[str] = frozenset({"Completed", "Failed", "Cancelled"})

DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
RUN_ID_PATTERN = r"^[A-Za-z0-9]([A-Za-z0-9_.:-]{0,198}[A-Za-z0-9])?$"


def parse_duration(text: str) -> float:
    """Seconds of a Go-style duration such as ``90s``, ``5m`` or ``1h30m``."""
    if not re.fullmatch(DURATION_PATTERN, text):
        raise ValueError(f"duration {text!r}: use a number with a unit, e.g. 30s, 5m, 1h30m")
    return sum(float(n) * _UNIT_SECONDS[u] for n, u in _DURATION_PART.findall(text))


def _cel(rule: str, message: str) -> JsonValue:
    return {"rule": rule, "message": message}


_CONDITIONS_LIST: dict[str, Any] = {"x-kubernetes-list-type": "map",
                                     "x-kubernetes-list-map-keys": ["type"]}


class _Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")


# -- WorkflowRun -------------------------------------------------------------------------
class WorkflowRunSpec(_Model):
    """What to run: a workflow by name, its input, and how long the resource lives."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        _cel("(!has(oldSelf.pool) && !has(self.pool)) || (has(oldSelf.pool) && has(self.pool) "
             "&& self.pool == oldSelf.pool)",
             "spec.pool is immutable: delete the WorkflowRun and create a new one"),
        _cel("(!has(oldSelf.runId) && !has(self.runId)) || (has(oldSelf.runId) "
             "&& has(self.runId) && self.runId == oldSelf.runId)",
             "spec.runId is immutable: delete the WorkflowRun and create a new one"),
    ]})

    workflow: str = Field(
        max_length=253, description="Name of the @workflow to run.",
        json_schema_extra={"x-kubernetes-validations": [
            _cel("self.size() > 0", "spec.workflow must name a workflow (it is empty)"),
            _cel("self == oldSelf",
                 "spec.workflow is immutable: delete the WorkflowRun and create a new one"),
        ]})
    input: Any = Field(
        default=None, description="Arguments: an object (keywords), an array (positional) "
                                  "or one value. Read once, when the run starts.")
    pool: str | None = Field(default=None, max_length=253,
                             description="The WorkerPool whose workers run this run (default: "
                                         "any pool of the namespace that serves the workflow).")
    upgrade: Literal["pinned", "auto"] | None = Field(
        default=None, description="pinned (default): the run stays on the pool version "
                                  "(build) it started on; auto: workers of a newer version "
                                  "may resume it.")
    run_id: str | None = Field(
        default=None, max_length=200, pattern=RUN_ID_PATTERN,
        description="The store's run id (default: derived from the resource's uid).")
    timeout: str | None = Field(
        default=None, pattern=DURATION_PATTERN,
        description="Cancel the run if it has not finished this long after it was created "
                    "(e.g. 30s, 10m, 2h).")
    ttl_seconds_after_finished: int | None = Field(
        default=None, description="Delete the resource this long after the run finished "
                                  "(its history stays in the store).",
        json_schema_extra={"x-kubernetes-validations": [
            _cel("self >= 0", "spec.ttlSecondsAfterFinished must be >= 0"),
        ]})

    @field_validator("workflow")
    @classmethod
    def _workflow_named(cls, value: str) -> str:
        if not value:
            raise ValueError("spec.workflow must name a workflow (it is empty)")
        return value

    @field_validator("ttl_seconds_after_finished")
    @classmethod
    def _ttl_not_negative(cls, value: int | None) -> int | None:
        if value is not None and value < 0:
            raise ValueError("spec.ttlSecondsAfterFinished must be >= 0")
        return value

    @property
    def timeout_seconds(self) -> float | None:
        """``timeout`` in seconds."""
        return None if self.timeout is None else parse_duration(self.timeout)


class Condition(_Model):
    """A Kubernetes condition (``kubectl wait --for=condition=<type>``)."""

    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str = ""
    message: str = ""
    last_transition_time: str | None = Field(default=None,
                                             json_schema_extra={"format": "date-time"})
    observed_generation: int | None = None


class WaitEntry(_Model):
    """One thing a suspended run waits for."""

    kind: Literal["event", "timer", "retry", "child"]
    seq: int | None = Field(default=None, description="The step the wait fills.")
    event_type: str | None = None
    event_types: list[str] | None = Field(
        default=None, description="Every type a first-of-several wait takes.")
    match: dict[str, Any] | None = None
    child_run_id: str | None = Field(default=None, description="The child run waited for.")
    wake_at: str | None = Field(default=None, json_schema_extra={"format": "date-time"})


class WaitingFor(WaitEntry):
    """What a suspended run waits for: the first wait's fields, and all of them."""

    summary: str = Field(default="", description="One line for `kubectl get`: the first "
                                                 "wait, and how many more.")
    count: int | None = Field(default=None, description="How many waits hold the run.")
    waits: list[WaitEntry] | None = Field(default=None, description="Every wait, by step.")


class WorkflowRunStatus(_Model):
    """What the run is doing, as the store says (never its history)."""

    phase: Phase | None = None
    run_id: str | None = None
    parent_run_id: str | None = Field(
        default=None, description="The run that started this one as its child (its "
                                  "WorkflowRun owns this one's).")
    waiting_for: WaitingFor | None = None
    result: Any = Field(default=None, description="The result (JSON), when completed.")
    result_truncated: bool | None = Field(
        default=None, description="The result was too large for the resource; read it "
                                  "with `kenning runs get`.")
    error: str | None = None
    started_at: str | None = Field(default=None, json_schema_extra={"format": "date-time"})
    finished_at: str | None = Field(default=None, json_schema_extra={"format": "date-time"})
    observed_generation: int | None = None
    conditions: list[Condition] = Field(default_factory=list, json_schema_extra=_CONDITIONS_LIST)


class WorkflowRun(_Model):
    """A workflow run as a Kubernetes resource."""

    spec: WorkflowRunSpec
    status: WorkflowRunStatus | None = None


# -- WorkerPool --------------------------------------------------------------------------
class WorkerPoolSpec(_Model):
    """The code (image and module) that serves some workflows, and how to scale it."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        _cel("self.maxReplicas >= self.minReplicas",
             "spec.maxReplicas must be >= spec.minReplicas"),
    ]})

    image: str = Field(min_length=1, description="Container image holding the workflow code.")
    version: str | None = Field(
        default=None, min_length=1, max_length=128,
        description="The build id of the workers (default: the image reference). When it "
                    "changes, runs started on the old version finish on workers of the old "
                    "version, and new runs go to the new one.")
    module: str = Field(min_length=1, description="Module (or .py file) whose @workflow "
                                                  "functions the workers serve.")
    workflows: list[Annotated[str, Field(max_length=253)]] = Field(
        min_length=1, max_length=100, description="Names of the workflows this pool serves.",
        json_schema_extra={"x-kubernetes-validations": [
            _cel("self.all(w, w.size() > 0)", "spec.workflows must not contain empty names"),
        ]})
    env: list[dict[str, Any]] = Field(default_factory=list,
                                      description="Extra environment of the worker container.")
    resources: dict[str, Any] | None = Field(
        default=None, description="Container resources (requests, limits).")
    service_account_name: str | None = None
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = None
    min_replicas: int = Field(default=0, ge=0, description="Workers kept when idle.")
    max_replicas: int = Field(default=10, ge=1, description="Most workers.")
    runs_per_worker: int = Field(default=100, ge=1,
                                 description="Runnable or running runs one worker takes.")
    idle_seconds: int = Field(default=60, ge=0,
                              description="How long the pool stays larger than needed "
                                          "before it scales down.")

    @model_validator(mode="after")
    def _bounds(self) -> WorkerPoolSpec:
        if self.max_replicas < self.min_replicas:
            raise ValueError("spec.maxReplicas must be >= spec.minReplicas")
        return self


class PoolVersion(_Model):
    """One version (build) of a pool that still has work, and its Deployment."""

    build: str
    deployment: str
    current: bool = Field(description="The newest version: it takes the new runs.")
    runs: int = Field(description="Unfinished runs this version holds.")
    runnable_runs: int = 0
    replicas: int | None = None


class WorkerPoolStatus(_Model):
    """The pool's Deployment and the work it has."""

    deployment: str | None = None
    desired_replicas: int | None = None
    replicas: int | None = None
    ready_replicas: int | None = None
    active_runs: int | None = None
    last_active_time: str | None = Field(default=None, json_schema_extra={"format": "date-time"})
    observed_generation: int | None = None
    conditions: list[Condition] = Field(default_factory=list, json_schema_extra=_CONDITIONS_LIST)
    versions: list[PoolVersion] = Field(
        default_factory=list, description="The newest version and every older one that still "
                                          "has unfinished runs.")
    version_summary: str | None = Field(
        default=None, description="One line for `kubectl get`: each version and its runs.")


class WorkerPool(_Model):
    """A pool of worker pods as a Kubernetes resource."""

    spec: WorkerPoolSpec
    status: WorkerPoolStatus | None = None
