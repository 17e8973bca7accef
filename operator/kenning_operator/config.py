"""The operator's settings: flags or ``KENNING_OPERATOR_*`` environment variables."""

from __future__ import annotations

from dataclasses import dataclass, field

ENV_PREFIX = "KENNING_OPERATOR_"


@dataclass(frozen=True)
class OperatorConfig:
    """How the operator reaches the store and the cluster, and how it paces itself.

    ``worker_secret`` names the Secret (in each pool's namespace) whose key
    ``worker_secret_key`` holds the store DSN given to worker pods as ``KENNING_DATABASE``;
    ``worker_config_map``, when set, is added to their environment as a whole.
    """

    database: str
    namespaces: tuple[str, ...] = ()
    """Namespaces to serve; empty: the whole cluster."""
    worker_secret: str = "kenning-database"
    worker_secret_key: str = "database"
    worker_config_map: str | None = None
    sweep_interval: float = 5.0
    """Seconds between catch-up sweeps over unfinished runs (notifications come first)."""
    status_patch_rate: float = 1000.0
    """Writes of ``WorkflowRun``s per second the operator allows itself (status patches and
    finalizers). Below it every change is written at once; above it each run waits for its
    slot and what changes meanwhile joins its patch, so the intermediate phases of busy
    runs coalesce (a real API server took ~1,180 status patches/s in the budget
    measurement; it answers 429 when it is overloaded, and the operator backs off)."""
    patch_concurrency: int = 32
    """Status patches in flight at once (never two for the same resource)."""
    event_rate: float = 20.0
    """Events per second posted one by one; beyond it transitions are aggregated into one
    Event per namespace and reason a second."""
    mirror_external_runs: bool = True
    """Create a ``WorkflowRun`` for runs started outside Kubernetes."""
    max_result_bytes: int = 32_768
    """Results larger than this (JSON) are left out of the resource's status."""
    api_server: str | None = None
    """Talk to this API server without credentials (tests); default: in-cluster or kubeconfig."""
    extra_worker_env: dict[str, str] = field(default_factory=dict)
