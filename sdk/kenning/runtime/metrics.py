"""Prometheus metrics, on a registry each app owns (two apps in one process do not collide)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import choose_encoder

from kenning.core.models import AcceptOutcome, AcceptResult

REJECT_REASONS: Final = (
    "unauthorized",
    "invalid_namespace",
    "too_large",
    "unsupported_media_type",
    "invalid_event",
    "store_unavailable",
    "overloaded",
    "not_found",
    "method_not_allowed",
    "invalid_request",
    "internal_error",
)
_LATENCY_BUCKETS: Final = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)
_BATCH_BUCKETS: Final = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000)


class SinkMetrics:
    """The sink's counters and histograms, registered on ``registry`` (a new one by default).

    Pass a shared ``CollectorRegistry`` to expose the sink next to other metrics of the
    same app; one ``SinkMetrics`` per registry.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.events_accepted = Counter(
            "kenning_sink_events_accepted", "Events committed to the store.",
            registry=self.registry,
        )
        self.events_duplicate = Counter(
            "kenning_sink_events_duplicate",
            "Events already stored (same source and id), acknowledged without change.",
            registry=self.registry,
        )
        self.runs_resumed = Counter(
            "kenning_sink_runs_resumed", "Waiting runs resumed by accepted events.",
            registry=self.registry,
        )
        self.requests_rejected = Counter(
            "kenning_sink_requests_rejected", "POST requests answered with an error, by reason.",
            ["reason"], registry=self.registry,
        )
        self.request_seconds = Histogram(
            "kenning_sink_request_duration_seconds",
            "Time to answer a POST, store commit included.",
            buckets=_LATENCY_BUCKETS, registry=self.registry,
        )
        self.batch_size = Histogram(
            "kenning_sink_batch_size", "Events per POST handed to the store.",
            buckets=_BATCH_BUCKETS, registry=self.registry,
        )
        # Bound once: no label lookup per request, and every reason shows from the start.
        self._rejected = {r: self.requests_rejected.labels(reason=r) for r in REJECT_REASONS}

    def reject(self, reason: str) -> None:
        """Count a rejected request; ``reason`` is one of ``REJECT_REASONS``."""
        self._rejected[reason].inc()

    def committed(self, results: Sequence[AcceptResult]) -> tuple[int, int]:
        """Count what a commit did; returns (accepted, duplicates)."""
        accepted = resumed = 0
        for result in results:
            if result.outcome is AcceptOutcome.ACCEPTED:
                accepted += 1
                resumed += len(result.resumed_runs)
        duplicates = len(results) - accepted
        self.batch_size.observe(len(results))
        if accepted:
            self.events_accepted.inc(accepted)
        if duplicates:
            self.events_duplicate.inc(duplicates)
        if resumed:
            self.runs_resumed.inc(resumed)
        return accepted, duplicates


def render_metrics(registry: CollectorRegistry, accept: str | None) -> tuple[bytes, str]:
    """The registry in the exposition format the ``Accept`` header asks for, and its type."""
    encoder, content_type = choose_encoder(accept or "")
    return encoder(registry), content_type
