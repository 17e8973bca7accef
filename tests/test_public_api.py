"""The public API is a deliberate list: any change to it shows up as a diff here."""

from __future__ import annotations

import kenning
import kenning.testing

EXPECTED = [
    "ActivityDefinition", "ActivityError", "App", "ChildHandle", "ChildWorkflowError", "Client",
    "ConfigurationError",
    "EventDataError", "EventTimeout", "InvalidEvent", "InvalidInput", "KenningError",
    "LeaseLost", "LoopFailed", "NonDeterminismError", "ReceivedEvent", "RetryPolicy",
    "RunCancelled",
    "RunFailed", "RunInfo", "RunNotFound", "RunStatus", "SchemaTooNew", "StepInActivityError",
    "StoreOverloaded", "StoreUnavailable", "TerminalError", "WaitingFor", "WorkflowBlocked",
    "WorkflowContext", "WorkflowDefinition", "WorkflowNotFound",
    "__version__", "activity", "continue_as_new", "decode_event_data", "send_event", "sleep",
    "sleep_until", "wait_event", "workflow",
]


def test_exported_names_are_the_listed_ones() -> None:
    assert sorted(kenning.__all__) == sorted(EXPECTED)
    for name in kenning.__all__:
        assert hasattr(kenning, name), name


def test_errors_share_one_root() -> None:
    errors = [getattr(kenning, n) for n in kenning.__all__
              if isinstance(getattr(kenning, n), type)
              and issubclass(getattr(kenning, n), BaseException)]
    assert errors and all(issubclass(e, kenning.KenningError) for e in errors)
    assert issubclass(kenning.EventTimeout, TimeoutError)
    assert issubclass(kenning.EventDataError, ValueError)


TESTING_EXPECTED = ["ReplayResult", "SkippingClock", "TestEnv", "load_history", "replay",
                    "replay_async"]


def test_the_testing_module_exports_the_listed_names() -> None:
    assert sorted(kenning.testing.__all__) == sorted(TESTING_EXPECTED)
    for name in kenning.testing.__all__:
        assert getattr(kenning.testing, name).__doc__, name
