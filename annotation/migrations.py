"""Schema migrations with frozen DDL: each step says literally what it creates, Alembic-style, by hand.

`MIGRATIONS[n]` takes a database from version n − 1 to n; a new database runs every step from 0, so a new
and an upgraded database are built by the same statements. No step reads the current models
(`annotation.schema`): a later change there never changes an old step. The tables a step creates are declared
in the step itself (SQLAlchemy Core, compiled for SQLite or PostgreSQL); a test checks that the last step's
result equals the models. To change the schema: add a step, bump `schema.SCHEMA_VERSION`, edit the models.
"""
from __future__ import annotations

from typing import Callable

from sqlalchemy import (JSON, Boolean, Column, Connection, DateTime, Float, ForeignKey, Index, Integer,
                        LargeBinary, MetaData, String, Table, UniqueConstraint, inspect, select)

from annotation import schema
from annotation.db import Database, FeedbackError

_ID = "id"
_MIGRATION_LOCK = 7_346_120  # PostgreSQL advisory lock key held while a database is created or upgraded


def _pk() -> Column:
    return Column(_ID, Integer, primary_key=True)


def _created() -> Column:
    return Column("created_at", DateTime, nullable=False)


def _v0_to_v1(conn: Connection) -> None:
    """The first release: annotators, scans, cases, model versions, runs, candidates, append-only feedback
    (rankings, ratings, corrections) and reviews."""
    md = MetaData()
    Table("schema_info", md, _pk(), Column("version", Integer, nullable=False),
          Column("updated_at", DateTime, nullable=False))
    Table("annotators", md, _pk(), Column("name", String(200), nullable=False, unique=True),
          Column("role", String(20), nullable=False), _created())
    Table("model_versions", md, _pk(), Column("name", String(200), nullable=False, unique=True),
          Column("checkpoint_path", String), Column("parent_id", Integer, ForeignKey("model_versions.id")),
          Column("metrics", JSON), Column("notes", String), _created())
    Table("scans", md, Column("hash", String(64), primary_key=True), Column("codec", String(16), nullable=False),
          Column("dtype", String(16), nullable=False), Column("shape", JSON),
          Column("height", Integer, nullable=False), Column("width", Integer, nullable=False),
          Column("modality", String(40)), Column("source_format", String(40)), Column("meta", JSON),
          Column("pixels", LargeBinary, nullable=False), Column("display_png", LargeBinary), _created())
    Table("cases", md, _pk(), Column("scan_hash", String(64), ForeignKey("scans.hash"), nullable=False, index=True),
          Column("question", String, nullable=False),
          Column("created_by", Integer, ForeignKey("annotators.id"), nullable=False), _created())
    Table("runs", md, _pk(), Column("case_id", Integer, ForeignKey("cases.id"), nullable=False, index=True),
          Column("model_version_id", Integer, ForeignKey("model_versions.id"), nullable=False, index=True),
          Column("sampling", JSON), _created())
    Table("candidates", md, _pk(), Column("run_id", Integer, ForeignKey("runs.id"), nullable=False, index=True),
          Column("group_index", Integer, nullable=False), Column("text", String, nullable=False),
          Column("reasoning", String, nullable=False), Column("target", String, nullable=False),
          Column("boxes", JSON), Column("parse_errors", JSON), Column("mask_png", LargeBinary, nullable=False),
          Column("mask_area", Integer, nullable=False), Column("mask_score", Float, nullable=False),
          Column("token_ids", LargeBinary, nullable=False), Column("token_logprobs", LargeBinary, nullable=False),
          Column("sampling", JSON), Column("trained", Boolean, nullable=False),
          UniqueConstraint("run_id", "group_index"))
    Table("feedback", md, _pk(),
          Column("case_id", Integer, ForeignKey("cases.id"), nullable=False, index=True),
          Column("run_id", Integer, ForeignKey("runs.id"), nullable=False, index=True),
          Column("annotator_id", Integer, ForeignKey("annotators.id"), nullable=False, index=True),
          Column("status", String(20), nullable=False, index=True),
          Column("submission_id", String(200), unique=True), Column("payload_sha256", String(64), nullable=False),
          Column("chosen_candidate_id", Integer, ForeignKey("candidates.id")), Column("edited_reasoning", String),
          Column("edited_candidate_id", Integer, ForeignKey("candidates.id")),
          Column("clicks", Integer, nullable=False), Column("strokes", Integer, nullable=False),
          Column("seconds", Float, nullable=False), Column("created_at", DateTime, nullable=False, index=True))
    Table("corrections", md, _pk(),
          Column("feedback_id", Integer, ForeignKey("feedback.id"), nullable=False, unique=True),
          Column("proposal_candidate_id", Integer, ForeignKey("candidates.id"), nullable=False, index=True),
          Column("mask_png", LargeBinary, nullable=False), Column("height", Integer, nullable=False),
          Column("width", Integer, nullable=False), Column("mask_area", Integer, nullable=False),
          Column("proposal_dice", Float, nullable=False))
    Table("rankings", md, _pk(),
          Column("feedback_id", Integer, ForeignKey("feedback.id"), nullable=False, index=True),
          Column("candidate_id", Integer, ForeignKey("candidates.id"), nullable=False, index=True),
          Column("rank", Integer, nullable=False), UniqueConstraint("feedback_id", "candidate_id"))
    Table("ratings", md, _pk(),
          Column("feedback_id", Integer, ForeignKey("feedback.id"), nullable=False, index=True),
          Column("candidate_id", Integer, ForeignKey("candidates.id"), nullable=False, index=True),
          Column("scale", String(60), nullable=False), Column("value", Integer, nullable=False),
          UniqueConstraint("feedback_id", "candidate_id", "scale"))
    Table("reviews", md, _pk(),
          Column("feedback_id", Integer, ForeignKey("feedback.id"), nullable=False, index=True),
          Column("reviewer_id", Integer, ForeignKey("annotators.id"), nullable=False),
          Column("decision", String(20), nullable=False), Column("reason", String, nullable=False),
          Column("review_id", String(200), unique=True), _created())
    md.create_all(conn)


