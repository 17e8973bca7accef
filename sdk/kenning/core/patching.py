"""``ctx.patched(change_id)``: one build serving runs recorded before and after a change.

The first live call records a ``patch`` marker step named ``change_id`` and returns True.
On replay, a marker of that name at this position is consumed and means True; anything
else there (a step recorded by the old code, or the wait the run is suspended at) means
the history predates the change: False, and the position is left to the old code's step.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kenning.core.errors import ConfigurationError
from kenning.core.models import Step, StepKind

if TYPE_CHECKING:
    from kenning.core.execution import RunExecution


def patched(ex: RunExecution, change_id: str) -> bool:
    """Whether the run takes the code path of ``change_id`` (see the module docstring)."""
    if not isinstance(change_id, str) or not change_id:
        raise ConfigurationError("ctx.patched needs a non-empty change id")
    seq = ex._next_seq
    step = ex.history.get(seq)
    if step is not None:
        if step.kind is StepKind.PATCH and step.name == change_id:
            ex.take_seq()
            return True
        return False  # recorded by code from before the change
    if any(other > seq for other in ex.history):
        return False
    if ex.has_stored_wait(seq):
        return False  # suspended here by code from before the change
    ex.take_seq()
    # recorded at workflow time, so recording the marker does not move ctx.now()
    ex.buffer(Step(seq, StepKind.PATCH, change_id, None, ex.workflow_time))
    return True
