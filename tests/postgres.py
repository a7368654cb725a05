"""One throwaway PostgreSQL server per test session (fixture `postgres_url`), for the ledger tests.

It runs the Debian server binaries (/usr/lib/postgresql/<version>/bin, `make postgres-server`)
on a data directory of its own in /tmp, listening on 127.0.0.1 only, on a free port, with trust
authentication and the durability settings of a scratch instance (fsync off). PostgreSQL refuses
to run as root: when the tests run as root, initdb and pg_ctl run as the `postgres` system user.
Teardown stops the server (immediate mode: nothing in it is kept) and checks that its postmaster
is gone before deleting the directory.
"""

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg
import pytest

from tests.processes import alive, free_port

PG_ROOT = Path("/usr/lib/postgresql")
DATABASE = "ledger_test"
START_TIMEOUT_S = 60
STOP_TIMEOUT_S = 30

# A scratch server: nothing in it has to survive a crash, and it must start and answer fast.
SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "fsync": "off",
    # A commit is acknowledged once its WAL is handed to the kernel (fsync stays off): a server
    # killed mid-test (tests/cluster/test_tenancy_failures.py) keeps every acknowledged commit.
    "synchronous_commit": "on",
    "full_page_writes": "off",
    "max_connections": "200",  # the concurrency tests hold up to 2 stores x 16 pooled connections
    "shared_buffers": "32MB",
    "logging_collector": "off",
    "log_min_messages": "warning",
    "max_wal_size": "256MB",
    "checkpoint_timeout": "30min",
    "autovacuum": "off",
    "jit": "off",
}


def postgres_bindir() -> Path | None:
    """The bin directory of the newest PostgreSQL server installed under /usr/lib/postgresql."""
    found = []
    for initdb in PG_ROOT.glob("*/bin/initdb"):
        version = initdb.parent.parent.name
        try:
            key = tuple(int(part) for part in version.split("."))
        except ValueError:
            continue
        if (initdb.parent / "pg_ctl").is_file() and (initdb.parent / "postgres").is_file():
            found.append((key, initdb.parent))
    return max(found)[1] if found else None


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")




def _postmaster_pid(datadir: Path) -> int | None:
    try:
        return int((datadir / "postmaster.pid").read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return None


class _Server:
    def __init__(self, bindir: Path):
        self.bindir = bindir
        # Root runs the server as `postgres`; any other user runs it as itself.
        self.as_owner = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        # Not pytest's tmp_path: its parent directory is private to the user running pytest.
        self.root = Path(tempfile.mkdtemp(prefix="pytest-postgres-"))
        self.datadir, self.sockdir, self.log = self.root / "data", self.root / "sock", self.root / "server.log"
        self.port: int | None = None
        self.pid: int | None = None

    def run(self, *args: str, timeout: float = START_TIMEOUT_S) -> None:
        cmd = [*self.as_owner, *args]
        done = subprocess.run(cmd, cwd=self.root, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} exited {done.returncode}:\n{done.stdout}{done.stderr}"
                               f"{self._log_tail()}")

    def _log_tail(self) -> str:
        try:
            return "\n--- server log ---\n" + "\n".join(self.log.read_text().splitlines()[-30:])
        except OSError:
            return ""

    def init(self) -> None:
        self.sockdir.mkdir()
        if self.as_owner:
            shutil.chown(self.root, "postgres", "postgres")
            shutil.chown(self.sockdir, "postgres", "postgres")
        self.run(str(self.bindir / "initdb"), "-D", str(self.datadir), "-U", "postgres", "-A", "trust",
                 "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions")

    def start(self, port: int | None = None) -> None:
        """Start on `port` (a restart keeps its clients' URL), or on a free one."""
        for attempt in range(3):  # the free port may be taken between the probe and the server's bind
            self.port = port or free_port()
            options = {**SETTINGS, "port": str(self.port), "unix_socket_directories": f"'{self.sockdir}'"}
            # postgresql.auto.conf is read last: these settings win over the generated ones.
            (self.datadir / "postgresql.auto.conf").write_text(
                "".join(f"{name} = {value}\n" for name, value in options.items()))
            try:
                self.run(str(self.bindir / "pg_ctl"), "start", "-D", str(self.datadir), "-l", str(self.log),
                         "-w", "-t", str(START_TIMEOUT_S), timeout=START_TIMEOUT_S + 10)
            except RuntimeError:
                if attempt < 2 and "could not bind" in self._log_tail():
                    continue
                raise
            self.pid = _postmaster_pid(self.datadir)
            return

    def stop(self) -> None:
        pid = _postmaster_pid(self.datadir) or self.pid
        if pid is not None and alive(pid):
            self.run(str(self.bindir / "pg_ctl"), "stop", "-D", str(self.datadir), "-m", "immediate", "-w",
                     "-t", str(STOP_TIMEOUT_S), timeout=STOP_TIMEOUT_S + 10)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while pid is not None and alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if pid is not None and alive(pid):
            os.kill(pid, 9)
            raise AssertionError(f"postmaster {pid} of the test PostgreSQL server outlived `pg_ctl stop`; killed it")

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server():
    """The session's PostgreSQL server (stop() is a crash: immediate mode; start(port) again)."""
    bindir = postgres_bindir()
    if bindir is None:
        message = (f"PostgreSQL server binaries not found ({PG_ROOT}/*/bin/initdb): "
                   "run `make postgres-server` (as root; Debian package `postgresql`)")
        if _in_ci():
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    server = _Server(bindir)
    try:
        server.init()
        server.start()
        yield server
    finally:
        try:
            server.stop()
        finally:
            server.remove()


def create_database(server: _Server, name: str) -> str:
    with psycopg.connect(host="127.0.0.1", port=server.port, user="postgres", dbname="postgres",
                         autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"postgresql://postgres@127.0.0.1:{server.port}/{name}"


@pytest.fixture(scope="session")
def postgres_url(postgres_server) -> str:
    """postgresql://postgres@127.0.0.1:PORT/ledger_test on a PostgreSQL server of this session's own."""
    return create_database(postgres_server, DATABASE)