def _add_column(conn: Connection, table: str, column: str, ddl_type: str) -> None:
    """ALTER TABLE … ADD COLUMN, skipped when the column is already there (a half-upgraded copy)."""
    present = {c["name"] for c in inspect(conn).get_columns(table)}
    if column not in present:
        conn.exec_driver_sql(f"ALTER TABLE {table} ADD COLUMN {column} {ddl_type}")


def _v1_to_v2(conn: Connection) -> None:
    """Training rounds; a case's target name; a submission that supersedes an earlier draft (indexed: every
    listing asks "was this row superseded?"); a free-text comment."""
    _add_column(conn, "cases", "target", "VARCHAR(200)")
    _add_column(conn, "feedback", "supersedes_id", "INTEGER REFERENCES feedback (id)")
    _add_column(conn, "feedback", "comment", "VARCHAR")
    md = MetaData()
    Table("model_versions", md, _pk())   # stubs: the existing tables the new ones refer to
    feedback = Table("feedback", md, _pk(), Column("supersedes_id", Integer))
    rounds = Table("training_rounds", md, _pk(),
                   Column("base_version_id", Integer, ForeignKey("model_versions.id")),
                   Column("out_version_id", Integer, ForeignKey("model_versions.id"), nullable=False),
                   Column("metrics", JSON), Column("report_path", String), _created())
    links = Table("training_round_feedback", md,
                  Column("round_id", Integer, ForeignKey("training_rounds.id"), primary_key=True),
                  Column("feedback_id", Integer, ForeignKey("feedback.id"), primary_key=True))
    Index("ix_feedback_supersedes_id", feedback.c.supersedes_id).create(conn, checkfirst=True)
    md.create_all(conn, tables=[rounds, links], checkfirst=True)


MIGRATIONS: dict[int, Callable[[Connection], None]] = {1: _v0_to_v1, 2: _v1_to_v2}


def upgrade(conn: Connection, from_version: int, to_version: int = schema.SCHEMA_VERSION) -> list[int]:
    """Apply every step from `from_version` + 1 to `to_version` on `conn` (inside the caller's transaction)
    and record the version reached."""
    applied = []
    for version in range(from_version + 1, to_version + 1):
        if version not in MIGRATIONS:
            raise RuntimeError(f"no migration to schema version {version}")
        MIGRATIONS[version](conn)
        applied.append(version)
    if applied:
        info = _schema_info()
        values = dict(version=to_version, updated_at=schema.utcnow())
        if from_version == 0:
            conn.execute(info.insert().values(id=1, **values))
        else:
            conn.execute(info.update().where(info.c.id == 1).values(**values))
    return applied


def _schema_info() -> Table:
    return Table("schema_info", MetaData(), Column(_ID, Integer, primary_key=True), Column("version", Integer),
                 Column("updated_at", DateTime))


def read_version(conn: Connection) -> int | None:
    """The database's schema version; None for an empty database."""
    if "schema_info" not in inspect(conn).get_table_names():
        return None
    info = _schema_info()
    return conn.execute(select(info.c.version).where(info.c.id == 1)).scalar_one_or_none()


def ensure_schema(db: Database, snapshot: Callable[[object], object] | None = None) -> None:
    """Create a new database, or upgrade an older one in place (after `snapshot(path)` of a SQLite file)."""
    with db.read() as conn:
        version = read_version(conn)
    if version is not None and version > schema.SCHEMA_VERSION:
        raise FeedbackError(f"the database is at schema version {version} but this code knows only up to "
                            f"{schema.SCHEMA_VERSION}; update the code")
    if version == schema.SCHEMA_VERSION:
        return
    if db.read_only:
        raise FeedbackError(f"the database is at schema version {version}, not {schema.SCHEMA_VERSION}; open it "
                            "writable once to upgrade it")
    if version is not None and snapshot is not None and db.path is not None:
        stamp = schema.utcnow().strftime("%Y%m%dT%H%M%S")
        try:
            snapshot(db.path.with_name(f"{db.path.name}.v{version}-{stamp}.bak"))
        except FeedbackError:  # another process opening the same file took this very copy
            pass

    def create_or_upgrade(conn: Connection) -> None:
        if conn.dialect.name == "postgresql":  # one migrator at a time (SQLite: BEGIN IMMEDIATE already)
            conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK})")
        current = read_version(conn)   # re-read under the write lock: another process may have done it
        if current is None and inspect(conn).get_table_names():
            raise FeedbackError("the database has tables but no schema_info; it is not a feedback store")
        upgrade(conn, current or 0, schema.SCHEMA_VERSION)

    db.write(create_or_upgrade)
