"""The feedback store: the one API that writes and reads clinicians' work.

SQLModel tables on SQLite (WAL, busy timeout, foreign keys, writes in `BEGIN IMMEDIATE`, retried while the
database is busy) or, unchanged, on PostgreSQL when `DATABASE_URL` says so. Every method validates its whole
input and does all decoding, parsing and mask arithmetic *before* it opens a write transaction, so a bad
submission raises `FeedbackError` with nothing written, and no model or image work ever holds the write lock.
Nothing is updated in place: feedback, corrections and reviews are appended; a case's accepted mask is its
latest accepted correction.

    python -m annotation.store backup --db feedback.db --out backup.db
    python -m annotation.store info --db feedback.db
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import sys
import threading
import time
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence
from urllib.parse import quote

import numpy as np

try:
    import fcntl
except ImportError:  # Windows: SQLite's own busy handling only
    fcntl = None
from sqlalchemy import Connection, create_engine, event, func, insert, inspect, select
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.pool import StaticPool
from sqlmodel import SQLModel

from annotation import codec, migrations
from annotation.schema import (RATING_SCALES, SCHEMA_VERSION, Annotator, CandidateRow, Case, Correction, Decision,
                               Feedback, ModelVersion, Ranking, Rating, Review, Role, Run, Scan, SchemaInfo, Status,
                               TrainingRound, TrainingRoundFeedback, utcnow)
from coreseg.answer import THINK_CLOSE, THINK_OPEN, ANSWER_CLOSE, ANSWER_OPEN, SEG_TOKEN, parse_answer
from coreseg.metrics import dice

T_ANN, T_SCAN, T_CASE, T_MV, T_RUN = (Annotator.__table__, Scan.__table__, Case.__table__, ModelVersion.__table__,
                                      Run.__table__)
T_CAND, T_FB, T_RANK, T_RATE, T_CORR, T_REV = (CandidateRow.__table__, Feedback.__table__, Ranking.__table__,
                                               Rating.__table__, Correction.__table__, Review.__table__)
T_ROUND, T_ROUND_FB, T_INFO = TrainingRound.__table__, TrainingRoundFeedback.__table__, SchemaInfo.__table__

_CHUNK = 500  # ids per IN (…) list: far below every database's bound-parameter limit
_IDENTIFIER_KEYS = ("patient", "birth", "accession", "institution", "physician", "operator", "referring",
                    "instanceuid", "studyid", "filename", "filepath", "path", "station", "address", "ipaddress",
                    "deviceserial", "otherpatient", "ethnic")


class FeedbackError(ValueError):
    """Input the store refuses, with a message a person understands; nothing was written."""


class StoreBusy(RuntimeError):
    """The database stayed locked by other writers for longer than the store's patience; nothing was written."""


def resolve_url(url_or_path: str | os.PathLike | None) -> str:
    """A SQLAlchemy URL from a URL, a file path, or (when None) `DATABASE_URL`."""
    if url_or_path is None:
        url_or_path = os.environ.get("DATABASE_URL")
        if not url_or_path:
            raise FeedbackError("no database given: pass a path or URL, or set DATABASE_URL")
    text = str(url_or_path)
    if "://" in text:
        return text
    return f"sqlite:///{Path(text).expanduser().resolve()}"


def _is_busy(exc: BaseException) -> bool:
    orig = getattr(exc, "orig", exc)
    code = getattr(orig, "sqlite_errorcode", None)
    if code is not None and code & 0xFF in (5, 6):  # SQLITE_BUSY, SQLITE_LOCKED
        return True
    text = str(orig).lower()
    return "database is locked" in text or "database is busy" in text or "database table is locked" in text


