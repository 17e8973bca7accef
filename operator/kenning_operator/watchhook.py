"""See each raw watch event of ``WorkflowRun`` the moment kopf reads it off the stream.

kopf hands an event to a per-object worker task, builds its body, detects causes and only
then calls ``@kopf.on.event`` handlers: about a millisecond on an idle operator, more when it
is busy. Starting a new resource's run needs none of that, so the operator taps the stream
itself: kopf's watcher reads events from ``kopf._cogs.clients.watching.infinite_watch``, and
that function is wrapped (once per process) to call the hook registered for the operator's
settings object before kopf queues the event. kopf's own processing is unchanged; if kopf's
internals ever move, ``install`` returns False and the ``on.event`` handler does the work as
before, one step later.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

log = logging.getLogger(__name__)

Hook = Callable[[Mapping[str, Any]], None]
_HOOKS: dict[int, tuple[str, str, Hook]] = {}
"""id(settings) -> (group, plural, hook)."""


def install(settings: object, group: str, plural: str, hook: Hook) -> bool:
    """Call ``hook(raw_event)`` for every event of ``group``/``plural`` that kopf watches
    with ``settings``; False if kopf's watch stream could not be tapped."""
    if not _wrap_once():
        return False
    _HOOKS[id(settings)] = (group, plural, hook)
    return True


def uninstall(settings: object) -> None:
    """Stop calling the hook of ``settings``."""
    _HOOKS.pop(id(settings), None)


def _wrap_once() -> bool:
    try:
        from kopf._cogs.clients import watching
        from kopf._core.reactor import queueing
    except ImportError:
        return False
    if getattr(queueing, "watching", None) is not watching \
            or not hasattr(watching, "infinite_watch"):
        return False
    original = watching.infinite_watch
    if getattr(original, "_kenning_tap", False):
        return True

    async def infinite_watch(*, settings: Any, resource: Any,
                             **kwargs: Any) -> AsyncIterator[Any]:
        stream = original(settings=settings, resource=resource, **kwargs)
        tap = _HOOKS.get(id(settings))
        if tap is None or (getattr(resource, "group", None), getattr(resource, "plural", None)) \
                != tap[:2]:
            async for event in stream:
                yield event
            return
        hook = tap[2]
        async for event in stream:
            if isinstance(event, dict) and isinstance(event.get("object"), dict):
                try:
                    hook(event)
                except Exception:  # never break kopf's stream
                    log.exception("watch hook failed on an event; kopf's handlers still run")
            yield event

    infinite_watch._kenning_tap = True  # type: ignore[attr-defined]
    watching.infinite_watch = infinite_watch
    return True
