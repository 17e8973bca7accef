"""The exceptions of Kenning: one root, specific subclasses, messages that say what to do."""

from __future__ import annotations


class KenningError(Exception):
    """Root of every error Kenning raises on purpose."""


class ConfigurationError(KenningError):
    """A setting, argument or definition is invalid."""


class WorkflowNotFound(KenningError):
    """No workflow of that name is registered with this app or worker."""


class RunNotFound(KenningError):
    """No run has that id."""


class InvalidInput(KenningError, ValueError):
    """An input does not fit: a workflow's arguments, a run id, a size or an encoding.

    ``field`` names the input at fault when it is one field (``run_id``, ``input``, ...).
    """

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class EventTimeout(KenningError, TimeoutError):
    """``wait_event`` reached its timeout before a matching event arrived."""


class EventDataError(KenningError, ValueError):
    """An event's data does not validate against the model it is decoded into."""


class InvalidEvent(KenningError, ValueError):
    """A CloudEvent is malformed; the message names the attribute."""


class InvalidEventInput(InvalidEvent, InvalidInput):
    """An event attribute the store cannot hold (NUL, lone surrogate, too long)."""


class NonDeterminismError(KenningError):
    """The workflow's code asked for a different step than its history recorded."""


class StepInActivityError(KenningError):
    """A durable step (activity, ``wait_event``, ``sleep``, ``send_event``) was called from
    inside an activity; only workflow code may call steps. The run fails with it."""


class WorkflowBlocked(KenningError):
    """Workflow or activity code blocked the worker's event loop beyond the threshold."""


class TerminalError(KenningError):
    """Raised by an activity to fail at once, without further retries."""


class ActivityError(KenningError):
    """An activity failed for good (retries exhausted, terminal error or timeout).

    Raised inside the workflow at the call site, live and on replay alike.
    """

    def __init__(self, activity: str, error_type: str, message: str, attempts: int) -> None:
        super().__init__(
            f"activity '{activity}' failed after {attempts} attempt(s): {error_type}: {message}"
        )
        self.activity = activity
        self.error_type = error_type
        self.message = message
        self.attempts = attempts


class ChildWorkflowError(KenningError):
    """A child run ended without a result: it failed (``error`` says with what) or was
    cancelled. Raised in the parent where it awaits the child."""

    def __init__(self, run_id: str, workflow: str, status: str, error: str | None) -> None:
        self.run_id = run_id
        self.workflow = workflow
        self.status = status
        self.error = error
        what = f"failed: {error}" if status == "failed" else f"was {status}"
        if status == "cancelled" and error:
            what += f" ({error})"
        super().__init__(f"child run {run_id} of workflow '{workflow}' {what}")


class WorkerLost(KenningError):
    """The worker running a run was lost (killed, crashed or hung) during an activity
    attempt or outside any; the message says which and how often."""


class RunFailed(KenningError):
    """The run ended with an error; ``error`` holds what the workflow raised."""

    def __init__(self, run_id: str, error: str) -> None:
        super().__init__(f"run {run_id} failed: {error}")
        self.run_id = run_id
        self.error = error


class RunCancelled(KenningError):
    """The run was cancelled before it finished."""

    def __init__(self, run_id: str, reason: str) -> None:
        super().__init__(f"run {run_id} was cancelled: {reason}")
        self.run_id = run_id
        self.reason = reason


class StoreUnavailable(KenningError):
    """The store cannot be reached; the operation may be retried."""


class StoreOverloaded(StoreUnavailable):
    """The store's write queue is full: nothing was done; retry after a short delay."""

    def __init__(self, message: str, *, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class SchemaTooNew(KenningError):
    """The database was migrated by a newer Kenning than this one."""


class LeaseLost(KenningError):
    """This worker no longer holds the run (its lease expired or the run was cancelled).

    What the store knew when the write was refused: the run's ``status``, its current
    ``epoch`` and ``owner`` (``None`` when unknown, e.g. the run is gone).
    """

    def __init__(self, message: str, *, run_id: str | None = None, epoch: int | None = None,
                 owner: str | None = None, status: str | None = None) -> None:
        super().__init__(message)
        self.run_id = run_id
        self.epoch = epoch
        self.owner = owner
        self.status = status


class LoopFailed(KenningError):
    """A long-lived loop of a worker or app died of an unexpected error (a bug); the process
    must be restarted. The original error is its ``__cause__``."""
