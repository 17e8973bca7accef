"""The operator restarts mid-way: nothing lost, nothing started or posted twice."""

from __future__ import annotations

from kenning.core.store import Store
from kenning.runtime.client import Client
from tests.operator.conftest import Operators, Sink, Spawn, eventually
from tests.operator.kube_helpers import POOLS, RUNS, apply, events_of, pool_body, run_body, status


async def test_restart_catches_up_without_doubling(operators: Operators, store: Store,
                                                   spawn_worker: Spawn, sink: Sink) -> None:
    api = operators.api
    first = await operators.start()
    await apply(api, POOLS, pool_body("flows", ["op_approval"]))
    await apply(api, RUNS, run_body("order-1", "op_approval", {"order_id": "R-1"}))
    await spawn_worker()
    await eventually(lambda: status(api, "order-1").get("phase") == "WaitingForEvent",
                     what="WaitingForEvent")
    await eventually(lambda: [e for e in events_of(api, "order-1")
                              if e["reason"] == "WaitingForEvent"], what="its Event")
    await operators.stop(first)

    # While no operator runs: the run completes, and a new resource is applied.
    await sink.send("op.approved", {"order_id": "R-1", "by": "bob"})
    await Client(store).wait_finished(status(api, "order-1")["runId"], timeout=20)
    await apply(api, RUNS, run_body("order-2", "op_approval", {"order_id": "R-2"}))

    second = await operators.start()
    done = await eventually(lambda: status(api, "order-1").get("phase") == "Completed"
                            and status(api, "order-1"), what="order-1 caught up")
    assert done["result"]["approved_by"] == "bob"
    await eventually(lambda: status(api, "order-2").get("phase") == "WaitingForEvent",
                     what="order-2 started after the restart")
    await eventually(lambda: [e for e in events_of(api, "order-1")
                              if e["reason"] == "Completed"], what="the Completed Event")

    runs = await store.list_runs(workflow="op_approval")
    assert sorted(r.run_id for r in runs) == sorted(
        [status(api, "order-1")["runId"], status(api, "order-2")["runId"]])
    assert second.metrics.runs_started._value.get() == 1  # order-2 only
    reasons = [e["reason"] for e in events_of(api, "order-1")]
    assert reasons.count("WaitingForEvent") == 1 and reasons.count("Completed") == 1, reasons
