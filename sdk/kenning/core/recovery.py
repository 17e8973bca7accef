"""Crashes count: activity attempts recorded before they run, and poison runs bounded.

An activity attempt is recorded as started (a small fenced write) before the activity
runs, so when its worker dies during it (OOM kill, segfault, SIGKILL) the next owner sees
an attempt that started and never ended: it counts as a failed attempt against
``max_attempts``. Writes of concurrent attempts coalesce: while one is in flight, the
attempts started meanwhile go in the next write together.

To keep this cheap, a step's commit also records the first attempt of an activity at the
next history position, before the code has asked for it: a sequential workflow's next
activity then starts with nothing to write. The price: a worker lost between that commit
and the next step counts as lost during that activity's first attempt.

A run whose worker keeps getting lost outside any activity (a poison run) is claimed again
after each loss with a growing, jittered pause, and failed once ``recoveries`` (counted by
the store at claim time) exceeds ``max_recoveries``.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Mapping

from kenning.core.committer import LeaseCommitter
from kenning.core.errors import WorkerLost

DEFAULT_MAX_RECOVERIES = 10
RECOVERY_PAUSE_FIRST = 0.5  # seconds before replaying a run recovered once
RECOVERY_PAUSE_CAP = 30.0


class AttemptLog:
    """The activity attempts of one held run: those a lost worker had started, and ours."""

    def __init__(self, committer: LeaseCommitter, started: Mapping[int, int],
                 recorded: Callable[[int], bool]) -> None:
        self._committer = committer
        self._started = dict(started)  # as the run was claimed: a lost worker's attempts
        self._recorded = recorded  # whether a history position holds a step
        self._in_flight: dict[int, int] = {}
        self._durable: dict[int, int] = dict(started)  # what the run row holds now
        self._version = 0
        self._written = 0
        self._lock = asyncio.Lock()

    def lost_attempt(self, seq: int, ended: int) -> int | None:
        """The attempt at ``seq`` that a lost worker started and never ended, if any
        (``ended``: the attempts known to have ended, from a retry wait)."""
        started = self._started.get(seq, 0)
        return started if started > ended else None

    async def started(self, seq: int, attempt: int) -> None:
        """Durably record that ``attempt`` of the activity at ``seq`` starts now."""
        self._in_flight[seq] = attempt
        if self._durable.get(seq) == attempt:
            return  # recorded ahead, with the previous step's commit
        self._version += 1
        mine = self._version
        async with self._lock:
            if self._written >= mine:
                return  # a write made while we waited carried ours too
            version = self._version
            attempts = self._snapshot()
            store, lease = self._committer.store, self._committer.lease
            await self._committer.write(lambda: store.record_attempts(lease, attempts))
            self._written = max(self._written, version)
            self._durable = attempts

    def _snapshot(self) -> dict[int, int]:
        attempts = {s: n for s, n in self._started.items() if not self._recorded(s)}
        attempts.update(self._in_flight)
        return attempts

    def ahead(self, next_seq: int) -> dict[int, int]:
        """The attempts to record with a step's commit: ours, and the first attempt of an
        activity at ``next_seq`` should the code call one there next."""
        attempts = self._snapshot()
        attempts.setdefault(next_seq, 1)
        return attempts

    def committed(self, attempts: dict[int, int]) -> None:
        """``attempts`` (from ``ahead``) is now what the run row holds."""
        self._durable = attempts

    def ended(self, seq: int) -> None:
        """The attempt at ``seq`` ended (its outcome is being committed)."""
        self._in_flight.pop(seq, None)
        self._started.pop(seq, None)


def worker_lost_during(attempt: int, max_attempts: int) -> WorkerLost:
    """The error of an activity attempt whose worker was lost."""
    return WorkerLost(f"the worker was lost during attempt {attempt} of {max_attempts} "
                      f"(killed, crashed or hung while the activity ran)")


def poison_error(run_id: str, recoveries: int, max_recoveries: int) -> WorkerLost:
    """The error that fails a run whose workers keep getting lost."""
    return WorkerLost(
        f"run {run_id}: its worker was lost {recoveries} times in a row while running it "
        f"(killed, crashed or hung, e.g. an OOM kill, a segfault or a blocked event loop); "
        f"failed after {recoveries - 1} recovery attempts (max_recoveries={max_recoveries})")


def recovery_pause(recoveries: int) -> float:
    """Seconds to wait before replaying a run recovered ``recoveries`` times in a row."""
    if recoveries <= 0:
        return 0.0
    pause = min(RECOVERY_PAUSE_CAP, RECOVERY_PAUSE_FIRST * 2.0 ** min(recoveries - 1, 32))
    return pause * random.uniform(0.5, 1.0)
