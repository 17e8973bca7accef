"""The whole story with real processes: the pool scaled from zero, a ``kenning worker``
process runs the run, a CloudEvent delivered over HTTP to a ``kenning sink`` process wakes it,
the resource reaches Completed with its result, conditions and Events, and the pool goes back
to zero; delete cancels a waiting run. On PostgreSQL (and SQLite)."""

from __future__ import annotations

import itertools

from kenning.core.models import RunStatus
from kenning.core.store import Store
from tests.operator.conftest import Operators, Sink, Spawn, eventually
from tests.operator.kube_helpers import (
    DEPLOYMENTS,
    POOLS,
    RUNS,
    apply,
    condition,
    delete,
    events_of,
    get,
    pool_body,
    run_body,
    status,
)


def replicas(api: object, name: str = "flows-workers") -> int | None:
    obj = get(api, DEPLOYMENTS, "default", name)  # type: ignore[arg-type]
    return None if obj is None else int(obj["spec"]["replicas"])


async def test_pool_and_run_to_completed(operators: Operators, store: Store,
                                         spawn_worker: Spawn, sink: Sink) -> None:
    api = operators.api
    await operators.start()
    await apply(api, POOLS, pool_body("flows", ["op_approval"], idleSeconds=1,
                                      runsPerWorker=10))
    await eventually(lambda: replicas(api) == 0, what="a Deployment at zero")

    await apply(api, RUNS, run_body("order-1", "op_approval", {"order_id": "ORD-1"},
                                    pool="flows"))
    await eventually(lambda: replicas(api) == 1, what="the pool scaled from zero")
    await spawn_worker()  # what the Deployment's pod would run

    waiting = await eventually(
        lambda: status(api, "order-1").get("phase") == "WaitingForEvent"
        and status(api, "order-1"), what="WaitingForEvent")
    assert waiting["waitingFor"]["eventType"] == "op.approved"
    assert waiting["waitingFor"]["match"] == {"data.order_id": "ORD-1"}
    assert waiting["waitingFor"]["summary"].startswith("event op.approved")
    assert waiting["startedAt"]

    await sink.send("op.approved", {"order_id": "ORD-1", "by": "alice"})
    done = await eventually(lambda: status(api, "order-1").get("phase") == "Completed"
                            and status(api, "order-1"), what="Completed")
    assert done["result"] == {"order_id": "ORD-1", "note": "prepared ORD-1",
                              "approved_by": "alice"}
    assert done["finishedAt"] and done["observedGeneration"] == 1
    assert "waitingFor" not in done or done["waitingFor"] is None
    assert condition(api, "order-1", "Succeeded")["status"] == "True"  # type: ignore[index]
    assert condition(api, "order-1", "Failed")["status"] == "False"  # type: ignore[index]
    events = await eventually(lambda: [e["reason"] for e in events_of(api, "order-1")
                                       if e["reason"] == "Completed"], what="a Completed Event")
    assert events == ["Completed"]
    reasons = [e["reason"] for e in events_of(api, "order-1")]
    # A new resource is Pending: no Event for that (it is no transition).
    assert "Pending" not in reasons and reasons[-1] == "Completed", reasons
    assert "WaitingForEvent" in reasons
    # Each transition once (a run that waits and resumes is Running twice, not in a row).
    assert all(a != b for a, b in itertools.pairwise(reasons)), \
        f"an Event posted twice: {reasons}"

    await eventually(lambda: replicas(api) == 0, timeout=10, what="the pool back to zero")
    pool_status = await eventually(
        lambda: (get(api, POOLS, "default", "flows") or {}).get("status", {})
        .get("desiredReplicas") == 0 and get(api, POOLS, "default", "flows")["status"],  # type: ignore[index]
        what="the pool's status at zero")
    assert pool_status["lastActiveTime"] and pool_status["activeRuns"] == 0


async def test_a_failed_run_shows_its_error(operators: Operators, spawn_worker: Spawn) -> None:
    api = operators.api
    await operators.start()
    await apply(api, POOLS, pool_body("flows", ["op_fail"]))
    await apply(api, RUNS, run_body("bad", "op_fail", ["boom"]))
    await spawn_worker()
    failed = await eventually(lambda: status(api, "bad").get("phase") == "Failed"
                              and status(api, "bad"), what="Failed")
    assert "boom" in failed["error"]
    assert condition(api, "bad", "Failed")["status"] == "True"  # type: ignore[index]
    assert condition(api, "bad", "Succeeded")["status"] == "False"  # type: ignore[index]
    warnings = await eventually(lambda: [e for e in events_of(api, "bad")
                                         if e["type"] == "Warning"], what="a Warning Event")
    assert "boom" in warnings[-1]["message"]


async def test_deleting_a_waiting_run_cancels_it(operators: Operators, store: Store,
                                                 spawn_worker: Spawn) -> None:
    api = operators.api
    await operators.start()
    await apply(api, POOLS, pool_body("flows", ["op_approval"]))
    await apply(api, RUNS, run_body("order-2", "op_approval", {"order_id": "ORD-2"}))
    await spawn_worker()
    await eventually(lambda: status(api, "order-2").get("phase") == "WaitingForEvent",
                     what="WaitingForEvent")
    run_id = status(api, "order-2")["runId"]

    await delete(api, RUNS, "default", "order-2")
    await eventually(lambda: get(api, RUNS, "default", "order-2") is None,
                     what="the finalizer released")
    run = await store.get_run(run_id)
    assert run is not None and run.status is RunStatus.CANCELLED
    assert "order-2" in (run.error or "")
