"""A throwaway PostgreSQL server for the tests: `initdb` in a temporary folder, `pg_ctl start` on a free
local port, one fresh database per test, everything removed at the end.

PostgreSQL refuses to run as root, so as root the server runs as the `postgres` user that Debian's package
creates (else `nobody`), through `runuser`. `fsync` is off: the tests kill clients, never the server.
Raises `PostgresUnavailable` with the reason (missing binaries, initdb or start failing, its log's tail).
"""
from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

USER = "coreseg"


class PostgresUnavailable(RuntimeError):
    """The test server could not be started; the message says why."""


def find_binary(name: str) -> str:
    """A PostgreSQL program from PATH or Debian's /usr/lib/postgresql/<version>/bin (newest first)."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
                        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0, reverse=True)
    if not candidates:
        raise PostgresUnavailable(f"`{name}` not found (install Debian's postgresql: bash scripts/install.sh --test)")
    return candidates[0]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """One running server; `new_database()` gives a SQLAlchemy URL of an empty database on it."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="coreseg-pg-"))
        self.data, self.log = self.root / "data", self.root / "server.log"
        self.port = _free_port()
        self._names = itertools.count(1)
        self._prefix: list[str] = []
        if os.geteuid() == 0:
            account = next((u for u in ("postgres", "nobody") if _has_user(u)), None)
            if account is None or shutil.which("runuser") is None:
                raise PostgresUnavailable("running as root without a `postgres` user or `runuser`")
            entry = pwd.getpwnam(account)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
            self._prefix = ["runuser", "-u", account, "--"]
        self.root.chmod(0o700)

    def _run(self, *args: str, timeout: float = 120) -> None:
        try:
            out = subprocess.run([*self._prefix, *args], capture_output=True, text=True, timeout=timeout)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise PostgresUnavailable(f"{Path(args[0]).name}: {exc}") from None
        if out.returncode != 0:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise PostgresUnavailable(f"{Path(args[0]).name} exited {out.returncode}: "
                                      f"{(out.stderr or out.stdout)[-2000:]}\n{log}")

    def start(self) -> "PostgresServer":
        self._run(find_binary("initdb"), "-D", str(self.data), "-U", USER, "--auth=trust", "-E", "UTF8",
                  "--no-sync", "--locale=C")
        options = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off "
                   "-c full_page_writes=off -c max_connections=100 -c timezone=UTC")
        self._run(find_binary("pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-o", options, "-w",
                  "-t", "60", "start")
        return self

    def admin_url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://{USER}@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A new empty database's URL."""
        import psycopg

        name = f"t{os.getpid()}_{next(self._names)}"
        with psycopg.connect(f"host=127.0.0.1 port={self.port} user={USER} dbname=postgres",
                             autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.admin_url(name)

    def stop(self) -> None:
        try:
            self._run(find_binary("pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop", timeout=60)
        except PostgresUnavailable:
            pass
        shutil.rmtree(self.root, ignore_errors=True)


def _has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def start_server() -> PostgresServer:
    """Start a server (cleaning up its folder when it does not come up)."""
    server = PostgresServer()
    try:
        return server.start()
    except BaseException:
        shutil.rmtree(server.root, ignore_errors=True)
        raise
