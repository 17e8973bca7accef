"""Telling PostgreSQL's unreachable from its errors, and saying so in one line."""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

import asyncpg
from asyncpg import exceptions as pgexc

from kenning.core.errors import StoreUnavailable

_CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError,  # refused, reset, unreachable, timeouts
    pgexc.PostgresConnectionError,
    pgexc.CannotConnectNowError,
    pgexc.AdminShutdownError,
    pgexc.CrashShutdownError,
    pgexc.TooManyConnectionsError,
    asyncpg.InterfaceError,  # a closed pool or connection
)

# A transaction that lost a deadlock (or a serialization check) may simply be run again.
RETRYABLE_ERRORS: tuple[type[BaseException], ...] = (pgexc.TransactionRollbackError,)


def is_connection_error(exc: BaseException) -> bool:
    """True when ``exc`` means the database cannot be reached (as opposed to a bad query)."""
    if isinstance(exc, pgexc.ClientConfigurationError):
        return False
    return isinstance(exc, _CONNECTION_ERRORS)


def describe_target(dsn: str) -> str:
    """``user@host:port/database`` of a DSN, never its password."""
    try:
        parts = urlsplit(dsn)
        host = parts.hostname or "localhost"
        port = parts.port or 5432
        user = unquote(parts.username) if parts.username else "(default user)"
        database = unquote(parts.path.lstrip("/")) or user
    except ValueError:
        return "the configured PostgreSQL server"
    return f"{user}@{host}:{port}/{database}"


def connect_error(exc: BaseException, dsn: str) -> StoreUnavailable:
    """A ``StoreUnavailable`` whose one-line message says why connecting failed."""
    target = describe_target(dsn)
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if isinstance(exc, pgexc.InvalidPasswordError):
        why = "authentication failed (wrong password or user)"
    elif isinstance(exc, pgexc.InvalidAuthorizationSpecificationError):
        why = f"authentication rejected: {first_line}"
    elif isinstance(exc, pgexc.InvalidCatalogNameError):
        why = "the database does not exist"
    elif isinstance(exc, ConnectionRefusedError) or "refused" in first_line.lower():
        why = "connection refused (is PostgreSQL running and listening there?)"
    elif isinstance(exc, TimeoutError):
        why = "timed out connecting"
    elif isinstance(exc, pgexc.CannotConnectNowError):
        why = "the server is starting up or shutting down"
    elif isinstance(exc, pgexc.TooManyConnectionsError):
        why = "the server has too many connections"
    else:
        why = f"{type(exc).__name__}: {first_line}"
    return StoreUnavailable(f"cannot connect to PostgreSQL at {target}: {why}")


def operation_error(exc: BaseException) -> StoreUnavailable:
    """A ``StoreUnavailable`` for a connection lost during an operation."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return StoreUnavailable(f"PostgreSQL is unreachable: {type(exc).__name__}: {text}".rstrip())
