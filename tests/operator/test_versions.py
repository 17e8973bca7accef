"""Pool versions: when a WorkerPool's version changes, the runs that started on v1 keep a
v1 Deployment (sized from zero by their own runnable runs, taking no new runs) until the
last of them finishes; then it is deleted. Status lists both versions in between."""

from __future__ import annotations

from typing import Any

from kenning.core.models import (
    ClaimScope,
    CloudEventRecord,
    NewRun,
    RunStatus,
    Wait,
    WaitKind,
)
from kenning.core.store import Store
from kenning_operator.versions import BUILD_ANNOTATION, version_deployment_name
from tests.operator.conftest import Operators, eventually
from tests.operator.kube_helpers import DEPLOYMENTS, POOLS, apply, get, patch, pool_body

OLD = version_deployment_name("flows", "v1")


def deployment(api: Any, name: str = "flows-workers") -> dict[str, Any] | None:
    return get(api, DEPLOYMENTS, "default", name)


def env_of(body: dict[str, Any]) -> dict[str, str]:
    container = body["spec"]["template"]["spec"]["containers"][0]
    return {v["name"]: v.get("value", "") for v in container["env"] if "value" in v}


def pool_status(api: Any) -> dict[str, Any]:
    return dict((get(api, POOLS, "default", "flows") or {}).get("status") or {})


async def start_waiting_on_v1(store: Store, count: int) -> list[str]:
    """Runs that a v1 worker started and that now wait for an event."""
    ids = [f"v1-run-{i}" for i in range(count)]
    for run_id in ids:
        await store.create_run(NewRun(run_id, "default", "op_approval", "[]", pool="flows"))
    claimed = await store.claim_runs("v1-pod", limit=count, lease_seconds=30, run_ids=ids,
                                     scope=ClaimScope(("default",), "flows", "v1"))
    assert len(claimed) == count
    for item in claimed:
        await store.begin_waits(item.lease, [Wait(0, WaitKind.EVENT, event_type="op.never")],
                                next_ordinal=0)
    return ids


async def test_an_old_version_keeps_its_runs_and_goes_once_they_finished(
        operators: Operators, store: Store) -> None:
    api = operators.api
    await operators.start()
    await apply(api, POOLS, pool_body("flows", ["op_approval"], version="v1",
                                      runsPerWorker=2, idleSeconds=0))
    first = await eventually(lambda: deployment(api), what="the pool's Deployment")
    assert first["spec"]["template"]["metadata"]["annotations"][BUILD_ANNOTATION] == "v1"
    assert {k: env_of(first)[k] for k in ("KENNING_NAMESPACE", "KENNING_POOL",
                                          "KENNING_BUILD_ID", "KENNING_WORKFLOWS")} == {
        "KENNING_NAMESPACE": "default", "KENNING_POOL": "flows", "KENNING_BUILD_ID": "v1",
        "KENNING_WORKFLOWS": "op_approval"}
    assert "KENNING_WORKER_ID" not in env_of(first)
    held = await start_waiting_on_v1(store, 3)

    await patch(api, POOLS, "default", "flows", {"spec": {"version": "v2",
                                                          "image": "example/flows:2"}})
    old = await eventually(lambda: deployment(api, OLD), what="the v1 Deployment kept")
    assert env_of(old)["KENNING_BUILD_ID"] == "v1" and env_of(old)["KENNING_DRAIN"] == "true"
    assert old["spec"]["template"]["spec"]["containers"][0]["image"] == "example/flows:1"
    await eventually(lambda: env_of(deployment(api) or first)["KENNING_BUILD_ID"] == "v2",
                     what="the pool's Deployment on v2")
    assert (deployment(api) or {})["spec"]["template"]["spec"]["containers"][0][
        "image"] == "example/flows:2"
    both = await eventually(lambda: len(pool_status(api).get("versions") or []) == 2
                            and pool_status(api), what="status listing both versions")
    assert [(v["build"], v["current"], v["runs"]) for v in both["versions"]] == [
        ("v2", True, 0), ("v1", False, 3)]
    assert both["versionSummary"] == "v2 (0 runs), v1 (3 runs)"
    assert old["spec"]["replicas"] == 0  # waiting runs need no worker

    # one v1 run is cancelled, the event the others wait for arrives: v1 is sized by its
    # two runnable runs, v2 is not
    await store.cancel_run(held[0], "not needed")
    [delivered] = await store.accept_events("default", [CloudEventRecord(
        id="e-1", source="/test", type="op.never")])
    assert sorted(delivered.resumed_runs) == held[1:]
    await eventually(lambda: (deployment(api, OLD) or {}).get("spec", {}).get("replicas") == 1,
                     what="the v1 Deployment sized by its runnable runs")
    assert (deployment(api) or {})["spec"]["replicas"] == 0
    await eventually(lambda: [v["runs"] for v in pool_status(api)["versions"]] == [0, 2],
                     what="status counting the v1 runs")

    # a v1 worker finishes them (a draining worker: the only kind v1 has now)
    claimed = await store.claim_runs("v1-pod-2", limit=10, lease_seconds=30,
                                     scope=ClaimScope(("default",), "flows", "v1", drain=True))
    assert sorted(c.run.run_id for c in claimed) == held[1:]
    for item in claimed:
        await store.finish_run(item.lease, RunStatus.COMPLETED, result="1")
    await eventually(lambda: deployment(api, OLD) is None, what="the v1 Deployment deleted")
    last = await eventually(lambda: len(pool_status(api).get("versions") or []) == 1
                            and pool_status(api), what="status listing v2 only")
    assert last["versions"][0]["build"] == "v2" and last["versionSummary"] == "v2 (0 runs)"
    assert deployment(api) is not None

