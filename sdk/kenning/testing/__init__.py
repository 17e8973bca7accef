"""Testing workflows: ``replay`` recorded histories and a time-skipping ``TestEnv``.

``replay(workflow, history)`` runs a history exported by ``kenning runs history RUN --json``
through the current code and raises ``NonDeterminismError`` where it no longer fits.
``TestEnv`` is an embedded app on a temporary database whose timers fire as soon as nothing
else can happen.
"""

from kenning.testing._env import SkippingClock, TestEnv
from kenning.testing._replay import ReplayResult, load_history, replay, replay_async

__all__ = ["ReplayResult", "SkippingClock", "TestEnv", "load_history", "replay", "replay_async"]
