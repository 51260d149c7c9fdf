"""Schema migrations: upgrade an older database in place, one version at a time, inside one write transaction.

`MIGRATIONS[n]` takes a database from version n − 1 to n. Each step uses portable DDL (ADD COLUMN, CREATE
TABLE through the SQLModel metadata) so it runs on SQLite and PostgreSQL alike. `V1_DDL` is the first
release's schema as it was shipped, kept so that tests (and anyone) can build a real version-1 database.
"""
from __future__ import annotations

from typing import Callable

from sqlalchemy import Connection, inspect
from sqlmodel import SQLModel

from annotation import schema

V1_DDL: tuple[str, ...] = (
    """CREATE TABLE schema_info (id INTEGER NOT NULL, version INTEGER NOT NULL, updated_at DATETIME NOT NULL,
        PRIMARY KEY (id))""",
    """CREATE TABLE annotators (id INTEGER NOT NULL, name VARCHAR(200) NOT NULL, role VARCHAR(20) NOT NULL,
        created_at DATETIME NOT NULL, PRIMARY KEY (id), UNIQUE (name))""",
    """CREATE TABLE model_versions (id INTEGER NOT NULL, name VARCHAR(200) NOT NULL, checkpoint_path VARCHAR,
        parent_id INTEGER, metrics JSON, notes VARCHAR, created_at DATETIME NOT NULL, PRIMARY KEY (id),
        UNIQUE (name), FOREIGN KEY(parent_id) REFERENCES model_versions (id))""",
    """CREATE TABLE scans (hash VARCHAR(64) NOT NULL, codec VARCHAR(16) NOT NULL, dtype VARCHAR(16) NOT NULL,
        shape JSON, height INTEGER NOT NULL, width INTEGER NOT NULL, modality VARCHAR(40), source_format VARCHAR(40),
        meta JSON, pixels BLOB NOT NULL, display_png BLOB, created_at DATETIME NOT NULL, PRIMARY KEY (hash))""",
    """CREATE TABLE cases (id INTEGER NOT NULL, scan_hash VARCHAR(64) NOT NULL, question VARCHAR NOT NULL,
        created_by INTEGER NOT NULL, created_at DATETIME NOT NULL, PRIMARY KEY (id),
        FOREIGN KEY(scan_hash) REFERENCES scans (hash), FOREIGN KEY(created_by) REFERENCES annotators (id))""",
    "CREATE INDEX ix_cases_scan_hash ON cases (scan_hash)",
    """CREATE TABLE runs (id INTEGER NOT NULL, case_id INTEGER NOT NULL, model_version_id INTEGER NOT NULL,
        sampling JSON, created_at DATETIME NOT NULL, PRIMARY KEY (id), FOREIGN KEY(case_id) REFERENCES cases (id),
        FOREIGN KEY(model_version_id) REFERENCES model_versions (id))""",
    "CREATE INDEX ix_runs_case_id ON runs (case_id)",
    "CREATE INDEX ix_runs_model_version_id ON runs (model_version_id)",
    """CREATE TABLE candidates (id INTEGER NOT NULL, run_id INTEGER NOT NULL, group_index INTEGER NOT NULL,
        text VARCHAR NOT NULL, reasoning VARCHAR NOT NULL, target VARCHAR NOT NULL, boxes JSON, parse_errors JSON,
        mask_png BLOB NOT NULL, mask_area INTEGER NOT NULL, mask_score FLOAT NOT NULL, token_ids BLOB NOT NULL,
        token_logprobs BLOB NOT NULL, sampling JSON, trained BOOLEAN NOT NULL, PRIMARY KEY (id),
        UNIQUE (run_id, group_index), FOREIGN KEY(run_id) REFERENCES runs (id))""",
    "CREATE INDEX ix_candidates_run_id ON candidates (run_id)",
    """CREATE TABLE feedback (id INTEGER NOT NULL, case_id INTEGER NOT NULL, run_id INTEGER NOT NULL,
        annotator_id INTEGER NOT NULL, status VARCHAR(20) NOT NULL, submission_id VARCHAR(200),
        payload_sha256 VARCHAR(64) NOT NULL, chosen_candidate_id INTEGER, edited_reasoning VARCHAR,
        edited_candidate_id INTEGER, clicks INTEGER NOT NULL, strokes INTEGER NOT NULL, seconds FLOAT NOT NULL,
        created_at DATETIME NOT NULL, PRIMARY KEY (id), FOREIGN KEY(case_id) REFERENCES cases (id),
        FOREIGN KEY(run_id) REFERENCES runs (id), FOREIGN KEY(annotator_id) REFERENCES annotators (id),
        UNIQUE (submission_id), FOREIGN KEY(chosen_candidate_id) REFERENCES candidates (id),
        FOREIGN KEY(edited_candidate_id) REFERENCES candidates (id))""",
    "CREATE INDEX ix_feedback_annotator_id ON feedback (annotator_id)",
    "CREATE INDEX ix_feedback_run_id ON feedback (run_id)",
    "CREATE INDEX ix_feedback_case_id ON feedback (case_id)",
    "CREATE INDEX ix_feedback_status ON feedback (status)",
    "CREATE INDEX ix_feedback_created_at ON feedback (created_at)",
    """CREATE TABLE corrections (id INTEGER NOT NULL, feedback_id INTEGER NOT NULL,
        proposal_candidate_id INTEGER NOT NULL, mask_png BLOB NOT NULL, height INTEGER NOT NULL,
        width INTEGER NOT NULL, mask_area INTEGER NOT NULL, proposal_dice FLOAT NOT NULL, PRIMARY KEY (id),
        UNIQUE (feedback_id), FOREIGN KEY(feedback_id) REFERENCES feedback (id),
        FOREIGN KEY(proposal_candidate_id) REFERENCES candidates (id))""",
    "CREATE INDEX ix_corrections_proposal_candidate_id ON corrections (proposal_candidate_id)",
    """CREATE TABLE rankings (id INTEGER NOT NULL, feedback_id INTEGER NOT NULL, candidate_id INTEGER NOT NULL,
        rank INTEGER NOT NULL, PRIMARY KEY (id), UNIQUE (feedback_id, candidate_id),
        FOREIGN KEY(feedback_id) REFERENCES feedback (id), FOREIGN KEY(candidate_id) REFERENCES candidates (id))""",
    "CREATE INDEX ix_rankings_candidate_id ON rankings (candidate_id)",
    "CREATE INDEX ix_rankings_feedback_id ON rankings (feedback_id)",
    """CREATE TABLE ratings (id INTEGER NOT NULL, feedback_id INTEGER NOT NULL, candidate_id INTEGER NOT NULL,
        scale VARCHAR(60) NOT NULL, value INTEGER NOT NULL, PRIMARY KEY (id),
        UNIQUE (feedback_id, candidate_id, scale), FOREIGN KEY(feedback_id) REFERENCES feedback (id),
        FOREIGN KEY(candidate_id) REFERENCES candidates (id))""",
    "CREATE INDEX ix_ratings_feedback_id ON ratings (feedback_id)",
    "CREATE INDEX ix_ratings_candidate_id ON ratings (candidate_id)",
    """CREATE TABLE reviews (id INTEGER NOT NULL, feedback_id INTEGER NOT NULL, reviewer_id INTEGER NOT NULL,
        decision VARCHAR(20) NOT NULL, reason VARCHAR NOT NULL, review_id VARCHAR(200), created_at DATETIME NOT NULL,
        PRIMARY KEY (id), FOREIGN KEY(feedback_id) REFERENCES feedback (id),
        FOREIGN KEY(reviewer_id) REFERENCES annotators (id), UNIQUE (review_id))""",
    "CREATE INDEX ix_reviews_feedback_id ON reviews (feedback_id)",
    "INSERT INTO schema_info (id, version, updated_at) VALUES (1, 1, CURRENT_TIMESTAMP)",
)


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
    supersedes_index = next(i for i in SQLModel.metadata.tables["feedback"].indexes
                            if [c.name for c in i.columns] == ["supersedes_id"])
    supersedes_index.create(conn, checkfirst=True)
    tables = [SQLModel.metadata.tables[name] for name in schema.TABLES_V2_ONLY]
    SQLModel.metadata.create_all(conn, tables=tables, checkfirst=True)


MIGRATIONS: dict[int, Callable[[Connection], None]] = {2: _v1_to_v2}


def upgrade(conn: Connection, from_version: int, to_version: int = schema.SCHEMA_VERSION) -> list[int]:
    """Apply every step from `from_version` + 1 to `to_version` on `conn` (inside the caller's transaction)."""
    applied = []
    for version in range(from_version + 1, to_version + 1):
        if version not in MIGRATIONS:
            raise RuntimeError(f"no migration to schema version {version}")
        MIGRATIONS[version](conn)
        applied.append(version)
    return applied
