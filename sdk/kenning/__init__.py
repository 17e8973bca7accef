"""Kenning: durable async workflows for Python, native to Kubernetes, embedded on SQLite."""

from kenning.core.children import ChildHandle
from kenning.core.context import WorkflowContext
from kenning.core.continuation import continue_as_new
from kenning.core.definitions import (
    ActivityDefinition,
    RetryPolicy,
    WorkflowDefinition,
    activity,
    workflow,
)
from kenning.core.errors import (
    ActivityError,
    ChildWorkflowError,
    ConfigurationError,
    EventDataError,
    EventTimeout,
    InvalidEvent,
    InvalidInput,
    KenningError,
    LeaseLost,
    LoopFailed,
    NonDeterminismError,
    RunCancelled,
    RunFailed,
    RunNotFound,
    SchemaTooNew,
    StepInActivityError,
    StoreOverloaded,
    StoreUnavailable,
    TerminalError,
    WorkflowBlocked,
    WorkflowNotFound,
)
from kenning.core.events import ReceivedEvent, decode_event_data
from kenning.core.models import RunStatus
from kenning.core.steps import send_event, sleep, sleep_until, wait_event
from kenning.runtime.app import App
from kenning.runtime.client import Client, RunInfo, WaitingFor

__version__ = "0.1.0"

__all__ = [
    "ActivityDefinition",
    "ActivityError",
    "App",
    "ChildHandle",
    "ChildWorkflowError",
    "Client",
    "ConfigurationError",
    "EventDataError",
    "EventTimeout",
    "InvalidEvent",
    "InvalidInput",
    "KenningError",
    "LeaseLost",
    "LoopFailed",
    "NonDeterminismError",
    "ReceivedEvent",
    "RetryPolicy",
    "RunCancelled",
    "RunFailed",
    "RunInfo",
    "RunNotFound",
    "RunStatus",
    "SchemaTooNew",
    "StepInActivityError",
    "StoreOverloaded",
    "StoreUnavailable",
    "TerminalError",
    "WaitingFor",
    "WorkflowBlocked",
    "WorkflowContext",
    "WorkflowDefinition",
    "WorkflowNotFound",
    "__version__",
    "activity",
    "continue_as_new",
    "decode_event_data",
    "send_event",
    "sleep",
    "sleep_until",
    "wait_event",
    "workflow",
]
