"""``status.waitingFor`` of a run suspended on several waits: the first, a count, all of them,
valid against the CRD's own schema."""

from __future__ import annotations

from kenning.core.models import CHILD_FINISHED_TYPE, Wait, WaitKind
from kenning.core.store import Store
from tests.chart.validation import problems
from tests.operator.conftest import Operators, eventually
from tests.operator.kube_helpers import RUNS, apply, get, run_body, status


async def test_every_wait_of_a_run_is_listed(operators: Operators, store: Store) -> None:
    api = operators.api
    await operators.start()
    await apply(api, RUNS, run_body("racing", "op_approval", {"order_id": "R"}))
    await eventually(lambda: status(api, "racing").get("phase") == "Pending", what="Pending")
    run_id = status(api, "racing")["runId"]
    [claimed] = await store.claim_runs("test-worker", limit=1, lease_seconds=30,
                                       run_ids=[run_id])
    now = store.clock()
    waits = [
        Wait(seq=0, kind=WaitKind.EVENT, event_type="pay.ok", other_types=("pay.failed",),
             match={"data.order": "R"}, started_at=now),
        Wait(seq=1, kind=WaitKind.TIMER, wake_at=now + 3600),
        Wait(seq=2, kind=WaitKind.EVENT, event_type=CHILD_FINISHED_TYPE,
             match={"subject": f"{run_id}-3"}, started_at=now),
    ]
    await store.begin_waits(claimed.lease, waits, next_ordinal=0)
    shown = await eventually(
        lambda: (status(api, "racing").get("waitingFor") or {}).get("count") == 3
        and status(api, "racing")["waitingFor"], what="three waits shown")
    assert shown["summary"] == "event pay.ok or pay.failed data.order=R (+2 more)"
    assert shown["kind"] == "event" and shown["eventTypes"] == ["pay.ok", "pay.failed"]
    assert [w["kind"] for w in shown["waits"]] == ["event", "timer", "child"]
    assert shown["waits"][1]["wakeAt"] and shown["waits"][2]["childRunId"] == f"{run_id}-3"
    obj = get(api, RUNS, "default", "racing")
    assert obj is not None and problems(obj) == []
