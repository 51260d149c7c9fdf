"""The feedback store: the one API that writes and reads clinicians' work.

SQLModel tables (`annotation.schema`) on SQLite or, unchanged, on PostgreSQL when the URL (or `DATABASE_URL`)
says so. `FeedbackStore` is a façade over four parts, one job each:

- `annotation.db.Database`: connections and transactions (writer turn, busy retry, read snapshots);
- `annotation.writes.Writes`: validated writes (all checking before the transaction; append-only);
- `annotation.queries.Queries`: read models for the app, the reviewer, exports and trainers;
- `annotation.snapshot.Snapshots`: `VACUUM INTO` snapshots and checked backups (SQLite);

and `annotation.migrations` creates or upgrades the schema when the store is opened.

    python -m annotation.store backup --db feedback.db --out backup.db
    python -m annotation.store info --db feedback.db
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Sequence

from annotation import migrations
from annotation.db import Database, FeedbackError, StoreBusy, resolve_url
from annotation.queries import Queries
from annotation.snapshot import Snapshots
from annotation.writes import Writes

__all__ = ["FeedbackStore", "FeedbackError", "StoreBusy", "resolve_url", "main"]


class _Part:
    """A `FeedbackStore` method that is one of its parts' methods (the part does the work; same docstring)."""

    def __init__(self, part: str, cls: type):
        self.part, self.cls = part, cls

    def __set_name__(self, owner, name: str) -> None:
        self.name = name
        self.__doc__ = getattr(self.cls, name).__doc__

    def __get__(self, obj, owner=None):
        return self if obj is None else getattr(getattr(obj, self.part), self.name)


class FeedbackStore:
    """The only writer and reader of the feedback database (see the module docstring)."""

    def __init__(self, url_or_path: str | os.PathLike | None = None, *, busy_timeout_s: float = 30.0,
                 max_wait_s: float = 300.0, backup_before_migrate: bool = True, read_only: bool = False,
                 host_lock: bool = True, echo: bool = False):
        """`read_only` opens a SQLite file (a snapshot) without changing a byte of it: no WAL switch, no
        migration; writes fail. `host_lock` queues this host's writers on a lock file (see `annotation.db`).
        An older database is upgraded in place, after a backup copy on SQLite (`backup_before_migrate`)."""
        self.db = Database(url_or_path, busy_timeout_s=busy_timeout_s, max_wait_s=max_wait_s,
                           read_only=read_only, host_lock=host_lock, echo=echo)
        self.reads = Queries(self.db)
        self.writes = Writes(self.db, self.reads)
        self.snapshots = Snapshots(self.db)
        try:
            migrations.ensure_schema(self.db, self.snapshots.snapshot if backup_before_migrate else None)
        except BaseException:
            self.db.close()
            raise

    # the connection's facts and transactions
    url = property(lambda self: self.db.url)
    engine = property(lambda self: self.db.engine)
    is_sqlite = property(lambda self: self.db.is_sqlite)
    path = property(lambda self: self.db.path)
    read_only = property(lambda self: self.db.read_only)
    transaction = _Part("db", Database)

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> "FeedbackStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # snapshots and backups
    snapshot = _Part("snapshots", Snapshots)
    backup = _Part("snapshots", Snapshots)
    integrity_check = _Part("snapshots", Snapshots)

    # validated writes
    add_annotator = _Part("writes", Writes)
    put_scan = _Part("writes", Writes)
    add_case = _Part("writes", Writes)
    add_model_version = _Part("writes", Writes)
    add_run = _Part("writes", Writes)
    submit_feedback = _Part("writes", Writes)
    review = _Part("writes", Writes)
    add_training_round = _Part("writes", Writes)

    # read models
    schema_version = _Part("reads", Queries)
    get_annotator = _Part("reads", Queries)
    list_annotators = _Part("reads", Queries)
    get_scan_pixels = _Part("reads", Queries)
    get_scan_meta = _Part("reads", Queries)
    get_scan_info = _Part("reads", Queries)
    get_scan_display_png = _Part("reads", Queries)
    get_case = _Part("reads", Queries)
    list_model_versions = _Part("reads", Queries)
    get_run = _Part("reads", Queries)
    get_candidates = _Part("reads", Queries)
    get_feedback = _Part("reads", Queries)
    accepted_corrections = _Part("reads", Queries)
    accepted_mask = _Part("reads", Queries)
    queue = _Part("reads", Queries)
    feedback_history = _Part("reads", Queries)
    feedback_rows = _Part("reads", Queries)
    rankings_for = _Part("reads", Queries)
    ratings_for = _Part("reads", Queries)
    candidates_for_runs = _Part("reads", Queries)
    runs_for = _Part("reads", Queries)
    cases_for = _Part("reads", Queries)
    scans_for = _Part("reads", Queries)
    reviews_for = _Part("reads", Queries)
    correction_pngs = _Part("reads", Queries)
    counts = _Part("reads", Queries)
    list_training_rounds = _Part("reads", Queries)


def main(argv: Sequence[str] | None = None) -> int:
    """`backup` (VACUUM INTO + integrity check), `migrate` (upgrade in place) and `info` for a store."""
    parser = argparse.ArgumentParser(prog="python -m annotation.store", description=main.__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("backup", "migrate", "info"):
        p = sub.add_parser(name)
        p.add_argument("--db", default=None, help="path or URL (default: $DATABASE_URL)")
        if name == "backup":
            p.add_argument("--out", required=True, help="the backup file to create (must not exist)")
    args = parser.parse_args(argv)
    try:
        store = FeedbackStore(args.db)
        if args.command == "backup":
            print(store.backup(args.out))
        elif args.command == "info":
            print(json.dumps({"schema_version": store.schema_version(), "integrity": store.integrity_check(),
                              "counts": store.counts()}, indent=2))
        else:
            print(f"schema version {store.schema_version()}")
    except FeedbackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
