"""Operator latency and memory: ``kenning operator`` in its own process against kmock, side
by side with a bare kopf operator on the same emulator.

    .venv/bin/python bench/operator_bench.py                      # both, 200 creates, 10,000
    .venv/bin/python bench/operator_bench.py --operator kenning --creates 50 --resources 1000
    .venv/bin/python bench/operator_bench.py --ceiling --operator none   # the emulator alone
    .venv/bin/python bench/operator_bench.py --database postgresql://...    # an existing server

``--operator both`` (the default) measures a bare kopf 1.45 operator first (its only handler,
``@kopf.on.create``, sets ``status.phase``; kopf's Events off) and then ``kenning operator``,
each on a fresh emulator, and reports the figures they share side by side with their ratio.

What it measures (see bench/OPERATOR.md for the figures and caveats):

(a) creation -> run started: from just before a ``WorkflowRun`` is POSTed to the API server
    until this process hears, by LISTEN/NOTIFY, that the operator's run is committed in the
    store. One create at a time with the operator idle in between.
(b) completion -> ``Completed``: this process plays the worker (claims the run, waits for the
    ``Running`` status, finishes the run in the store); from the commit of the finish until
    the API server receives the status patch that says ``Completed``.
    Also: created -> ``status.phase`` (``Pending``) as the emulator receives the patch, and
    the writes per run the emulator served (finalizer, status patches, Events, 409/422).
(c) backlog and memory: ``--resources`` WorkflowRuns created at once; the time until all have
    their run started and their ``Pending`` status; the operator process's VmRSS
    (``/proc/PID/status``) before and holding them. Then every one of those runs is finished
    at once (the operator falls behind) and the API calls it makes per run are counted.
(d) restart: the operator stopped (SIGTERM, then SIGKILL) and started again over all those
    resources; the status patches the new one makes (nothing differs: ideally none).
(e) recovery (Kenning only): the bearer token rotated (the API server answers 401 until the
    operator reads the new one from its kubeconfig), and a rate limit answering 429 with
    ``Retry-After`` while runs are created: how long until runs show their phase again, and
    the 401/429 seen.

The backlog's creates come from ``--creators`` processes of their own (so that the client
side of 10,000 POSTs does not share the emulator's process). ``--ceiling`` first measures
the emulator alone: creates, then a status and a metadata patch per object, each with a
watcher reading the stream, from client processes; no operator can be faster on it.
``--profile PREFIX`` records py-spy profiles of the operator and of the emulator during
the backlog and reports where their CPU went.

The API server is kmock's emulator (``tests/operator/emulator.py``) in this process, NOT a
real kube-apiserver: no etcd, no admission, no authentication, no watch cache; its own speed
bounds what is measured here. The operator is the real ``kenning operator`` command, logged in
with a kubeconfig that points at the emulator; PostgreSQL is a throwaway server started from
the machine's binaries (``tests/pg_server.py``, fsync off) unless ``--database`` is given.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import socket
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
for extra in (REPO, REPO / "sdk", REPO / "operator"):
    if str(extra) not in sys.path:
        sys.path.insert(0, str(extra))

import aiohttp  # noqa: E402
import kmock  # noqa: E402
from kmock._internal import enums, rendering  # noqa: E402
from tests.operator.emulator import Emulator  # noqa: E402
from tests.pg_server import PgServer  # noqa: E402

from kenning.core import codec  # noqa: E402
from kenning.core.models import Notification, NotificationKind, RunStatus  # noqa: E402
from kenning.core.store import Store  # noqa: E402
from kenning.stores import open_store  # noqa: E402

RUNS_PATH = "/apis/kenning.dev/v1alpha1/namespaces/default/workflowruns"
POOLS_PATH = "/apis/kenning.dev/v1alpha1/namespaces/default/workerpools"


class Recorder:
    """What the emulator saw: when each resource first showed each phase, and the calls."""

    def __init__(self) -> None:
        self.phase_at: dict[tuple[str, str], float] = {}
        self.calls: Counter[str] = Counter()
        self.last_call = time.perf_counter()

    def see(self, request: rendering.Request) -> None:
        if request.resource is None:
            return
        if request.action in (enums.action.CREATE, enums.action.UPDATE, enums.action.DELETE):
            self.last_call = time.perf_counter()  # quiet: no writes (reads go on, the scaler)
        action = request.action.name.lower() if request.action else "other"
        sub = f"/{request.subresource}" if request.subresource else ""
        self.calls[f"{action} {request.resource.plural}{sub}"] += 1
        if request.action == enums.action.UPDATE and request.subresource == "status" \
                and request.resource.plural == "workflowruns" and isinstance(request.data, dict):
            phase = (request.data.get("status") or {}).get("phase")
            if phase and request.name:
                self.phase_at.setdefault((request.name, phase), time.perf_counter())


RECORDER = Recorder()


class BenchEmulator(Emulator):
    """The test emulator, recording each request after it was served."""

    async def _handle(self, request: rendering.Request) -> Any:
        response = await super()._handle(request)
        RECORDER.see(request)
        return response


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rss_mb(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM (peak) of a process, in MB."""
    out: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) / 1024
    return out


