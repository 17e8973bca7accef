"""A throwaway PostgreSQL server for tests, started from the machine's binaries.

Use from any test folder's ``conftest.py``::

    from tests.pg_server import pg_dsn, pg_server  # noqa: F401  (fixtures)

``pg_server`` (session scope) is one server for the whole test session, shared by every
folder that imports it; ``pg_dsn`` is an empty database per test (a ``postgresql://`` URL;
databases are recycled: emptied after each test, which is ten times faster than creating
one). The server runs as the ``postgres`` user when the tests run as root (``initdb``
refuses root), in a temporary directory, on 127.0.0.1 with a free port and ``trust``
authentication, and is stopped at the end of the session even when tests fail (and by a
small watchdog process if the test process itself is killed). ``KENNING_PG_BIN`` overrides
the binary directory (default ``/usr/lib/postgresql/15/bin``).
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

PG_BIN = Path(os.environ.get("KENNING_PG_BIN", "/usr/lib/postgresql/15/bin"))
PASSWORD_USER = "kenning_pw"
PASSWORD = "kenning-secret"

_FAST_SETTINGS = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
_BASE_SETTINGS = {"max_connections": "300", "shared_buffers": "128MB", "log_min_messages": "fatal"}


_RESET_DATABASE = """
    SELECT pg_terminate_backend(pid) FROM pg_stat_activity
        WHERE datname = current_database() AND pid <> pg_backend_pid();
    DROP SCHEMA public CASCADE;
    CREATE SCHEMA public AUTHORIZATION pg_database_owner;
    GRANT USAGE ON SCHEMA public TO PUBLIC;
"""


# Stops the server if the test process dies without doing it (SIGKILL, a cancelled CI job):
# polls whether its parent is still the test process, then runs the stop command.
_WATCHDOG = """
import os, shutil, subprocess, sys, time
parent, base, stop = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
while os.getppid() == parent and os.path.exists(base):
    time.sleep(0.5)
if os.path.exists(base):
    subprocess.run(stop, timeout=60, check=False, capture_output=True)
    shutil.rmtree(base, ignore_errors=True)
