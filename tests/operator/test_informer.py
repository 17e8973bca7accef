"""The operator's own list and watch of ``WorkflowRun``s: events as the API server streams
them (however long a line), a watch resumed from the last version, 410 Gone answered by a
fresh listing that forgets what went meanwhile, and an outage waited out."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from typing import Any

import kopf

from kenning_operator.informer import Informer
from kenning_operator.kube import Gone, KubeClient, KubeError, resource_path
from tests.operator.emulator import Emulator
from tests.operator.kube_helpers import RUNS, apply, run_body

PATH = resource_path("kenning.dev/v1alpha1", "workflowruns", "default")


async def test_a_watch_streams_every_event_however_long(emulator: Emulator) -> None:
    big = "x" * 400_000  # far beyond aiohttp's line limit
    async with KubeClient(kopf.ConnectionInfo(server=str(emulator.url))) as kube:
        _items, version = await kube.list_all(PATH)
        seen: list[tuple[str, str]] = []

        async def watch() -> None:
            async for event in kube.watch(PATH, version):
                obj = event["object"]
                seen.append((event["type"], obj["metadata"]["name"]))
                assert obj["spec"]["input"] in ({"big": big}, 1)
                if len(seen) == 3:
                    return

        watching = asyncio.create_task(watch())
        await asyncio.sleep(0.2)
        await apply(emulator, RUNS, run_body("big", "w", {"big": big}))
        await apply(emulator, RUNS, run_body("small", "w", 1))
        async with emulator.delete(f"{PATH}/small") as resp:
            assert resp.status == 200
        await asyncio.wait_for(watching, 10)
    assert seen == [("ADDED", "big"), ("ADDED", "small"), ("DELETED", "small")]


class FakeKube:
    """Listings and watch streams given by the test."""

    def __init__(self) -> None:
        self.listings: list[tuple[list[dict[str, Any]], str]] = []
        self.streams: list[list[dict[str, Any]] | BaseException] = []
        self.watched_from: list[str] = []

    async def list_all(self, path: str) -> tuple[list[dict[str, Any]], str]:
        return self.listings.pop(0)

    async def watch(self, path: str, version: str) -> AsyncIterator[dict[str, Any]]:
        self.watched_from.append(version)
        if not self.streams:
            await asyncio.Event().wait()
        stream = self.streams.pop(0)
        if isinstance(stream, BaseException):
            raise stream
        for event in stream:
            yield event


def obj(name: str, version: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "uid": f"uid-{name}", "resourceVersion": version}}


async def test_gone_lists_again_and_forgets_what_went() -> None:
    kube = FakeKube()
    kube.listings = [([obj("a", "1"), obj("b", "2")], "2"), ([obj("a", "7")], "8")]
    kube.streams = [
        [{"type": "MODIFIED", "object": obj("a", "3")},
         {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "5"}}}],
        [{"type": "ERROR", "object": {"kind": "Status", "code": 410, "reason": "Expired",
                                      "message": "too old resource version"}}],
    ]
    events: list[tuple[str, str]] = []
    listed: list[set[str]] = []

    def on_event(kind: str, body: Mapping[str, Any]) -> None:
        events.append((kind, body["metadata"]["name"]))

    informer = Informer(kube, PATH, what="WorkflowRuns", on_event=on_event,  # type: ignore[arg-type]
                        on_listed=listed.append)
    task = asyncio.create_task(informer.run())
    try:
        async def relisted() -> None:
            while len(listed) < 2:
                await asyncio.sleep(0.01)
        await asyncio.wait_for(relisted(), 5)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert events == [("ADDED", "a"), ("ADDED", "b"), ("MODIFIED", "a"), ("ADDED", "a")]
    assert listed == [{"uid-a", "uid-b"}, {"uid-a"}]  # b went while no watch was current
    # resumed after the stream ended from the bookmark's version; after 410 from a listing
    assert kube.watched_from[:3] == ["2", "5", "8"]
    assert informer.synced.is_set()


async def test_an_outage_is_waited_out() -> None:
    kube = FakeKube()
    kube.listings = [([obj("a", "1")], "1")]
    kube.streams = [KubeError(503, "ServiceUnavailable", "down"), [
        {"type": "ADDED", "object": obj("c", "4")}]]
    events: list[str] = []
    informer = Informer(kube, PATH, what="WorkflowRuns",  # type: ignore[arg-type]
                        on_event=lambda kind, body: events.append(body["metadata"]["name"]),
                        on_listed=lambda uids: None)
    task = asyncio.create_task(informer.run())
    try:
        async def got_c() -> None:
            while "c" not in events:
                await asyncio.sleep(0.01)
        await asyncio.wait_for(got_c(), 5)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert events == ["a", "c"]
    assert kube.watched_from[:2] == ["1", "1"]  # the same version once it answers again
    assert isinstance(Gone(410, "Expired", ""), KubeError)


class FakeToggle:
    """kopf's ``operator_paused`` toggle set, as the peering tap hands it over."""

    def __init__(self, on: bool) -> None:
        self.on = on
        self.changed = asyncio.Event()

    def is_on(self) -> bool:
        return self.on

    def turn(self, on: bool) -> None:
        self.on = on
        self.changed.set()
        self.changed = asyncio.Event()

    async def wait_for(self, state: bool) -> None:
        while self.on != state:
            await self.changed.wait()


async def test_with_peering_nothing_is_watched_while_another_operator_is_active() -> None:
    from kenning_operator.watchhook import PeeringGate

    kube = FakeKube()
    kube.listings = [([obj("a", "1")], "1"), ([obj("a", "1"), obj("b", "2")], "2")]
    gate = PeeringGate(enabled=True)
    events: list[str] = []
    informer = Informer(kube, PATH, what="WorkflowRuns", gate=gate,  # type: ignore[arg-type]
                        on_event=lambda kind, body: events.append(body["metadata"]["name"]),
                        on_listed=lambda uids: None)
    task = asyncio.create_task(informer.run())

    async def until(check: Any) -> None:
        async with asyncio.timeout(5):
            while not check():
                await asyncio.sleep(0.01)
    try:
        await asyncio.sleep(0.1)
        assert informer.lists == 0  # kopf has not decided yet
        toggle = FakeToggle(on=True)
        gate.use(toggle)
        await asyncio.sleep(0.1)
        assert informer.lists == 0 and gate.paused()  # another operator is active
        toggle.turn(False)
        await until(lambda: informer.watches == 1)
        assert events == ["a"]
        toggle.turn(True)  # another one takes over: the watch stops
        await asyncio.sleep(0.1)
        toggle.turn(False)  # this one again: it lists what happened meanwhile
        await until(lambda: informer.lists == 2)
        assert events == ["a", "a", "b"]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert not PeeringGate(enabled=False).paused()
