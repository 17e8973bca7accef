"""The operator rides out a PostgreSQL outage (its sync, sweep and scaler loops back off,
log the outage once at each end and go on), and stops with an error when a loop dies of a
bug, so that its process exits non-zero."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from kenning.core import codec
from kenning.core.models import RunStatus
from kenning.runtime.cli import main
from kenning.stores import open_store
from kenning_operator.main import OperatorCrashed
from kenning_operator.scaling import PoolScaler
from tests.operator.conftest import Operators, eventually
from tests.operator.emulator import Emulator
from tests.operator.kube_helpers import POOLS, RUNS, apply, pool_body, run_body, status
from tests.pg_server import PgServer


@pytest.fixture
async def own_server() -> AsyncIterator[PgServer]:
    """A PostgreSQL server of this test's own, to stop and start."""
    server = PgServer()
    await asyncio.to_thread(server.start)
    try:
        yield server
    finally:
        await asyncio.to_thread(server.stop)


async def test_a_store_outage_is_ridden_out_and_logged_once(
        emulator: Emulator, own_server: PgServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="kenning_operator")
    dsn = own_server.dsn("postgres")
    ops = Operators(emulator, dsn)
    store = open_store(dsn)
    await store.open()
    try:
        await ops.start()
        await apply(emulator, POOLS, pool_body("flows", ["op_approval"]))
        await apply(emulator, RUNS, run_body("before", "op_approval", {"order_id": "B"}))
        await eventually(lambda: status(emulator, "before").get("phase") == "Pending")

        await asyncio.to_thread(own_server.pg_ctl_stop, "fast")
        await apply(emulator, RUNS, run_body("during", "op_approval", {"order_id": "D"}))
        await asyncio.sleep(2.0)  # several sweeps and scaler passes fail meanwhile
        await asyncio.to_thread(own_server.pg_ctl_start)

        await eventually(lambda: status(emulator, "during").get("phase") == "Pending",
                         timeout=30, what="the run created during the outage started")
        run_id = status(emulator, "before")["runId"]
        async with asyncio.timeout(30):
            while True:
                try:
                    [c] = await store.claim_runs("w", limit=1, lease_seconds=30,
                                                 run_ids=[run_id])
                    break
                except Exception:  # the test's own handle reconnecting
                    await asyncio.sleep(0.2)
        await store.finish_run(c.lease, RunStatus.COMPLETED, result=codec.dumps(1))
        await eventually(lambda: status(emulator, "before").get("phase") == "Completed",
                         what="a change after the outage reached the resource")
        await eventually(lambda: all(any(
            loop in r.getMessage() and "working again after" in r.getMessage()
            for r in caplog.records) for loop in ("catch-up sweep", "pool scaler")),
            timeout=30, what="the sweep and the scaler saying the outage ended")
        await asyncio.sleep(0.5)
    finally:
        for running in list(ops.started):
            await running.stop()
        await store.close()

    lines = [r.getMessage() for r in caplog.records if r.name.startswith("kenning_operator")]
    began = [m for m in lines if "retrying with backoff" in m]
    ended = [m for m in lines if "working again after" in m]
    for loop in ("catch-up sweep", "pool scaler"):
        assert sum(loop in m for m in began) == 1, (loop, began)
        assert sum(loop in m for m in ended) == 1, (loop, ended)
    assert len(lines) < 40, lines  # no line per failed attempt


async def test_a_loop_that_dies_of_a_bug_stops_the_operator(operators: Operators) -> None:
    op = await operators.start()
    running = operators.started[-1]

    async def bug() -> None:
        raise ZeroDivisionError("a bug in the scaler")

    op.scaler.size_all = bug  # type: ignore[method-assign]
    op.scaler.wake()
    await asyncio.to_thread(running.thread.join, 20)
    assert not running.thread.is_alive(), "the operator went on after its loop died"
    operators.started.remove(running)
    assert running.errors and isinstance(running.errors[0], OperatorCrashed)
    assert isinstance(running.errors[0].__cause__, ZeroDivisionError)


async def test_kenning_operator_exits_non_zero_when_a_loop_dies(
        emulator: Emulator, pg_dsn: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The command itself: a loop's bug ends ``kenning operator`` with a failure exit code
    and one line saying so (what Kubernetes restarts)."""
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "kmock",
        "clusters": [{"name": "kmock", "cluster": {"server": str(emulator.url)}}],
        "users": [{"name": "u", "user": {}}],
        "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "u"}}]}))

    async def bug(self: PoolScaler) -> None:
        raise ZeroDivisionError("a bug in the scaler")

    monkeypatch.setattr(PoolScaler, "size_all", bug)
    runner = CliRunner()
    result = await asyncio.wait_for(asyncio.to_thread(
        runner.invoke, main, ["operator", "--database", pg_dsn, "--probe-port", "0"],
        env={"KUBECONFIG": str(kubeconfig)}), 60)
    assert result.exit_code not in (0, None), result.output
    assert "died of a bug" in result.output, result.output
