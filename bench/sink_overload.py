"""The sink under twice its sustainable rate: answers, latency and memory (RSS) over time.

    .venv/bin/python bench/sink_overload.py [--seconds 60] [--db postgresql://...]

Starts ``kenning sink`` as its own process (on a throwaway PostgreSQL server from the
machine's binaries unless ``--db`` is given), measures the rate it sustains with closed-loop
clients (``--calibrate`` seconds, ``--clients`` connections, one binary-mode event per POST),
then offers twice that rate open-loop for ``--seconds``: requests are sent on schedule
whatever the answers, so that the sink must shed what it cannot take (on up to
``--max-connections`` connections at once; a request due while all are busy is counted as
not sent rather than queued in the client). Prints one JSON line:
the answers by status, how many carried ``Retry-After``, latency percentiles, and the sink's
RSS sampled every second. CI does not run it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "sdk"), str(ROOT)]

from tests.conftest import free_port  # noqa: E402
from tests.pg_server import PgServer  # noqa: E402

ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "sdk"), str(ROOT)])}


def rss_kib(pid: int) -> int:
    """Resident memory of a process."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class Load:
    """Posts events and tallies the answers."""

    def __init__(self, url: str, http: aiohttp.ClientSession) -> None:
        self.url = url
        self.http = http
        self.statuses: Counter[int] = Counter()
        self.retry_after = 0
        self.latencies: list[float] = []

    async def post(self) -> int:
        """One binary-mode event; returns the status (0: no answer)."""
        headers = {"ce-specversion": "1.0", "ce-type": "bench.overload", "ce-source": "/bench",
                   "ce-id": str(uuid.uuid4()), "content-type": "application/json"}
        started = time.perf_counter()
        try:
            async with self.http.post(self.url, data=b'{"n": 1}', headers=headers) as resp:
                await resp.read()
                status = resp.status
                if "Retry-After" in resp.headers:
                    self.retry_after += 1
        except (aiohttp.ClientError, TimeoutError):
            status = 0
        self.latencies.append(time.perf_counter() - started)
        self.statuses[status] += 1
        return status


async def calibrate(url: str, clients: int, seconds: float) -> float:
    """Accepted events per second with ``clients`` closed-loop clients."""
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector) as http:
        load = Load(url, http)
        end = time.monotonic() + seconds

        async def client() -> None:
            while time.monotonic() < end:
                await load.post()

        started = time.monotonic()
        await asyncio.gather(*(client() for _ in range(clients)))
        return load.statuses[202] / (time.monotonic() - started)


async def overload(url: str, pid: int, rate: float, seconds: float,
                   max_connections: int) -> dict[str, Any]:
    """Offer ``rate`` requests/s open-loop for ``seconds``; sample the sink's RSS."""
    connector = aiohttp.TCPConnector(limit=max_connections)
    timeout = aiohttp.ClientTimeout(total=30)
    rss: list[int] = [rss_kib(pid)]
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
        load = Load(url, http)
        tasks: set[asyncio.Task[int]] = set()
        started = time.monotonic()
        next_sample = started + 1
        sent = scheduled = not_sent = 0
        while (now := time.monotonic()) < started + seconds:
            due = int((now - started) * rate) - scheduled
            for _ in range(max(0, due)):
                # every connection busy: the client does not queue (that would measure the
                # client's backlog, not the sink); the request counts as not sent
                if len(tasks) >= max_connections:
                    not_sent += 1
                    continue
                task = asyncio.create_task(load.post())
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                sent += 1
            scheduled += max(0, due)
            if now >= next_sample:
                rss.append(rss_kib(pid))
                next_sample += 1
            await asyncio.sleep(0.002)
        offered_s = time.monotonic() - started
        await asyncio.gather(*tasks)
        rss.append(rss_kib(pid))
    latencies = sorted(load.latencies)

    def pct(p: float) -> float:
        return round(latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000, 1)

    return {"scheduled_per_s": round(scheduled / offered_s, 1),
            "offered_per_s": round(sent / offered_s, 1), "sent": sent,
            "not_sent_all_connections_busy": not_sent,
            "answers": {str(k): v for k, v in sorted(load.statuses.items())},
            "accepted_per_s": round(load.statuses[202] / offered_s, 1),
            "with_retry_after": load.retry_after,
            "latency_ms": {"p50": pct(0.5), "p99": pct(0.99), "max": pct(1.0)},
            "rss_kib": {"start": rss[0], "max": max(rss), "end": rss[-1],
                        "median": int(statistics.median(rss))}}


async def drive(url: str, pid: int, args: argparse.Namespace) -> dict[str, Any]:
    """Wait for the sink, calibrate, overload; the result."""
    async with aiohttp.ClientSession() as http:
        for _ in range(300):
            try:
                async with http.get(f"{url}readyz") as resp:
                    if resp.status == 200:
                        break
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    sustainable = await calibrate(url, args.clients, args.calibrate)
    if sustainable <= 0:
        raise SystemExit("the sink accepted nothing while calibrating")
    result = await overload(url, pid, 2 * sustainable, args.seconds, args.max_connections)
    result.update({"benchmark": "sink_overload", "seconds": args.seconds,
                   "sustainable_per_s": round(sustainable, 1)})
    return result


def main() -> None:
    """Run the benchmark and print its JSON line."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--calibrate", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--max-connections", type=int, default=1024)
    parser.add_argument("--db", default=None, help="postgresql:// URL (default: a new server)")
    args = parser.parse_args()
    server = None
    if args.db is None:
        server = PgServer()
        server.start()
        args.db = server.dsn("postgres")
    port = free_port()
    sink = subprocess.Popen([sys.executable, "-m", "kenning.runtime.cli", "--log-level",
                             "warning", "sink", "--database", args.db, "--port", str(port)],
                            env=ENV)
    try:
        result = asyncio.run(drive(f"http://127.0.0.1:{port}/", sink.pid, args))
        result["sink_alive"] = sink.poll() is None
        print(json.dumps(result))
    finally:
        sink.terminate()
        sink.wait(30)
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()
