"""examples/knative: every manifest is valid, the pieces refer to each other and to what the
chart installs, and the workflow that answers through the Broker works (embedded)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from examples.knative.payment_reply import payment_reply_workflow

from kenning import App
from kenning.core.models import StepKind
from kenning.runtime.loader import load_workflows
from tests.chart.conftest import REPO, Render, find
from tests.chart.validation import assert_valid

EXAMPLE = REPO / "examples" / "knative"


def manifests() -> list[dict[str, Any]]:
    """Every object of the example's YAML files."""
    return [doc for path in sorted(EXAMPLE.glob("*.yaml"))
            for doc in yaml.safe_load_all(path.read_text()) if doc]


def test_manifests_are_valid() -> None:
    objects = manifests()
    assert {"Broker", "Trigger", "WorkerPool", "WorkflowRun", "SinkBinding"} <= \
        {o["kind"] for o in objects}
    assert_valid(objects)


def test_trigger_reaches_the_sink_the_chart_installs(render: Render) -> None:
    objects = manifests()
    trigger = find(objects, "Trigger", "kenning-payments")
    namespace = trigger["metadata"]["namespace"]
    assert trigger["spec"]["broker"] == find(objects, "Broker")["metadata"]["name"]
    assert trigger["spec"]["subscriber"]["uri"] == f"/namespaces/{namespace}"
    chart = render()  # installed as release "kenning" in namespace "kenning", as documented
    service = find(chart, "Service", trigger["spec"]["subscriber"]["ref"]["name"])
    assert service["metadata"]["namespace"] == namespace
    dead_letter = trigger["spec"]["delivery"]["deadLetterSink"]["ref"]["name"]
    assert find(objects, "Service", dead_letter)


def test_pool_serves_the_runs_and_the_binding_selects_its_workers() -> None:
    objects = manifests()
    pool = find(objects, "WorkerPool", "payments")
    served = {wf.name for wf in load_workflows(pool["spec"]["module"])}
    assert set(pool["spec"]["workflows"]) <= served, served
    for run in (o for o in objects if o["kind"] == "WorkflowRun"):
        assert run["spec"]["pool"] == "payments"
        assert run["spec"]["workflow"] in pool["spec"]["workflows"]
    binding = find(objects, "SinkBinding")
    assert binding["spec"]["subject"]["selector"]["matchLabels"] == {"kenning.dev/pool": "payments"}
    assert binding["spec"]["sink"]["ref"]["kind"] == "Broker"


def test_image_dockerfile_copies_the_served_module() -> None:
    dockerfile = (EXAMPLE / "Dockerfile").read_text()
    ignore = (EXAMPLE / "Dockerfile.dockerignore").read_text()
    for path in ("examples/payment.py", "examples/knative/payment_reply.py",
                 "examples/knative/__init__.py", "examples/__init__.py"):
        assert path in dockerfile and f"!{path}" in ignore, path


async def test_reply_workflow_answers_through_its_event_target(tmp_path: Path) -> None:
    async with App(database=str(tmp_path / "reply.db"), worker_id="w1",
                   workflows=[payment_reply_workflow]) as app:
        run_id = await payment_reply_workflow.start(app, "ORD-7", 42.0)
        await app.publish("payment.completed",
                          {"order_id": "ORD-7", "transaction_id": "TXN-7", "amount": 42.0})
        result = await app.result(run_id, timeout=60)
        sent = [s.name for s in await app.history(run_id) if s.kind == StepKind.SEND]
    assert result == {"status": "paid", "order_id": "ORD-7", "transaction_id": "TXN-7",
                      "amount": 42.0}
    assert sent == ["payment.requested", "payment.receipt"]
