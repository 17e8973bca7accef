"""The same scenario against a real cluster with kubectl; runs only when KUBECONFIG is set.

It needs the CRDs, RBAC and an operator (with a worker Secret) already running in the
cluster, and a WorkerPool image that serves ``tests.operator.flows``
(``KENNING_TEST_IMAGE``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(
    not os.environ.get("KUBECONFIG") or shutil.which("kubectl") is None,
    reason="real-cluster suite not run: set KUBECONFIG (and have kubectl on PATH) to run it")


def kubectl(*args: str, input: str | None = None, timeout: float = 60) -> str:
    done = subprocess.run(["kubectl", *args], input=input, capture_output=True, text=True,
                          timeout=timeout, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_crds_apply_and_reject_bad_resources() -> None:
    kubectl("apply", "-f", str(REPO / "crds"))
    bad = {"apiVersion": "kenning.dev/v1alpha1", "kind": "WorkerPool",
           "metadata": {"name": f"bad-{uuid.uuid4().hex[:6]}"},
           "spec": {"image": "x", "module": "m", "workflows": ["w"], "minReplicas": 3,
                    "maxReplicas": 1}}
    done = subprocess.run(["kubectl", "apply", "--dry-run=server", "-f", "-"],
                          input=json.dumps(bad), capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode != 0 and "maxReplicas must be >= spec.minReplicas" in done.stderr


def test_run_to_completion_and_delete_cancels() -> None:
    image = os.environ.get("KENNING_TEST_IMAGE")
    if not image:
        pytest.skip("set KENNING_TEST_IMAGE to an image serving tests.operator.flows")
    suffix = uuid.uuid4().hex[:6]
    pool: dict[str, Any] = {"apiVersion": "kenning.dev/v1alpha1", "kind": "WorkerPool",
                            "metadata": {"name": f"flows-{suffix}"},
                            "spec": {"image": image, "module": "tests.operator.flows",
                                     "workflows": ["op_fail", "op_approval"]}}
    run = {"apiVersion": "kenning.dev/v1alpha1", "kind": "WorkflowRun",
           "metadata": {"name": f"fail-{suffix}"},
           "spec": {"workflow": "op_fail", "input": ["boom"]}}
    kubectl("apply", "-f", "-", input=json.dumps(pool))
    try:
        kubectl("apply", "-f", "-", input=json.dumps(run))
        kubectl("wait", "--for=condition=Failed", f"workflowrun/fail-{suffix}",
                "--timeout=180s", timeout=200)
        waiting = {**run, "metadata": {"name": f"wait-{suffix}"},
                   "spec": {"workflow": "op_approval", "input": {"order_id": suffix}}}
        kubectl("apply", "-f", "-", input=json.dumps(waiting))
        deadline = time.monotonic() + 180
        while kubectl("get", f"wfr/wait-{suffix}", "-o",
                      "jsonpath={.status.phase}") != "WaitingForEvent":
            assert time.monotonic() < deadline, "the run never waited"
            time.sleep(1)
        kubectl("delete", f"wfr/wait-{suffix}", "--timeout=60s", timeout=90)
    finally:
        kubectl("delete", "--ignore-not-found", "-f", "-", input=json.dumps(pool))
        kubectl("delete", "--ignore-not-found", f"wfr/fail-{suffix}")
