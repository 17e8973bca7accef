"""kopf's peering state, for the loops the operator runs beside kopf.

With peering (``--peering``, HA), kopf pauses its watch streams while another operator with a
higher priority is alive. The operator's own watch of ``WorkflowRun``s (``informer``) must
pause with them, and kopf has no public API that says whether it is paused. Its watch
streams do know: kopf's watcher reads events from
``kopf._cogs.clients.watching.infinite_watch(..., operator_paused=...)``, and that function
is wrapped (once per process) to hand the ``operator_paused`` toggle kopf gives it to the
``PeeringGate`` registered for the operator's settings object. Nothing else about kopf's
streams changes.

Before wrapping, the tap checks what it wraps: the module kopf's queueing reads it from, that
it is an async generator function, and its keyword parameters (``settings``, ``resource``,
``namespace``, ``operator_paused``). If kopf's internals ever move, ``install`` returns
False and logs once why; an operator with peering then watches its runs even while another
is active (their writes are idempotent, but both make them). The kopf range in
``pyproject.toml`` is the one this was checked against (a test installs the tap on the
lowest and the highest kopf of that range).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import AsyncIterator
from typing import Any

log = logging.getLogger(__name__)

EXPECTED_PARAMETERS = ("settings", "resource", "namespace", "operator_paused")
_GATES: dict[int, PeeringGate] = {}
"""id(settings) -> the gate of the operator that runs kopf with those settings."""
_off_logged = False


class PeeringGate:
    """Whether this operator is the active one, as kopf's peering decides.

    Disabled (standalone, or the tap not installed): always active."""

    def __init__(self, *, enabled: bool) -> None:
        self.enabled = enabled
        self._toggle: Any = None
        self._seen = asyncio.Event()

    def use(self, toggle: Any) -> None:
        """kopf's ``operator_paused`` toggle set (on: another operator is active)."""
        if self._toggle is None:
            self._toggle = toggle
            self._seen.set()

    def paused(self) -> bool:
        """Whether another operator is active now (or, with peering, kopf has not decided
        yet)."""
        if not self.enabled:
            return False
        return self._toggle is None or bool(self._toggle.is_on())

    async def wait_active(self) -> None:
        """Until this operator is the active one."""
        if not self.enabled:
            return
        await self._seen.wait()
        await self._toggle.wait_for(False)

    async def wait_paused(self) -> None:
        """Until another operator becomes the active one (never, when disabled)."""
        if not self.enabled:
            await asyncio.Event().wait()
        await self._seen.wait()
        await self._toggle.wait_for(True)


def install(settings: object, gate: PeeringGate) -> bool:
    """Give ``gate`` kopf's pause toggle when kopf watches with ``settings``; False if
    kopf's watch streams could not be tapped."""
    why = _wrap_once()
    if why is not None:
        global _off_logged
        if not _off_logged:
            _off_logged = True
            log.warning("kopf's peering state cannot be read: %s (this kopf is outside the "
                        "range Kenning was checked against); with --peering, WorkflowRuns "
                        "are watched even while another operator is active", why)
        return False
    _GATES[id(settings)] = gate
    return True


def uninstall(settings: object) -> None:
    """Forget the gate of ``settings``."""
    _GATES.pop(id(settings), None)


def check(function: object) -> str | None:
    """Why ``function`` is not the ``infinite_watch`` the tap knows (None: it is)."""
    if getattr(function, "_kenning_tap", False):
        return None
    if not inspect.isasyncgenfunction(function):
        return "kopf's infinite_watch is no longer an async generator function"
    try:
        params = inspect.signature(function).parameters
    except (TypeError, ValueError):
        return "kopf's infinite_watch has no readable signature"
    missing = [name for name in EXPECTED_PARAMETERS if name not in params
               or params[name].kind not in (inspect.Parameter.KEYWORD_ONLY,
                                            inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    if missing:
        return f"kopf's infinite_watch takes no keyword {', '.join(missing)}"
    return None


def _wrap_once() -> str | None:
    """Wrap kopf's ``infinite_watch`` (once); why not, if it cannot be."""
    try:
        from kopf._cogs.clients import watching
        from kopf._core.reactor import queueing
    except ImportError as exc:
        return f"kopf's watching modules moved ({exc})"
    if getattr(queueing, "watching", None) is not watching:
        return "kopf's queueing no longer reads the watch stream from kopf._cogs.clients"
    original = getattr(watching, "infinite_watch", None)
    why = check(original)
    if why is not None:
        return why
    if getattr(original, "_kenning_tap", False):
        return None
    assert original is not None

    async def infinite_watch(*, settings: Any, operator_paused: Any = None,
                             **kwargs: Any) -> AsyncIterator[Any]:
        gate = _GATES.get(id(settings))
        if gate is not None and operator_paused is not None:
            gate.use(operator_paused)
        stream = original(settings=settings, operator_paused=operator_paused, **kwargs)
        # Closed with the wrapper, in its task (not later by the loop's shutdown hooks).
        async with contextlib.aclosing(stream):
            async for event in stream:
                yield event

    infinite_watch._kenning_tap = True  # type: ignore[attr-defined]
    watching.infinite_watch = infinite_watch
    return None
