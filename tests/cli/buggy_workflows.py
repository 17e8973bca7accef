"""Workflow code whose loading plants a bug in the store's wake-up query (a process test of
"a loop that dies of a bug exits non-zero"): the third call raises ``ZeroDivisionError``."""

from __future__ import annotations

from typing import Any

from kenning import WorkflowContext, workflow
from kenning.stores.sqlite import SqliteStore

_real = SqliteStore.next_wake_at
_calls = [0]


async def _buggy_next_wake_at(self: SqliteStore) -> Any:
    _calls[0] += 1
    if _calls[0] >= 3:
        raise ZeroDivisionError("planted bug")
    return await _real(self)


SqliteStore.next_wake_at = _buggy_next_wake_at  # type: ignore[method-assign]


@workflow
async def buggy_noop(ctx: WorkflowContext) -> None:
    """Does nothing."""
