"""The feedback store's tables (SQLModel), its schema version and its closed vocabularies.

Everything a clinician does is an appended row with its author and time; nothing is updated in place.
Arrays (scan pixels, masks, token ids and log-probabilities) are stored as compressed or packed bytes, never
as floats in JSON, so that they come back bit for bit on SQLite and PostgreSQL alike.
Enumerations are stored as plain strings (validated in Python) so that a migration never has to alter a
database-native enum type. Times are timezone-aware UTC (stored as UTC, returned aware).
"""
from __future__ import annotations

from datetime import datetime, timezone
from enum import Enum
from typing import Any, Optional

from sqlalchemy import JSON, Column, LargeBinary, UniqueConstraint
from sqlmodel import Field, SQLModel

# Version 1: first release. Version 2: training rounds, `cases.target`, `feedback.supersedes_id`, `feedback.comment`.
SCHEMA_VERSION = 2

# The one declaration of the rating scales: name → (lowest, highest), integers, both ends allowed.
RATING_SCALES: dict[str, tuple[int, int]] = {
    "correctness": (1, 5),
    "completeness": (1, 5),
    "clinical_relevance": (1, 5),
}


class Role(str, Enum):
    annotator = "annotator"
    reviewer = "reviewer"
    admin = "admin"


class Status(str, Enum):
    draft = "draft"
    submitted = "submitted"
    discarded = "discarded"


class Decision(str, Enum):
    accept = "accept"
    reject = "reject"
    flag = "flag"


def utcnow() -> datetime:
    """Aware UTC now (what every `created_at` holds)."""
    return datetime.now(timezone.utc)


def _json(**kw: Any) -> Any:
    return Field(default=None, sa_column=Column(JSON, nullable=True), **kw)


class SchemaInfo(SQLModel, table=True):
    """One row: the schema version this database is at."""

    __tablename__ = "schema_info"
    id: int = Field(default=1, primary_key=True)
    version: int
    updated_at: datetime = Field(default_factory=utcnow)


class Annotator(SQLModel, table=True):
    __tablename__ = "annotators"
    id: Optional[int] = Field(default=None, primary_key=True)
    name: str = Field(unique=True, max_length=200)
    role: str = Field(max_length=20)
    created_at: datetime = Field(default_factory=utcnow)


class Scan(SQLModel, table=True):
    """De-identified pixels stored once under their content hash (lossless, original dtype and bit depth)."""

    __tablename__ = "scans"
    hash: str = Field(primary_key=True, max_length=64)
    codec: str = Field(max_length=16)          # "png" (uint8/uint16) or "npy-zlib" (any other dtype)
    dtype: str = Field(max_length=16)
    shape: Any = _json()                        # list of ints
    height: int
    width: int
    modality: Optional[str] = Field(default=None, max_length=40)
    source_format: Optional[str] = Field(default=None, max_length=40)
    meta: Any = _json()                         # spacing, window, slice/axis/frame, affine… (no identifiers)
    pixels: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    display_png: Optional[bytes] = Field(default=None, sa_column=Column(LargeBinary, nullable=True))
    created_at: datetime = Field(default_factory=utcnow)


class Case(SQLModel, table=True):
    """A scan and a question."""

    __tablename__ = "cases"
    id: Optional[int] = Field(default=None, primary_key=True)
    scan_hash: str = Field(foreign_key="scans.hash", index=True, max_length=64)
    question: str
    target: Optional[str] = Field(default=None, max_length=200)   # v2: the lesion's name, when known
    created_by: int = Field(foreign_key="annotators.id")
    created_at: datetime = Field(default_factory=utcnow)


class ModelVersion(SQLModel, table=True):
    __tablename__ = "model_versions"
    id: Optional[int] = Field(default=None, primary_key=True)
    name: str = Field(unique=True, max_length=200)
    checkpoint_path: Optional[str] = None
    parent_id: Optional[int] = Field(default=None, foreign_key="model_versions.id")
    metrics: Any = _json()
    notes: Optional[str] = None
    created_at: datetime = Field(default_factory=utcnow)


class Run(SQLModel, table=True):
    """One sampling of a model on a case; its candidates form a group."""

    __tablename__ = "runs"
    id: Optional[int] = Field(default=None, primary_key=True)
    case_id: int = Field(foreign_key="cases.id", index=True)
    model_version_id: int = Field(foreign_key="model_versions.id", index=True)
    sampling: Any = _json()
    created_at: datetime = Field(default_factory=utcnow)


