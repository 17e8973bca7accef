"""An idle worker gives back the memory of a burst: ``release_free_memory`` returns freed
pages to the system, and the worker calls it once it is idle after enough runs."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from kenning import WorkflowContext, workflow
from kenning.runtime import heap, worker

from .conftest import AppFactory


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_free_pages_go_back_to_the_system() -> None:
    # 80 MiB of 1 KiB blocks (malloc, not Python's small-object allocator), one in a
    # hundred kept: the heap is full of holes the allocator keeps after they are freed
    blocks = [bytes(1000) + bytes([i % 256]) for i in range(80_000)]
    kept = blocks[::100]
    del blocks
    before = _rss_mib()
    assert heap.release_free_memory() is True  # glibc: Debian, as CI and the image
    assert before - _rss_mib() > 30, "freed pages stayed in the process"
    assert len(kept) == 800


@workflow
async def heap_quick(ctx: WorkflowContext, n: int) -> int:
    return n


async def test_an_idle_worker_gives_back_memory_after_a_burst(
        make_app: AppFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    released: list[float] = []
    monkeypatch.setattr(worker, "release_free_memory",
                        lambda: released.append(asyncio.get_running_loop().time()) or True)
    monkeypatch.setattr(worker, "TRIM_IDLE_SECONDS", 0.2)
    async with make_app([heap_quick]) as app:
        few = [await app.start(heap_quick, i) for i in range(worker.TRIM_AFTER_RUNS - 1)]
        for run_id in few:
            await app.result(run_id, timeout=15)
        await asyncio.sleep(0.5)
        assert released == [], "fewer runs than TRIM_AFTER_RUNS: nothing to give back"
        burst = await asyncio.gather(*(app.start(heap_quick, i) for i in range(10)))
        for run_id in burst:
            await app.result(run_id, timeout=15)
        await asyncio.sleep(0.5)
        assert len(released) == 1, released
        await asyncio.sleep(0.5)
        assert len(released) == 1, "idle without new runs: given back once"
