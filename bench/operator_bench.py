"""Operator latency and memory: ``kenning operator`` in its own process against kmock.

    .venv/bin/python bench/operator_bench.py                      # 200 creates, 10,000 resources
    .venv/bin/python bench/operator_bench.py --creates 50 --resources 1000   # a quick pass
    .venv/bin/python bench/operator_bench.py --database postgresql://...    # an existing server

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
(e) recovery: the bearer token rotated (the API server answers 401 until the operator reads
    the new one from its kubeconfig), and a rate limit answering 429 with ``Retry-After``
    while runs are created: how long until runs show their phase again, and the 401/429 seen.

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


class Bench:
    def __init__(self, args: argparse.Namespace, api: Emulator, store: Store, dsn: str,
                 workdir: Path) -> None:
        self.args = args
        self.api = api
        self.store = store
        self.dsn = dsn
        self.workdir = workdir
        self.http: aiohttp.ClientSession | None = None
        self.proc: asyncio.subprocess.Process | None = None
        self.runnable: dict[str, float] = {}
        self.waiters: dict[str, asyncio.Future[float]] = {}
        self.results: dict[str, Any] = {}
        self.token = "token-1"
        api.tokens = {self.token}

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
        while True:  # as kubectl: a 429 is retried after its Retry-After
            async with self.http.post(str(self.api.url) + path, json=body, headers={
                    "Authorization": f"Bearer {self.token}"}) as resp:
                data: dict[str, Any] = await resp.json()
                if resp.status == 429:
                    await asyncio.sleep(float(resp.headers.get("Retry-After", "1")))
                    continue
                if resp.status >= 300:
                    raise RuntimeError(f"POST {path}: {resp.status} {data}")
                return data

    async def start_operator(self, settle: float = 1.0) -> None:
        kubeconfig = self.workdir / "kubeconfig"
        kubeconfig.write_text(kubeconfig_text(str(self.api.url), self.token))
        probe = _free_port()
        env = {**os.environ, "KUBECONFIG": str(kubeconfig), "PYTHONUNBUFFERED": "1"}
        self.log_path = self.workdir / "operator.log"
        log = self.log_path.open("ab")
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "kenning.runtime.cli", "operator", "--database", self.dsn,
            "--probe-host", "127.0.0.1", "--probe-port", str(probe), env=env, cwd=str(REPO),
            stdout=log, stderr=log)
        assert self.http is not None
        deadline = time.monotonic() + 60
        while True:
            if self.proc.returncode is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the operator did not get ready; log: {self.log_path}\n"
                                   + self.log_path.read_text()[-3000:])
            with contextlib.suppress(aiohttp.ClientError):
                async with self.http.get(f"http://127.0.0.1:{probe}/readyz") as resp:
                    if resp.status == 200:
                        break
            await asyncio.sleep(0.1)
        await asyncio.sleep(settle)  # the watch streams subscribe just after their requests

    async def stop_operator(self, kill: bool = False) -> None:
        if self.proc is not None and self.proc.returncode is None:
            if kill:
                self.proc.kill()
                await self.proc.wait()
                return
            self.proc.terminate()
            try:
                async with asyncio.timeout(20):
                    await self.proc.wait()
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()

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
            names.append(name)
            run_ids.append(run_id)
            phased.append(await self.wait_phase(name, "Pending") - t0)
            await asyncio.sleep(self.args.gap)  # the operator idle again
        await self.wait_quiet(1.0)
        self.results["create_to_run_started"] = summary_ms(latencies)
        self.results["create_to_phase"] = summary_ms(phased)
        self.results["writes_per_run_paced"] = writes_per_run(
            self.api.writes - writes_before, names, self.api.answered - answered_before)
        self.results["create_to_run_started_parts"] = {
            "post_returned_p50_ms": summary_ms(posts)["p50_ms"],
            "operator_began_write_p50_ms": summary_ms(reacted)["p50_ms"]}
        return names, run_ids

    async def completion_to_completed(self, names: list[str], run_ids: list[str]) -> None:
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
            await self.stop_operator(kill=how == "sigkill")
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
        self.results["restart"] = out

    async def memory(self, resources: int) -> None:
        assert self.proc is not None
        await self.wait_quiet(2.0)
        baseline = rss_mb(self.proc.pid)
        calls_before = RECORDER.calls.copy()
        stopped = self.args.backlog == "stopped"
        if stopped:  # the backlog waits for an operator that is not running yet
            await self.stop_operator()
        started = time.perf_counter()
        semaphore = asyncio.Semaphore(32)

        mem_run_ids: list[str] = []

        async def create(i: int) -> None:
            async with semaphore:
                cr = await self.post(RUNS_PATH, run_body(f"mem-{i:05d}"))
                mem_run_ids.append(f"mem-{i:05d}-{cr['metadata']['uid'].replace('-', '')[:12]}")

        await asyncio.gather(*(create(i) for i in range(resources)))
        created = time.perf_counter() - started
        if stopped:
            started = time.perf_counter()
            await self.start_operator(settle=0.0)
        assert self.proc is not None
        cpu_before = cpu_seconds(self.proc.pid)
        deadline = time.perf_counter() + self.args.bound
        while sum(1 for (name, phase) in RECORDER.phase_at
                  if phase == "Pending" and name.startswith("mem-")) < resources:
            if time.perf_counter() > deadline:
                raise RuntimeError("not every resource got its Pending status in time")
            await asyncio.sleep(0.2)
        all_pending = time.perf_counter() - started
        cpu = cpu_seconds(self.proc.pid) - cpu_before
        started_in_store = max(self.runnable.get(r, float("inf")) for r in mem_run_ids) \
            - started
        await self.wait_quiet(3.0)
        runs_in_store = len(await self.store.list_runs(status=RunStatus.PENDING,
                                                       limit=resources * 2))
        await asyncio.sleep(self.args.settle)
        holding = rss_mb(self.proc.pid)
        self.results["memory"] = {
            "resources": resources, "pending_runs_in_store": runs_in_store,
            "baseline_rss_mb": round(baseline["VmRSS"], 1),
            "rss_mb": round(holding["VmRSS"], 1), "peak_rss_mb": round(holding["VmHWM"], 1),
            "posted_in_s": round(created, 1), "all_pending_in_s": round(all_pending, 1),
            "all_started_in_store_in_s": round(started_in_store, 1),
            "backlog": self.args.backlog,
            "operator_cpu_s_until_all_pending": round(cpu, 1),
            "operator_cpu_ms_per_run": round(cpu * 1000 / resources, 2)}
        if not stopped:
            self.results["memory"]["pending_after_last_post_s"] = round(all_pending - created, 1)
        self.results["calls_per_run_creating"] = per_run(RECORDER.calls - calls_before,
                                                         resources, creates=resources)

        # Every run finishes at once: the operator falls behind and coalesces.
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


async def main(args: argparse.Namespace) -> dict[str, Any]:
    server: PgServer | None = None
    dsn = args.database
    if dsn is None:
        server = PgServer(durable=args.durable)
        server.start()
        dsn = server.dsn(server.create_database())
    workdir = Path(tempfile.mkdtemp(prefix="kenning-opbench-"))
    try:
        async with BenchEmulator() as api, kmock.Server(api):
            api.declare_kenning()
            api.latency = args.latency
            store = open_store(dsn)
            await store.open()
            bench = Bench(args, api, store, dsn, workdir)
            unsubscribe = store.subscribe(bench._on_note)
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
                    await bench.completion_to_completed(names, run_ids)
                    await bench.recovery()
                    if args.resources:
                        await bench.memory(args.resources)
                        await bench.restart()
                    bench.results["operator_log_tail"] = \
                        bench.log_path.read_text()[-1500:].splitlines()[-8:]
            finally:
                unsubscribe()
                await bench.stop_operator()
                await store.close()
            return bench.results
    finally:
        if server is not None:
            server.stop()


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database", help="a postgresql:// URL (default: a throwaway server)")
    parser.add_argument("--durable", action="store_true",
                        help="throwaway server with fsync on (default: off)")
    parser.add_argument("--creates", type=int, default=200)
    parser.add_argument("--resources", type=int, default=10_000)
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
    args = parser.parse_args()
    results = asyncio.run(main(args))
    results["machine"] = {"python": platform.python_version(), "cpus": os.cpu_count(),
                          "api_server": "kmock emulator (not a real kube-apiserver)"}
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    cli()
