"""The operator's writes per run, counted by the emulator answering as a real API server
(new ``resourceVersion`` on every write, 409/422 on failed preconditions, latency): a run
costs its finalizer and one status patch per phase shown, never a 422; a backlog is patched
concurrently but never twice at once for one resource; a restart writes only where status
differs; Events are aggregated under load."""

from __future__ import annotations

import asyncio
import dataclasses
import time

import pytest

from kenning.core import codec
from kenning.core.models import RunStatus
from kenning.core.store import Store
from kenning_operator.resources import FINALIZER
from kenning_operator.status import SCHEDULABLE
from tests.operator.conftest import Operators, eventually
from tests.operator.emulator import Emulator
from tests.operator.kube_helpers import (
    POOLS,
    RUNS,
    apply,
    events_of,
    get,
    pool_body,
    run_body,
    status,
)

pytestmark = pytest.mark.parametrize("database", ["postgres"], indirect=True)


def all_phased(api: object, names: list[str], phase: str) -> bool:
    return all(status(api, n).get("phase") == phase for n in names)  # type: ignore[arg-type]


def settled(api: Emulator, name: str, schedulable: str) -> bool:
    """The resource carries Kenning's finalizer and shows ``Schedulable`` as given."""
    obj = get(api, RUNS, "default", name)
    return obj is not None and obj["metadata"].get("finalizers") == [FINALIZER] and any(
        c["type"] == SCHEDULABLE and c["status"] == schedulable
        for c in (obj.get("status") or {}).get("conditions", []))


async def test_paced_runs_cost_two_writes_and_no_422(operators: Operators) -> None:
    api = operators.api
    api.latency = 0.001
    await operators.start()
    await apply(api, POOLS, pool_body("flows", ["op_approval"]))
    names = [f"paced-{i}" for i in range(30)]
    for name in names:
        await apply(api, RUNS, run_body(name, "op_approval", {"order_id": name}))
        await asyncio.sleep(0.02)
    await eventually(lambda: all_phased(api, names, "Pending"), what="all Pending")
    await asyncio.sleep(0.5)  # nothing more is written afterwards
    for name in names:
        assert api.writes_of("workflowruns", name) == {"create": 1, "patch": 1,
                                                         "patch/status": 1}, name
        obj = get(api, RUNS, "default", name)
        assert obj is not None and obj["metadata"]["finalizers"] == ["kenning.dev/cancel-run"]
        assert events_of(api, name) == []  # a new resource is Pending: no news
    assert api.answered[422] == 0 and api.answered[409] == 0, api.answered


async def test_a_backlog_is_patched_concurrently_one_at_a_time_each(
        operators: Operators, store: Store) -> None:
    api = operators.api
    api.latency = 0.005
    op = await operators.start()
    await apply(api, POOLS, pool_body("flows", ["op_approval"]))
    names = [f"backlog-{i:03d}" for i in range(300)]
    began = time.monotonic()
    await asyncio.gather(*(apply(api, RUNS, run_body(n, "op_approval", {"order_id": n}))
                           for n in names))
    await eventually(lambda: all_phased(api, names, "Pending"), timeout=60,
                     what="the backlog Pending")
    took = time.monotonic() - began
    # One at a time, 300 status patches and 300 finalizers would take >= 3 s of latency.
    assert api.peak_in_flight > 4, api.peak_in_flight
    assert api.peak_per_object == 1, "two writes to one resource's status at once"
    assert took < 30, took

    # Every run runs and ends at once, faster than the operator's write budget: their
    # phases coalesce (Running mostly never shows).
    op.sync.config = dataclasses.replace(op.sync.config, status_patch_rate=100.0)
    run_ids = [status(api, n)["runId"] for n in names]
    before = {n: api.writes_of("workflowruns", n)["patch/status"] for n in names}
    claimed = await store.claim_runs("w", limit=len(run_ids), lease_seconds=60,
                                     run_ids=run_ids)
    await asyncio.gather(*(store.finish_run(c.lease, RunStatus.COMPLETED,
                                            result=codec.dumps(1)) for c in claimed))
    await eventually(lambda: all_phased(api, names, "Completed"), timeout=60,
                     what="the backlog Completed")
    extra = [api.writes_of("workflowruns", n)["patch/status"] - before[n] for n in names]
    assert max(extra) <= 2 and sum(extra) < 1.5 * len(names), sum(extra)
    assert api.answered[422] == 0 and api.answered[409] == 0, api.answered
    await eventually(lambda: op.sync.backlog == 0, what="nothing left to bring up to date")