def cpu_seconds(pid: int) -> float:
    """User and system CPU seconds a process has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summary_ms(values: list[float]) -> dict[str, float]:
    ms = [v * 1000 for v in values]
    return {"n": len(ms), "p50_ms": round(pct(ms, 0.5), 2), "p95_ms": round(pct(ms, 0.95), 2),
            "p99_ms": round(pct(ms, 0.99), 2), "mean_ms": round(statistics.fmean(ms), 2),
            "max_ms": round(max(ms), 2)}


def kubeconfig_text(server: str, token: str) -> str:
    """A kubeconfig for the emulator with a bearer token."""
    return json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "kmock",
        "clusters": [{"name": "kmock", "cluster": {"server": server}}],
        "users": [{"name": "bench", "user": {"token": token}}],
        "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "bench",
                                                  "namespace": "default"}}]})


def run_body(name: str) -> dict[str, Any]:
    return {"apiVersion": "kenning.dev/v1alpha1", "kind": "WorkflowRun",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"workflow": "bench", "input": {"n": name}}}


BARE_KOPF = """
import logging, sys
import kopf

@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_):
    settings.posting.enabled = False  # no Event per handler success
    settings.watching.server_timeout = 300

@kopf.on.create("kenning.dev", "v1alpha1", "workflowruns")
async def created(patch: kopf.Patch, **_):  # async: kopf runs sync handlers in threads
    patch.status["phase"] = "Pending"

