"""A property-based fuzz of a real ``kenning sink`` process over real HTTP: malformed bodies,
headers, paths and nesting never get a 500, the process never dies, and its memory stays
bounded. ``KENNING_FUZZ_EXAMPLES`` sets how many requests (default 400, for CI)."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import free_port

pytestmark = pytest.mark.timeout(300)

EXAMPLES = int(os.environ.get("KENNING_FUZZ_EXAMPLES", "400"))
ROOT = Path(__file__).parents[2]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "sdk"), str(ROOT)])}


@dataclass
class SinkProcess:
    """The sink under test."""

    popen: subprocess.Popen[bytes]
    port: int

    def rss_kib(self) -> int:
        """Resident memory of the process."""
        for line in Path(f"/proc/{self.popen.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")


@pytest.fixture(scope="module")
def sink_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SinkProcess]:
    """``kenning sink`` on a SQLite file, on a free port."""
    base = tmp_path_factory.mktemp("fuzz")
    port = free_port()
    log = (base / "sink.log").open("wb")
    popen = subprocess.Popen(
        [sys.executable, "-m", "kenning.runtime.cli", "sink", "--database",
         str(base / "fuzz.db"), "--port", str(port)], env=ENV, stdout=log,
        stderr=subprocess.STDOUT)
    proc = SinkProcess(popen, port)
    deadline = time.monotonic() + 30
    while True:
        assert popen.poll() is None, (base / "sink.log").read_text()
        try:
            if request(proc, "GET", "/readyz", {}, b"")[0] == 200:
                break
        except OSError:
            pass
        assert time.monotonic() < deadline, "the sink did not start"
        time.sleep(0.1)
    yield proc
    popen.terminate()
    popen.wait(10)
    log.close()


def request(proc: SinkProcess, method: str, path: str, headers: dict[str, str],
            body: bytes) -> tuple[int, str, bytes]:
    """One request on its own connection: (status, content type, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", proc.port, timeout=30)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        for name, value in headers.items():
            conn.putheader(name, value)
        conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        response = conn.getresponse()
        return response.status, response.getheader("Content-Type") or "", response.read()
    finally:
        conn.close()


# -- what the fuzzer sends ------------------------------------------------------------------
_TOKEN = st.text("abcdefghijklmnopqrstuvwxyz0123456789-_.!#$%&'*+^`|~", min_size=0, max_size=24)
_HEADER_VALUE = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF,
                                      blacklist_characters="\x7f"), max_size=60)
_CONTENT_TYPES = st.sampled_from([
    "application/cloudevents+json", "application/cloudevents-batch+json", "application/json",
    "application/json; charset=utf-8", "text/plain", "application/octet-stream",
    "application/cloudevents+xml", "", "application/cloudevents+json; charset=latin-1",
]) | _HEADER_VALUE
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20)
_ATTRIBUTE = st.sampled_from(["id", "source", "type", "specversion", "subject", "time",
                              "datacontenttype", "dataschema", "data", "data_base64"]) | \
    st.text(max_size=25)


@st.composite
def _event_like(draw: st.DrawFn) -> Any:
    event: dict[str, Any] = {"specversion": "1.0", "id": draw(st.text(max_size=8)),
                             "source": "/fuzz", "type": "fuzz"}
    for _ in range(draw(st.integers(0, 4))):
        event[draw(_ATTRIBUTE)] = draw(_JSON)
    return event


def _deep(depth: int, opener: str) -> bytes:
    closer = "]" if opener == "[" else "}"
    inner = '"k":' if opener == "{" else ""
    return ((opener + inner) * depth + "1" + closer * depth).encode()


_BODIES = st.one_of(
    st.binary(max_size=300),
    _JSON.map(lambda v: json.dumps(v).encode()),
    _event_like().map(lambda v: json.dumps(v).encode()),
    st.lists(_event_like(), max_size=5).map(lambda v: json.dumps(v).encode()),
    st.builds(_deep, st.integers(1, 50_000), st.sampled_from("[{")),
    st.builds(lambda d: b'{"specversion":"1.0","id":"x","source":"/s","type":"t","data":'
              + _deep(d, "[") + b"}", st.integers(1, 5_000)),
    st.text().map(lambda t: t.encode("utf-8", "surrogatepass")),
)
_PATHS = st.sampled_from(["/", "/namespaces/shop", "/namespaces/", "/namespaces/a/b",
                          "/namespaces/UPPER", "/healthz", "/readyz", "/metrics", "/nope",
                          "//", "/namespaces/%ZZ", "/namespaces/" + "a" * 70, "/?x=1"]) | \
    st.text("abcdefghijklmnopqrstuvwxyz0123456789/-_.~%?=&", max_size=40).map(
        lambda p: "/" + p)
_METHODS = st.sampled_from(["POST"] * 6 + ["GET", "PUT", "DELETE", "PATCH", "OPTIONS",
                                           "HEAD", "FOO"])


@st.composite
def _headers(draw: st.DrawFn) -> dict[str, str]:
    headers: dict[str, str] = {}
    if draw(st.booleans()):
        headers["Content-Type"] = draw(_CONTENT_TYPES)
    if draw(st.booleans()):
        headers.update({"ce-specversion": "1.0", "ce-id": draw(_HEADER_VALUE),
                        "ce-source": "/fuzz", "ce-type": "fuzz"})
    for _ in range(draw(st.integers(0, 4))):
        headers["ce-" + draw(_TOKEN)] = draw(_HEADER_VALUE)
    return headers


@settings(max_examples=EXAMPLES, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(method=_METHODS, path=_PATHS, headers=_headers(), body=_BODIES)
def test_no_request_gets_a_500_and_the_sink_lives_on(
    sink_process: SinkProcess, method: str, path: str, headers: dict[str, str], body: bytes
) -> None:
    status, content_type, answer = request(sink_process, method, path, headers, body)
    assert status < 500, (status, answer[:300])
    if status >= 400 and method != "HEAD" and content_type.startswith("application/json"):
        assert "error" in json.loads(answer)
    assert sink_process.popen.poll() is None, "the sink process died"


def test_memory_stays_bounded_under_the_fuzz(sink_process: SinkProcess) -> None:
    # Runs after the fuzz (same module): the process is alive and did not balloon.
    before = sink_process.rss_kib()
    deep = _deep(200_000, "[")
    for _ in range(200):
        status, _, _ = request(sink_process, "POST", "/", {
            "Content-Type": "application/cloudevents+json"}, deep)
        assert status == 400
    after = sink_process.rss_kib()
    assert sink_process.popen.poll() is None
    assert after < before + 50_000, f"RSS grew from {before} KiB to {after} KiB"
    assert after < 400_000, f"RSS {after} KiB"
