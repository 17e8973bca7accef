"""See each raw watch event of ``WorkflowRun`` the moment kopf reads it off the stream.

kopf hands an event to a per-object worker task, builds its body, detects causes and only
then calls ``@kopf.on.event`` handlers: about a millisecond on an idle operator, more when it
is busy. Starting a new resource's run needs none of that, so the operator taps the stream
itself: kopf's watcher reads events from ``kopf._cogs.clients.watching.infinite_watch``, and
that function is wrapped (once per process) to call the hook registered for the operator's
settings object before kopf queues the event. kopf's own processing is unchanged.

Before wrapping, the tap checks what it wraps: the module kopf's queueing reads it from, that
it is an async generator function, and its keyword parameters (``settings``, ``resource``,
``namespace``). If kopf's internals ever move, ``install`` returns False, logs once why, and
the ``on.event`` handler does the work as before, one step later. The kopf range in
``pyproject.toml`` is the one this was checked against (a test runs the tap on the lowest
and the highest kopf of that range).
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

log = logging.getLogger(__name__)

Hook = Callable[[Mapping[str, Any]], None]
_HOOKS: dict[int, tuple[str, str, Hook]] = {}
"""id(settings) -> (group, plural, hook)."""
EXPECTED_PARAMETERS = ("settings", "resource", "namespace")
_off_logged = False


def install(settings: object, group: str, plural: str, hook: Hook) -> bool:
    """Call ``hook(raw_event)`` for every event of ``group``/``plural`` that kopf watches
    with ``settings``; False if kopf's watch stream could not be tapped."""
    why = _wrap_once()
    if why is not None:
        global _off_logged
        if not _off_logged:
            _off_logged = True
            log.warning("runs start from kopf's on.event handler, a step later than from the "
                        "watch stream: %s (this kopf is outside the range Kenning was "
                        "checked against)", why)
        return False
    _HOOKS[id(settings)] = (group, plural, hook)
    return True


def uninstall(settings: object) -> None:
    """Stop calling the hook of ``settings``."""
    _HOOKS.pop(id(settings), None)


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

    async def infinite_watch(*, settings: Any, resource: Any,
                             **kwargs: Any) -> AsyncIterator[Any]:
        stream = original(settings=settings, resource=resource, **kwargs)
        tap = _HOOKS.get(id(settings))
        hook = tap[2] if tap is not None and tap[:2] == (
            getattr(resource, "group", None), getattr(resource, "plural", None)) else None
        # Closed with the wrapper, in its task (not later by the loop's shutdown hooks).
        async with contextlib.aclosing(stream):
            async for event in stream:
                if hook is not None and isinstance(event, dict) \
                        and isinstance(event.get("object"), dict):
                    try:
                        hook(event)
                    except Exception:  # never break kopf's stream
                        log.exception("watch hook failed on an event; kopf's handlers "
                                      "still run")
                yield event

    infinite_watch._kenning_tap = True  # type: ignore[attr-defined]
    watching.infinite_watch = infinite_watch
    return None
