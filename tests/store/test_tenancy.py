"""Claims bounded by namespace, pool and build; live leases; unfinished runs by build."""

from __future__ import annotations

from dataclasses import replace

from kenning.core.models import BuildCount, ClaimScope, NewRun, RunStatus
from kenning.core.store import Store
from tests.conftest import FakeClock
from tests.store.conftest import event_wait, new_run, timer_wait, wait_on


async def claim_ids(store: Store, scope: ClaimScope, worker: str = "w") -> list[str]:
    claimed = await store.claim_runs(worker, limit=100, lease_seconds=30, scope=scope)
    return sorted(c.run.run_id for c in claimed)


async def test_a_claim_takes_only_runs_of_its_namespaces_and_pool(store: Store) -> None:
    for run_id, ns, pool in [("a-none", "team-a", None), ("a-p1", "team-a", "p1"),
                             ("a-p2", "team-a", "p2"), ("b-none", "team-b", None),
                             ("b-p1", "team-b", "p1"), ("c-none", "team-c", None)]:
        await store.create_run(replace(new_run(run_id, namespace=ns), pool=pool))
    assert await claim_ids(store, ClaimScope(namespaces=("team-a",), pool="p1")) == [
        "a-none", "a-p1"]
    assert await claim_ids(store, ClaimScope(namespaces=("team-b", "team-c"))) == [
        "b-none", "c-none"]
    assert await claim_ids(store, ClaimScope(namespaces=("team-a", "team-b"),
                                             pool="p3")) == []
    assert await claim_ids(store, ClaimScope(namespaces=(), pool="p2")) == []
    assert await claim_ids(store, ClaimScope(namespaces=None, pool="p2")) == ["a-p2"]
    assert await claim_ids(store, ClaimScope(namespaces=("team-b",), pool="p1")) == ["b-p1"]


async def test_the_first_claim_pins_a_run_to_the_build_of_its_worker(
        store: Store, fake_clock: FakeClock) -> None:
    await store.create_run(new_run("r1"))
    [claimed] = await store.claim_runs("v1-worker", limit=5, lease_seconds=30,
                                       scope=ClaimScope(build_id="v1"))
    assert claimed.run.build_id == "v1" and claimed.run.upgrade == "pinned"
    await wait_on(store, claimed.lease, timer_wait(0, fake_clock() + 5))
    fake_clock.advance(10)
    assert await claim_ids(store, ClaimScope(build_id="v2")) == []
    assert await claim_ids(store, ClaimScope(build_id=None)) == []
    assert await claim_ids(store, ClaimScope(build_id="v1", drain=True)) == ["r1"]
    run = await store.get_run("r1")
    assert run is not None and run.build_id == "v1"


async def test_a_run_given_a_build_at_start_waits_for_that_build(store: Store) -> None:
    await store.create_run(NewRun("r1", "default", "wf", "[]", build_id="v2"))
    assert await claim_ids(store, ClaimScope(build_id="v1")) == []
    assert await claim_ids(store, ClaimScope(build_id="v2")) == ["r1"]


async def test_auto_upgrade_runs_move_to_any_build_and_draining_workers_take_no_new_ones(
        store: Store, fake_clock: FakeClock) -> None:
    await store.create_run(NewRun("auto-run", "default", "wf", "[]", upgrade="auto"))
    await store.create_run(NewRun("auto-wf", "default", "wf-auto", "[]"))
    await store.create_run(NewRun("fresh", "default", "wf", "[]"))
    # a draining v1 worker takes neither fresh nor auto-upgrading runs
    assert await claim_ids(store, ClaimScope(build_id="v1", drain=True,
                                             auto_upgrade=("wf-auto",))) == []
    claimed = await store.claim_runs("v1", limit=5, lease_seconds=30,
                                     scope=ClaimScope(build_id="v1", auto_upgrade=("wf-auto",)))
    by_id = {c.run.run_id: c for c in claimed}
    assert sorted(by_id) == ["auto-run", "auto-wf", "fresh"]
    assert by_id["auto-wf"].run.upgrade == "auto"  # the workflow's policy is recorded
    for item in claimed:
        await wait_on(store, item.lease, timer_wait(0, fake_clock() + 1))
    fake_clock.advance(2)
    # a v2 worker (which does not even know wf-auto is auto) takes the auto runs only
    assert await claim_ids(store, ClaimScope(build_id="v2")) == ["auto-run", "auto-wf"]
    runs = {r.run_id: r for r in await store.list_runs(limit=10)}
    assert runs["auto-run"].build_id == "v2" and runs["fresh"].build_id == "v1"


async def test_count_live_leases(store: Store, fake_clock: FakeClock) -> None:
    for run_id in ("r1", "r2"):
        await store.create_run(new_run(run_id))
    await store.claim_runs("w1", limit=1, lease_seconds=10)
    await store.claim_runs("w2", limit=1, lease_seconds=30)
    assert await store.count_live_leases("w1") == 1
    assert await store.count_live_leases("nobody") == 0
    fake_clock.advance(20)
    assert (await store.count_live_leases("w1"), await store.count_live_leases("w2")) == (0, 1)


async def test_unfinished_runs_by_build(store: Store, fake_clock: FakeClock) -> None:
    for run_id, pool in [("p", None), ("w", "p1"), ("t", "p1"), ("done", "p1"), ("new", "p1")]:
        await store.create_run(replace(new_run(run_id), pool=pool))
    v1 = ClaimScope(pool="p1", build_id="v1")
    claimed = {c.run.run_id: c for c in await store.claim_runs(
        "w1", limit=10, lease_seconds=30, run_ids=["p", "w", "t", "done"], scope=v1)}
    await wait_on(store, claimed["w"].lease, event_wait(0, fake_clock))
    await wait_on(store, claimed["t"].lease, timer_wait(0, fake_clock() + 60))
    await store.finish_run(claimed["done"].lease, RunStatus.COMPLETED, result="1")
    counts = sorted(await store.count_unfinished_by_build(due_before=fake_clock() + 1),
                    key=lambda c: (c.pool or "", c.build_id or ""))
    assert counts == [
        BuildCount("default", None, "wf", "v1", "pinned", unfinished=1, runnable=1),
        BuildCount("default", "p1", "wf", None, "pinned", unfinished=1, runnable=1),
        BuildCount("default", "p1", "wf", "v1", "pinned", unfinished=2, runnable=0),
    ]
    later = await store.count_unfinished_by_build(due_before=fake_clock() + 61)
    assert {(c.pool, c.build_id): c.runnable for c in later}[("p1", "v1")] == 1
    none_due = await store.count_unfinished_by_build()
    assert {(c.pool, c.build_id): c.runnable for c in none_due}[("p1", "v1")] == 0


async def test_many_runs_started_at_once_keep_their_pool_build_and_policy(store: Store) -> None:
    news = [NewRun(f"m{i}", "default", "wf", "[]", pool="p1", build_id="v3", upgrade="auto")
            for i in range(3)]
    assert [made for made, _ in await store.create_runs(news)] == [True] * 3
    for i in range(3):
        run = await store.get_run(f"m{i}")
        assert run is not None
        assert (run.pool, run.build_id, run.upgrade) == ("p1", "v3", "auto")
