"""Riding out store outages: capped, jittered backoff, and an outage logged once each way.

Every long-lived loop of the runtime (claims, wake-ups, renewals, purges, the outbox, the
LISTEN connection) keeps one ``Outage`` per thing it depends on::

    outage = Outage("worker w-1 claiming runs", log)
    while True:
        try:
            await claim()
        except StoreUnavailable as exc:
            await outage.wait(exc)      # first failure: one WARNING; then quiet backoff
            continue
        outage.recovered()              # first success after failures: one INFO line

Anything else a loop raises is a bug: the loop dies and the process says so (``App``
surfaces it, the CLI exits non-zero), rather than living on doing nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from typing import Final

DEFAULT_FIRST_DELAY: Final = 0.05
DEFAULT_MAX_DELAY: Final = 2.0


def jittered(delay: float, rng: random.Random | None = None) -> float:
    """``delay`` spread over [delay/2, delay] ("equal jitter"), so retriers do not align."""
    draw = (rng or random).random()
    return delay / 2 + draw * delay / 2


class Outage:
    """Backoff state and log lines of one dependency of one loop."""

    def __init__(
        self,
        what: str,
        logger: logging.Logger,
        *,
        first_delay: float = DEFAULT_FIRST_DELAY,
        max_delay: float = DEFAULT_MAX_DELAY,
    ) -> None:
        self.what = what
        self._log = logger
        self.first_delay = first_delay
        self.max_delay = max_delay
        self._failures = 0
        self._since: float | None = None

    @property
    def down(self) -> bool:
        """True between the first failure and the next success."""
        return self._since is not None

    @property
    def failures(self) -> int:
        """Consecutive failures so far (0 when up)."""
        return self._failures

    def failed(self, exc: BaseException) -> float:
        """Count a failure; log it if it starts an outage; return the delay before a retry."""
        if self._since is None:
            self._since = time.monotonic()
            self._log.warning("%s failed (%s); retrying with capped backoff, quiet until it "
                              "works again", self.what, exc)
        else:
            self._log.debug("%s failed again (%d failures): %s",
                            self.what, self._failures + 1, exc)
        delay = min(self.max_delay, self.first_delay * 2 ** min(self._failures, 30))
        self._failures += 1
        return jittered(delay)

    def recovered(self) -> None:
        """Count a success; log the end of an outage (once)."""
        if self._since is None:
            return
        lasted = time.monotonic() - self._since
        self._log.warning("%s works again after %.1fs (%d failed attempts)",
                          self.what, lasted, self._failures)
        self._since = None
        self._failures = 0

    async def wait(self, exc: BaseException, wake: asyncio.Event | None = None) -> None:
        """``failed(exc)`` and sleep the delay; ``wake`` being set cuts the sleep short."""
        delay = self.failed(exc)
        if wake is None:
            await asyncio.sleep(delay)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wake.wait(), delay)
