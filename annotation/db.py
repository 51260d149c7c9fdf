"""Connections and transactions of the feedback store: one engine, a writer's turn, busy retries.

SQLite: WAL, a busy timeout, foreign keys, writes in `BEGIN IMMEDIATE` after this host's writers have queued
on a lock file (see `Database._writer_turn`), retried while the database is busy. PostgreSQL (psycopg 3):
sessions in UTC, unique-key races answered by re-running the write (`Database.idempotent`).
"""
from __future__ import annotations

import os
import random
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import quote

try:
    import fcntl
except ImportError:  # Windows: SQLite's own busy handling only
    fcntl = None
from sqlalchemy import Connection, create_engine, event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.pool import StaticPool


class FeedbackError(ValueError):
    """Input the store refuses, with a message a person understands; nothing was written."""


class StoreBusy(RuntimeError):
    """The database stayed locked by other writers for longer than the store's patience; nothing was written."""


def resolve_url(url_or_path: str | os.PathLike | None) -> str:
    """A SQLAlchemy URL from a URL, a file path, or (when None) `DATABASE_URL`.

    `postgres://` and `postgresql://` (as hosting services write them) get the psycopg 3 driver."""
    if url_or_path is None:
        url_or_path = os.environ.get("DATABASE_URL")
        if not url_or_path:
            raise FeedbackError("no database given: pass a path or URL, or set DATABASE_URL")
    text = str(url_or_path)
    for plain in ("postgres://", "postgresql://"):
        if text.startswith(plain):
            return "postgresql+psycopg://" + text[len(plain):]
    if "://" in text:
        return text
    return f"sqlite:///{Path(text).expanduser().resolve()}"


def is_busy(exc: BaseException) -> bool:
    """SQLite's "database is locked/busy" (a lock held by another writer), nothing else."""
    orig = getattr(exc, "orig", exc)
    code = getattr(orig, "sqlite_errorcode", None)
    if code is not None and code & 0xFF in (5, 6):  # SQLITE_BUSY, SQLITE_LOCKED
        return True
    text = str(orig).lower()
    return "database is locked" in text or "database is busy" in text or "database table is locked" in text


def sleep_backoff(attempt: int) -> None:
    time.sleep(min(0.5, 0.005 * (2 ** min(attempt, 7))) * (0.5 + random.random()))


