#!/usr/bin/env python
"""Run ``kenning_bench.py`` with prototype engine changes monkeypatched in (diagnosis only).

    PATCHES=waiters,leased python bench/prototype_patches.py W3 --db postgresql://...

These are the two changes proposed in bench/README.md ("Proposed fixes"), written as
patches so that their effect can be measured before anyone changes sdk/. Lines carry
``engine_source: "<commit>+<patches>"`` when ``KENNING_BENCH_COMMIT`` is set.

- ``waiters``: ``Client.wait_finished`` with one store subscription per client and a dict
  of futures per run id (instead of one listener per waiting call, each called for every
  notification), and only a 1 s fallback poll.
- ``leased``: ``App.start`` with an in-process worker inserts the run already leased to that
  worker (status ``running``, epoch 1) and launches it at once: no claim statement, no
  history query, no notify-wake-claim hop. PostgreSQL store only.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import runpy
import sys
import uuid
from pathlib import Path
from typing import Any

from kenning.core.definitions import WorkflowDefinition
from kenning.core.models import ClaimedRun, Lease, Notification, NotificationKind
from kenning.runtime import client as client_module
from kenning.runtime.app import App
from kenning.stores.rows import run_from_row

PATCHES = set(filter(None, os.environ.get("PATCHES", "").split(",")))
if os.environ.get("KENNING_BENCH_COMMIT") and PATCHES:
    os.environ["KENNING_BENCH_COMMIT"] += "+" + ",".join(sorted(PATCHES))


async def wait_finished(self: Any, run_id: str, timeout: float | None = None) -> Any:
    waiters: dict[str, list[asyncio.Future[None]]] | None = getattr(self, "_bench_waiters", None)
    if waiters is None:
        waiters = self._bench_waiters = {}
        registry = waiters

        def on_note(note: Notification) -> None:
            if note.kind is NotificationKind.FINISHED and note.run_id in registry:
                for fut in registry.pop(note.run_id):
                    if not fut.done():
                        fut.set_result(None)

        self.store.subscribe(on_note)
    async with asyncio.timeout(timeout):
        while True:
            fut = asyncio.get_running_loop().create_future()
            waiters.setdefault(run_id, []).append(fut)
            info = await self.get_run(run_id)
            if info.status.finished:
                return info
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(fut, 1.0)  # the fallback poll only


LEASED_INSERT = (
    "INSERT INTO runs (run_id, namespace, workflow, input, status, created_at, updated_at,"
    " started_at, lease_owner, lease_expires, epoch, labels) VALUES"
    " ($1, $2, $3, $4, 'running', $5, $5, $5, $6, $7, 1, '{}')"
    " ON CONFLICT (run_id) DO NOTHING RETURNING *"
)
_plain_start = App.start


async def leased_start(self: App, workflow: Any, /, *args: Any, run_id: str | None = None,
                       namespace: str | None = None, **kwargs: Any) -> str:
    worker, store = self.worker, self.store
    if (worker is None or self.registry is None or not isinstance(workflow, WorkflowDefinition)
            or worker.active_runs >= worker.options.max_runs or not hasattr(store, "_write")):
        return await _plain_start(self, workflow, *args, run_id=run_id, namespace=namespace,
                                  **kwargs)
    if workflow.name not in self.registry:
        self.registry.add(workflow)
    payload = workflow.encode_arguments(args, kwargs)
    rid = run_id or f"run-{uuid.uuid4().hex[:16]}"
    ns = namespace or self.namespace

    async def op(conn: Any, notes: list[Notification]) -> Any:
        now = float(store.clock())
        row = await conn.fetchrow(LEASED_INSERT, rid, ns, workflow.name, payload, now,
                                  worker.worker_id, now + worker.options.lease_seconds)
        return None if row is None else run_from_row(row)

    run = await store._write(op)  # type: ignore[attr-defined]
    if run is None:  # the id exists: the ordinary idempotent start
        return await _plain_start(self, workflow, *args, run_id=rid, namespace=namespace,
                                  **kwargs)
    worker._launch(ClaimedRun(run, Lease(rid, worker.worker_id, run.epoch), []))
    return rid


if "waiters" in PATCHES:
    client_module.Client.wait_finished = wait_finished  # type: ignore[method-assign]
if "leased" in PATCHES:
    App.start = leased_start  # type: ignore[method-assign]

if __name__ == "__main__":
    driver = Path(__file__).resolve().with_name("kenning_bench.py")
    sys.argv = [str(driver), *sys.argv[1:]]
    runpy.run_path(str(driver), run_name="__main__")
