"""Which feedback rows an export or a summary reads, and the human signal (ranks, ratings) on them."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime

from annotation.schema import Status
from annotation.store import FeedbackStore


@dataclass(frozen=True)
class ExportFilters:
    """Which feedback rows an export reads. `until` is exclusive; naive datetimes are UTC."""

    status: tuple[str, ...] = (Status.submitted.value,)
    min_raters: int | None = None
    since: datetime | None = None
    until: datetime | None = None
    model_versions: tuple[str, ...] | None = None

    def to_json(self) -> dict:
        out = asdict(self)
        for key in ("since", "until"):
            out[key] = out[key].isoformat() if out[key] else None
        out["status"] = list(self.status)
        out["model_versions"] = list(self.model_versions) if self.model_versions else None
        return out

    def rows(self, store: FeedbackStore) -> list[dict]:
        return store.feedback_rows(status=list(self.status), since=self.since, until=self.until,
                                   model_version=list(self.model_versions) if self.model_versions else None,
                                   min_raters=self.min_raters)



def human_signal(store: FeedbackStore, rows: list[dict]):
    """(feedback id → {candidate: rank}, feedback id → {candidate: {scale: value}}) of the given rows."""
    ranks = store.rankings_for(r["id"] for r in rows)
    ratings = store.ratings_for(r["id"] for r in rows)
    return ranks, ratings