class Database:
    """The engine and the rules for reading and writing through it (no knowledge of the tables)."""

    def __init__(self, url_or_path: str | os.PathLike | None = None, *, busy_timeout_s: float = 30.0,
                 max_wait_s: float = 300.0, read_only: bool = False, host_lock: bool = True, echo: bool = False):
        """`read_only` opens a SQLite file (a snapshot) without changing a byte of it: no WAL switch; writes
        fail. `host_lock` queues this host's writers on a lock file (see `_writer_turn`)."""
        self.url = resolve_url(url_or_path)
        self.read_only = bool(read_only)
        self.busy_timeout_s = float(busy_timeout_s)
        self.max_wait_s = float(max_wait_s)
        parsed = make_url(self.url)
        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        self.path: Path | None = None
        kwargs: dict[str, Any] = {"echo": echo}
        if self.is_sqlite:
            database = parsed.database or ""
            kwargs["connect_args"] = {"timeout": self.busy_timeout_s, "check_same_thread": False}
            if database in ("", ":memory:"):
                kwargs["poolclass"] = StaticPool
            else:
                self.path = Path(database)
                if self.read_only:
                    if not self.path.exists():
                        raise FeedbackError(f"no database at {self.path}")
                    parsed = parsed.set(database=f"file:{quote(str(self.path))}?mode=ro", query={"uri": "true"})
                else:
                    self.path.parent.mkdir(parents=True, exist_ok=True)
        else:
            kwargs["pool_pre_ping"] = True
            if parsed.get_backend_name() == "postgresql" and parsed.get_driver_name() == "psycopg":
                kwargs["connect_args"] = {"options": "-c timezone=UTC"}  # naive UTC times, as on SQLite
        self.engine: Engine = create_engine(parsed, **kwargs)
        if self.is_sqlite:
            self._install_sqlite_hooks()
        self._thread_lock = threading.Lock()  # this process's writers, one at a time (see _writer_turn)
        self._lock_fd: int | None = None
        use_file_lock = fcntl is not None and self.path is not None and not self.read_only and host_lock
        self._lock_path = f"{self.path}-writer.lock" if use_file_lock else None

    def _install_sqlite_hooks(self) -> None:
        busy_ms = int(self.busy_timeout_s * 1000)

        @event.listens_for(self.engine, "connect")
        def _on_connect(dbapi_conn, _record):  # pragmas per connection; we emit BEGIN ourselves
            dbapi_conn.isolation_level = None
            cursor = dbapi_conn.cursor()
            cursor.execute(f"PRAGMA busy_timeout = {busy_ms}")
            if self.path is not None and not self.read_only:
                cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute("PRAGMA synchronous = NORMAL")
            cursor.execute("PRAGMA foreign_keys = ON")
            cursor.close()

        @event.listens_for(self.engine, "begin")
        def _on_begin(conn):  # writers take the write lock up front: no deadlocked read→write upgrades
            conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("coreseg_write") else "BEGIN")

    # ------------------------------------------------------------------ transactions
    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """A write transaction (`BEGIN IMMEDIATE` on SQLite): commits on success, rolls back on any exception.

        Taking the write lock is retried while the database is busy, up to `max_wait_s`, after which
        `StoreBusy` is raised; "database is locked" never reaches the caller. Do no model or image work inside.
        """
        if self.read_only:
            raise FeedbackError("this store was opened read-only (a snapshot); nothing can be written to it")
        deadline = time.monotonic() + self.max_wait_s
        with self._writer_turn(deadline):
            conn, trans = self.retry_busy(self._begin, deadline)
            try:
                yield conn
                trans.commit()
            except BaseException:
                if trans.is_active:
                    trans.rollback()
                raise
            finally:
                conn.close()

    def busy_error(self) -> StoreBusy:
        return StoreBusy(f"the database stayed busy for {self.max_wait_s:.0f} s; nothing was written, try again")

    @contextmanager
    def _writer_turn(self, deadline: float) -> Iterator[None]:
        """Queue this host's writers (a thread lock, then an advisory lock file beside the database) before they
        ask SQLite for its write lock. SQLite's busy handler sleeps up to 100 ms between tries, so eight
        contending writers spend most of their time asleep with the lock free; here a waiter retries within
        2 ms. Other programs writing the file are still handled by BEGIN IMMEDIATE and the busy timeout."""
        if self._lock_path is None:
            yield
            return
        if not self._thread_lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
            raise self.busy_error()
        try:
            if self._lock_fd is None:
                self._lock_fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            delay = 0.0001
            while True:
                try:
                    fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise self.busy_error() from None
                    time.sleep(delay * (0.5 + random.random()))
                    delay = min(delay * 2, 0.002)
            try:
                yield
            finally:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
        finally:
            self._thread_lock.release()

    def write(self, fn):
        """Run `fn(conn)` in a write transaction, re-running it whole if the database reports busy mid-way."""
        def attempt():
            with self.transaction() as conn:
                return fn(conn)

        return self.retry_busy(attempt, time.monotonic() + self.max_wait_s)

    def idempotent(self, fn):
        """`write(fn)` where `fn` first looks for the row it would add: when a concurrent writer won a
        unique-key race (PostgreSQL; SQLite writers are serialised), `fn` runs once more and finds its row."""
        try:
            return self.write(fn)
        except IntegrityError:
            return self.write(fn)

    def _begin(self):
        """A write connection with its transaction begun (BEGIN IMMEDIATE on SQLite)."""
        conn = self.engine.connect()
        conn.execution_options(coreseg_write=True)
        try:
            return conn, conn.begin()
        except BaseException:
            conn.close()
            raise

    def retry_busy(self, fn, deadline: float):
        """`fn()`, re-run with backoff while the database reports busy; `StoreBusy` after `deadline`."""
        attempt = 0
        while True:
            try:
                return fn()
            except OperationalError as exc:
                if not is_busy(exc):
                    raise
                if time.monotonic() >= deadline:
                    raise self.busy_error() from None
                attempt += 1
                sleep_backoff(attempt)

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A read transaction: one consistent snapshot for every statement inside."""
        with self.engine.connect() as conn:
            if not self.is_sqlite:  # PostgreSQL's default gives each statement its own snapshot
                conn.execution_options(isolation_level="REPEATABLE READ")
            with conn.begin():
                yield conn

    def close(self) -> None:
        self.engine.dispose()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
