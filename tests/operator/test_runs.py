"""WorkflowRun -> run: started idempotently, status and Events follow, unschedulable runs."""

from __future__ import annotations

from kenning.core.models import RunStatus
from kenning.core.store import Store
from tests.operator.conftest import Operators, eventually
from tests.operator.kube_helpers import (
    DEPLOYMENTS,
    RUNS,
    apply,
    condition,
    events_of,
    get,
    pool_body,
    run_body,
    status,
)


async def test_a_run_no_pool_serves_stays_pending_with_a_condition(operators: Operators,
                                                                   store: Store) -> None:
    await operators.start()
    cr = await apply(operators.api, RUNS, run_body("r1", "op_approval", {"order_id": "A"}))

    await eventually(lambda: status(operators.api, "r1").get("phase") == "Pending",
                     what="phase Pending")
    run_id = status(operators.api, "r1")["runId"]
    run = await store.get_run(run_id)
    assert run is not None and run.status is RunStatus.PENDING
    assert run.namespace == "default" and run.workflow == "op_approval"
    assert run.labels["kenning.dev/cr-uid"] == cr["metadata"]["uid"]
    sched = condition(operators.api, "r1", "Schedulable")
    assert sched is not None and sched["status"] == "False"
    assert sched["reason"] == "NoPoolServesWorkflow"
    assert "op_approval" in sched["message"]
    assert condition(operators.api, "r1", "Succeeded")["status"] == "Unknown"  # type: ignore[index]
    warning = await eventually(lambda: [e for e in events_of(operators.api, "r1")
                                        if e["reason"] == "NoPoolServesWorkflow"],
                               what="a warning Event")
    assert warning[0]["type"] == "Warning"

    # A pool that serves the workflow appears: the condition turns, a Deployment is sized.
    await apply(operators.api, "kenning.dev/v1alpha1/workerpools",
                pool_body("flows", ["op_approval"], idleSeconds=1))
    await eventually(lambda: (condition(operators.api, "r1", "Schedulable") or {})
                     .get("status") == "True", what="Schedulable=True")
    deployment = await eventually(
        lambda: (get(operators.api, DEPLOYMENTS, "default", "flows-workers") or {})
        .get("spec", {}).get("replicas") == 1
        and get(operators.api, DEPLOYMENTS, "default", "flows-workers"),
        what="the Deployment scaled to 1")
    owner = deployment["metadata"]["ownerReferences"][0]
    assert owner["kind"] == "WorkerPool" and owner["name"] == "flows"


async def test_start_is_idempotent_across_a_restart(operators: Operators, store: Store) -> None:
    op = await operators.start()
    await apply(operators.api, RUNS, run_body("r2", "op_approval", {"order_id": "B"}))
    await eventually(lambda: status(operators.api, "r2").get("phase") == "Pending")
    started = op.metrics.runs_started._value.get()
    assert started == 1
    await operators.stop(op)

    op2 = await operators.start()
    await eventually(lambda: op2.runs.get(status(operators.api, "r2")["runId"]) is not None,
                     what="the resumed resource")
    runs = await store.list_runs(workflow="op_approval")
    assert [r.run_id for r in runs] == [status(operators.api, "r2")["runId"]]
    assert op2.metrics.runs_started._value.get() == 0
    pending_events = [e for e in events_of(operators.api, "r2") if e["reason"] in
                      ("Pending", "NoPoolServesWorkflow")]
    assert len(pending_events) == 1, pending_events
