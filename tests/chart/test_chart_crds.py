"""The chart ships the repository's CRDs unchanged, and its operator RBAC grants what the
repository's crds/rbac/operator.yaml grants (the operator's tests check that file against the
calls the operator makes; both are written from one list)."""

from __future__ import annotations

from pathlib import Path

import yaml

from tests.chart.conftest import CHART, REPO, Render

REPO_CRDS = REPO / "crds"
CHART_CRDS = CHART / "crds"
CHART_ONLY: set[tuple[str, str, str]] = set()

Grant = tuple[str, str, str]


def crd_files(folder: Path) -> dict[str, bytes]:
    """File name -> bytes of the files in ``folder`` that hold only CRDs."""
    found = {}
    for path in sorted(folder.glob("*.yaml")):
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
        if docs and all(d.get("kind") == "CustomResourceDefinition" for d in docs):
            found[path.name] = path.read_bytes()
    return found


def test_chart_crds_are_the_repository_crds() -> None:
    repo, chart = crd_files(REPO_CRDS), crd_files(CHART_CRDS)
    assert repo, "crds/ holds no CRD"
    assert sorted(p.name for p in CHART_CRDS.iterdir()) == sorted(chart), \
        "charts/kenning/crds/ may hold CRDs only (helm applies every file there as a CRD)"
    fix = "run: cp crds/<file> charts/kenning/crds/ (and delete files no longer in crds/)"
    assert sorted(chart) == sorted(repo), f"CRD files differ: chart {sorted(chart)}, " \
        f"repository {sorted(repo)}; {fix}"
    changed = [name for name in repo if repo[name] != chart[name]]
    assert not changed, f"charts/kenning/crds/ differs from crds/ in {changed}; {fix}"


def grants(rules: list[dict[str, list[str]]]) -> set[Grant]:
    """(group, resource, verb) of every rule."""
    return {(group, resource, verb) for rule in rules for group in rule["apiGroups"]
            for resource in rule["resources"] for verb in rule["verbs"]}


def test_operator_rbac_matches_the_repository(render: Render) -> None:
    plain = (REPO_CRDS / "rbac" / "operator.yaml").read_text()
    shipped = next(d for d in yaml.safe_load_all(plain)
                   if d and d["kind"] == "ClusterRole")
    expected = {g for g in grants(shipped["rules"]) if g[0] != "kopf.dev"}
    chart = next(o for o in render() if o["kind"] == "ClusterRole")
    got = grants(chart["rules"])
    assert got - CHART_ONLY == expected, \
        f"chart grants more: {sorted(got - CHART_ONLY - expected)}; " \
        f"less: {sorted(expected - got)} than crds/rbac/operator.yaml"
    peering = next(o for o in render({"operator": {"peering": {"enabled": True}}})
                   if o["kind"] == "ClusterRole")
    assert {g for g in grants(peering["rules"]) if g[0] == "kopf.dev"} == {
        ("kopf.dev", "clusterkopfpeerings", verb) for verb in ("get", "list", "watch", "patch")}


def test_namespaced_roles_grant_the_same(render: Render) -> None:
    cluster = next(o for o in render() if o["kind"] == "ClusterRole")
    roles = [o for o in render({"operator": {"watchNamespaces": ["a", "b"]}})
             if o["kind"] == "Role"]
    assert len(roles) == 2
    for role in roles:
        assert grants(role["rules"]) == grants(cluster["rules"])