"""


class PgServerError(RuntimeError):
    """The test server could not be started or driven."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PgServer:
    """One PostgreSQL server in a temporary directory; ``start()`` then ``stop()``.

    ``durable=False`` (the default for tests) turns fsync off: fast, and enough for tests.
    """

    def __init__(self, bin_dir: Path = PG_BIN, *, durable: bool = False) -> None:
        self.bin_dir = bin_dir
        self.durable = durable
        self.host = "127.0.0.1"
        self.port = 0
        self.user = "postgres"
        self.base: Path | None = None
        self._names = itertools.count(1)
        self._free: list[str] = []
        self._free_lock = threading.Lock()
        self._as_postgres = os.geteuid() == 0
        self._watchdog: subprocess.Popen[bytes] | None = None

    # -- lifecycle ----------------------------------------------------------------------
    @property
    def data_dir(self) -> Path:
        """The cluster's data directory."""
        assert self.base is not None, "server not started"
        return self.base / "data"

    def start(self) -> None:
        """initdb a new cluster and start it; raise ``PgServerError`` with the log on failure."""
        if not (self.bin_dir / "initdb").exists():
            raise PgServerError(
                f"PostgreSQL binaries not found in {self.bin_dir}: install PostgreSQL 15 "
                "(CI has it) or point KENNING_PG_BIN at its bin directory")
        self.base = Path(tempfile.mkdtemp(prefix="kenning-pg-"))
        if self._as_postgres:
            shutil.chown(self.base, "postgres", "postgres")
        self._run("initdb", "-D", str(self.data_dir), "--auth=trust", "--username=postgres",
                  "--encoding=UTF8", "--locale=C", "--no-sync")
        hba = self.data_dir / "pg_hba.conf"
        # One role that needs a password, first so it wins over the trust lines.
        hba.write_text(f"host all {PASSWORD_USER} 127.0.0.1/32 scram-sha-256\n"
                       + hba.read_text())
        for attempt in range(3):
            self.port = _free_port()
            try:
                self._pg_ctl_start()
                break
            except PgServerError:
                if attempt == 2:
                    raise
        self.psql(f"CREATE ROLE {PASSWORD_USER} LOGIN PASSWORD '{PASSWORD}'")
        stop = self._command("pg_ctl", "-D", str(self.data_dir), "-m", "immediate", "stop")
        self._watchdog = subprocess.Popen(
            [sys.executable, "-c", _WATCHDOG, str(os.getpid()), str(self.base), *stop],
            start_new_session=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)

    def _pg_ctl_start(self) -> None:
        settings = dict(_BASE_SETTINGS, port=str(self.port), listen_addresses=self.host,
                        unix_socket_directories=str(self.base))
        if not self.durable:
            settings.update(_FAST_SETTINGS)
        options = " ".join(f"-c {key}={value}" for key, value in settings.items())
        self._run("pg_ctl", "-D", str(self.data_dir), "-l", str(self.log_file), "-w",
                  "-t", "30", "-o", options, "start")

    @property
    def log_file(self) -> Path:
        """The server's log."""
        assert self.base is not None
        return self.base / "server.log"

    def pg_ctl_stop(self, mode: str = "fast") -> None:
        """Stop the server but keep its data (for tests that restart it)."""
        self._run("pg_ctl", "-D", str(self.data_dir), "-m", mode, "-w", "-t", "30", "stop")

    def pg_ctl_start(self) -> None:
        """Start a stopped server again on the same port."""
        self._pg_ctl_start()

    def server_pids(self) -> list[int]:
        """The postmaster's pid, then those of its children (backends, background workers)."""
        postmaster = int((self.data_dir / "postmaster.pid").read_text().split()[0])
        children = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                fields = stat.read_text().rsplit(")", 1)[1].split()
                if int(fields[1]) == postmaster:
                    children.append(int(stat.parent.name))
        return [postmaster, *children]

    def freeze(self) -> list[int]:
        """SIGSTOP the postmaster and every backend: connections stay open, nothing answers.
        Returns the stopped pids for ``thaw``."""
        pids = self.server_pids()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
        return pids

    def thaw(self, pids: list[int]) -> None:
        """SIGCONT what ``freeze`` stopped."""
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)

    def stop(self) -> None:
        """Stop the server and delete its directory; safe to call twice."""
        if self.base is None:
            return
        base, pid_file = self.base, self.data_dir / "postmaster.pid"
        if pid_file.exists():
            try:
                self.pg_ctl_stop("fast")
            except PgServerError:
                with contextlib.suppress(PgServerError):
                    self.pg_ctl_stop("immediate")
            if pid_file.exists():  # last resort: the postmaster's own pid
                with contextlib.suppress(OSError, ValueError):
                    os.kill(int(pid_file.read_text().split()[0]), signal.SIGKILL)
        shutil.rmtree(base, ignore_errors=True)
        self.base = None
        if self._watchdog is not None:
            self._watchdog.kill()
            self._watchdog.wait()
            self._watchdog = None

    # -- helpers ------------------------------------------------------------------------
    def _command(self, tool: str, *args: str) -> list[str]:
        cmd = [str(self.bin_dir / tool), *args]
        return ["runuser", "-u", "postgres", "--", *cmd] if self._as_postgres else cmd

    def _run(self, tool: str, *args: str) -> str:
        cmd = self._command(tool, *args)
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False,
                              cwd=self.base)
        if done.returncode != 0:
            log = ""
            with contextlib.suppress(OSError, AssertionError):
                log = self.log_file.read_text()[-2000:]
            raise PgServerError(f"{tool} failed ({done.returncode}): {done.stderr.strip()}\n{log}")
        return done.stdout

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run SQL as the superuser; return its unaligned output."""
        done = subprocess.run(
            [str(self.bin_dir / "psql"), "-h", self.host, "-p", str(self.port), "-U", self.user,
             "-d", database, "-v", "ON_ERROR_STOP=1", "-qAtc", sql],
            capture_output=True, text=True, timeout=60, check=False)
        if done.returncode != 0:
            raise PgServerError(f"psql failed: {done.stderr.strip()}")
        return done.stdout

    def dsn(self, database: str = "postgres", user: str | None = None,
            password: str | None = None) -> str:
        """A ``postgresql://`` URL for ``database`` on this server."""
        auth = user or self.user
        if password is not None:
            auth += f":{password}"
        return f"postgresql://{auth}@{self.host}:{self.port}/{database}"

    def create_database(self) -> str:
        """Create a fresh empty database; return its name."""
        name = f"kenning_test_{os.getpid()}_{next(self._names)}"
        self.psql(f"CREATE DATABASE {name} TEMPLATE template0")
        return name

    def drop_database(self, name: str) -> None:
        """Drop a database, disconnecting whoever still uses it."""
        self.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def acquire_database(self) -> str:
        """An empty database: a recycled one if there is one (fast), else a new one."""
        with self._free_lock:
            if self._free:
                return self._free.pop()
        return self.create_database()

    def release_database(self, name: str) -> None:
        """Empty a database acquired with ``acquire_database`` for the next test.

        Creating a database takes ~250 ms, emptying one ~20 ms: connections left behind are
        terminated and the ``public`` schema is dropped with everything in it."""
        try:
            self.psql(_RESET_DATABASE, name)
        except PgServerError:
            with contextlib.suppress(PgServerError):
                self.drop_database(name)
            return
        with self._free_lock:
            self._free.append(name)


_shared_lock = threading.Lock()
_shared: PgServer | None = None


def shared_server() -> PgServer:
    """The session's server, started on first use and stopped when the process exits."""
    global _shared
    with _shared_lock:
        if _shared is None:
            server = PgServer()
            atexit.register(server.stop)
            try:
                server.start()
            except BaseException:
                server.stop()
                raise
            _shared = server
        return _shared


def stop_shared_server() -> None:
    """Stop the shared server (at the end of the session)."""
    global _shared
    with _shared_lock:
        if _shared is not None:
            _shared.stop()
            _shared = None


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """One PostgreSQL server for the whole session; fails the test if it cannot start."""
    try:
        server = shared_server()
    except PgServerError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield server
    finally:
        stop_shared_server()


@pytest.fixture
def pg_dsn(pg_server: PgServer) -> Iterator[str]:
    """An empty database on the session's server (emptied again after the test)."""
    name = pg_server.acquire_database()
    try:
        yield pg_server.dsn(name)
    finally:
        pg_server.release_database(name)
