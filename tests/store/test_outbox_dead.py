"""Outbox dead letters: an entry its target refused for good is kept, never due, listed,
counted, and due again (with a fresh attempt count) once revived."""

from __future__ import annotations

from kenning.core.models import Notification, NotificationKind
from kenning.core.store import Store
from tests.conftest import FakeClock
from tests.store.conftest import event, start_claimed, step


async def test_a_dead_entry_is_kept_apart_until_revived(
    store: Store, fake_clock: FakeClock, notes: list[Notification]
) -> None:
    lease = await start_claimed(store, "r1")
    sent = [event("o1", "order.shipped"), event("o2", "order.billed"), event("o3", "x")]
    await store.append_steps(lease, [step(0, "order.shipped")], sent)
    first, second, third = await store.due_outbox(10, claim_seconds=5)
    await store.outbox_dead(first.pk, "http://broker answered 400: bad event")
    await store.outbox_dead(third.pk, "http://broker answered 404: no such path")
    await store.outbox_retry(second.pk, fake_clock() + 1, "503")
    fake_clock.advance(10)
    [due] = await store.due_outbox(10)
    assert due.pk == second.pk, "dead entries are never due"
    assert await store.count_outbox() == 1 and await store.count_outbox(dead=True) == 2
    [live] = await store.list_outbox()
    assert live.pk == second.pk and live.dead_at is None and live.last_error == "503"
    dead = await store.list_outbox(dead=True)
    assert [d.pk for d in dead] == [first.pk, third.pk]
    assert dead[0].dead_at == fake_clock() - 10 and dead[0].attempts == 1
    assert dead[0].last_error == "http://broker answered 400: bad event"
    assert len(await store.list_outbox(dead=True, limit=1)) == 1

    notes.clear()
    assert await store.revive_outbox([first.pk, second.pk, 9999]) == 1  # only dead ones
    assert any(n.kind is NotificationKind.OUTBOX for n in notes)
    fake_clock.advance(40)
    revived = [e for e in await store.due_outbox(10) if e.pk == first.pk]
    assert revived and revived[0].attempts == 0 and revived[0].dead_at is None
    assert await store.revive_outbox() == 1  # all the dead: the third
    assert await store.count_outbox(dead=True) == 0
    assert await store.revive_outbox() == 0
