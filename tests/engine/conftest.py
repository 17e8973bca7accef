"""Engine tests run an embedded App on SQLite and on a real PostgreSQL.

``make_app`` opens apps on the test's database: a temporary SQLite file, or an empty
PostgreSQL database of the session's server. Tests that only make sense on one store
(SQLite files, say) take ``db_path`` and ``App`` directly.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from kenning import App, WorkflowDefinition
from kenning.runtime.worker import WorkerOptions
from tests.pg_server import pg_dsn, pg_server  # noqa: F401  (fixtures)

FAST = WorkerOptions(poll_interval=0.05, lease_seconds=5.0)

AppFactory = Callable[..., AbstractAsyncContextManager[App]]


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> str:
    """Which store the test's apps use."""
    return str(request.param)


@pytest.fixture
def db_path(tmp_path: Path) -> str:
    """A fresh SQLite file per test."""
    return str(tmp_path / "kenning.db")


@pytest.fixture
def database(backend: str, request: pytest.FixtureRequest, db_path: str) -> str:
    """The test's database: a SQLite path or a ``postgresql://`` URL."""
    return str(request.getfixturevalue("pg_dsn")) if backend == "postgres" else db_path


@pytest.fixture
def make_app(database: str) -> AppFactory:
    """Open an App on the test's database: ``async with make_app([wf, ...]) as app``."""

    @asynccontextmanager
    async def factory(workflows: Iterable[WorkflowDefinition[Any, Any]],
                      **kwargs: Any) -> AsyncIterator[App]:
        kwargs.setdefault("worker_options", FAST)
        kwargs.setdefault("worker_id", "test-worker")
        async with App(database, workflows=workflows, **kwargs) as app:
            yield app

    return factory
