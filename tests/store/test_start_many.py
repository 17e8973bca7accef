"""Starting many runs at once: one statement per batch, idempotent per id."""

from __future__ import annotations

import pytest

from kenning import Client, WorkflowContext, workflow
from kenning.core.definitions import decode_input
from kenning.core.errors import ConfigurationError
from kenning.core.models import Notification, NotificationKind, RunStatus
from kenning.core.store import Store
from kenning.runtime import client as client_module
from tests.store.conftest import NS, new_run


@workflow
async def shipment(ctx: WorkflowContext, order_id: str, count: int = 1) -> str:
    """A workflow whose arguments start_many validates."""
    return order_id * count


async def test_create_runs_is_idempotent_per_id(store: Store,
                                                notes: list[Notification]) -> None:
    await store.create_run(new_run("old", workflow="other"))
    notes.clear()
    outcomes = await store.create_runs([new_run("a"), new_run("old"), new_run("b"),
                                        new_run("a", input='["again"]')])
    assert outcomes == [(True, "wf"), (False, "other"), (True, "wf"), (False, "wf")]
    a = await store.get_run("a")
    assert a is not None and a.status is RunStatus.PENDING and a.input == "[]"
    assert sorted(n.run_id or "" for n in notes if n.kind is NotificationKind.RUNNABLE) \
        == ["a", "b"]
    assert await store.create_runs([]) == []
    claimed = await store.claim_runs("w", limit=10, lease_seconds=30)
    assert sorted(c.run.run_id for c in claimed) == ["a", "b", "old"]


async def test_a_large_batch_sends_one_note(store: Store, notes: list[Notification]) -> None:
    outcomes = await store.create_runs([new_run(f"r{i}") for i in range(500)])
    assert all(created for created, _ in outcomes)
    assert [n for n in notes if n.kind is NotificationKind.RUNNABLE] \
        == [Notification(NotificationKind.RUNNABLE, None)]
    assert len(await store.list_runs(status=RunStatus.PENDING, limit=1000)) == 500


async def test_client_start_many(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(client_module, "START_MANY_CHUNK", 3)  # several statements
    client = Client(store)
    ids = await client.start_many(shipment, ["A", ("B", 2), "C", "D"],
                                  run_ids=["s1", "s2", "s3", "s4"])
    assert ids == ["s1", "s2", "s3", "s4"]
    run = await store.get_run("s2")
    assert run is not None and run.namespace == NS and run.workflow == "shipment"
    assert decode_input(run.input) == (["B", 2], {})
    # idempotent per id: an existing id is returned, not started again
    again = await client.start_many("shipment", ["X", "E"], run_ids=["s1", "s5"])
    assert again == ["s1", "s5"]
    s1 = await store.get_run("s1")
    assert s1 is not None and decode_input(s1.input) == (["A"], {})
    fresh = await client.start_many("shipment", [1, 2], namespace="elsewhere")
    assert len(set(fresh)) == 2 and all(i.startswith("run-") for i in fresh)
    assert len(await store.list_runs(namespace="elsewhere")) == 2
    with pytest.raises(ConfigurationError, match="belongs to workflow 'shipment'"):
        await client.start_many("other", ["A"], run_ids=["s1"])
    with pytest.raises(ConfigurationError, match="2 run ids for 1 inputs"):
        await client.start_many("shipment", ["A"], run_ids=["x", "y"])
    with pytest.raises(Exception, match="count"):  # validated against the signature
        await client.start_many(shipment, [("A", "not a number")])
