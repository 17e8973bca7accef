"""A bad write fails alone: validation before the batch, isolation inside it, bounded queues."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from kenning import App, Client, InvalidEvent, InvalidInput, StoreOverloaded, StoreUnavailable
from kenning.core import validation
from kenning.core.models import NewRun
from kenning.core.store import Store
from kenning.stores import postgres_runs, sqlite_runs
from tests.store.conftest import NS, StoreFactory, event, new_run

BAD_IDS = {
    "x" * 9000: "run_id",  # far past the NOTIFY payload limit
    "nul\x00id": "run_id",
    "bad id with spaces": "run_id",
    "surrogate-\udc80": "run_id",
}


def test_run_id_pattern_is_the_crds() -> None:
    from kenning_operator.resources import RUN_ID_PATTERN
    assert validation.RUN_ID_PATTERN == RUN_ID_PATTERN


@pytest.mark.parametrize(("field", "kwargs"), [
    ("run_id", {"run_id": "a" * 201}),
    ("run_id", {"run_id": "-starts-with-dash"}),
    ("workflow", {"workflow": "wf\x00"}),
    ("namespace", {"namespace": "n" * 300}),
    ("input", {"input": '"' + "x" * (validation.MAX_INPUT_BYTES + 1) + '"'}),
    ("input", {"input": '"\udcff"'}),
    ("labels[team]", {"labels": {"team": "a\x00b"}}),
])
async def test_store_refuses_bad_fields_naming_them(store: Store, field: str,
                                                    kwargs: dict[str, Any]) -> None:
    base = {"run_id": "ok-1", "namespace": NS, "workflow": "wf", "input": "[]"}
    new = NewRun(**{**base, **kwargs})
    with pytest.raises(InvalidInput) as caught:
        await store.create_run(new)
    assert caught.value.field == field
    assert field.split("[")[0] in str(caught.value)
    if field != "run_id":
        assert await store.get_run(new.run_id) is None


async def test_store_refuses_bad_events_as_invalid_events(store: Store) -> None:
    for bad in (event("id\x00"), event("e1", source="s" * 2000), event("e2", to_run="a b"),
                event("e3", subject="\udc00")):
        with pytest.raises(InvalidEvent) as caught:
            await store.accept_events(NS, [event("fine"), bad])
        assert isinstance(caught.value, InvalidInput) and caught.value.field
    assert await store.count_events() == 0  # nothing of a refused call was committed


async def test_concurrent_starts_only_bad_ones_fail(store: Store) -> None:
    client = Client(store)
    bad = list(BAD_IDS)
    ids = [f"good-{i}" for i in range(116)] + bad
    ids = ids[::2] + ids[1::2]  # bad ones among good ones
    outcomes = await asyncio.gather(*(client.start("wf", i, run_id=rid)
                                      for i, rid in enumerate(ids)), return_exceptions=True)
    for rid, outcome in zip(ids, outcomes, strict=True):
        if rid in BAD_IDS:
            assert isinstance(outcome, InvalidInput), (rid[:20], outcome)
            assert outcome.field == "run_id"
        else:
            assert outcome == rid
    assert len(await store.list_runs(limit=500)) == 116


async def test_a_member_failing_in_the_database_fails_alone(
    store: Store, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # bypass validation: the writes reach the batch, where the database refuses them
    # (a NOTIFY payload too long, a NUL byte, a lone surrogate)
    module = postgres_runs if backend == "postgres" else sqlite_runs
    monkeypatch.setattr(module, "validate_new_run", lambda new: new)
    bad = ["y" * 9000, "nul\x00id", "surrogate-\udc80"]
    for _round in range(3):  # several rounds: bad ones share batches with good ones
        ids = [f"r{_round}-{i}" for i in range(40)] + bad
        ids = ids[::3] + ids[1::3] + ids[2::3]
        outcomes = await asyncio.gather(*(store.create_run(new_run(rid)) for rid in ids),
                                        return_exceptions=True)
        for rid, outcome in zip(ids, outcomes, strict=True):
            if rid in bad:
                if backend == "postgres" or "\udc80" in rid:  # SQLite holds NUL and long ids
                    assert isinstance(outcome, Exception), rid[:20]
                    assert not isinstance(outcome, StoreUnavailable)
            else:
                assert not isinstance(outcome, BaseException), (rid, outcome)
                assert outcome[1] is True
        for rid in ids:
            if rid not in bad:
                assert await store.get_run(rid) is not None


async def test_full_write_queue_answers_overloaded_at_once(make_store: StoreFactory) -> None:
    store = await make_store(max_queue=5)
    results = await asyncio.gather(*(store.create_run(new_run(f"q-{i}")) for i in range(200)),
                                   return_exceptions=True)
    overloaded = [r for r in results if isinstance(r, StoreOverloaded)]
    done = [r for r in results if not isinstance(r, BaseException)]
    assert overloaded and done, "some writes wait, the rest are refused at once"
    assert len(overloaded) + len(done) == 200
    assert isinstance(overloaded[0], StoreUnavailable) and "queued" in str(overloaded[0])
    # the store keeps working once the queue drains
    assert (await store.create_run(new_run("after")))[1] is True


async def test_app_start_refuses_a_bad_run_id(tmp_path: Any) -> None:
    async with App(str(tmp_path / "k.db"), worker=False) as client:
        with pytest.raises(InvalidInput) as caught:
            await client.start("wf", run_id="x" * 9000)
        assert caught.value.field == "run_id"
