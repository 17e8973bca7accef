"""Listeners of a store's committed changes, called on the event loop."""

from __future__ import annotations

import logging
from collections.abc import Callable

from kenning.core.models import Notification
from kenning.core.store import Listener

log = logging.getLogger(__name__)


class ListenerSet:
    """A set of callbacks; one failing listener does not stop the others."""

    def __init__(self) -> None:
        self._listeners: list[Listener] = []

    def add(self, listener: Listener) -> Callable[[], None]:
        """Add ``listener``; return a function that removes it."""
        self._listeners.append(listener)

        def remove() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)
        return remove

    def dispatch(self, notes: list[Notification]) -> None:
        """Call every listener with every notification."""
        for note in notes:
            for listener in list(self._listeners):
                try:
                    listener(note)
                except Exception:
                    log.exception("store listener failed on %s", note)