class CandidateRow(SQLModel, table=True):
    __tablename__ = "candidates"
    __table_args__ = (UniqueConstraint("run_id", "group_index"),)
    id: Optional[int] = Field(default=None, primary_key=True)
    run_id: int = Field(foreign_key="runs.id", index=True)
    group_index: int
    text: str
    reasoning: str
    target: str
    boxes: Any = _json()                        # [[x1, y1, x2, y2], …] from parse_answer
    parse_errors: Any = _json()
    mask_png: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    mask_area: int
    mask_score: float
    token_ids: bytes = Field(sa_column=Column(LargeBinary, nullable=False))        # little-endian int64
    token_logprobs: bytes = Field(sa_column=Column(LargeBinary, nullable=False))   # little-endian float64
    sampling: Any = _json()
    trained: bool = True


class Feedback(SQLModel, table=True):
    """One submission of one annotator on one run: everything else hangs off it. Append-only."""

    __tablename__ = "feedback"
    id: Optional[int] = Field(default=None, primary_key=True)
    case_id: int = Field(foreign_key="cases.id", index=True)
    run_id: int = Field(foreign_key="runs.id", index=True)
    annotator_id: int = Field(foreign_key="annotators.id", index=True)
    status: str = Field(max_length=20, index=True)
    submission_id: Optional[str] = Field(default=None, unique=True, max_length=200)
    payload_sha256: str = Field(max_length=64)
    chosen_candidate_id: Optional[int] = Field(default=None, foreign_key="candidates.id")
    edited_reasoning: Optional[str] = None
    edited_candidate_id: Optional[int] = Field(default=None, foreign_key="candidates.id")
    clicks: int = 0
    strokes: int = 0
    seconds: float = 0.0
    supersedes_id: Optional[int] = Field(default=None, foreign_key="feedback.id", index=True)   # v2
    comment: Optional[str] = None                                                  # v2
    created_at: datetime = Field(default_factory=utcnow, index=True)


class Ranking(SQLModel, table=True):
    """One candidate's rank in one submission (1 = best; equal ranks are ties)."""

    __tablename__ = "rankings"
    __table_args__ = (UniqueConstraint("feedback_id", "candidate_id"),)
    id: Optional[int] = Field(default=None, primary_key=True)
    feedback_id: int = Field(foreign_key="feedback.id", index=True)
    candidate_id: int = Field(foreign_key="candidates.id", index=True)
    rank: int


class Rating(SQLModel, table=True):
    """One integer on one declared scale for one candidate's reasoning in one submission."""

    __tablename__ = "ratings"
    __table_args__ = (UniqueConstraint("feedback_id", "candidate_id", "scale"),)
    id: Optional[int] = Field(default=None, primary_key=True)
    feedback_id: int = Field(foreign_key="feedback.id", index=True)
    candidate_id: int = Field(foreign_key="candidates.id", index=True)
    scale: str = Field(max_length=60)
    value: int


class Correction(SQLModel, table=True):
    """A corrected mask, the proposal it started from and the Dice between the two."""

    __tablename__ = "corrections"
    id: Optional[int] = Field(default=None, primary_key=True)
    feedback_id: int = Field(foreign_key="feedback.id", unique=True)
    proposal_candidate_id: int = Field(foreign_key="candidates.id", index=True)
    mask_png: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    height: int
    width: int
    mask_area: int
    proposal_dice: float


class Review(SQLModel, table=True):
    __tablename__ = "reviews"
    id: Optional[int] = Field(default=None, primary_key=True)
    feedback_id: int = Field(foreign_key="feedback.id", index=True)
    reviewer_id: int = Field(foreign_key="annotators.id")
    decision: str = Field(max_length=20)
    reason: str = ""
    review_id: Optional[str] = Field(default=None, unique=True, max_length=200)
    created_at: datetime = Field(default_factory=utcnow)


class TrainingRound(SQLModel, table=True):
    """v2: which feedback went into a training run, which checkpoint came out, and its evaluation."""

    __tablename__ = "training_rounds"
    id: Optional[int] = Field(default=None, primary_key=True)
    base_version_id: Optional[int] = Field(default=None, foreign_key="model_versions.id")
    out_version_id: int = Field(foreign_key="model_versions.id")
    metrics: Any = _json()
    report_path: Optional[str] = None
    created_at: datetime = Field(default_factory=utcnow)


class TrainingRoundFeedback(SQLModel, table=True):
    __tablename__ = "training_round_feedback"
    round_id: int = Field(foreign_key="training_rounds.id", primary_key=True)
    feedback_id: int = Field(foreign_key="feedback.id", primary_key=True)


TABLES_V2_ONLY = ("training_rounds", "training_round_feedback")
