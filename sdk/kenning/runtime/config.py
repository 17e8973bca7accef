"""Settings of the command line: flags first, then ``KENNING_*`` environment variables.

The names and defaults live here so that the CLI, the image's entry points and the
operator's pod templates agree on them; the CLI reads them through click's ``envvar=``.
"""

from __future__ import annotations

import logging
from pathlib import Path

from kenning.core.errors import StoreUnavailable

log = logging.getLogger(__name__)

ENV_DATABASE = "KENNING_DATABASE"
ENV_MODULE = "KENNING_MODULE"
ENV_NAMESPACE = "KENNING_NAMESPACE"
ENV_WORKER_ID = "KENNING_WORKER_ID"
ENV_POOL = "KENNING_POOL"
ENV_BUILD_ID = "KENNING_BUILD_ID"
ENV_WORKFLOWS = "KENNING_WORKFLOWS"
ENV_DRAIN = "KENNING_DRAIN"
ENV_HOST = "KENNING_HOST"
ENV_PORT = ("KENNING_PORT", "PORT")  # PORT is what Knative sets
ENV_SINK_TOKEN = "KENNING_SINK_TOKEN"
ENV_SINK_URL = "KENNING_SINK_URL"
ENV_EVENT_TARGET = ("KENNING_EVENT_TARGET", "K_SINK")  # K_SINK is what Knative sets
ENV_LOG_LEVEL = "KENNING_LOG_LEVEL"
ENV_DEBUG = "KENNING_DEBUG"
ENV_PROBE_PORT = "KENNING_PROBE_PORT"
ENV_PROBE_HOST = "KENNING_PROBE_HOST"
ENV_MAX_RECOVERIES = "KENNING_MAX_RECOVERIES"
ENV_DEADLOCK_THRESHOLD = "KENNING_DEADLOCK_THRESHOLD"

DEFAULT_DATABASE = "kenning.db"
DEFAULT_NAMESPACE = "default"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8001
DEFAULT_SINK_URL = "http://127.0.0.1:8001"
DEFAULT_PROBE_HOST = "0.0.0.0"

LOG_LEVELS = ("debug", "info", "warning", "error")


def sqlite_path(database: str) -> Path | None:
    """The file of a SQLite database setting, or ``None`` for a PostgreSQL URL."""
    if database.startswith(("postgresql://", "postgres://")):
        return None
    return Path(database.removeprefix("sqlite:///").removeprefix("sqlite://"))


def require_existing_database(database: str) -> None:
    """Refuse a SQLite file that does not exist, rather than create an empty one.

    Commands that only read or change existing runs use this, so that a mistyped path says
    so instead of answering from a fresh, empty database.
    """
    path = sqlite_path(database)
    if path is not None and str(path) and not path.exists():
        raise StoreUnavailable(
            f"SQLite database '{path}' does not exist; pass --database or set {ENV_DATABASE}"
        )


def configure_logging(level: str) -> None:
    """Log to stderr at ``level`` (one of ``LOG_LEVELS``), with the logger name."""
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
