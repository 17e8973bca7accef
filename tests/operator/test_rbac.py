"""The shipped RBAC grants what the operator uses, and nothing more; the plain file and the
chart's template are both what ``kenning_operator.rbac`` writes from its one list."""

from __future__ import annotations

from pathlib import Path

import yaml
from kmock._internal import enums

from kenning.core.store import Store
from kenning.runtime.client import Client
from kenning_operator import rbac
from tests.operator.conftest import Operators, Spawn, eventually
from tests.operator.kube_helpers import POOLS, RUNS, apply, delete, get, pool_body, run_body, status

REPO = Path(__file__).resolve().parents[2]
VERBS = {enums.action.LIST: "list", enums.action.WATCH: "watch", enums.action.FETCH: "get",
         enums.action.CREATE: "create", enums.action.UPDATE: "patch",
         enums.action.DELETE: "delete"}


def granted() -> set[tuple[str, str, str]]:
    role = next(d for d in yaml.safe_load_all(rbac.PLAIN_FILE.read_text())
                if d["kind"] == "ClusterRole")
    return {(group, resource, verb) for rule in role["rules"] for group in rule["apiGroups"]
            for resource in rule["resources"] for verb in rule["verbs"]}


async def test_rbac_covers_every_call_the_operator_makes(operators: Operators, store: Store,
                                                         spawn_worker: Spawn) -> None:
    api = operators.api
    await operators.start()
    await apply(api, POOLS, pool_body("flows", ["op_approval", "op_fail"]))
    await apply(api, RUNS, run_body("a", "op_approval", {"order_id": "A"}))
    await apply(api, RUNS, run_body("b", "op_fail", ["x"], ttlSecondsAfterFinished=0))
    await Client(store).start("op_approval", order_id="C", run_id="ext-c")
    await spawn_worker()
    await eventually(lambda: status(api, "a").get("phase") == "WaitingForEvent")
    await eventually(lambda: get(api, RUNS, "default", "ext-c"), what="the mirror")
    await eventually(lambda: get(api, RUNS, "default", "b") is None, what="TTL deletion")
    await delete(api, RUNS, "default", "a")
    await eventually(lambda: get(api, RUNS, "default", "a") is None)

    used = set()
    for request in api._requests:
        agent = request.headers.get("User-Agent", "")
        if request.resource is None or request.resource.plural is None or \
                agent.startswith("kmock") or request.action not in VERBS:
            continue  # discovery, or the test's own calls
        plural = request.resource.plural
        if request.subresource:
            plural = f"{plural}/{request.subresource}"
        used.add((request.resource.group, plural, VERBS[request.action]))
    missing = used - granted()
    assert not missing, f"calls the RBAC does not allow: {sorted(missing)}"
    unused = {g for g in granted() if g[0] != "kopf.dev"} - used
    # an old pool version's Deployment is deleted in test_versions, not in this story
    assert unused <= {("kenning.dev", "workflowruns", "get"),
                      ("kenning.dev", "workerpools", "get"),
                      ("apps", "deployments", "delete"),
                      # checked by admission (blockOwnerDeletion), never called
                      ("kenning.dev", "workerpools/finalizers", "update"),
                      ("kenning.dev", "workflowruns/finalizers", "update")}, sorted(unused)


def test_rbac_files_come_from_one_source() -> None:
    assert rbac.PLAIN_FILE.read_text() == rbac.plain_rbac(), \
        "crds/rbac/operator.yaml is stale: run python -m kenning_operator.rbac"
    assert rbac.CHART_FILE.read_text() == rbac.chart_rules(), \
        "charts/kenning/templates/_rbac.tpl is stale: run python -m kenning_operator.rbac"
    # OwnerReferencesPermissionEnforcement: a pool owns its Deployments, a parent run's
    # WorkflowRun its children's, both with blockOwnerDeletion
    assert ("kenning.dev", "workerpools/finalizers", "update") in granted()
    assert ("kenning.dev", "workflowruns/finalizers", "update") in granted()


def test_crds_apply_on_an_empty_cluster() -> None:
    """``kubectl apply -f crds/`` reads only the folder's files: CRDs, nothing namespaced;
    the RBAC file creates its namespace before anything in it, under names of its own."""
    for path in sorted((REPO / "crds").glob("*.yaml")):
        kinds = {d["kind"] for d in yaml.safe_load_all(path.read_text()) if d}
        assert kinds == {"CustomResourceDefinition"}, (path.name, kinds)
    docs = [d for d in yaml.safe_load_all(rbac.PLAIN_FILE.read_text()) if d]
    assert docs[0]["kind"] == "Namespace"
    namespaces = {d["metadata"].get("namespace") for d in docs} - {None}
    assert namespaces == {docs[0]["metadata"]["name"]}
    assert all(d["metadata"]["name"] != "kenning-operator" for d in docs), \
        "the chart's default names would collide with helm install"
