"""The scaler's reads of the store stay few under a burst: every new run wakes it, but it
passes at most every ``MIN_PASS_GAP`` seconds, and the grouped count of unfinished runs by
build (which reads every unfinished run, waiting ones included) is made once per
``COUNTS_INTERVAL`` while no pool has an old version."""

from __future__ import annotations

import asyncio
import time

import pytest

from kenning.core.models import NewRun
from kenning.core.store import Store
from kenning_operator.scaling import MIN_PASS_GAP
from tests.operator.conftest import Operators, eventually
from tests.operator.kube_helpers import DEPLOYMENTS, POOLS, apply, get, pool_body

pytestmark = pytest.mark.parametrize("database", ["postgres"], indirect=True)


async def test_a_burst_of_runs_costs_few_scaler_reads(operators: Operators,
                                                      store: Store) -> None:
    api = operators.api
    op = await operators.start()
    op.scaler.interval = 2.0  # the production tick
    await apply(api, POOLS, pool_body("flows", ["op_approval"], maxReplicas=3,
                                      runsPerWorker=100))
    await eventually(lambda: get(api, DEPLOYMENTS, "default", "flows-workers"),
                     what="the pool's Deployment")
    await asyncio.sleep(0.5)
    passes, counts = op.scaler.passes, op.scaler.versions.counts

    # 300 runs, one notification each, over about three seconds.
    began = time.monotonic()
    for i in range(30):
        await asyncio.gather(*(store.create_run(NewRun(f"burst-{i}-{j}", "default",
                                                       "op_approval", "[]"))
                               for j in range(10)))
        await asyncio.sleep(0.1)
    await eventually(lambda: (get(api, DEPLOYMENTS, "default", "flows-workers") or {})
                     .get("spec", {}).get("replicas") == 3, what="the pool scaled to 3")
    took = time.monotonic() - began

    made = op.scaler.passes - passes
    assert 1 <= made <= took / MIN_PASS_GAP + 2, (made, took)
    assert op.scaler.versions.counts - counts <= 1, "counted unfinished runs on every pass"


async def test_the_first_run_after_a_quiet_spell_scales_at_once(operators: Operators,
                                                               store: Store) -> None:
    api = operators.api
    op = await operators.start()
    op.scaler.interval = 2.0
    await apply(api, POOLS, pool_body("flows", ["op_approval"]))
    await eventually(lambda: (get(api, DEPLOYMENTS, "default", "flows-workers") or {})
                     .get("spec", {}).get("replicas") == 0, what="a Deployment at zero")
    await asyncio.sleep(1.0)
    began = time.monotonic()
    await store.create_run(NewRun("first", "default", "op_approval", "[]"))
    await eventually(lambda: (get(api, DEPLOYMENTS, "default", "flows-workers") or {})
                     .get("spec", {}).get("replicas") == 1, what="scaled from zero")
    assert time.monotonic() - began < 1.0
