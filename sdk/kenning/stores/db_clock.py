"""The database's clock, read from this process: monotonic time plus a learned offset.

Leases, claims and due times are judged by PostgreSQL's clock in SQL. The few places that
need the time in Python (the worker's alarm for the next timer, a timer's due time, the
lease left during an outage) ask this clock, so that a worker whose own clock runs ahead
or behind neither fires timers early or late. The offset is learned from round trips
(``SELECT clock_timestamp()``): the sample with the shortest round trip wins, aged by an
allowance for drift, and the local wall clock is never used after the first sample.
"""

from __future__ import annotations

import time

# In statements: the transaction's start, a stable value (so indexes serve the comparisons
# it takes part in); a batch's transaction is milliseconds old when its statements run.
DB_NOW = "extract(epoch from now())::float8"
# For learning the clock: the instant the server reads it.
DB_CLOCK = "extract(epoch from clock_timestamp())::float8"
_DRIFT = 1e-4  # seconds of possible drift per second since a sample
_STALE = 300.0  # a sample this old is replaced by any new one


class DatabaseClock:
    """Unix seconds by the database's clock, estimated locally."""

    def __init__(self) -> None:
        self._offset = time.time() - time.monotonic()  # until the first round trip
        self._error = float("inf")
        self._taken = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self._offset

    @property
    def error(self) -> float:
        """The bound on this estimate's error now (seconds); ``inf`` before any sample."""
        return self._error + (time.monotonic() - self._taken) * _DRIFT

    def observe(self, db_time: float, sent: float, received: float) -> None:
        """Learn from a round trip: the database said ``db_time`` between the monotonic
        instants ``sent`` and ``received``."""
        half = max(0.0, received - sent) / 2
        if half <= self.error or received - self._taken > _STALE:
            self._offset = float(db_time) - (sent + half)
            self._error = half
            self._taken = received
