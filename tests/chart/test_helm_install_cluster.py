"""`helm install` on a real cluster; runs only when KUBECONFIG is set (like the operator's
real-cluster suite). The cluster must be able to pull KENNING_TEST_IMAGE (repository:tag of
the Kenning image, e.g. loaded with `kind load docker-image`)."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from tests.chart.conftest import CHART

pytestmark = [
    pytest.mark.skipif(
        not os.environ.get("KUBECONFIG") or shutil.which("kubectl") is None,
        reason="real-cluster suite not run: set KUBECONFIG (and have kubectl on PATH)"),
    pytest.mark.timeout(900),
]


def run(*args: str, timeout: float = 600) -> str:
    done = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout,
                          check=False)
    assert done.returncode == 0, f"{' '.join(args)}: exit {done.returncode}\n" \
        f"{done.stdout}{done.stderr}"
    return done.stdout


def test_helm_install_runs_operator_sink_and_store_then_uninstall_keeps_crds(
        helm: Path) -> None:
    image = os.environ.get("KENNING_TEST_IMAGE", "kenning:0.1.0")
    repository, _, tag = image.rpartition(":")
    namespace = f"kenning-test-{uuid.uuid4().hex[:6]}"
    release = "kenning"
    try:
        run(str(helm), "install", release, str(CHART), "-n", namespace, "--create-namespace",
            "--set", f"image.repository={repository}", "--set", f"image.tag={tag}",
            "--set", "postgresql.persistence.enabled=false",
            "--set", f"operator.watchNamespaces[0]={namespace}",
            "--wait", "--timeout", "8m")
        for deployment in ("kenning-operator", "kenning-sink"):
            run("kubectl", "-n", namespace, "rollout", "status", f"deploy/{deployment}",
                "--timeout=120s")
        ready = run("kubectl", "-n", namespace, "exec", "deploy/kenning-sink", "--", "python",
                    "-c", "import urllib.request as u; "
                          "print(u.urlopen('http://127.0.0.1:8080/readyz').status)")
        assert ready.strip() == "200"
        run(str(helm), "uninstall", release, "-n", namespace, "--wait")
        crds = run("kubectl", "get", "crd", "-o", "name")
        assert "workflowruns.kenning.dev" in crds, "helm uninstall must keep the CRDs"
    finally:
        subprocess.run(["kubectl", "delete", "namespace", namespace, "--wait=false"],
                       capture_output=True, timeout=60, check=False)
