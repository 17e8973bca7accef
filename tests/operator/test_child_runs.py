"""A child run's ``WorkflowRun`` is owned by its parent's (controller false,
blockOwnerDeletion true), labelled and shown with its parent; deleting the parent deletes
the children (the emulator collects garbage as Kubernetes does) and the operator cancels their
runs; a child whose parent has no resource gets one of its own, unowned."""

from __future__ import annotations

import pytest

from kenning.core.models import NewRun, RunStatus
from kenning.core.store import Store
from kenning_operator.crdgen import workflowrun_crd
from tests.chart.validation import problems
from tests.operator.conftest import Operators, eventually
from tests.operator.kube_helpers import RUNS, apply, delete, get, run_body, status

pytestmark = pytest.mark.parametrize("database", ["postgres"], indirect=True)


async def test_a_child_is_owned_by_its_parent_and_goes_with_it(operators: Operators,
                                                               store: Store) -> None:
    api = operators.api
    await operators.start()
    parent = await apply(api, RUNS, run_body("order", "op_approval", {"order_id": "P"}))
    await eventually(lambda: status(api, "order").get("phase") == "Pending", what="Pending")
    parent_id = status(api, "order")["runId"]
    for i in (1, 2):  # what the engine does when the parent starts children
        await store.create_run(NewRun(f"{parent_id}-{i}", "default", "op_approval",
                                      '{"args": [], "kwargs": {"order_id": "C"}}',
                                      parent_run_id=parent_id))
    child = await eventually(lambda: get(api, RUNS, "default", f"{parent_id}-1"),
                             what="the child's WorkflowRun")
    assert child["metadata"]["ownerReferences"] == [{
        "apiVersion": "kenning.dev/v1alpha1", "kind": "WorkflowRun", "name": "order",
        "uid": parent["metadata"]["uid"], "controller": False, "blockOwnerDeletion": True}]
    assert child["metadata"]["labels"]["kenning.dev/parent-run"] == parent_id
    shown = await eventually(lambda: status(api, f"{parent_id}-1").get("phase") == "Pending"
                             and status(api, f"{parent_id}-1"), what="the child Pending")
    assert shown["parentRunId"] == parent_id
    assert "parentRunId" not in status(api, "order")
    columns = workflowrun_crd()["spec"]["versions"][0]["additionalPrinterColumns"]
    assert {"name": "Parent", "type": "string", "jsonPath": ".status.parentRunId",
            "priority": 1} in columns  # kubectl get wfr -o wide
    # The finalizer goes out beside the first status patch, not in it: either may land first.
    child = await eventually(
        lambda: (c := get(api, RUNS, "default", f"{parent_id}-1")) is not None
        and c["metadata"].get("finalizers") == ["kenning.dev/cancel-run"] and c,
        what="the child's finalizer")
    assert problems(child) == []

    await delete(api, RUNS, "default", "order")
    for name in ("order", f"{parent_id}-1", f"{parent_id}-2"):
        await eventually(lambda name=name: get(api, RUNS, "default", name) is None,
                         what=f"{name} deleted")
    for run_id in (parent_id, f"{parent_id}-1", f"{parent_id}-2"):
        run = await store.get_run(run_id)
        assert run is not None and run.status is RunStatus.CANCELLED, run_id


async def test_a_child_whose_parent_has_no_resource_gets_its_own(operators: Operators,
                                                                 store: Store) -> None:
    api = operators.api
    op = await operators.start()
    op.sync.parent_wait = 0.5
    # The parent was started for a resource that is gone (deleted, or the operator serves
    # another namespace): no resource will come for it.
    await store.create_run(NewRun("gone-parent", "default", "op_approval", "[]",
                                  labels={"kenning.dev/cr-uid": "deleted-long-ago"}))
    await store.create_run(NewRun("orphan-1", "default", "op_approval", "[]",
                                  parent_run_id="gone-parent"))
    child = await eventually(lambda: get(api, RUNS, "default", "orphan-1"),
                             what="the child's WorkflowRun")
    assert "ownerReferences" not in child["metadata"]
    assert child["metadata"]["labels"]["kenning.dev/parent-run"] == "gone-parent"
    assert get(api, RUNS, "default", "gone-parent") is None
