"""The operator's API client against the emulator answering as a real server would: typed
errors, a fresh login on 401, and back-off on 429 honouring ``Retry-After``."""

from __future__ import annotations

import asyncio
import time

import kopf
import pytest

from kenning.core.errors import KenningError
from kenning_operator.kube import (
    Conflict,
    Invalid,
    KubeClient,
    NotFound,
    TooManyRequests,
    Unauthorized,
    resource_path,
)
from tests.operator.emulator import Emulator
from tests.operator.kube_helpers import RUNS, apply, run_body

RUNS_PATH = resource_path("kenning.dev/v1alpha1", "workflowruns", "default")


def info(api: Emulator, token: str | None = None) -> kopf.ConnectionInfo:
    return kopf.ConnectionInfo(server=str(api.url), token=token)


async def test_refusals_are_typed_kenning_errors(emulator: Emulator) -> None:
    await apply(emulator, RUNS, run_body("one", "w"))
    async with KubeClient(info(emulator)) as kube:
        assert await kube.get(f"{RUNS_PATH}/missing") is None
        with pytest.raises(Conflict) as exists:
            await kube.create(RUNS_PATH, run_body("one", "w"))
        assert isinstance(exists.value, KenningError) and exists.value.status == 409
        assert "POST" in str(exists.value) and "one" in str(exists.value)
        with pytest.raises(Invalid):
            await kube.json_patch(f"{RUNS_PATH}/one", [
                {"op": "test", "path": "/metadata/resourceVersion", "value": "0"},
                {"op": "add", "path": "/metadata/labels", "value": {"a": "b"}}])
        body = await kube.get(f"{RUNS_PATH}/one")
        assert body is not None
        with pytest.raises(Conflict):  # a stale resourceVersion is a failed precondition
            await kube.merge_patch(f"{RUNS_PATH}/one", {"metadata": {
                "resourceVersion": "1" + body["metadata"]["resourceVersion"]}})
        before = body["metadata"]["resourceVersion"]
        await kube.merge_patch(f"{RUNS_PATH}/one", {"spec": {"input": 2}})
        after = await kube.get(f"{RUNS_PATH}/one")
        assert after is not None and after["metadata"]["resourceVersion"] != before
        assert not await kube.delete(f"{RUNS_PATH}/one", uid="not-its-uid")
        assert await kube.delete(f"{RUNS_PATH}/one", uid=body["metadata"]["uid"])
        with pytest.raises(NotFound):
            await kube.request("GET", f"{RUNS_PATH}/one")


async def test_a_401_logs_in_again_with_fresh_credentials(emulator: Emulator) -> None:
    emulator.tokens = {"rotated"}
    logins: list[str] = []

    def relogin() -> kopf.ConnectionInfo:  # as a re-read of the projected token file
        logins.append("rotated")
        return info(emulator, "rotated")

    async with KubeClient(info(emulator, "expired"), relogin=relogin) as kube:
        assert await kube.get(RUNS_PATH) is not None
        assert await kube.get(RUNS_PATH) is not None
    assert logins == ["rotated"] and kube.relogins == 1
    assert emulator.answered[401] == 1

    emulator.tokens = {"something-else"}
    async with KubeClient(info(emulator, "rotated"), relogin=relogin) as kube:
        with pytest.raises(Unauthorized):
            await kube.get(RUNS_PATH)
    assert len(logins) == 2  # one fresh login per refused call, then the error


async def test_a_429_is_retried_after_its_retry_after(emulator: Emulator) -> None:
    emulator.rate_limit = 5.0
    emulator.retry_after = 1
    async with KubeClient(info(emulator)) as kube:
        began = time.monotonic()
        results = await asyncio.gather(*(kube.get(RUNS_PATH) for _ in range(12)))
        took = time.monotonic() - began
        assert all(r is not None for r in results)
        assert kube.retried >= 1 and emulator.answered[429] >= 1
        assert took >= 0.9, f"retried before Retry-After: {took:.2f}s"

    emulator.rate_limit = 0.001
    emulator._bucket[:] = [0.0, time.monotonic()]
    async with KubeClient(info(emulator), max_retries=1) as kube:
        with pytest.raises(TooManyRequests) as refused:
            await kube.get(RUNS_PATH)
        assert refused.value.status == 429
