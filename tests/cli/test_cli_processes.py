"""End to end across OS processes: ``kenning dev`` / ``worker`` / ``sink`` and the client
commands, each its own process, sharing one SQLite file."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from .conftest import WORKFLOW_FILE, Proc, Spawn, run_kenning, wait_healthy

pytestmark = pytest.mark.timeout(90)


def ok(result: subprocess.CompletedProcess[str]) -> str:
    """The command's stdout; fail with its output unless it exited 0."""
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}{result.stderr}"
    return result.stdout


def stop(proc: Proc, timeout: float = 10.0) -> int:
    """SIGTERM the process and return its exit code (fail if it hangs)."""
    proc.popen.send_signal(signal.SIGTERM)
    try:
        return proc.popen.wait(timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"process did not exit within {timeout}s of SIGTERM:\n{proc.output()}")


def wait_status(database: str, run_id: str, status: str, timeout: float = 20.0) -> None:
    """Poll ``kenning runs show`` until the run is in ``status``."""
    deadline = time.monotonic() + timeout
    doc: dict[str, object] = {}
    while time.monotonic() < deadline:
        doc = json.loads(ok(run_kenning("runs", "show", run_id, "-o", "json",
                                        "--database", database)))
        if doc["status"] == status:
            return
        time.sleep(0.1)
    pytest.fail(f"run {run_id} is {doc.get('status')}, not {status}, after {timeout}s")


def test_dev_serves_a_run_that_waits_for_an_event(spawn: Spawn, tmp_path: Path) -> None:
    database = str(tmp_path / "dev.db")
    dev = spawn("dev", str(WORKFLOW_FILE), "--port", "0", "--database", database,
                "--worker-id", "dev-1", "--probe-port", "0", "--probe-host", "127.0.0.1")
    line = dev.wait_for_line(r"kenning dev: sink on .*")
    assert "cli_e2e_approval" in line.group(0) and "dev-1" in line.group(0)
    url = dev.url()
    wait_healthy(url, dev)
    probes = re.search(r"probes on (http://127\.0\.0\.1:\d+)", line.group(0))
    assert probes is not None, line.group(0)
    with urllib.request.urlopen(f"{probes.group(1)}/readyz", timeout=5) as ready:
        assert ready.status == 200
    with urllib.request.urlopen(f"{probes.group(1)}/metrics", timeout=5) as metrics:
        assert b"kenning_worker_loop_blocked_total" in metrics.read()

    run_id = ok(run_kenning("start", "cli_e2e_approval", "--input", '{"order_id": "A-7"}',
                            "--database", database)).strip()
    wait_status(database, run_id, "waiting_for_event")

    answer = ok(run_kenning("send", "cli.e2e.approved", "--run", run_id, "--url", url,
                            "--data", '{"order_id": "A-7", "by": "alice"}'))
    assert json.loads(answer)["status"] == "accepted"

    result = ok(run_kenning("runs", "result", run_id, "--timeout", "20", "--database",
                            database))
    assert json.loads(result) == {"order_id": "A-7", "note": "prepared A-7",
                                  "approved_by": "alice"}
    history = ok(run_kenning("runs", "history", run_id, "--database", database))
    assert "cli_e2e_prepare" in history and "cli.e2e.approved" in history

    assert stop(dev) == 0
    assert "SIGTERM received, stopping" in dev.output()
    assert "Traceback" not in dev.output()


def test_worker_and_sink_as_separate_processes(spawn: Spawn, tmp_path: Path) -> None:
    database = str(tmp_path / "split.db")
    sink = spawn("sink", "--port", "0", "--database", database)
    worker = spawn("worker", "--module", str(WORKFLOW_FILE), "--database", database,
                   "--worker-id", "w-1", "--max-runs", "10")
    worker.wait_for_line(r"kenning worker w-1: serving cli_e2e_approval")
    url = sink.url()
    wait_healthy(url, sink)

    run_id = ok(run_kenning("start", "cli_e2e_approval", "--input", '"B-2"', "--id", "split-1",
                            "--database", database)).strip()
    assert run_id == "split-1"
    wait_status(database, run_id, "waiting_for_event")
    # not addressed to the run: delivered by type and match
    ok(run_kenning("send", "cli.e2e.approved", "--url", url,
                   "--data", '{"order_id": "B-2", "by": "bob"}'))
    result = ok(run_kenning("runs", "result", run_id, "--timeout", "20", "--database",
                            database))
    assert json.loads(result)["approved_by"] == "bob"

    assert stop(worker) == 0
    assert stop(sink) == 0


def test_dev_hands_a_waiting_run_over_to_the_next_process(spawn: Spawn,
                                                          tmp_path: Path) -> None:
    database = str(tmp_path / "restart.db")
    first = spawn("dev", str(WORKFLOW_FILE), "--port", "0", "--database", database)
    wait_healthy(first.url(), first)
    run_id = ok(run_kenning("start", "cli_e2e_approval", "--input", '["C-3"]',
                            "--database", database)).strip()
    wait_status(database, run_id, "waiting_for_event")
    assert stop(first) == 0

    second = spawn("dev", str(WORKFLOW_FILE), "--port", "0", "--database", database)
    url = second.url()
    wait_healthy(url, second)
    ok(run_kenning("send", "cli.e2e.approved", "--run", run_id, "--url", url,
                   "--data", '{"order_id": "C-3", "by": "carol"}'))
    result = ok(run_kenning("runs", "result", run_id, "--timeout", "20", "--database",
                            database))
    assert json.loads(result)["approved_by"] == "carol"
    assert stop(second) == 0


def test_a_busy_port_is_one_line_and_exit_1(spawn: Spawn, tmp_path: Path) -> None:
    database = str(tmp_path / "busy.db")
    first = spawn("sink", "--port", "0", "--database", database)
    port = first.url().rsplit(":", 1)[1]
    result = run_kenning("sink", "--port", port, "--database", database)
    assert result.returncode == 1
    assert result.stderr.startswith(f"error: cannot listen on 127.0.0.1:{port}")
    assert "Traceback" not in result.stderr
    assert stop(first) == 0


def test_sink_with_a_token(spawn: Spawn, tmp_path: Path) -> None:
    sink = spawn("sink", "--port", "0", "--database", str(tmp_path / "token.db"),
                 "--token", "s3cret", "--namespace", "team-a")
    url = sink.url()
    wait_healthy(url, sink)
    refused = run_kenning("send", "ping", "--url", url)
    assert refused.returncode == 1
    assert refused.stderr.startswith(f"error: the sink at {url} refused the event (401): ")
    assert "bearer token" in refused.stderr
    assert json.loads(ok(run_kenning("send", "ping", "--url", url, "--token", "s3cret",
                                     "--namespace", "team-b")))["status"] == "accepted"
    assert stop(sink) == 0
