"""Layer 2: implementations of the ``Store`` protocol (SQLite embedded, PostgreSQL)."""

from __future__ import annotations

from collections.abc import Callable

from kenning.core.errors import ConfigurationError
from kenning.core.store import Store


def open_store(
    database: str,
    *,
    clock: Callable[[], float] | None = None,
    event_retention: float = 86_400.0,
) -> Store:
    """A store for a database URL: ``postgresql://...`` or a SQLite file path.

    ``sqlite:///path`` and plain paths select SQLite; ``:memory:`` is not supported because
    workers and the sink must share the file.
    """
    if database.startswith(("postgresql://", "postgres://")):
        try:
            from kenning.stores.postgres import PostgresStore
        except ImportError as exc:  # asyncpg missing
            raise ConfigurationError(
                "a PostgreSQL database needs the 'postgres' extra: pip install 'kenning[postgres]'"
            ) from exc
        return PostgresStore(database, clock=clock, event_retention=event_retention)
    path = database.removeprefix("sqlite:///").removeprefix("sqlite://")
    if not path or path == ":memory:":
        raise ConfigurationError(
            f"database {database!r}: give a SQLite file path or a postgresql:// URL"
        )
    from kenning.stores.sqlite import SqliteStore

    return SqliteStore(path, clock=clock, event_retention=event_retention)
