"""A ``kenning worker`` or ``kenning dev`` whose loop dies of a bug exits non-zero (so that
Kubernetes restarts it), saying which loop died; the probe port serves its probes."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import free_port

from .conftest import Spawn

pytestmark = pytest.mark.timeout(90)

BUGGY = Path(__file__).parent / "buggy_workflows.py"


@pytest.mark.parametrize("command", ["worker", "dev"])
def test_a_loop_that_dies_of_a_bug_ends_the_process_with_exit_1(
    spawn: Spawn, tmp_path: Path, command: str
) -> None:
    database = str(tmp_path / "bug.db")
    args = (["worker", "--module", str(BUGGY)] if command == "worker"
            else ["dev", str(BUGGY), "--port", "0"])
    proc = spawn(*args, "--database", database, "--worker-id", "w-bug")
    code = proc.popen.wait(30)
    output = proc.output()
    assert code == 1, output
    assert "error: worker w-bug: its kenning-claim loop died of ZeroDivisionError: planted bug" \
        in output


def test_worker_probe_port_serves_health_readiness_and_metrics(
    spawn: Spawn, tmp_path: Path
) -> None:
    database = str(tmp_path / "probe.db")
    port = free_port()
    proc = spawn("worker", "--module", str(Path(__file__).parent / "cli_workflows.py"),
                 "--database", database, "--probe-port", str(port), "--probe-host", "127.0.0.1")
    proc.wait_for_line(rf"probes on http://127.0.0.1:{port}")
    base = f"http://127.0.0.1:{port}"
    with urllib.request.urlopen(f"{base}/healthz", timeout=5) as response:
        assert response.status == 200 and json.load(response) == {"status": "ok"}
    with urllib.request.urlopen(f"{base}/readyz", timeout=5) as response:
        assert response.status == 200 and json.load(response) == {"status": "ready"}
    with urllib.request.urlopen(f"{base}/metrics", timeout=5) as response:
        text = response.read().decode()
    for name in ("kenning_worker_runs_held", "kenning_worker_claims_total",
                 "kenning_worker_steps_committed_total", "kenning_worker_step_commit_seconds",
                 "kenning_worker_lease_renewals_total", "kenning_worker_lease_losses_total",
                 "kenning_worker_activity_attempts_total",
                 "kenning_worker_activity_failures_total", "kenning_outbox_backlog"):
        assert name in text, name