logging.basicConfig(level=logging.WARNING)
kopf.run(standalone=True, clusterwide=True, liveness_endpoint=sys.argv[1])
"""
"""A bare kopf operator: its only handler sets ``status.phase`` of each new WorkflowRun (an
async handler, kopf's cheapest kind; kopf writes it with its diff-base annotation)."""


class Bench:
    def __init__(self, args: argparse.Namespace, which: str, api: Emulator,
                 store: Store | None, dsn: str | None, workdir: Path) -> None:
        self.args = args
        self.which = which
        self.api = api
        self.store = store
        self.dsn = dsn
        self.workdir = workdir
        self.http: aiohttp.ClientSession | None = None
        self.proc: asyncio.subprocess.Process | None = None
        self.runnable: dict[str, float] = {}
        self.waiters: dict[str, asyncio.Future[float]] = {}
        self.results: dict[str, Any] = {"operator": which}
        self.token = "token-1"
        api.tokens = {self.token}

    @property
    def kenning(self) -> bool:
        return self.which == "kenning"

    # -- plumbing ---------------------------------------------------------------------------
    def _on_note(self, note: Notification) -> None:
        if note.kind is NotificationKind.RUNNABLE and note.run_id:
            now = time.perf_counter()
            self.runnable.setdefault(note.run_id, now)
            waiter = self.waiters.pop(note.run_id, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(now)

    async def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        assert self.http is not None
        return await post(self.http, str(self.api.url) + path, body, self.token)

    async def start_operator(self, settle: float = 1.0) -> None:
        kubeconfig = self.workdir / "kubeconfig"
        kubeconfig.write_text(kubeconfig_text(str(self.api.url), self.token))
        probe = _free_port()
        env = {**os.environ, "KUBECONFIG": str(kubeconfig), "PYTHONUNBUFFERED": "1"}
        self.log_path = self.workdir / f"{self.which}.log"
        log = self.log_path.open("ab")
        if self.kenning:
            assert self.dsn is not None
            command = ["-m", "kenning.runtime.cli", "operator", "--database", self.dsn,
                       "--probe-host", "127.0.0.1", "--probe-port", str(probe)]
            ready = f"http://127.0.0.1:{probe}/readyz"
        else:
            ready = f"http://127.0.0.1:{probe}/healthz"
            command = ["-c", BARE_KOPF, ready]
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, *command, env=env, cwd=str(REPO), stdout=log, stderr=log)
        assert self.http is not None
        deadline = time.monotonic() + 60
        while True:
            if self.proc.returncode is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the operator did not get ready; log: {self.log_path}\n"
                                   + self.log_path.read_text()[-3000:])
            with contextlib.suppress(aiohttp.ClientError):
                async with self.http.get(ready) as resp:
                    if resp.status == 200:
                        break
            await asyncio.sleep(0.1)
        await asyncio.sleep(settle)  # the watch streams subscribe just after their requests

    async def stop_operator(self, kill: bool = False) -> float:
        """Stop the operator; how long it took to exit (SIGTERM)."""
        if self.proc is None or self.proc.returncode is not None:
            return 0.0
        began = time.perf_counter()
        if kill:
            self.proc.kill()
            await self.proc.wait()
            return 0.0
        self.proc.terminate()
        try:
            async with asyncio.timeout(30):
                await self.proc.wait()
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
        return time.perf_counter() - began

    async def wait_quiet(self, seconds: float, bound: float = 120.0) -> None:
        """Until the API server saw no write for ``seconds`` (bounded)."""
        deadline = time.perf_counter() + bound
        while time.perf_counter() - RECORDER.last_call < seconds:
            if time.perf_counter() > deadline:
                break
            await asyncio.sleep(0.1)

    async def wait_phase(self, name: str, phase: str, bound: float = 30.0) -> float:
        deadline = time.perf_counter() + bound
        while (name, phase) not in RECORDER.phase_at:
            if time.perf_counter() > deadline:
                raise RuntimeError(f"{name} never showed {phase}")
            await asyncio.sleep(0.0005)
        return RECORDER.phase_at[(name, phase)]

    # -- the measurements -------------------------------------------------------------------
    async def create_to_started(self, count: int) -> tuple[list[str], list[str]]:
        latencies: list[float] = []
        phased: list[float] = []
        posts: list[float] = []
        reacted: list[float] = []
        names, run_ids = [], []
        writes_before = self.api.writes.copy()
        answered_before = self.api.answered.copy()
        loop = asyncio.get_running_loop()
        for i in range(count):
            name = f"lat-{i}"
            waiter: asyncio.Future[float] = loop.create_future()
            wall0 = time.time()
            t0 = time.perf_counter()
            cr = await self.post(RUNS_PATH, run_body(name))
            posts.append(time.perf_counter() - t0)
            names.append(name)
            if self.store is not None:
                run_id = f"{name}-{cr['metadata']['uid'].replace('-', '')[:12]}"
                if run_id in self.runnable:
                    heard = self.runnable[run_id]
                else:
                    self.waiters[run_id] = waiter
                    heard = await asyncio.wait_for(waiter, 10)
                latencies.append(heard - t0)
                run = await self.store.get_run(run_id)
                assert run is not None
                reacted.append(run.created_at - wall0)
                run_ids.append(run_id)
            phased.append(await self.wait_phase(name, "Pending") - t0)
            await asyncio.sleep(self.args.gap)  # the operator idle again
        await self.wait_quiet(1.0)
        if latencies:
            self.results["create_to_run_started"] = summary_ms(latencies)
            self.results["create_to_run_started_parts"] = {
                "post_returned_p50_ms": summary_ms(posts)["p50_ms"],
                "operator_began_write_p50_ms": summary_ms(reacted)["p50_ms"]}
        self.results["create_to_phase"] = summary_ms(phased)
        self.results["writes_per_run_paced"] = writes_per_run(
            self.api.writes - writes_before, names, self.api.answered - answered_before)
        return names, run_ids

    async def completion_to_completed(self, names: list[str], run_ids: list[str]) -> None:
        assert self.store is not None
        latencies: list[float] = []
        calls_before = RECORDER.calls.copy()
        for name, run_id in zip(names, run_ids, strict=True):
            claimed = await self.store.claim_runs("bench-worker", limit=1, lease_seconds=60,
                                                  run_ids=[run_id])
            assert claimed, f"could not claim {run_id}"
            await self.wait_phase(name, "Running")
            await asyncio.sleep(self.args.gap)
            await self.store.finish_run(claimed[0].lease, RunStatus.COMPLETED,
                                        result=codec.dumps({"ok": name}))
            t0 = time.perf_counter()
            done = await self.wait_phase(name, "Completed")
            latencies.append(done - t0)
            await asyncio.sleep(self.args.gap)
        await self.wait_quiet(1.0)
        self.results["completion_to_completed"] = summary_ms(latencies)
        self.results["calls_per_run_one_at_a_time"] = per_run(
            RECORDER.calls - calls_before, len(names), creates=len(names))

    async def recovery(self, count: int = 50) -> None:
        """401 after a token rotation, and 429 with Retry-After under a rate limit."""
        # The token rotates: the old one is refused at once; the new one is in the
        # kubeconfig the operator logged in with (as a projected token file would be).
        unauthorized = self.api.answered[401]
        self.token = "token-2"
        self.api.tokens = {self.token}
        (self.workdir / "kubeconfig").write_text(kubeconfig_text(str(self.api.url),
                                                                 self.token))
        began = time.perf_counter()
        await self.post(RUNS_PATH, run_body("rotated-0"))
        phased = await self.wait_phase("rotated-0", "Pending", bound=60) - began
        self.results["recovery_401"] = {
            "refused_401": self.api.answered[401] - unauthorized,
            "refused_401_by_client": {a: n for (code, a), n in self.api.refused_by.items()
                                      if code == 401},
            "create_to_phase_after_rotation_ms": round(phased * 1000, 1)}

        # API Priority and Fairness: 429 with Retry-After beyond a rate.
        limited = self.api.answered[429]
        self.api.rate_limit = self.args.rate_limit
        self.api.retry_after = 1
        self.api._bucket[:] = [0.0, time.monotonic()]
        began = time.perf_counter()
        names = [f"limited-{i}" for i in range(count)]
        await asyncio.gather(*(self.post(RUNS_PATH, run_body(n)) for n in names))
        await asyncio.gather(*(self.wait_phase(n, "Pending", bound=120) for n in names))
        took = time.perf_counter() - began
        self.api.rate_limit = None
        self.results["recovery_429"] = {
            "rate_limit_per_s": self.args.rate_limit, "runs": count,
            "refused_429": self.api.answered[429] - limited,
            "refused_429_by_client": {a: n for (code, a), n in self.api.refused_by.items()
                                      if code == 429},
            "all_pending_in_s": round(took, 2)}
        await self.wait_quiet(1.0)

    async def restart(self) -> None:
        """Stop the operator (SIGTERM, then SIGKILL) and count what the next one writes."""
        out: dict[str, Any] = {}
        for how in ("sigterm", "sigkill"):
            exited = await self.stop_operator(kill=how == "sigkill")
            before = self.api.writes.copy()
            began = time.perf_counter()
            await self.start_operator()
            await self.wait_quiet(3.0, bound=300)
            writes = self.api.writes - before
            out[how] = {
                "status_patches": sum(v for (p, _, w), v in writes.items()
                                      if p == "workflowruns" and w == "patch/status"),
                "other_run_writes": sum(v for (p, _, w), v in writes.items()
                                        if p == "workflowruns" and w != "patch/status"),
                "events": sum(v for (p, _, _), v in writes.items() if p == "events"),
                "ready_and_quiet_in_s": round(time.perf_counter() - began, 1),
                "rss_mb": round(rss_mb(self.proc.pid)["VmRSS"], 1) if self.proc else None}
            if how == "sigterm":
                out[how]["exited_after_sigterm_in_s"] = round(exited, 2)
        self.results["restart"] = out

    async def start_profiles(self) -> list[tuple[str, asyncio.subprocess.Process, Path]]:
        """py-spy on the operator and on this process (the emulator), with ``--profile``."""
        if not self.args.profile or self.proc is None:
            return []
        spies = []
        for who, pid in (("operator", self.proc.pid), ("emulator", os.getpid())):
            raw = Path(f"{self.args.profile}-{self.which}-{who}.txt")
            spy = await asyncio.create_subprocess_exec(
                str(Path(sys.executable).with_name("py-spy")), "record", "--pid", str(pid),
                "--format", "raw", "--rate", "250", "--nonblocking", "--output", str(raw),
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
            spies.append((who, spy, raw))
        await asyncio.sleep(0.5)
        return spies

    async def stop_profiles(self, spies: list[tuple[str, asyncio.subprocess.Process, Path]]
                            ) -> None:
        for who, spy, raw in spies:
            spy.send_signal(2)
            await spy.wait()
            self.results[f"profile_{who}"] = breakdown(raw)

    async def backlog(self, resources: int) -> None:
        """``resources`` WorkflowRuns created at once from the creator processes."""
        assert self.proc is not None
        await self.wait_quiet(2.0)
        baseline = rss_mb(self.proc.pid)
        calls_before = RECORDER.calls.copy()
        stopped = self.args.backlog == "stopped"
        if stopped:  # the backlog waits for an operator that is not running yet
            await self.stop_operator()
        wall0 = time.time()
        started = time.perf_counter()
        emulator_cpu0 = cpu_seconds(os.getpid())
        cpu_before = cpu_seconds(self.proc.pid) if not stopped else 0.0
        spies = [] if stopped else await self.start_profiles()
        posted = await create_from_processes(str(self.api.url), self.token, "mem-",
                                             resources, self.args.creators)
        created = time.perf_counter() - started
        if stopped:
            wall0 = time.time()
            started = time.perf_counter()
            emulator_cpu0 = cpu_seconds(os.getpid())
            await self.start_operator(settle=0.0)
            cpu_before = cpu_seconds(self.proc.pid)
            spies = await self.start_profiles()
        deadline = time.perf_counter() + self.args.bound
        while sum(1 for (name, phase) in RECORDER.phase_at
                  if phase == "Pending" and name.startswith("mem-")) < resources:
            if time.perf_counter() > deadline:
                raise RuntimeError("not every resource got its Pending status in time")
            await asyncio.sleep(0.1)
        all_pending = time.perf_counter() - started
        cpu = cpu_seconds(self.proc.pid) - cpu_before
        emulator_cpu = cpu_seconds(os.getpid()) - emulator_cpu0
        await self.stop_profiles(spies)
        await self.wait_quiet(3.0)
        await asyncio.sleep(self.args.settle)
        holding = rss_mb(self.proc.pid)
        out: dict[str, Any] = {
            "resources": resources, "backlog": self.args.backlog,
            "creators": self.args.creators,
            "baseline_rss_mb": round(baseline["VmRSS"], 1),
            "rss_mb": round(holding["VmRSS"], 1), "peak_rss_mb": round(holding["VmHWM"], 1),
            "posted_in_s": round(created, 1), "posts_per_s": round(resources / created),
            "post_retries_429": posted["retried"],
            "all_pending_in_s": round(all_pending, 1),
            "runs_per_s": round(resources / all_pending),
            "operator_cpu_s_until_all_pending": round(cpu, 1),
            "operator_cpu_ms_per_run": round(cpu * 1000 / resources, 2),
            "emulator_cpu_s_until_all_pending": round(emulator_cpu, 1)}
        if not stopped:
            out["pending_after_last_post_s"] = round(all_pending - created, 1)
        if self.store is not None:
            made = [r for r in await unfinished_runs(self.store) if r.run_id.startswith("mem-")]
            out["runs_started_in_store"] = len(made)
            out["all_started_in_store_in_s"] = round(max(r.created_at for r in made) - wall0, 1)
        self.results["backlog"] = out
        self.results["calls_per_run_creating"] = per_run(RECORDER.calls - calls_before,
                                                         resources, creates=resources)
        if self.store is not None:
            await self.burst_completion(resources)

    async def burst_completion(self, resources: int) -> None:
        """Every run finishes at once: the operator falls behind and coalesces."""
        assert self.store is not None and self.proc is not None
        calls_before = RECORDER.calls.copy()
        started = time.perf_counter()
        while True:
            batch = await self.store.claim_runs("bench-worker", limit=200, lease_seconds=60)
            if not batch:
                break
            await asyncio.gather(*(self.store.finish_run(c.lease, RunStatus.COMPLETED,
                                                         result=codec.dumps(1))
                                   for c in batch))
        finished = time.perf_counter() - started
        deadline = time.perf_counter() + self.args.bound
        while sum(1 for (name, phase) in RECORDER.phase_at
                  if phase == "Completed" and name.startswith("mem-")) < resources:
            if time.perf_counter() > deadline:
                raise RuntimeError("not every resource showed Completed in time")
            await asyncio.sleep(0.2)
        all_completed = time.perf_counter() - started
        await self.wait_quiet(3.0)
        self.results["burst_completion"] = {
            "runs": resources, "finished_in_store_in_s": round(finished, 1),
            "all_completed_in_s": round(all_completed, 1),
            "rss_after_mb": round(rss_mb(self.proc.pid)["VmRSS"], 1),
            "peak_rss_mb": round(rss_mb(self.proc.pid)["VmHWM"], 1)}
        self.results["calls_per_run_burst_completion"] = per_run(
            RECORDER.calls - calls_before, resources, creates=0)


async def unfinished_runs(store: Store) -> list[Any]:
    """Every unfinished run (paged)."""
    out: list[Any] = []
    after: tuple[float, str] | None = None
    while True:
        page = await store.list_unfinished_runs(after=after, limit=5000)
        out.extend(page)
        if len(page) < 5000:
            return out
        after = (page[-1].created_at, page[-1].run_id)


# -- client processes (creates, patches, a watcher), for the backlog and the ceiling ----------
async def post(http: aiohttp.ClientSession, url: str, body: dict[str, Any], token: str,
               retried: list[int] | None = None) -> dict[str, Any]:
    while True:  # as kubectl: a 429 is retried after its Retry-After
        async with http.post(url, json=body,
                             headers={"Authorization": f"Bearer {token}"}) as resp:
            data: dict[str, Any] = await resp.json()
            if resp.status == 429:
                if retried is not None:
                    retried[0] += 1
                await asyncio.sleep(float(resp.headers.get("Retry-After", "1")))
                continue
            if resp.status >= 300:
                raise RuntimeError(f"POST {url}: {resp.status} {data}")
            return data


async def client_load(spec: dict[str, Any]) -> dict[str, Any]:
    """One client process: create ``count`` WorkflowRuns (and, with ``patch``, patch each
    one's status and metadata once), ``concurrency`` requests at a time."""
    url, token = spec["url"], spec["token"]
    retried = [0]
    semaphore = asyncio.Semaphore(spec["concurrency"])
    connector = aiohttp.TCPConnector(limit=spec["concurrency"])
    names = [f"{spec['prefix']}{i:05d}" for i in range(spec["first"],
                                                       spec["first"] + spec["count"])]
    began = time.perf_counter()
    async with aiohttp.ClientSession(connector=connector) as http:
        async def create(name: str) -> None:
            async with semaphore:
                await post(http, url + RUNS_PATH, run_body(name), token, retried)

        async def patch(name: str) -> None:
            headers = {"Authorization": f"Bearer {token}",
                       "Content-Type": "application/merge-patch+json"}
            async with semaphore:
                async with http.patch(f"{url}{RUNS_PATH}/{name}/status", headers=headers,
                                      json={"status": {"phase": "Pending"}}) as resp:
                    await resp.read()
                async with http.patch(f"{url}{RUNS_PATH}/{name}", headers=headers,
                                      json={"metadata": {"labels": {"seen": "1"}}}) as resp:
                    await resp.read()
        await asyncio.gather(*(create(n) for n in names))
        created = time.perf_counter() - began
        patched = 0.0
        if spec.get("patch"):
            began = time.perf_counter()
            await asyncio.gather(*(patch(n) for n in names))
            patched = time.perf_counter() - began
    return {"created_in_s": created, "patched_in_s": patched, "retried": retried[0]}


async def watch_load(spec: dict[str, Any]) -> dict[str, Any]:
    """A watcher process: read the stream until ``expect`` events came."""
    seen = 0
    began = time.perf_counter()
    timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
    async with aiohttp.ClientSession(timeout=timeout) as http, http.get(
            spec["url"] + RUNS_PATH, params={"watch": "true"},
            headers={"Authorization": f"Bearer {spec['token']}"}) as resp:
        print("watching", flush=True)
        async for _line in resp.content:
            seen += 1
            if seen >= spec["expect"]:
                break
    return {"events": seen, "in_s": time.perf_counter() - began}


async def _client(mode: str, spec: dict[str, Any]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, __file__, f"--{mode}", json.dumps(spec), cwd=str(REPO),
        stdout=asyncio.subprocess.PIPE)


async def _result(proc: asyncio.subprocess.Process) -> dict[str, Any]:
    out, _ = await proc.communicate()
    assert proc.returncode == 0, f"a client process failed ({proc.returncode})"
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return result


async def create_from_processes(url: str, token: str, prefix: str, count: int,
                                processes: int, *, patch: bool = False,
                                concurrency: int = 16) -> dict[str, Any]:
    """``count`` WorkflowRuns created by ``processes`` client processes at once."""
    share = -(-count // processes)
    procs = [await _client("_client", {
        "url": url, "token": token, "prefix": prefix, "first": i * share,
        "count": min(share, count - i * share), "concurrency": concurrency, "patch": patch})
        for i in range(processes) if i * share < count]
    results = [await _result(p) for p in procs]
    return {"created_in_s": max(r["created_in_s"] for r in results),
            "patched_in_s": max(r["patched_in_s"] for r in results),
            "retried": sum(r["retried"] for r in results)}


async def ceiling(args: argparse.Namespace) -> dict[str, Any]:
    """The emulator alone: creates, then two patches each, with a watcher reading."""
    count = args.resources
    async with BenchEmulator() as api, kmock.Server(api):
        api.declare_kenning()
        api.tokens = {"t"}
        watcher = await _client("_watch", {"url": str(api.url), "token": "t",
                                           "expect": 3 * count})
        assert watcher.stdout is not None
        await watcher.stdout.readline()  # "watching"
        cpu0 = cpu_seconds(os.getpid())
        began = time.perf_counter()
        loads = await create_from_processes(str(api.url), "t", "ceil-", count, args.creators,
                                            patch=True)
        watched = await _result(watcher)
        took = time.perf_counter() - began
        cpu = cpu_seconds(os.getpid()) - cpu0
    return {"objects": count, "client_processes": args.creators,
            "creates_per_s": round(count / loads["created_in_s"]),
            "patches_per_s": round(2 * count / loads["patched_in_s"]),
            "watch_events": watched["events"],
            "all_in_s": round(took, 1), "emulator_cpu_s": round(cpu, 1),
            "emulator_cpu_ms_per_object": round(cpu * 1000 / count, 2),
            "a_backlog_needs_at_least_s": round(loads["created_in_s"] + loads["patched_in_s"],
                                                1)}


def _owner(frames: list[str]) -> str:
    """Which task a sampled stack belongs to: the first frame the event loop called."""
    for i, frame in enumerate(frames):
        if frame.startswith("Handle._run (asyncio/events.py"):
            for inner in frames[i + 1:]:
                if not inner.startswith(("Task.", "_run (", "Future.", "_", "wrapper (")):
                    return re.sub(r" \((.*?):\d+\)", r" (\1)", inner)
            break
    if any("select (selectors.py" in f or "_run_once (asyncio" in f for f in frames):
        return "event loop (select, scheduling)"
    return "outside the loop"


def _package(frame: str) -> str:
    path = frame.rsplit("(", 1)[-1].rstrip(")")
    top = path.split("/", 1)[0]
    return {"json": "json", "asyncio": "asyncio"}.get(top, top.split(":")[0])


def breakdown(raw: Path, top: int = 25) -> dict[str, Any]:
    """Where a py-spy raw profile spent its samples: by the task the event loop ran (the
    first frame it called), and by the package of the innermost frame (self time)."""
    by_owner: Counter[str] = Counter()
    by_leaf: Counter[str] = Counter()
    by_function: Counter[str] = Counter()
    total = 0
    if not raw.exists():
        return {"error": f"no profile written to {raw}"}
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        total += n
        by_owner[_owner(frames)] += n
        by_leaf[_package(frames[-1])] += n
        seen = set()
        for frame in frames:
            name = re.sub(r":\d+\)$", ")", frame)
            if name not in seen:
                seen.add(name)
                by_function[name] += n

    def share(counter: Counter[str]) -> dict[str, float]:
        return {k: round(100 * v / total, 1) for k, v in counter.most_common(top)}
    return {"samples": total, "raw": str(raw), "by_task_pct": share(by_owner),
            "self_by_package_pct": share(by_leaf), "inclusive_by_function_pct":
            share(by_function)}


def writes_per_run(writes: Counter[tuple[str, str, str]], names: list[str],
                   answered: Counter[int]) -> dict[str, float]:
    """What the emulator served per run: writes of the resource (its create aside), Events,
    and refusals."""
    wanted = set(names)
    out: Counter[str] = Counter()
    for (plural, name, what), n in writes.items():
        if plural == "workflowruns" and name in wanted and what != "create":
            out[what] += n
        elif plural == "events":
            out["event"] += n
    runs = len(names)
    result = {k: round(v / runs, 2) for k, v in sorted(out.items())}
    result["total"] = round(sum(out.values()) / runs, 2)
    result["refused_409_422_per_run"] = round((answered[409] + answered[422]) / runs, 3)
    return result


def per_run(calls: Counter[str], runs: int, *, creates: int) -> dict[str, float]:
    """The operator's API calls per run (the bench's own creates taken out)."""
    calls = Counter(calls)
    calls["create workflowruns"] -= creates
    return {key: round(value / runs, 2) for key, value in sorted(calls.items())
            if value > 0 and not key.startswith(("watch", "list"))}


async def one(args: argparse.Namespace, which: str) -> dict[str, Any]:
    """Every phase against one operator (``kenning`` or ``bare-kopf``) on a fresh emulator."""
    global RECORDER
    RECORDER = Recorder()
    server: PgServer | None = None
    dsn = args.database
    kenning = which == "kenning"
    if dsn is None and kenning:
        server = PgServer(durable=args.durable)
        server.start()
        dsn = server.dsn(server.create_database())
    workdir = Path(tempfile.mkdtemp(prefix="kenning-opbench-"))
    store: Store | None = None
    try:
        async with BenchEmulator() as api, kmock.Server(api):
            api.declare_kenning()
            api.latency = args.latency
            if kenning:
                store = open_store(dsn)
                await store.open()
            bench = Bench(args, which, api, store, dsn, workdir)
            unsubscribe = store.subscribe(bench._on_note) if store is not None else None
            try:
                async with aiohttp.ClientSession() as http:
                    bench.http = http
                    await bench.start_operator()
                    # A pool that serves the workflow (no Deployment controller: no pods).
                    await bench.post(POOLS_PATH, {
                        "apiVersion": "kenning.dev/v1alpha1", "kind": "WorkerPool",
                        "metadata": {"name": "bench", "namespace": "default"},
                        "spec": {"image": "example/bench:1", "module": "bench",
                                 "workflows": ["bench"], "maxReplicas": 1}})
                    await bench.wait_quiet(1.0)
                    for _ in range(10):  # warm-up
                        await bench.post(RUNS_PATH, run_body(f"warm-{_}"))
                    await bench.wait_quiet(1.0)
                    names, run_ids = await bench.create_to_started(args.creates)
                    if kenning:
                        await bench.completion_to_completed(names, run_ids)
                        await bench.recovery()
                    if args.resources:
                        await bench.backlog(args.resources)
                        await bench.restart()
                    bench.results["operator_log_tail"] = \
                        bench.log_path.read_text()[-1500:].splitlines()[-8:]
            finally:
                if unsubscribe is not None:
                    unsubscribe()
                await bench.stop_operator()
                if store is not None:
                    await store.close()
            return bench.results
    finally:
        if server is not None:
            server.stop()


SIDE_BY_SIDE = (
    ("created -> status.phase, paced, p50 ms", ("create_to_phase", "p50_ms")),
    ("created -> status.phase, paced, p95 ms", ("create_to_phase", "p95_ms")),
    ("writes per run, paced (create aside)", ("writes_per_run_paced", "total")),
    ("backlog: all with a phase, s", ("backlog", "all_pending_in_s")),
    ("backlog: runs phased per s", ("backlog", "runs_per_s")),
    ("backlog: operator CPU per run, ms", ("backlog", "operator_cpu_ms_per_run")),
    ("backlog: emulator CPU, s", ("backlog", "emulator_cpu_s_until_all_pending")),
    ("RSS holding the backlog, MB", ("backlog", "rss_mb")),
    ("writes after a SIGTERM restart", ("restart", "sigterm", "status_patches")),
    ("SIGTERM -> exit, s", ("restart", "sigterm", "exited_after_sigterm_in_s")),
)


def side_by_side(kopf: dict[str, Any], ours: dict[str, Any]) -> list[dict[str, Any]]:
    """The figures both operators have, with Kenning's as a ratio of bare kopf's."""
    def dig(results: dict[str, Any], path: tuple[str, ...]) -> Any:
        for key in path:
            results = results.get(key) if isinstance(results, dict) else None  # type: ignore[assignment]
        return results
    rows = []
    for label, path in SIDE_BY_SIDE:
        a, b = dig(kopf, path), dig(ours, path)
        ratio = round(b / a, 2) if isinstance(a, (int, float)) and isinstance(
            b, (int, float)) and a else None
        rows.append({"figure": label, "bare_kopf": a, "kenning": b,
                     "kenning_over_bare_kopf": ratio})
    return rows


async def main(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {}
    if args.ceiling:
        results["emulator_ceiling"] = await ceiling(args)
    if args.operator in ("bare-kopf", "both"):
        results["bare_kopf"] = await one(args, "bare-kopf")
    if args.operator in ("kenning", "both"):
        results["kenning"] = await one(args, "kenning")
    if args.operator == "both":
        results["side_by_side"] = side_by_side(results["bare_kopf"], results["kenning"])
    return results


def cli() -> None:
    if len(sys.argv) == 3 and sys.argv[1] in ("--_client", "--_watch"):
        spec = json.loads(sys.argv[2])
        load = client_load if sys.argv[1] == "--_client" else watch_load
        print(json.dumps(asyncio.run(load(spec))))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--operator", choices=("kenning", "bare-kopf", "both", "none"),
                        default="both", help="which operator(s) to measure")
    parser.add_argument("--database", help="a postgresql:// URL (default: a throwaway server)")
    parser.add_argument("--durable", action="store_true",
                        help="throwaway server with fsync on (default: off)")
    parser.add_argument("--creates", type=int, default=200)
    parser.add_argument("--resources", type=int, default=10_000)
    parser.add_argument("--creators", type=int, default=2,
                        help="client processes that create the backlog")
    parser.add_argument("--ceiling", action="store_true",
                        help="first measure the emulator alone (creates and patches)")
    parser.add_argument("--gap", type=float, default=0.02,
                        help="idle seconds between measured operations")
    parser.add_argument("--settle", type=float, default=5.0,
                        help="seconds to wait before reading the RSS with all resources")
    parser.add_argument("--bound", type=float, default=900.0,
                        help="upper bound in seconds of each bulk phase")
    parser.add_argument("--backlog", choices=("live", "stopped"), default="live",
                        help="create the --resources while the operator runs (live), or "
                             "while it is stopped and then start it (stopped)")
    parser.add_argument("--rate-limit", type=float, default=50.0,
                        help="requests/s of the emulator during the 429 phase")
    parser.add_argument("--latency", type=float, default=0.0,
                        help="seconds the emulator adds to each request")
    parser.add_argument("--out", help="also write the results as JSON here")
    parser.add_argument("--profile", metavar="PREFIX",
                        help="record py-spy profiles of the operator and of the emulator "
                             "during the backlog (PREFIX-<operator>-operator.txt, "
                             "PREFIX-<operator>-emulator.txt) and report where their CPU went")
    args = parser.parse_args()
    results = asyncio.run(main(args))
    results["machine"] = {"python": platform.python_version(), "cpus": os.cpu_count(),
                          "load_average_at_end": os.getloadavg(),
                          "api_server": "kmock emulator (not a real kube-apiserver)"}
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    cli()
