"""Runs started outside Kubernetes get a resource; TTL deletes finished resources;
``spec.timeout`` cancels a run that took too long."""

from __future__ import annotations

import time

from kenning.core.models import RunStatus
from kenning.core.store import Store
from kenning.runtime.client import Client
from tests.operator.conftest import Operators, Spawn, eventually
from tests.operator.kube_helpers import POOLS, RUNS, apply, get, pool_body, run_body, status


async def test_a_run_started_with_the_sdk_gets_its_resource(operators: Operators,
                                                            store: Store) -> None:
    api = operators.api
    op = await operators.start()
    run_id = await Client(store).start("op_approval", order_id="X-1", run_id="ext-run-1")

    cr = await eventually(lambda: get(api, RUNS, "default", "ext-run-1"),
                          what="a mirrored WorkflowRun")
    assert cr["metadata"]["labels"]["kenning.dev/run-id"] == run_id
    assert cr["spec"] == {"workflow": "op_approval", "input": {"order_id": "X-1"},
                          "runId": run_id}
    await eventually(lambda: status(api, "ext-run-1").get("phase") == "Pending")
    assert [r.run_id for r in await store.list_runs()] == [run_id]
    assert op.metrics.runs_started._value.get() == 0  # adopted, not started again


async def test_finished_resources_go_after_their_ttl(operators: Operators,
                                                     spawn_worker: Spawn) -> None:
    api = operators.api
    await operators.start()
    await apply(api, POOLS, pool_body("flows", ["op_fail"]))
    await apply(api, RUNS, run_body("short", "op_fail", ["x"], ttlSecondsAfterFinished=1))
    await spawn_worker()
    await eventually(lambda: status(api, "short").get("phase") == "Failed", what="Failed")
    failed_at = time.monotonic()
    await eventually(lambda: get(api, RUNS, "default", "short") is None,
                     what="deleted after its TTL")
    assert time.monotonic() - failed_at >= 0.5


async def test_timeout_cancels_the_run(operators: Operators, store: Store) -> None:
    api = operators.api
    await operators.start()
    await apply(api, RUNS, run_body("slow", "op_approval", {"order_id": "T"}, timeout="1s"))
    done = await eventually(lambda: status(api, "slow").get("phase") == "Cancelled"
                            and status(api, "slow"), timeout=10, what="Cancelled")
    assert "spec.timeout" in done["error"]
    run = await store.get_run(done["runId"])
    assert run is not None and run.status is RunStatus.CANCELLED
