"""Engine tests run an embedded App on a temporary SQLite file."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from kenning import App, WorkflowDefinition
from kenning.runtime.worker import WorkerOptions

FAST = WorkerOptions(poll_interval=0.05, lease_seconds=5.0)

AppFactory = Callable[..., AbstractAsyncContextManager[App]]


@pytest.fixture
def db_path(tmp_path: Path) -> str:
    """A fresh SQLite file per test."""
    return str(tmp_path / "kenning.db")


@pytest.fixture
def make_app(db_path: str) -> AppFactory:
    """Open an App on the test's database: ``async with make_app([wf, ...]) as app``."""

    @asynccontextmanager
    async def factory(workflows: Iterable[WorkflowDefinition[Any, Any]],
                      **kwargs: Any) -> AsyncIterator[App]:
        kwargs.setdefault("worker_options", FAST)
        kwargs.setdefault("worker_id", "test-worker")
        async with App(db_path, workflows=workflows, **kwargs) as app:
            yield app

    return factory