def _jsonable(value: Any) -> Any:
    """Plain JSON types from numpy scalars/arrays, tuples, paths, dates."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, (Path, date, datetime)):
        return str(value)
    return value


def _aware(moment: datetime) -> datetime:
    """A naive datetime is read as UTC."""
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment


def _deidentify(meta: dict) -> dict:
    """Drop any key that names a person, a place, an accession or a file (defence in depth behind scan_io)."""
    clean = {}
    for key, value in meta.items():
        flat = str(key).lower().replace("_", "").replace(" ", "").replace("-", "")
        if any(word in flat for word in _IDENTIFIER_KEYS):
            continue
        clean[str(key)] = _deidentify(value) if isinstance(value, dict) else value
    return clean


def _as_int(value: Any, what: str) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise FeedbackError(f"{what} must be an integer, got {value!r}")
    return int(value)


def _as_id(value: Any, what: str) -> int:
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    return _as_int(value, what)


def _check_mask(mask: Any, height: int, width: int, what: str) -> np.ndarray:
    """A bool H×W mask, or a clear error: wrong size, wrong dimensionality, values other than 0/1 (or 0/255)."""
    if mask is None:
        raise FeedbackError(f"{what} is missing")
    array = np.asarray(mask)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if array.ndim != 2:
        raise FeedbackError(f"{what} must be a 2-D height × width array, got shape {array.shape}")
    if array.shape != (height, width):
        raise FeedbackError(f"{what} is {array.shape[0]}×{array.shape[1]} (height × width) but the scan is "
                            f"{height}×{width}; masks must match the image exactly (nothing is resized)")
    if array.dtype == bool:
        return array
    if not np.issubdtype(array.dtype, np.integer):
        raise FeedbackError(f"{what} must be boolean or integer 0/1 (or 0/255), got dtype {array.dtype}")
    values = np.unique(array)
    if not (set(values.tolist()) <= {0, 1} or set(values.tolist()) <= {0, 255}):
        raise FeedbackError(f"{what} holds values {values[:6].tolist()}…; a mask holds only 0/1 (or 0/255)")
    return array > 0


def _payload_hash(payload: dict) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


@dataclass(frozen=True)
class _RunInfo:
    """What validation needs to know about a run; immutable once written, so safe to cache."""

    run_id: int
    case_id: int
    height: int
    width: int
    candidate_ids: tuple[int, ...]
    model_version: str


def _feedback_joins(latest):
    """Feedback with its run, case, model version, author, correction and latest review."""
    return (T_FB.join(T_RUN, T_FB.c.run_id == T_RUN.c.id)
            .join(T_CASE, T_FB.c.case_id == T_CASE.c.id)
            .join(T_MV, T_RUN.c.model_version_id == T_MV.c.id)
            .join(T_ANN, T_FB.c.annotator_id == T_ANN.c.id)
            .outerjoin(T_CORR, T_CORR.c.feedback_id == T_FB.c.id)
            .outerjoin(latest, latest.c.feedback_id == T_FB.c.id))


def _not_superseded():
    """Drafts that a later row finalised or discarded are history, not work to show."""
    superseding = T_FB.alias("superseding")
    return ~select(superseding.c.id).where(superseding.c.supersedes_id == T_FB.c.id).exists()


class FeedbackStore:
    """The only writer and reader of the feedback database (see the module docstring)."""

    def __init__(self, url_or_path: str | os.PathLike | None = None, *, busy_timeout_s: float = 30.0,
                 max_wait_s: float = 300.0, backup_before_migrate: bool = True, read_only: bool = False,
                 host_lock: bool = True, echo: bool = False):
        """`read_only` opens a SQLite file (a snapshot) without changing a byte of it: no WAL switch, no
        migration; writes fail. `host_lock` queues this host's writers on a lock file (see `_writer_turn`)."""
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
        self.engine: Engine = create_engine(parsed, **kwargs)
        if self.is_sqlite:
            self._install_sqlite_hooks()
        self._run_cache: OrderedDict[int, _RunInfo] = OrderedDict()
        self._mask_cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._annotator_cache: dict[str | int, Any] = {}
        self._cache_lock = threading.Lock()  # the app calls one store from several threads
        self._thread_lock = threading.Lock()  # this store's writers, one at a time (see _writer_turn)
        self._lock_fd: int | None = None
        use_file_lock = fcntl is not None and self.path is not None and not self.read_only and host_lock
        self._lock_path = f"{self.path}-writer.lock" if use_file_lock else None
        self._ensure_schema(backup_before_migrate)

    # ------------------------------------------------------------------ connections and transactions
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

    def _sleep_backoff(self, attempt: int) -> None:
        time.sleep(min(0.5, 0.005 * (2 ** min(attempt, 7))) * (0.5 + random.random()))

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
            conn, trans = self._retry_busy(self._begin, deadline)
            try:
                yield conn
                trans.commit()
            except BaseException:
                if trans.is_active:
                    trans.rollback()
                raise
            finally:
                conn.close()

    def _busy(self) -> StoreBusy:
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
            raise self._busy()
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
                        raise self._busy() from None
                    time.sleep(delay * (0.5 + random.random()))
                    delay = min(delay * 2, 0.002)
            try:
                yield
            finally:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
        finally:
            self._thread_lock.release()

    def _write(self, fn):
        """Run `fn(conn)` in a write transaction, re-running it whole if the database reports busy mid-way."""
        def attempt():
            with self.transaction() as conn:
                return fn(conn)

        return self._retry_busy(attempt, time.monotonic() + self.max_wait_s)

    def _begin(self):
        """A write connection with its transaction begun (BEGIN IMMEDIATE on SQLite)."""
        conn = self.engine.connect()
        conn.execution_options(coreseg_write=True)
        try:
            return conn, conn.begin()
        except BaseException:
            conn.close()
            raise

    def _retry_busy(self, fn, deadline: float):
        """`fn()`, re-run with backoff while the database reports busy; `StoreBusy` after `deadline`."""
        attempt = 0
        while True:
            try:
                return fn()
            except OperationalError as exc:
                if not _is_busy(exc):
                    raise
                if time.monotonic() >= deadline:
                    raise self._busy() from None
                attempt += 1
                self._sleep_backoff(attempt)

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        """A read transaction: one consistent snapshot for every statement inside."""
        with self.engine.connect() as conn:
            with conn.begin():
                yield conn

    def close(self) -> None:
        self.engine.dispose()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> "FeedbackStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ schema and migrations
    def _ensure_schema(self, backup_before_migrate: bool) -> None:
        """Create a new database, or upgrade an older one in place (after a backup copy on SQLite)."""
        version = self.schema_version()
        if version is not None and version > SCHEMA_VERSION:
            raise FeedbackError(f"the database is at schema version {version} but this code knows only up to "
                                f"{SCHEMA_VERSION}; update the code")
        if version == SCHEMA_VERSION:
            return
        if self.read_only:
            raise FeedbackError(f"the database is at schema version {version}, not {SCHEMA_VERSION}; open it "
                                "writable once to upgrade it")
        if version is not None and backup_before_migrate and self.is_sqlite and self.path is not None:
            stamp = utcnow().strftime("%Y%m%dT%H%M%S")
            backup = self.path.with_name(f"{self.path.name}.v{version}-{stamp}.bak")
            try:
                self.snapshot(backup)
            except FeedbackError:  # another process opening the same file took this very copy
                pass

        def create_or_upgrade(conn: Connection) -> None:
            current = self._read_version(conn)   # re-read under the write lock: another process may have done it
            if current is None:
                if inspect(conn).get_table_names():
                    raise FeedbackError("the database has tables but no schema_info; it is not a feedback store")
                SQLModel.metadata.create_all(conn)
                conn.execute(insert(T_INFO).values(id=1, version=SCHEMA_VERSION, updated_at=utcnow()))
            elif current < SCHEMA_VERSION:
                migrations.upgrade(conn, current, SCHEMA_VERSION)
                conn.execute(T_INFO.update().where(T_INFO.c.id == 1).values(version=SCHEMA_VERSION,
                                                                              updated_at=utcnow()))

        self._write(create_or_upgrade)

    @staticmethod
    def _read_version(conn: Connection) -> int | None:
        if "schema_info" not in inspect(conn).get_table_names():
            return None
        return conn.execute(select(T_INFO.c.version).where(T_INFO.c.id == 1)).scalar_one_or_none()

    def schema_version(self) -> int | None:
        """The database's schema version (None for an empty database)."""
        with self._read() as conn:
            return self._read_version(conn)

    # ------------------------------------------------------------------ backups
    def snapshot(self, path: str | os.PathLike) -> Path:
        """A consistent copy of the whole database via `VACUUM INTO` (SQLite), taken while writers go on."""
        if not self.is_sqlite:
            raise FeedbackError("snapshot/backup uses SQLite's VACUUM INTO; for PostgreSQL use pg_dump")
        target = Path(path).expanduser().resolve()
        if target.exists():
            raise FeedbackError(f"{target} already exists; a snapshot never overwrites a file")
        target.parent.mkdir(parents=True, exist_ok=True)
        raw = self.engine.raw_connection()
        try:
            deadline = time.monotonic() + self.max_wait_s
            attempt = 0
            while True:
                try:
                    raw.cursor().execute("VACUUM INTO ?", (str(target),))
                    break
                except Exception as exc:  # sqlite3.OperationalError; busy only during recovery
                    if not _is_busy(exc) or time.monotonic() >= deadline:
                        raise
                    attempt += 1
                    self._sleep_backoff(attempt)
        finally:
            raw.close()
        return target

    def backup(self, path: str | os.PathLike) -> Path:
        """`snapshot(path)`, then `PRAGMA integrity_check` on the copy; raises if the copy is not sound."""
        target = self.snapshot(path)
        copy = FeedbackStore(target, read_only=True)
        try:
            result = copy.integrity_check()
        finally:
            copy.close()
        if result != "ok":
            raise RuntimeError(f"backup {target} failed its integrity check: {result}")
        return target

    def integrity_check(self) -> str:
        """'ok' when SQLite finds the file sound (always 'ok' elsewhere)."""
        if not self.is_sqlite:
            return "ok"
        with self._read() as conn:
            rows = conn.exec_driver_sql("PRAGMA integrity_check").fetchall()
        return "; ".join(str(r[0]) for r in rows)

    # ------------------------------------------------------------------ annotators
    def add_annotator(self, name: str, role: str | None = None) -> int:
        """Register a person (idempotent by name); a different role for an existing name is refused."""
        if not isinstance(name, str) or not name.strip():
            raise FeedbackError("an annotator needs a non-empty name")
        name = name.strip()
        if role is not None and role not in Role.__members__:
            raise FeedbackError(f"unknown role {role!r}; use one of {', '.join(Role.__members__)}")

        def write(conn: Connection) -> int:
            row = conn.execute(select(T_ANN.c.id, T_ANN.c.role).where(T_ANN.c.name == name)).first()
            if row is not None:
                if role is not None and row.role != role:
                    raise FeedbackError(f"annotator {name!r} already exists with role {row.role!r}, not {role!r}")
                return int(row.id)
            return int(conn.execute(insert(T_ANN).values(name=name, role=role or Role.annotator.value,
                                                         created_at=utcnow())).inserted_primary_key[0])

        return self._idempotent(write)

    def get_annotator(self, name_or_id: str | int) -> dict | None:
        with self._read() as conn:
            row = self._annotator_row(conn, name_or_id)
        return dict(row._mapping) if row is not None else None

    def list_annotators(self) -> list[dict]:
        with self._read() as conn:
            return [dict(r._mapping) for r in conn.execute(select(T_ANN).order_by(T_ANN.c.id))]

    @staticmethod
    def _annotator_row(conn: Connection, ref: str | int):
        column = T_ANN.c.name if isinstance(ref, str) else T_ANN.c.id
        value = ref.strip() if isinstance(ref, str) else ref
        return conn.execute(select(T_ANN).where(column == value)).first()

    def _require_annotator(self, ref: str | int, what: str = "annotator") -> Any:
        """The annotator's row by name or id (cached: names and roles never change once stored)."""
        if not isinstance(ref, (str, int, np.integer)) or isinstance(ref, bool):
            raise FeedbackError(f"{what} must be a name or an id, got {ref!r}")
        key = ref.strip() if isinstance(ref, str) else int(ref)
        row = self._annotator_cache.get(key)
        if row is None:
            with self._read() as conn:
                row = self._annotator_row(conn, key)
            if row is None:
                raise FeedbackError(f"unknown {what} {ref!r}; register them first (add_annotator)")
            with self._cache_lock:
                if len(self._annotator_cache) > 4096:
                    self._annotator_cache.clear()
                self._annotator_cache[key] = row
        return row

    def _idempotent(self, fn):
        """`_write(fn)`, once more if a concurrent writer won a unique-key race (PostgreSQL)."""
        try:
            return self._write(fn)
        except IntegrityError:
            return self._write(fn)

    # ------------------------------------------------------------------ scans and cases
    def put_scan(self, scan: Any) -> str:
        """Store a de-identified scan once under its content hash; returns the hash (idempotent).

        `scan` is a `coreseg.scan_io.Scan` (or anything with `pixels`, `meta`, and optionally `display` and
        `content_hash`). Pixels are kept losslessly in their dtype; identifier-like meta keys are dropped.
        """
        pixels = getattr(scan, "pixels", None)
        if pixels is None:
            raise FeedbackError("a scan needs pixels")
        pixels = np.asarray(pixels)
        if pixels.ndim not in (2, 3) or pixels.size == 0:
            raise FeedbackError(f"scan pixels must be a non-empty 2-D (or H×W×C) array, got shape {pixels.shape}")
        height, width = int(pixels.shape[0]), int(pixels.shape[1])
        meta = _deidentify(_jsonable(dict(getattr(scan, "meta", None) or {})))
        for key, actual in (("height", height), ("width", width)):
            if key in meta and meta[key] is not None and int(meta[key]) != actual:
                raise FeedbackError(f"scan meta says {key} {meta[key]} but the pixels have {actual}")
        content_hash = getattr(scan, "content_hash", None)
        if not content_hash:
            digest = hashlib.sha256(f"{pixels.dtype.str}{pixels.shape}".encode())
            digest.update(np.ascontiguousarray(pixels).tobytes())
            content_hash = digest.hexdigest()
        content_hash = str(content_hash)
        if len(content_hash) > 64 or not content_hash.isalnum():
            raise FeedbackError(f"content hash {content_hash!r} is not a hex digest")
        display = getattr(scan, "display", None)
        display_png = None
        if display is not None:
            display = np.asarray(display)
            if display.shape[:2] != (height, width):
                raise FeedbackError(f"the display image is {display.shape[:2]} but the pixels are {(height, width)}")
            display_png = codec.to_png_bytes(display.astype(np.uint8) if display.dtype != np.uint8 else display)
        with self._read() as conn:
            if conn.execute(select(T_SCAN.c.hash).where(T_SCAN.c.hash == content_hash)).first() is not None:
                return content_hash
        scan_codec, data = codec.encode_pixels(pixels)
        row = dict(hash=content_hash, codec=scan_codec, dtype=pixels.dtype.str, shape=list(pixels.shape),
                   height=height, width=width, modality=meta.get("modality"),
                   source_format=meta.get("source_format"), meta=meta, pixels=data, display_png=display_png,
                   created_at=utcnow())

        def write(conn: Connection) -> str:
            if conn.execute(select(T_SCAN.c.hash).where(T_SCAN.c.hash == content_hash)).first() is None:
                conn.execute(insert(T_SCAN).values(**row))
            return content_hash

        return self._idempotent(write)

    def _scan_row(self, scan_hash: str, *columns):
        with self._read() as conn:
            row = conn.execute(select(*(columns or (T_SCAN,))).where(T_SCAN.c.hash == scan_hash)).first()
        if row is None:
            raise FeedbackError(f"unknown scan {scan_hash!r}")
        return row

    def get_scan_pixels(self, scan_hash: str) -> np.ndarray:
        """The stored pixels, bit for bit, in their original dtype."""
        row = self._scan_row(scan_hash, T_SCAN.c.codec, T_SCAN.c.pixels, T_SCAN.c.dtype)
        pixels = codec.decode_pixels(row.codec, row.pixels)
        return pixels.astype(np.dtype(row.dtype), copy=False)

    def get_scan_meta(self, scan_hash: str) -> dict:
        """The stored (de-identified) meta: modality, source format, spacing, window, slice, affine…"""
        row = self._scan_row(scan_hash, T_SCAN.c.meta)
        return dict(row.meta or {})

    def get_scan_info(self, scan_hash: str) -> dict:
        """Hash, dtype, shape, height, width, modality, source format and meta (no pixels)."""
        row = self._scan_row(scan_hash, T_SCAN.c.hash, T_SCAN.c.dtype, T_SCAN.c.shape, T_SCAN.c.height,
                             T_SCAN.c.width, T_SCAN.c.modality, T_SCAN.c.source_format, T_SCAN.c.meta,
                             T_SCAN.c.created_at)
        return dict(row._mapping)

    def get_scan_display_png(self, scan_hash: str) -> bytes | None:
        """The uint8 RGB image the model and the clinician saw, as PNG bytes (None if none was stored)."""
        return self._scan_row(scan_hash, T_SCAN.c.display_png).display_png

    def add_case(self, scan_hash: str, question: str, created_by: str | int, target: str | None = None) -> int:
        """A scan and a clinical question (optionally the lesion's name, used when a reasoning has none)."""
        if not isinstance(question, str) or not question.strip():
            raise FeedbackError("a case needs a non-empty question")
        if target is not None and (not isinstance(target, str) or not target.strip()):
            raise FeedbackError("a case's target, when given, must be a non-empty name")
        self._scan_row(scan_hash, T_SCAN.c.hash)
        author = self._require_annotator(created_by, "case author")
        row = dict(scan_hash=scan_hash, question=question.strip(), target=target.strip() if target else None,
                   created_by=author.id, created_at=utcnow())
        return self._write(lambda conn: int(conn.execute(insert(T_CASE).values(**row)).inserted_primary_key[0]))

    def get_case(self, case_id: int) -> dict:
        with self._read() as conn:
            row = conn.execute(select(T_CASE).where(T_CASE.c.id == _as_id(case_id, "case id"))).first()
        if row is None:
            raise FeedbackError(f"unknown case {case_id!r}")
        return dict(row._mapping)

    # ------------------------------------------------------------------ model versions and runs
    def add_model_version(self, name: str, checkpoint_path: str | os.PathLike | None = None,
                          parent: str | int | None = None, metrics: dict | None = None,
                          notes: str | None = None) -> int:
        """Register a model version (idempotent on name; a name never points at two checkpoints)."""
        if not isinstance(name, str) or not name.strip():
            raise FeedbackError("a model version needs a non-empty name")
        name = name.strip()
        checkpoint = str(checkpoint_path) if checkpoint_path is not None else None
        parent_id = self._model_version_id(parent) if parent is not None else None

        def write(conn: Connection) -> int:
            row = conn.execute(select(T_MV.c.id, T_MV.c.checkpoint_path).where(T_MV.c.name == name)).first()
            if row is not None:
                if checkpoint is not None and row.checkpoint_path not in (None, checkpoint):
                    raise FeedbackError(f"model version {name!r} is already registered with checkpoint "
                                        f"{row.checkpoint_path!r}; give the new checkpoint a new name")
                return int(row.id)
            return int(conn.execute(insert(T_MV).values(
                name=name, checkpoint_path=checkpoint, parent_id=parent_id, metrics=_jsonable(metrics),
                notes=notes, created_at=utcnow())).inserted_primary_key[0])

        return self._idempotent(write)

    def list_model_versions(self) -> list[dict]:
        parent = T_MV.alias("parent")
        query = (select(T_MV, parent.c.name.label("parent")).select_from(T_MV.outerjoin(parent, T_MV.c.parent_id
                                                                                           == parent.c.id))
                 .order_by(T_MV.c.id))
        with self._read() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]

    def _model_version_id(self, ref: str | int) -> int:
        if isinstance(ref, str):
            column, value = T_MV.c.name, ref.strip()
        else:
            column, value = T_MV.c.id, _as_int(ref, "model version id")
        with self._read() as conn:
            row = conn.execute(select(T_MV.c.id).where(column == value)).first()
        if row is None:
            raise FeedbackError(f"unknown model version {ref!r}; register it first (add_model_version)")
        return int(row.id)

    def add_run(self, case_id: int, model_version: str | int | None, sampling: dict | None,
                candidates: Sequence[Any]) -> tuple[int, list[int]]:
        """Store one sampling of a model on a case and its candidates (one group); returns (run id, candidate ids).

        Each candidate's text is parsed with `coreseg.answer.parse_answer` (reasoning, target, boxes and parse
        errors are kept beside the raw text) and its mask is checked against the scan's height × width.
        """
        case = self.get_case(case_id)
        info = self.get_scan_info(case["scan_hash"])
        height, width = info["height"], info["width"]
        if not candidates:
            raise FeedbackError("a run needs at least one candidate")
        if model_version is None:
            model_version = getattr(candidates[0], "model_version", "") or None
            if model_version is None:
                raise FeedbackError("say which model version produced the candidates")
        version_id = self._model_version_id(model_version)
        rows = []
        for index, cand in enumerate(candidates):
            text = getattr(cand, "text", None)
            if not isinstance(text, str):
                raise FeedbackError(f"candidate {index}: text must be a string")
            mask = _check_mask(getattr(cand, "mask", None), height, width, f"candidate {index}'s mask")
            score = getattr(cand, "mask_score", None)
            try:
                score = float(score)
            except (TypeError, ValueError):
                raise FeedbackError(f"candidate {index}: mask_score must be a number, got {score!r}") from None
            token_ids = list(getattr(cand, "token_ids", None) or [])
            logprobs = list(getattr(cand, "token_logprobs", None) or [])
            if token_ids and logprobs and len(token_ids) != len(logprobs):
                raise FeedbackError(f"candidate {index}: {len(token_ids)} token ids but {len(logprobs)} log-probs")
            parsed = parse_answer(text, (height, width))
            answer = parsed.answer
            rows.append(dict(
                group_index=index, text=text, reasoning=answer.reasoning if answer else "",
                target=answer.target if answer else "", boxes=[list(b) for b in answer.boxes] if answer else [],
                parse_errors=list(parsed.errors), mask_png=codec.encode_mask(mask), mask_area=int(mask.sum()),
                mask_score=score, token_ids=codec.pack_ints(token_ids), token_logprobs=codec.pack_floats(logprobs),
                sampling=_jsonable(dict(getattr(cand, "sampling", None) or {})),
                trained=bool(getattr(cand, "trained", True))))
        run_row = dict(case_id=case["id"], model_version_id=version_id, sampling=_jsonable(dict(sampling or {})),
                       created_at=utcnow())

        def write(conn: Connection) -> tuple[int, list[int]]:
            run_id = int(conn.execute(insert(T_RUN).values(**run_row)).inserted_primary_key[0])
            ids = [int(conn.execute(insert(T_CAND).values(run_id=run_id, **r)).inserted_primary_key[0])
                   for r in rows]
            return run_id, ids

        return self._write(write)

    def _run_info(self, run_id: int) -> _RunInfo:
        run_id = _as_id(run_id, "run id")
        cached = self._run_cache.get(run_id)
        if cached is not None:
            return cached
        with self._read() as conn:
            row = conn.execute(
                select(T_RUN.c.id, T_RUN.c.case_id, T_SCAN.c.height, T_SCAN.c.width, T_MV.c.name)
                .select_from(T_RUN.join(T_CASE, T_RUN.c.case_id == T_CASE.c.id)
                             .join(T_SCAN, T_CASE.c.scan_hash == T_SCAN.c.hash)
                             .join(T_MV, T_RUN.c.model_version_id == T_MV.c.id))
                .where(T_RUN.c.id == run_id)).first()
            if row is None:
                raise FeedbackError(f"unknown run {run_id}")
            ids = conn.execute(select(T_CAND.c.id).where(T_CAND.c.run_id == run_id)
                               .order_by(T_CAND.c.group_index)).scalars().all()
        info = _RunInfo(run_id, int(row.case_id), int(row.height), int(row.width), tuple(int(i) for i in ids),
                        row.name)
        with self._cache_lock:
            self._run_cache[run_id] = info
            while len(self._run_cache) > 4096:
                self._run_cache.popitem(last=False)
        return info

    def _candidate_mask(self, candidate_id: int) -> np.ndarray:
        cached = self._mask_cache.get(candidate_id)
        if cached is None:
            with self._read() as conn:
                data = conn.execute(select(T_CAND.c.mask_png).where(T_CAND.c.id == candidate_id)).scalar_one()
            cached = codec.decode_mask(data)
            cached.setflags(write=False)
            with self._cache_lock:
                self._mask_cache[candidate_id] = cached
                while len(self._mask_cache) > 256:
                    self._mask_cache.popitem(last=False)
        return cached

    def get_run(self, run_id: int) -> dict:
        info = self._run_info(run_id)
        with self._read() as conn:
            row = conn.execute(select(T_RUN).where(T_RUN.c.id == info.run_id)).first()
        return dict(row._mapping) | {"model_version": info.model_version, "candidate_ids": list(info.candidate_ids)}

    def get_candidates(self, run_id: int, with_masks: bool = True) -> list[dict]:
        """The candidates of a run in group order: text, parsed fields, mask (bool), score, tokens, log-probs."""
        info = self._run_info(run_id)
        with self._read() as conn:
            rows = conn.execute(select(T_CAND).where(T_CAND.c.run_id == info.run_id)
                                .order_by(T_CAND.c.group_index)).all()
        return [self._candidate_dict(r, with_masks) for r in rows]

    @staticmethod
    def _candidate_dict(row, with_masks: bool) -> dict:
        out = dict(row._mapping)
        out["token_ids"] = codec.unpack_ints(out["token_ids"])
        out["token_logprobs"] = codec.unpack_floats(out["token_logprobs"])
        if with_masks:
            out["mask"] = codec.decode_mask(out["mask_png"])
        return out

    # ------------------------------------------------------------------ feedback
    def submit_feedback(self, case_id: int, run_id: int, annotator: str | int, *,
                        ranking: dict[int, int] | None = None,
                        ratings: dict[int, dict[str, int]] | None = None,
                        chosen_candidate_id: int | None = None, edited_reasoning: str | None = None,
                        mask: np.ndarray | None = None, clicks: int = 0, strokes: int = 0, seconds: float = 0.0,
                        status: str = "submitted", submission_id: str | None = None,
                        supersedes: int | None = None, comment: str | None = None) -> int:
        """Store one submission atomically; returns its feedback id.

        ranking: candidate id → rank (1 = best, ties allowed, 1 … group size); ratings: candidate id → {scale:
        integer on `RATING_SCALES`}; edited_reasoning: the annotator's rewrite of the chosen (or unique top-ranked,
        or only) candidate's reasoning; mask: the corrected mask (H×W bool) of that same proposal, whose Dice
        against the proposal is stored with the clicks, strokes and seconds spent. `submission_id` makes the call
        idempotent: the same id with the same content returns the first row's id. `supersedes` names this
        annotator's earlier draft on the same run that this row finalises (submitted) or discards.
        Raises `FeedbackError`, before writing anything, on any invalid part.
        """
        info = self._run_info(run_id)
        case_id = _as_id(case_id, "case id")
        if info.case_id != case_id:
            raise FeedbackError(f"run {info.run_id} belongs to case {info.case_id}, not case {case_id}")
        person = self._require_annotator(annotator)
        if status not in Status.__members__:
            raise FeedbackError(f"unknown status {status!r}; use one of {', '.join(Status.__members__)}")
        group = set(info.candidate_ids)
        n = len(info.candidate_ids)

        def candidate(value: Any, what: str) -> int:
            cid = _as_id(value, what)
            if cid not in group:
                raise FeedbackError(f"{what} {cid} is not one of run {info.run_id}'s candidates "
                                    f"{sorted(group)}")
            return cid

        ranks: dict[int, int] = {}
        if ranking is not None:
            if not isinstance(ranking, dict):
                raise FeedbackError("ranking must map candidate id → rank")
            for key, value in ranking.items():
                cid = candidate(key, "ranked candidate")
                rank = _as_int(value, f"rank of candidate {cid}")
                if not 1 <= rank <= n:
                    raise FeedbackError(f"rank {rank} of candidate {cid} is out of range: ranks go from 1 (best) "
                                        f"to {n} (the group's size)")
                ranks[cid] = rank
        scores: dict[int, dict[str, int]] = {}
        if ratings is not None:
            if not isinstance(ratings, dict):
                raise FeedbackError("ratings must map candidate id → {scale: value}")
            for key, per_scale in ratings.items():
                cid = candidate(key, "rated candidate")
                if not isinstance(per_scale, dict) or not per_scale:
                    raise FeedbackError(f"ratings of candidate {cid} must be a non-empty {{scale: value}} dict")
                for scale, value in per_scale.items():
                    if scale not in RATING_SCALES:
                        raise FeedbackError(f"unknown rating scale {scale!r}; the scales are "
                                            f"{', '.join(RATING_SCALES)}")
                    low, high = RATING_SCALES[scale]
                    value = _as_int(value, f"{scale} rating of candidate {cid}")
                    if not low <= value <= high:
                        raise FeedbackError(f"{scale} rating {value} of candidate {cid} is off the scale "
                                            f"{low}–{high}")
                    scores.setdefault(cid, {})[scale] = value
        chosen = candidate(chosen_candidate_id, "chosen candidate") if chosen_candidate_id is not None else None

        def proposal(what: str) -> int:
            if chosen is not None:
                return chosen
            best = [c for c, r in ranks.items() if r == min(ranks.values())] if ranks else []
            if len(best) == 1:
                return best[0]
            if n == 1:
                return info.candidate_ids[0]
            raise FeedbackError(f"{what}: say which candidate it starts from (chosen_candidate_id)")

        edited, edited_candidate = None, None
        if edited_reasoning is not None:
            if not isinstance(edited_reasoning, str) or not edited_reasoning.strip():
                raise FeedbackError("edited reasoning, when given, must be non-empty text")
            if any(tag in edited_reasoning for tag in (THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE,
                                                       SEG_TOKEN)):
                raise FeedbackError("edited reasoning must be plain text, without <think>, <answer> or <seg>")
            edited = edited_reasoning
            edited_candidate = proposal("the edited reasoning")
        correction = None
        if mask is not None:
            corrected = _check_mask(mask, info.height, info.width, "the corrected mask")
            proposal_id = proposal("the corrected mask")
            correction = dict(proposal_candidate_id=proposal_id, mask_png=codec.encode_mask(corrected),
                              height=info.height, width=info.width, mask_area=int(corrected.sum()),
                              proposal_dice=float(dice(self._candidate_mask(proposal_id), corrected)))
        clicks = _as_int(clicks, "clicks")
        strokes = _as_int(strokes, "strokes")
        if clicks < 0 or strokes < 0:
            raise FeedbackError("clicks and strokes cannot be negative")
        try:
            seconds = float(seconds)
        except (TypeError, ValueError):
            raise FeedbackError(f"seconds must be a number, got {seconds!r}") from None
        if not math.isfinite(seconds) or seconds < 0:
            raise FeedbackError(f"seconds must be a finite number ≥ 0, got {seconds}")
        if comment is not None and not isinstance(comment, str):
            raise FeedbackError("comment must be text")
        if submission_id is not None and (not isinstance(submission_id, str) or not submission_id.strip()
                                          or len(submission_id) > 200):
            raise FeedbackError("submission_id must be a non-empty string of at most 200 characters")
        supersedes_id = _as_id(supersedes, "superseded feedback id") if supersedes is not None else None
        empty = not ranks and not scores and chosen is None and edited is None and correction is None
        if empty and status != Status.discarded.value:
            raise FeedbackError("empty submission: give a ranking, ratings, a chosen candidate, an edited "
                                "reasoning or a corrected mask (or discard it)")
        payload = {
            "case": case_id, "run": info.run_id, "annotator": int(person.id), "status": status,
            "ranking": sorted(ranks.items()), "ratings": sorted((c, sorted(s.items())) for c, s in scores.items()),
            "chosen": chosen, "edited": edited, "edited_candidate": edited_candidate,
            "mask": hashlib.sha256(correction["mask_png"]).hexdigest() if correction else None,
            "proposal": correction["proposal_candidate_id"] if correction else None,
            "clicks": clicks, "strokes": strokes, "seconds": seconds, "supersedes": supersedes_id,
            "comment": comment,
        }
        digest = _payload_hash(payload)
        row = dict(case_id=case_id, run_id=info.run_id, annotator_id=int(person.id), status=status,
                   submission_id=submission_id, payload_sha256=digest, chosen_candidate_id=chosen,
                   edited_reasoning=edited, edited_candidate_id=edited_candidate, clicks=clicks, strokes=strokes,
                   seconds=seconds, supersedes_id=supersedes_id, comment=comment)

        def write(conn: Connection) -> int:
            if submission_id is not None:
                prior = conn.execute(select(T_FB.c.id, T_FB.c.payload_sha256)
                                     .where(T_FB.c.submission_id == submission_id)).first()
                if prior is not None:
                    if prior.payload_sha256 != digest:
                        raise FeedbackError(f"submission {submission_id!r} was already stored (feedback "
                                            f"{prior.id}) with different content; use a new submission id")
                    return int(prior.id)
            if supersedes_id is not None:
                old = conn.execute(select(T_FB.c.run_id, T_FB.c.annotator_id, T_FB.c.status)
                                   .where(T_FB.c.id == supersedes_id)).first()
                if old is None or old.run_id != info.run_id or old.annotator_id != person.id:
                    raise FeedbackError(f"feedback {supersedes_id} is not this annotator's on run {info.run_id}")
                if old.status != Status.draft.value:
                    raise FeedbackError(f"feedback {supersedes_id} is {old.status}; only a draft can be superseded")
                if conn.execute(select(T_FB.c.id).where(T_FB.c.supersedes_id == supersedes_id)).first():
                    raise FeedbackError(f"draft {supersedes_id} was already superseded")
            feedback_id = int(conn.execute(insert(T_FB).values(created_at=utcnow(), **row))
                              .inserted_primary_key[0])
            if ranks:
                conn.execute(insert(T_RANK), [dict(feedback_id=feedback_id, candidate_id=c, rank=r)
                                              for c, r in ranks.items()])
            if scores:
                conn.execute(insert(T_RATE), [dict(feedback_id=feedback_id, candidate_id=c, scale=s, value=v)
                                              for c, per in scores.items() for s, v in per.items()])
            if correction:
                conn.execute(insert(T_CORR).values(feedback_id=feedback_id, **correction))
            return feedback_id

        return self._idempotent(write)

    def get_feedback(self, feedback_id: int, with_mask: bool = True) -> dict:
        """One submission as stored: ranking, ratings, edit, corrected mask, effort, reviews."""
        feedback_id = _as_id(feedback_id, "feedback id")
        with self._read() as conn:
            row = conn.execute(select(T_FB, T_ANN.c.name.label("annotator"))
                               .select_from(T_FB.join(T_ANN, T_FB.c.annotator_id == T_ANN.c.id))
                               .where(T_FB.c.id == feedback_id)).first()
            if row is None:
                raise FeedbackError(f"unknown feedback {feedback_id}")
            out = dict(row._mapping)
            out["ranking"] = {r.candidate_id: r.rank for r in conn.execute(
                select(T_RANK).where(T_RANK.c.feedback_id == feedback_id).order_by(T_RANK.c.id))}
            ratings: dict[int, dict[str, int]] = {}
            for r in conn.execute(select(T_RATE).where(T_RATE.c.feedback_id == feedback_id).order_by(T_RATE.c.id)):
                ratings.setdefault(r.candidate_id, {})[r.scale] = r.value
            out["ratings"] = ratings
            corr = conn.execute(select(T_CORR).where(T_CORR.c.feedback_id == feedback_id)).first()
            out["correction"] = None
            if corr is not None:
                c = dict(corr._mapping)
                if with_mask:
                    c["mask"] = codec.decode_mask(c["mask_png"])
                out["correction"] = c
            out["reviews"] = [dict(r._mapping) for r in conn.execute(
                select(T_REV, T_ANN.c.name.label("reviewer"))
                .select_from(T_REV.join(T_ANN, T_REV.c.reviewer_id == T_ANN.c.id))
                .where(T_REV.c.feedback_id == feedback_id).order_by(T_REV.c.id))]
        out["mask"] = out["correction"]["mask"] if out["correction"] and with_mask else None
        return out

    # ------------------------------------------------------------------ reviews and the accepted mask
    def review(self, feedback_id: int, reviewer: str | int, decision: str, reason: str = "",
               review_id: str | None = None) -> int:
        """Accept, reject or flag a submitted feedback row (reject and flag need a reason); returns the review id."""
        feedback_id = _as_id(feedback_id, "feedback id")
        person = self._require_annotator(reviewer, "reviewer")
        if person.role not in (Role.reviewer.value, Role.admin.value):
            raise FeedbackError(f"{person.name} is an {person.role}; only reviewers and admins can review")
        if decision not in Decision.__members__:
            raise FeedbackError(f"unknown decision {decision!r}; use accept, reject or flag")
        if not isinstance(reason, str):
            raise FeedbackError("reason must be text")
        if decision != Decision.accept.value and not reason.strip():
            raise FeedbackError(f"a {decision} needs a reason")
        if review_id is not None and (not isinstance(review_id, str) or not review_id.strip()):
            raise FeedbackError("review_id must be a non-empty string")
        row = dict(feedback_id=feedback_id, reviewer_id=int(person.id), decision=decision, reason=reason,
                   review_id=review_id)

        def write(conn: Connection) -> int:
            if review_id is not None:
                prior = conn.execute(select(T_REV).where(T_REV.c.review_id == review_id)).first()
                if prior is not None:
                    if (prior.feedback_id, prior.reviewer_id, prior.decision, prior.reason) != (
                            feedback_id, person.id, decision, reason):
                        raise FeedbackError(f"review {review_id!r} was already stored with different content")
                    return int(prior.id)
            status = conn.execute(select(T_FB.c.status).where(T_FB.c.id == feedback_id)).scalar_one_or_none()
            if status is None:
                raise FeedbackError(f"unknown feedback {feedback_id}")
            if status != Status.submitted.value:
                raise FeedbackError(f"feedback {feedback_id} is {status}; only submitted feedback can be reviewed")
            return int(conn.execute(insert(T_REV).values(created_at=utcnow(), **row)).inserted_primary_key[0])

        return self._idempotent(write)

    @staticmethod
    def _latest_review():
        """Subquery: each reviewed feedback row's latest review (decision, reason, reviewer, time)."""
        latest = select(T_REV.c.feedback_id, func.max(T_REV.c.id).label("review_pk")).group_by(
            T_REV.c.feedback_id).subquery("latest_ids")
        return (select(T_REV.c.feedback_id, T_REV.c.decision, T_REV.c.reason, T_REV.c.reviewer_id,
                       T_REV.c.created_at.label("reviewed_at"))
                .select_from(T_REV.join(latest, T_REV.c.id == latest.c.review_pk)).subquery("latest_review"))

    def accepted_corrections(self, case_ids: Iterable[int] | None = None) -> dict[int, dict]:
        """case id → its accepted correction: the latest (newest feedback) correction whose latest review accepts
        it. Carries the feedback id, annotator, proposal candidate, Dice, edit and the mask's PNG bytes."""
        latest = self._latest_review()
        query = (select(T_FB.c.case_id, T_FB.c.id.label("feedback_id"), T_FB.c.annotator_id, T_FB.c.run_id,
                        T_FB.c.edited_reasoning, T_FB.c.edited_candidate_id, T_FB.c.chosen_candidate_id,
                        T_FB.c.created_at, T_CORR.c.proposal_candidate_id, T_CORR.c.proposal_dice,
                        T_CORR.c.mask_png, T_CORR.c.height, T_CORR.c.width, T_CORR.c.mask_area,
                        latest.c.reviewed_at)
                 .select_from(T_FB.join(T_CORR, T_CORR.c.feedback_id == T_FB.c.id)
                              .join(latest, latest.c.feedback_id == T_FB.c.id))
                 .where(latest.c.decision == Decision.accept.value, T_FB.c.status == Status.submitted.value)
                 .order_by(T_FB.c.case_id, T_FB.c.id))
        out: dict[int, dict] = {}
        with self._read() as conn:
            if case_ids is None:
                rows = conn.execute(query).all()
            else:
                ids = sorted({int(c) for c in case_ids})
                rows = [r for chunk in range(0, len(ids), _CHUNK)
                        for r in conn.execute(query.where(T_FB.c.case_id.in_(ids[chunk:chunk + _CHUNK])))]
        for r in rows:  # ordered by feedback id: the last one per case wins
            out[int(r.case_id)] = dict(r._mapping)
        return out

    def accepted_mask(self, case_id: int) -> np.ndarray | None:
        """The case's accepted mask (latest accepted correction), or None when none is accepted yet."""
        found = self.accepted_corrections([_as_id(case_id, "case id")]).get(int(case_id))
        return codec.decode_mask(found["mask_png"]) if found else None

    # ------------------------------------------------------------------ reading for the app, the reviewer, exports
    def queue(self, status: str | None = "submitted", model_version: str | None = None,
              annotator: str | int | None = None, review_state: str | None = None, case_id: int | None = None,
              limit: int | None = None) -> list[dict]:
        """Feedback rows for the reviewer page, oldest first, with their latest review.

        review_state: None (all), "unreviewed", or a decision ("accept", "reject", "flag"). Drafts that were
        later finalised or discarded are left out.
        """
        latest = self._latest_review()
        reviewer = T_ANN.alias("reviewer")
        query = (select(T_FB.c.id.label("feedback_id"), T_FB.c.case_id, T_FB.c.run_id, T_CASE.c.scan_hash,
                        T_CASE.c.question, T_MV.c.name.label("model_version"), T_ANN.c.name.label("annotator"),
                        T_FB.c.status, T_FB.c.created_at, T_FB.c.chosen_candidate_id,
                        (T_FB.c.edited_reasoning.is_not(None)).label("edited"),
                        T_CORR.c.id.is_not(None).label("has_mask"), T_CORR.c.proposal_dice, T_FB.c.seconds,
                        T_FB.c.clicks, T_FB.c.strokes, latest.c.decision.label("review"),
                        latest.c.reason.label("review_reason"), reviewer.c.name.label("reviewer"),
                        latest.c.reviewed_at)
                 .select_from(_feedback_joins(latest).outerjoin(reviewer, reviewer.c.id == latest.c.reviewer_id))
                 .where(_not_superseded())
                 .order_by(T_FB.c.id))
        if status is not None:
            if status not in Status.__members__:
                raise FeedbackError(f"unknown status {status!r}")
            query = query.where(T_FB.c.status == status)
        if model_version is not None:
            query = query.where(T_MV.c.name == model_version)
        if annotator is not None:
            person = self._require_annotator(annotator)
            query = query.where(T_FB.c.annotator_id == person.id)
        if case_id is not None:
            query = query.where(T_FB.c.case_id == _as_id(case_id, "case id"))
        if review_state == "unreviewed":
            query = query.where(latest.c.decision.is_(None))
        elif review_state is not None:
            if review_state not in Decision.__members__:
                raise FeedbackError(f"unknown review state {review_state!r}")
            query = query.where(latest.c.decision == review_state)
        if limit is not None:
            query = query.limit(int(limit))
        with self._read() as conn:
            rows = [dict(r._mapping) for r in conn.execute(query)]
        for r in rows:
            r["edited"], r["has_mask"] = bool(r["edited"]), bool(r["has_mask"])
        return rows

    def feedback_history(self, case_id: int) -> list[dict]:
        """The audit trail of a case, oldest first: the case, each run, each submission, each review."""
        case = self.get_case(case_id)
        with self._read() as conn:
            author = self._annotator_row(conn, int(case["created_by"]))
            runs = conn.execute(select(T_RUN, T_MV.c.name.label("model_version"))
                                .select_from(T_RUN.join(T_MV, T_RUN.c.model_version_id == T_MV.c.id))
                                .where(T_RUN.c.case_id == case["id"]).order_by(T_RUN.c.id)).all()
            fb_ids = conn.execute(select(T_FB.c.id).where(T_FB.c.case_id == case["id"])
                                  .order_by(T_FB.c.id)).scalars().all()
        events = [{"kind": "case", "at": case["created_at"], "actor": author.name, "case_id": case["id"],
                   "question": case["question"], "scan_hash": case["scan_hash"]}]
        for run in runs:
            events.append({"kind": "run", "at": run.created_at, "actor": run.model_version, "run_id": run.id,
                           "sampling": run.sampling, "candidate_ids": list(self._run_info(run.id).candidate_ids)})
        for fid in fb_ids:
            fb = self.get_feedback(fid, with_mask=False)
            corr = fb["correction"]
            events.append({"kind": "feedback", "at": fb["created_at"], "actor": fb["annotator"], "feedback_id": fid,
                           "run_id": fb["run_id"], "status": fb["status"], "submission_id": fb["submission_id"],
                           "ranking": fb["ranking"], "ratings": fb["ratings"],
                           "chosen_candidate_id": fb["chosen_candidate_id"],
                           "edited_reasoning": fb["edited_reasoning"], "comment": fb["comment"],
                           "supersedes_id": fb["supersedes_id"], "clicks": fb["clicks"], "strokes": fb["strokes"],
                           "seconds": fb["seconds"],
                           "correction": None if corr is None else {
                               k: corr[k] for k in ("proposal_candidate_id", "proposal_dice", "mask_area")}})
            for rev in fb["reviews"]:
                events.append({"kind": "review", "at": rev["created_at"], "actor": rev["reviewer"],
                               "feedback_id": fid, "review_pk": rev["id"], "decision": rev["decision"],
                               "reason": rev["reason"]})
        order = {"case": 0, "run": 1, "feedback": 2, "review": 3}
        events.sort(key=lambda e: (e["at"], order[e["kind"]]))
        return events

    def feedback_rows(self, status: str | Sequence[str] | None = "submitted", since: datetime | None = None,
                      until: datetime | None = None, model_version: str | Sequence[str] | None = None,
                      min_raters: int | None = None) -> list[dict]:
        """Filtered feedback for exports and summaries, in id order (one query, no masks).

        Each row: feedback fields, annotator name, model version, scan hash, question, target, correction
        fields (proposal, Dice, area) and the latest review. `min_raters` keeps runs that at least that many
        distinct annotators gave (filtered) feedback on. Superseded drafts are left out.
        """
        latest = self._latest_review()
        query = (select(T_FB, T_ANN.c.name.label("annotator"), T_MV.c.name.label("model_version"),
                        T_CASE.c.scan_hash, T_CASE.c.question, T_CASE.c.target.label("case_target"),
                        T_CORR.c.proposal_candidate_id, T_CORR.c.proposal_dice, T_CORR.c.mask_area,
                        latest.c.decision.label("review"))
                 .select_from(_feedback_joins(latest))
                 .where(_not_superseded())
                 .order_by(T_FB.c.id))
        if status is not None:
            statuses = [status] if isinstance(status, str) else list(status)
            for s in statuses:
                if s not in Status.__members__:
                    raise FeedbackError(f"unknown status {s!r}")
            query = query.where(T_FB.c.status.in_(statuses))
        if since is not None:
            query = query.where(T_FB.c.created_at >= _aware(since))
        if until is not None:
            query = query.where(T_FB.c.created_at < _aware(until))
        if model_version is not None:
            names = [model_version] if isinstance(model_version, str) else list(model_version)
            query = query.where(T_MV.c.name.in_(names))
        with self._read() as conn:
            rows = [dict(r._mapping) for r in conn.execute(query)]
        if min_raters:
            raters: dict[int, set[int]] = {}
            for r in rows:
                raters.setdefault(r["run_id"], set()).add(r["annotator_id"])
            rows = [r for r in rows if len(raters[r["run_id"]]) >= int(min_raters)]
        return rows

    def _chunked(self, query_for, ids: Iterable[int]) -> list:
        ids = sorted({int(i) for i in ids})
        out: list = []
        with self._read() as conn:
            for start in range(0, len(ids), _CHUNK):
                out.extend(conn.execute(query_for(ids[start:start + _CHUNK])).all())
        return out

    def rankings_for(self, feedback_ids: Iterable[int]) -> dict[int, dict[int, int]]:
        """feedback id → {candidate id: rank}."""
        out: dict[int, dict[int, int]] = {}
        for r in self._chunked(lambda ids: select(T_RANK).where(T_RANK.c.feedback_id.in_(ids))
                               .order_by(T_RANK.c.id), feedback_ids):
            out.setdefault(r.feedback_id, {})[r.candidate_id] = r.rank
        return out

    def ratings_for(self, feedback_ids: Iterable[int]) -> dict[int, dict[int, dict[str, int]]]:
        """feedback id → {candidate id: {scale: value}}."""
        out: dict[int, dict[int, dict[str, int]]] = {}
        for r in self._chunked(lambda ids: select(T_RATE).where(T_RATE.c.feedback_id.in_(ids))
                               .order_by(T_RATE.c.id), feedback_ids):
            out.setdefault(r.feedback_id, {}).setdefault(r.candidate_id, {})[r.scale] = r.value
        return out

    def candidates_for_runs(self, run_ids: Iterable[int]) -> dict[int, list[dict]]:
        """run id → its candidates in group order (mask as PNG bytes in `mask_png`, tokens unpacked)."""
        out: dict[int, list[dict]] = {}
        for r in self._chunked(lambda ids: select(T_CAND).where(T_CAND.c.run_id.in_(ids))
                               .order_by(T_CAND.c.run_id, T_CAND.c.group_index), run_ids):
            out.setdefault(r.run_id, []).append(self._candidate_dict(r, with_masks=False))
        return out

    def runs_for(self, run_ids: Iterable[int]) -> dict[int, dict]:
        """run id → run fields with the model version's name."""
        rows = self._chunked(lambda ids: select(T_RUN, T_MV.c.name.label("model_version"))
                             .select_from(T_RUN.join(T_MV, T_RUN.c.model_version_id == T_MV.c.id))
                             .where(T_RUN.c.id.in_(ids)), run_ids)
        return {r.id: dict(r._mapping) for r in rows}

    def cases_for(self, case_ids: Iterable[int]) -> dict[int, dict]:
        rows = self._chunked(lambda ids: select(T_CASE).where(T_CASE.c.id.in_(ids)), case_ids)
        return {r.id: dict(r._mapping) for r in rows}

    def scans_for(self, scan_hashes: Iterable[str]) -> dict[str, dict]:
        """hash → scan fields without the pixels (display PNG included)."""
        hashes = sorted(set(scan_hashes))
        cols = [c for c in T_SCAN.c if c.name != "pixels"]
        out: dict[str, dict] = {}
        with self._read() as conn:
            for start in range(0, len(hashes), _CHUNK):
                for r in conn.execute(select(*cols).where(T_SCAN.c.hash.in_(hashes[start:start + _CHUNK]))):
                    out[r.hash] = dict(r._mapping)
        return out

    def reviews_for(self, feedback_ids: Iterable[int]) -> dict[int, list[dict]]:
        out: dict[int, list[dict]] = {}
        for r in self._chunked(lambda ids: select(T_REV, T_ANN.c.name.label("reviewer"))
                               .select_from(T_REV.join(T_ANN, T_REV.c.reviewer_id == T_ANN.c.id))
                               .where(T_REV.c.feedback_id.in_(ids)).order_by(T_REV.c.id), feedback_ids):
            out.setdefault(r.feedback_id, []).append(dict(r._mapping))
        return out

    def correction_pngs(self, feedback_ids: Iterable[int]) -> dict[int, bytes]:
        """feedback id → its corrected mask's PNG bytes."""
        rows = self._chunked(lambda ids: select(T_CORR.c.feedback_id, T_CORR.c.mask_png)
                             .where(T_CORR.c.feedback_id.in_(ids)), feedback_ids)
        return {r.feedback_id: r.mask_png for r in rows}

    def counts(self) -> dict[str, int]:
        """Rows per table (for manifests and health checks)."""
        tables = {"annotators": T_ANN, "scans": T_SCAN, "cases": T_CASE, "model_versions": T_MV, "runs": T_RUN,
                  "candidates": T_CAND, "feedback": T_FB, "rankings": T_RANK, "ratings": T_RATE,
                  "corrections": T_CORR, "reviews": T_REV, "training_rounds": T_ROUND}
        with self._read() as conn:
            return {name: int(conn.execute(select(func.count()).select_from(t)).scalar_one())
                    for name, t in tables.items()}

    # ------------------------------------------------------------------ training rounds
    def add_training_round(self, base_version: str | int | None, out_version: str | int,
                           feedback_ids: Iterable[int], metrics: dict | None = None,
                           report_path: str | os.PathLike | None = None) -> int:
        """Record which feedback went into a training run, the version it produced and its evaluation."""
        base_id = self._model_version_id(base_version) if base_version is not None else None
        out_id = self._model_version_id(out_version)
        ids = sorted({_as_id(f, "feedback id") for f in feedback_ids})
        if not ids:
            raise FeedbackError("a training round needs the feedback ids that went into it")
        found = self._chunked(lambda chunk: select(T_FB.c.id).where(T_FB.c.id.in_(chunk)), ids)
        missing = sorted(set(ids) - {r.id for r in found})
        if missing:
            raise FeedbackError(f"unknown feedback ids {missing[:10]}{'…' if len(missing) > 10 else ''}")
        row = dict(base_version_id=base_id, out_version_id=out_id, metrics=_jsonable(metrics),
                   report_path=str(report_path) if report_path is not None else None, created_at=utcnow())

        def write(conn: Connection) -> int:
            round_id = int(conn.execute(insert(T_ROUND).values(**row)).inserted_primary_key[0])
            conn.execute(insert(T_ROUND_FB), [dict(round_id=round_id, feedback_id=f) for f in ids])
            return round_id

        return self._write(write)

    def list_training_rounds(self) -> list[dict]:
        base, out = T_MV.alias("base"), T_MV.alias("out")
        query = (select(T_ROUND, base.c.name.label("base_version"), out.c.name.label("out_version"))
                 .select_from(T_ROUND.outerjoin(base, T_ROUND.c.base_version_id == base.c.id)
                              .join(out, T_ROUND.c.out_version_id == out.c.id)).order_by(T_ROUND.c.id))
        with self._read() as conn:
            rounds = [dict(r._mapping) for r in conn.execute(query)]
            for r in rounds:
                r["feedback_ids"] = conn.execute(select(T_ROUND_FB.c.feedback_id).where(
                    T_ROUND_FB.c.round_id == r["id"]).order_by(T_ROUND_FB.c.feedback_id)).scalars().all()
        return rounds


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
