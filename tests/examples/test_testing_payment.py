"""Testing a workflow the way docs/testing.md shows: replay a recorded history, and the
five-minute payment timeout in milliseconds."""

from __future__ import annotations

from pathlib import Path

import pytest
from examples.payment import payment_workflow

from kenning import RunFailed, RunStatus
from kenning.testing import TestEnv, replay

# exported from a real run: kenning runs history payment-ORD-123 --json > payment_workflow.json
HISTORY = Path(__file__).parent / "histories" / "payment_workflow.json"


def test_the_current_code_fits_a_recorded_history() -> None:
    replayed = replay(payment_workflow, HISTORY)  # NonDeterminismError if the steps changed
    assert replayed.result == {"status": "completed", "transaction_id": "TXN-456",
                               "amount": 99.99}


async def test_an_unpaid_order_fails_after_five_minutes() -> None:
    async with TestEnv([payment_workflow]) as env:
        run_id = await env.start(payment_workflow, "ORD-1")
        with pytest.raises(RunFailed, match="EventTimeout"):
            await env.result(run_id)  # five minutes of workflow time, milliseconds of real time


async def test_a_payment_in_time_completes_the_order() -> None:
    async with TestEnv([payment_workflow]) as env:
        run_id = await env.start(payment_workflow, "ORD-2")
        await env.wait_status(run_id, RunStatus.WAITING_FOR_EVENT)
        await env.publish("payment.completed", {"order_id": "ORD-2", "transaction_id": "T-2",
                                                "amount": 5.0}, source="payment-service")
        assert (await env.result(run_id))["transaction_id"] == "T-2"
