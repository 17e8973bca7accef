"""``continue_as_new``: a workflow that loops for ever keeps a bounded history.

The run's current history is closed as a chapter (kept, and listed by ``kenning runs
history --all``) and the workflow starts afresh under the same run id with new arguments.
"""

from __future__ import annotations

from typing import Any, NoReturn

from kenning.core.context import WorkflowContext
from kenning.core.execution import ContinueAsNew
from kenning.core.steps import step_execution


def continue_as_new(ctx: WorkflowContext, *args: Any, **kwargs: Any) -> NoReturn:
    """End this history and start the workflow again with ``args`` under the same run id.

    It raises ``ContinueAsNew`` (a ``BaseException``) to leave the workflow's code; steps
    still running are cancelled, and what the code recorded until here is kept in the closed
    chapter. ``await continue_as_new(...)`` works the same.
    """
    ex = step_execution(ctx, "continue_as_new")
    ex.take_seq("continue_as_new")  # misuse and unwinding checks; the position is not used
    ex.continue_with = ex.definition.encode_arguments(args, kwargs)
    raise ContinueAsNew(f"run {ex.run.run_id} continues as new")
