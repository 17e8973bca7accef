"""The three seed examples run as documented."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from examples.fulfillment import fulfillment_workflow
from examples.order_timeout import PAID_ORDERS, order_timeout_workflow

from kenning import App, RunStatus
from kenning.runtime.worker import WorkerOptions
from tests.conftest import free_port, wait_status

ROOT = Path(__file__).parents[2]
FAST = WorkerOptions(poll_interval=0.05)


def test_payment_example_runs_end_to_end_over_http(tmp_path: Path) -> None:
    env = {**os.environ, "PORT": str(free_port()),
           "PYTHONPATH": os.pathsep.join([str(ROOT / "sdk"), str(ROOT)])}
    done = subprocess.run([sys.executable, str(ROOT / "examples" / "payment.py")], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert 'sink answered 202 {"status": "accepted"}' in done.stdout.replace('":"', '": "')
    assert ('completed: {"status": "completed", "transaction_id": "TXN-456", "amount": 99.99}'
            in done.stdout)
    assert (tmp_path / "event_demo.db").exists()


async def test_order_timeout_cancels_an_unpaid_order(tmp_path: Path, fake_clock: Any) -> None:
    async with App(str(tmp_path / "k.db"), workflows=[order_timeout_workflow],
                   clock=fake_clock, worker_options=FAST) as app:
        unpaid = await order_timeout_workflow.start(app, "ORD-1")
        paid = await order_timeout_workflow.start(app, "ORD-2")
        for run_id in (unpaid, paid):
            await wait_status(app, run_id, RunStatus.WAITING_FOR_TIMER)
        PAID_ORDERS.add("ORD-2")
        fake_clock.advance(60)
        assert await app.result(unpaid, timeout=5) == {
            "order_id": "ORD-1", "status": "cancelled", "detail": "order ORD-1 cancelled"}
        assert await app.result(paid, timeout=5) == {"order_id": "ORD-2", "status": "paid"}


async def test_fulfillment_follows_three_events(tmp_path: Path) -> None:
    async with App(str(tmp_path / "k.db"), workflows=[fulfillment_workflow],
                   worker_options=FAST) as app:
        run_id = await fulfillment_workflow.start(app, "ORD-5")
        for stage in ("order.packed", "order.picked_up", "order.delivered"):
            await wait_status(app, run_id, RunStatus.WAITING_FOR_EVENT)
            info = await app.get_run(run_id)
            assert info.waiting_for and info.waiting_for[0].event_type == stage
            await app.publish(stage, {"order_id": "ORD-5"})
        result = await app.result(run_id, timeout=5)
        assert result["status"] == "delivered" and len(result["timeline"]) == 3


async def test_batch_fan_out_gathers_its_children(tmp_path: Path) -> None:
    from examples.batch_fan_out import batch_workflow, item_workflow

    async with App(str(tmp_path / "k.db"), workflows=[batch_workflow, item_workflow],
                   worker_options=FAST) as app:
        run_id = await batch_workflow.start(app, ["A-1", "A-2", "BAD-3"])
        result = await app.result(run_id, timeout=20)
    assert result["done"] == {"A-1": "processed A-1", "A-2": "processed A-2"}
    assert list(result["failed"]) == ["BAD-3"] and "refused" in result["failed"]["BAD-3"]
    assert result["children"] == [f"{run_id}-{i}" for i in range(3)]


async def test_approval_deadline_takes_whichever_comes_first(tmp_path: Path,
                                                             fake_clock: Any) -> None:
    from examples.approval_deadline import approval_workflow

    async with App(str(tmp_path / "k.db"), workflows=[approval_workflow],
                   clock=fake_clock, worker_options=FAST) as app:
        approved = await approval_workflow.start(app, "EXP-1")
        late = await approval_workflow.start(app, "EXP-2")
        for run_id in (approved, late):
            await wait_status(app, run_id, RunStatus.WAITING_FOR_EVENT)
            assert len((await app.get_run(run_id)).waiting_for) == 2
        await app.publish("approval.granted", {"request": "EXP-1", "by": "ana"})
        assert await app.result(approved, timeout=10) == {
            "request": "EXP-1", "status": "granted", "by": "ana"}
        fake_clock.advance(86_400)
        assert await app.result(late, timeout=10) == {
            "request": "EXP-2", "status": "escalated", "detail": "EXP-2 escalated"}
