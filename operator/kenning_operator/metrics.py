"""Prometheus metrics of one operator (its own registry, so two operators can share a
process in tests)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    """Counters of what the operator did to the store and the API server."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.runs_started = Counter("kenning_operator_runs_started_total",
                                    "Runs the operator created in the store for WorkflowRuns.",
                                    registry=r)
        self.runs_cancelled = Counter("kenning_operator_runs_cancelled_total",
                                      "Runs cancelled (resource deleted or timed out).",
                                      ["reason"], registry=r)
        self.status_patches = Counter("kenning_operator_status_patches_total",
                                      "Status patches of WorkflowRuns.", registry=r)
        self.events_posted = Counter("kenning_operator_events_total",
                                     "Kubernetes Events posted.", registry=r)
        self.mirrored = Counter("kenning_operator_mirrored_runs_total",
                                "WorkflowRuns created for runs started outside Kubernetes.",
                                registry=r)
        self.deleted_after_ttl = Counter("kenning_operator_ttl_deletions_total",
                                         "Finished WorkflowRuns deleted after their TTL.",
                                         registry=r)
        self.api_errors = Counter("kenning_operator_api_errors_total",
                                  "Failed calls to the API server.", ["operation"], registry=r)
        self.resources = Gauge("kenning_operator_workflowruns",
                               "WorkflowRuns the operator knows of.", registry=r)
        self.pool_replicas = Gauge("kenning_operator_pool_desired_replicas",
                                   "Replicas the operator wants for a pool.",
                                   ["namespace", "pool"], registry=r)
        self.sync_lag = Histogram("kenning_operator_status_sync_seconds",
                                  "Time from a store change heard to its status patched.",
                                  buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10),
                                  registry=r)
