"""A throwaway PostgreSQL server for the tests and the benchmark, from Debian's packages.

No PostgreSQL runs on the machines this project is built on, so whatever
needs Dagster on PostgreSQL storage starts its own: `initdb` into a fresh
folder, then `postgres` on a free port of 127.0.0.1 with trust
authentication, fsync off (nothing here must survive a crash). PostgreSQL
refuses to run as root, so as root the server runs as the `postgres` user
that Debian's package creates. `scripts/ensure-system-deps.sh` installs the
package (`postgresql`) when its binaries are missing.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

from service.dev.stack import ManagedProcess, StackError, as_user, free_port, wait_until

DEBIAN_BINARIES = Path("/usr/lib/postgresql")
SERVER_USER = "postgres"
FAST_SETTINGS = ("fsync=off", "full_page_writes=off", "synchronous_commit=off", "max_connections=200")


def server_bindir() -> Path:
    """Where `initdb` and `postgres` are: Debian's newest version, else the PATH."""
    versions = sorted(DEBIAN_BINARIES.glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit()
                      else 0)
    if versions:
        return versions[-1].parent
    found = shutil.which("initdb")
    if found is None:
        raise StackError("no PostgreSQL server binaries (initdb, postgres): run scripts/ensure-system-deps.sh "
                         "or install Debian's package postgresql")
    return Path(found).parent


class Postgres:
    """A PostgreSQL server on a free local port, its data under `workdir`; `admin_url` reaches it.

    :param workdir: the folder that holds its data directory and its log
    :param port: the port to listen on (default: a free one)
    """

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.workdir = workdir
        self.data_dir = workdir / "postgres-data"
        self.port = port or free_port()
        self.user = SERVER_USER if os.geteuid() == 0 else None
        self.process: ManagedProcess | None = None

    @property
    def admin_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self, timeout_s: float = 60.0) -> None:
        bindir = server_bindir()
        self._initdb(bindir)
        settings = [arg for setting in FAST_SETTINGS for arg in ("-c", setting)]
        self.process = ManagedProcess(
            "postgres",
            [str(bindir / "postgres"), "-D", str(self.data_dir), "-h", "127.0.0.1", "-p", str(self.port),
             "-k", str(self.data_dir), *settings],
            self.workdir / "postgres.log", user=self.user)
        self.process.start()
        wait_until(self._ready, timeout_s, f"PostgreSQL on port {self.port}")

    def _initdb(self, bindir: Path) -> None:
        self.data_dir.mkdir(parents=True, mode=0o700)
        if self.user is not None:
            entry = pwd.getpwnam(self.user)
            os.chown(self.data_dir, entry.pw_uid, entry.pw_gid)
        result = subprocess.run(
            [str(bindir / "initdb"), "-D", str(self.data_dir), "-U", "postgres", "--auth=trust", "--no-sync",
             "--encoding=UTF8", "--locale=C"],
            capture_output=True, text=True, check=False, **as_user(self.user))
        if result.returncode != 0:
            raise StackError(f"initdb failed ({result.returncode}): {result.stderr.strip() or result.stdout.strip()}")

    def _ready(self) -> bool:
        import psycopg2  # the `dagster` extra's: only the benchmark and the tests need it here

        assert self.process is not None
        self.process.check_alive()
        try:
            psycopg2.connect(self.admin_url, connect_timeout=2).close()
        except psycopg2.OperationalError:
            return False
        return True

    def stop(self) -> None:
        """Fast shutdown (SIGINT: end the sessions, checkpoint), then the group's usual stop."""
        if self.process is None:
            return
        self.process.signal_group(signal.SIGINT)
        if self.process.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.proc.wait(timeout=10)
        self.process.stop()


@contextlib.contextmanager
def postgres_server(workdir: Path, given_url: str | None = None) -> Iterator[str]:
    """The admin URL of `given_url`'s server if set, else of a server started under `workdir` and stopped after."""
    if given_url:
        yield given_url
        return
    server = Postgres(workdir)
    try:
        server.start()
        yield server.admin_url
    finally:
        server.stop()