async def test_a_restart_writes_only_where_status_differs(operators: Operators,
                                                          store: Store) -> None:
    api = operators.api
    first = await operators.start()
    await apply(api, POOLS, pool_body("flows", ["op_approval"]))
    names = [f"idle-{i}" for i in range(40)]
    for name in names:
        await apply(api, RUNS, run_body(name, "op_approval", {"order_id": name}))
    await apply(api, RUNS, run_body("nopool", "unserved", {}))
    await eventually(lambda: all_phased(api, [*names, "nopool"], "Pending"), what="Pending")
    # Before the stop the first operator has shown all it will: the pool serving the idle
    # runs (it may have been seen after their first patch), every finalizer, no backlog.
    await eventually(lambda: all(settled(api, n, "True") for n in names)
                     and settled(api, "nopool", "False") and first.sync.backlog == 0,
                     what="the first operator done")
    await operators.stop(first)

    changed = status(api, names[0])["runId"]
    [c] = await store.claim_runs("w", limit=1, lease_seconds=60, run_ids=[changed])
    before = api.writes.copy()  # whatever the first operator wrote (a pool seen late, too)
    await operators.start()
    await eventually(lambda: status(api, names[0]).get("phase") == "Running",
                     what="the run changed while the operator was down")
    await asyncio.sleep(1.5)  # several sweeps, the pool's event and its pending runs
    new = api.writes - before
    status_writes = {k[1]: v for k, v in new.items()
                     if k[0] == "workflowruns" and k[2] == "patch/status"}
    assert status_writes == {names[0]: 1}, status_writes
    assert not [k for k in new if k[0] == "workflowruns" and k[2] != "patch/status"], new
    events = [k[1] for k in new if k[0] == "events"]
    assert all(e.startswith(f"{names[0]}.") for e in events), events  # its Running only
    del c


async def test_events_are_aggregated_under_load(operators: Operators, store: Store) -> None:
    api = operators.api
    op = await operators.start()
    op.sync.events.rate = 2.0
    op.sync.events._tokens = 0.0
    await apply(api, POOLS, pool_body("flows", ["op_approval"]))
    names = [f"loud-{i}" for i in range(40)]
    for name in names:
        await apply(api, RUNS, run_body(name, "op_approval", {"order_id": name}))
    await eventually(lambda: all_phased(api, names, "Pending"), what="Pending")
    run_ids = [status(api, n)["runId"] for n in names]
    await store.claim_runs("w", limit=len(run_ids), lease_seconds=60, run_ids=run_ids)
    await eventually(lambda: all_phased(api, names, "Running"), what="Running")

    def aggregated() -> list[dict[str, object]]:
        return [o.raw for (res, _, _), o in api.objects.items() if res.plural == "events"
                and o.raw["involvedObject"]["kind"] == "Namespace"
                and o.raw["reason"] == "Running"]

    found = await eventually(aggregated, what="an aggregated Event")
    await asyncio.sleep(1.2)
    single = sum(len(events_of(api, n)) for n in names)
    counted = sum(int(e["count"]) for e in aggregated())  # type: ignore[call-overload]
    assert single + counted == len(names), (single, counted)
    assert len(aggregated()) + single < len(names) / 2, (len(aggregated()), single)
    assert "WorkflowRuns" in str(found[0]["message"])
