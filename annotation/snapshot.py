"""Snapshots and backups of a SQLite feedback store (`VACUUM INTO`, taken while writers go on)."""
from __future__ import annotations

import os
import time
from pathlib import Path

from annotation.db import Database, FeedbackError, is_busy, sleep_backoff


class Snapshots:
    """Consistent copies of the database and its integrity check."""

    def __init__(self, db: Database):
        self.db = db

    def snapshot(self, path: str | os.PathLike) -> Path:
        """A consistent copy of the whole database via `VACUUM INTO` (SQLite), taken while writers go on."""
        if not self.db.is_sqlite:
            raise FeedbackError("snapshot/backup uses SQLite's VACUUM INTO; for PostgreSQL use pg_dump")
        target = Path(path).expanduser().resolve()
        if target.exists():
            raise FeedbackError(f"{target} already exists; a snapshot never overwrites a file")
        target.parent.mkdir(parents=True, exist_ok=True)
        raw = self.db.engine.raw_connection()
        try:
            deadline = time.monotonic() + self.db.max_wait_s
            attempt = 0
            while True:
                try:
                    raw.cursor().execute("VACUUM INTO ?", (str(target),))
                    break
                except Exception as exc:  # sqlite3.OperationalError; busy only during recovery
                    if not is_busy(exc) or time.monotonic() >= deadline:
                        raise
                    attempt += 1
                    sleep_backoff(attempt)
        finally:
            raw.close()
        return target

    def backup(self, path: str | os.PathLike) -> Path:
        """`snapshot(path)`, then `PRAGMA integrity_check` on the copy; raises if the copy is not sound."""
        target = self.snapshot(path)
        copy = Database(target, read_only=True)
        try:
            result = Snapshots(copy).integrity_check()
        finally:
            copy.close()
        if result != "ok":
            raise RuntimeError(f"backup {target} failed its integrity check: {result}")
        return target

    def integrity_check(self) -> str:
        """'ok' when SQLite finds the file sound (always 'ok' elsewhere)."""
        if not self.db.is_sqlite:
            return "ok"
        with self.db.read() as conn:
            rows = conn.exec_driver_sql("PRAGMA integrity_check").fetchall()
        return "; ".join(str(r[0]) for r in rows)

