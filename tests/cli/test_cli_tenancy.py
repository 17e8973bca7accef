"""``kenning worker`` bounded by namespace, pool, build and workflows (flags and the
environment the operator sets), and ``kenning start --pool/--upgrade``."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from .conftest import WORKFLOW_FILE, Invoke, clean_env, kenning_command

pytestmark = pytest.mark.timeout(90)


def show(cli: Invoke, database: str, run_id: str) -> dict[str, object]:
    result = cli("runs", "show", run_id, "-o", "json", "--database", database)
    assert result.exit_code == 0, result.output
    doc: dict[str, object] = json.loads(result.output)
    return doc


def test_a_worker_configured_by_environment_claims_only_its_namespaces_and_pool(
        cli: Invoke, db_path: str, tmp_path: Path) -> None:
    for run_id, ns, pool in [("a-none", "team-a", None), ("a-p1", "team-a", "p1"),
                             ("a-p2", "team-a", "p2"), ("b-p1", "team-b", "p1"),
                             ("c-none", "team-c", None)]:
        args = ["start", "cli_e2e_approval", "--input", f'"{run_id}"', "--id", run_id,
                "--namespace", ns, "--database", db_path]
        result = cli(*args, *(["--pool", pool] if pool else []))
        assert result.exit_code == 0, result.output
    assert show(cli, db_path, "a-p1")["pool"] == "p1"
    env = {**clean_env(), "KENNING_DATABASE": db_path, "KENNING_NAMESPACE": "team-a,team-b",
           "KENNING_POOL": "p1", "KENNING_BUILD_ID": "v7",
           "KENNING_WORKFLOWS": "cli_e2e_approval"}
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([*kenning_command(), "worker", "--module", str(WORKFLOW_FILE)],
                                stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 30
        while True:
            docs = {r: show(cli, db_path, r) for r in ("a-none", "a-p1", "b-p1")}
            if all(d["status"] == "waiting_for_event" for d in docs.values()):
                break
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, (docs, log.read_text())
            time.sleep(0.1)
        assert {d["build_id"] for d in docs.values()} == {"v7"}
        time.sleep(1.5)  # more than the worker's fallback poll: it had its chance
        for other in ("a-p2", "c-none"):
            doc = show(cli, db_path, other)
            assert (doc["status"], doc["build_id"]) == ("pending", None), doc
        text = log.read_text()
        assert "namespace(s) team-a, team-b; pool p1; build v7" in text
    finally:
        proc.terminate()
        proc.wait(10)


def test_a_worker_refuses_to_start_without_the_workflows_it_must_serve(
        cli: Invoke, db_path: str) -> None:
    result = cli("worker", "--module", str(WORKFLOW_FILE), "--database", db_path,
                 "--workflows", "cli_e2e_approval,refund", "--workflows", "audit")
    assert result.exit_code == 2
    assert "lacks workflow(s) refund, audit" in result.output
    assert "it defines: cli_e2e_approval" in result.output


def test_drain_needs_a_build_id(cli: Invoke, db_path: str) -> None:
    result = cli("worker", "--module", str(WORKFLOW_FILE), "--database", db_path, "--drain")
    assert result.exit_code == 2 and "--drain needs --build-id" in result.output


def test_start_records_the_pool_and_upgrade_policy(cli: Invoke, db_path: str) -> None:
    result = cli("start", "cli_e2e_approval", "--input", '"X"', "--id", "r-auto", "--pool",
                 "payments", "--upgrade", "auto", "--database", db_path)
    assert result.exit_code == 0, result.output
    doc = show(cli, db_path, "r-auto")
    assert (doc["pool"], doc["upgrade"], doc["build_id"]) == ("payments", "auto", None)
    bad = cli("start", "cli_e2e_approval", "--upgrade", "sometimes", "--database", db_path)
    assert bad.exit_code == 2
