"""The feedback summary: per annotator, per model version, proposal-vs-accepted Dice, ratings and agreement
(Krippendorff's α, Kendall's τ-b), as pandas tables, summary.md and one CSV per table.

Names in them are typed by users: Markdown cells are HTML- and Markdown-escaped, CSV cells that a spreadsheet
would run as a formula (= + - @) start with an apostrophe.
"""
from __future__ import annotations

import html
import itertools
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from annotation.filters import ExportFilters, human_signal
from annotation.store import FeedbackStore


def krippendorff_alpha_interval(units: dict[Any, list[float]]) -> float:
    """Krippendorff's α (interval metric) over units rated by several raters; NaN when undefined.

    Uses Σ over ordered pairs (a − b)² = 2mΣv² − 2(Σv)², so it is linear in the number of ratings."""
    def pair_sum(vs: np.ndarray) -> float:
        return float(2 * len(vs) * (vs ** 2).sum() - 2 * vs.sum() ** 2)

    values = [np.asarray(vs, float) for vs in units.values() if len(vs) >= 2]
    n = sum(len(vs) for vs in values)
    if n < 2:
        return float("nan")
    observed = sum(pair_sum(vs) / (len(vs) - 1) for vs in values) / n
    expected = pair_sum(np.concatenate(values)) / (n * (n - 1))
    return float("nan") if expected == 0 else 1.0 - observed / expected


def kendall_tau_b(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's τ-b of two short rankings (ties handled); NaN when either is all ties."""
    x, y = [float(v) for v in x], [float(v) for v in y]
    numerator, untied_x, untied_y = 0, 0, 0
    for i, j in itertools.combinations(range(len(x)), 2):
        a, b = (x[i] > x[j]) - (x[i] < x[j]), (y[i] > y[j]) - (y[i] < y[j])
        numerator += a * b
        untied_x += a != 0
        untied_y += b != 0
    return float("nan") if untied_x == 0 or untied_y == 0 else numerator / float(np.sqrt(untied_x * untied_y))


def summary_tables(store: FeedbackStore, filters: ExportFilters) -> dict[str, pd.DataFrame]:
    """The summary as DataFrames: per annotator, per model version, ratings, agreement."""
    rows = filters.rows(store)
    fb = pd.DataFrame(rows, columns=["id", "annotator", "annotator_id", "model_version", "run_id", "case_id", "status",
                                     "seconds", "clicks", "strokes", "edited_reasoning", "proposal_candidate_id",
                                     "proposal_dice", "review"]) if rows else pd.DataFrame(
        columns=["id", "annotator", "annotator_id", "model_version", "run_id", "case_id", "status", "seconds",
                 "clicks", "strokes", "edited_reasoning", "proposal_candidate_id", "proposal_dice", "review"])
    ranks, ratings = human_signal(store, rows)
    rank_df = pd.DataFrame([{"feedback_id": f, "candidate_id": c, "rank": r} for f, per in ranks.items()
                            for c, r in per.items()], columns=["feedback_id", "candidate_id", "rank"])
    rating_df = pd.DataFrame([{"feedback_id": f, "candidate_id": c, "scale": s, "value": v}
                              for f, per in ratings.items() for c, scales in per.items() for s, v in scales.items()],
                             columns=["feedback_id", "candidate_id", "scale", "value"])
    meta = fb[["id", "annotator", "model_version", "run_id"]].rename(columns={"id": "feedback_id"})
    rank_df, rating_df = rank_df.merge(meta, on="feedback_id"), rating_df.merge(meta, on="feedback_id")
    fb["has_ranking"] = fb["id"].isin(rank_df["feedback_id"])
    fb["has_ratings"] = fb["id"].isin(rating_df["feedback_id"])
    fb["has_correction"] = fb["proposal_candidate_id"].notna()
    fb["edited"] = fb["edited_reasoning"].notna()
    fb["proposal_dice"] = pd.to_numeric(fb["proposal_dice"])
    accepted = store.accepted_corrections(set(fb["case_id"].tolist()))
    selected = set(fb["id"].tolist())
    acc_df = pd.DataFrame([{"case_id": c, "feedback_id": a["feedback_id"], "dice": a["proposal_dice"]}
                           for c, a in accepted.items() if a["feedback_id"] in selected],
                          columns=["case_id", "feedback_id", "dice"]).merge(
        meta[["feedback_id", "model_version"]], on="feedback_id", how="left")

    per_annotator = fb.groupby("annotator").agg(
        feedback=("id", "count"), rankings=("has_ranking", "sum"), ratings=("has_ratings", "sum"),
        corrections=("has_correction", "sum"), edits=("edited", "sum"), mean_seconds=("seconds", "mean"),
        mean_proposal_dice=("proposal_dice", "mean"), accepted=("review", lambda s: int((s == "accept").sum())),
        rejected=("review", lambda s: int((s == "reject").sum())), flagged=("review", lambda s: int((s == "flag").sum())),
    ).reset_index()
    per_version = fb.groupby("model_version").agg(
        runs=("run_id", "nunique"), cases=("case_id", "nunique"), feedback=("id", "count"),
        corrections=("has_correction", "sum"), mean_proposal_dice=("proposal_dice", "mean")).reset_index()
    accepted_dice = acc_df.groupby("model_version").agg(
        accepted_masks=("case_id", "count"), mean_proposal_vs_accepted_dice=("dice", "mean")).reset_index()
    per_version = per_version.merge(accepted_dice, on="model_version", how="left")
    mean_rank = rank_df.groupby("model_version")["rank"].mean().rename("mean_rank").reset_index()
    per_version = per_version.merge(mean_rank, on="model_version", how="left")

    rating_avg = (rating_df.groupby(["model_version", "scale"])["value"].agg(["count", "mean", "std"]).reset_index()
                  if len(rating_df) else pd.DataFrame(columns=["model_version", "scale", "count", "mean", "std"]))
    overall = pd.DataFrame([{"model_version": "(all)", "scale": s, "count": int(len(g)), "mean": g["value"].mean(),
                             "std": g["value"].std()} for s, g in rating_df.groupby("scale")],
                           columns=["model_version", "scale", "count", "mean", "std"])
    rating_avg = pd.concat([rating_avg, overall], ignore_index=True) if len(overall) else rating_avg

    annotator_of = {row["id"]: row["annotator"] for row in rows}
    latest_rating: dict[str, dict[int, dict[str, int]]] = {}   # scale → candidate → annotator → value
    for fid in sorted(ratings):  # id order: each annotator's latest rating wins
        for cid, scales in ratings[fid].items():
            for scale, value in scales.items():
                latest_rating.setdefault(scale, {}).setdefault(cid, {})[annotator_of[fid]] = value
    agreement = []
    for scale in sorted(latest_rating):
        multi = {c: list(v.values()) for c, v in latest_rating[scale].items() if len(v) >= 2}
        pairs = [(a, b) for v in multi.values() for a, b in itertools.combinations(v, 2)]
        agreement.append({"signal": f"rating:{scale}", "items": len(multi), "pairs": len(pairs),
                          "exact_agreement": float(np.mean([a == b for a, b in pairs])) if pairs else float("nan"),
                          "mean_abs_diff": float(np.mean([abs(a - b) for a, b in pairs])) if pairs else float("nan"),
                          "krippendorff_alpha_interval": krippendorff_alpha_interval(multi),
                          "mean_kendall_tau": float("nan")})
    taus, top_agree = [], []
    per_run: dict[int, dict[str, dict[int, int]]] = {}
    for row in rows:  # id order: each annotator's latest ranking of a run wins
        if row["id"] in ranks:
            per_run.setdefault(row["run_id"], {})[row["annotator"]] = ranks[row["id"]]
    for by_annotator in per_run.values():
        for first, second in itertools.combinations(by_annotator.values(), 2):
            common = sorted(set(first) & set(second))
            if len(common) >= 2:
                tau = kendall_tau_b([first[c] for c in common], [second[c] for c in common])
                if not np.isnan(tau):
                    taus.append(tau)
            best_1 = {c for c in first if first[c] == min(first.values())}
            best_2 = {c for c in second if second[c] == min(second.values())}
            top_agree.append(bool(best_1 & best_2))
    agreement.append({"signal": "ranking", "items": int(rank_df["run_id"].nunique()) if len(rank_df) else 0,
                      "pairs": len(top_agree), "exact_agreement": float(np.mean(top_agree)) if top_agree else float("nan"),
                      "mean_abs_diff": float("nan"), "krippendorff_alpha_interval": float("nan"),
                      "mean_kendall_tau": float(np.mean(taus)) if taus else float("nan")})
    totals = pd.DataFrame([{"feedback": len(fb), "annotators": fb["annotator"].nunique(), "runs": fb["run_id"].nunique(),
                            "cases": fb["case_id"].nunique(), "accepted_masks": len(acc_df),
                            "mean_proposal_vs_accepted_dice": acc_df["dice"].mean() if len(acc_df) else float("nan")}])
    return {"totals": totals, "per_annotator": per_annotator, "per_model_version": per_version,
            "ratings": rating_avg, "agreement": pd.DataFrame(agreement)}


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")  # what a spreadsheet may run as a formula (CSV injection)
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]|~])")  # inline Markdown syntax and the cell separator


def csv_safe(value: Any) -> Any:
    """Text that a spreadsheet shows as text: a cell starting like a formula gets a leading apostrophe."""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def markdown_text(value: Any) -> str:
    """Text for a Markdown table cell that renders as the same plain text: HTML escaped, Markdown syntax and
    the cell separator backslash-escaped, line breaks flattened (user names are typed by users)."""
    text = html.escape(" ".join(str(value).split()), quote=True)
    return _MARKDOWN_SPECIAL.sub(r"\\\1", text)


def _markdown(df: pd.DataFrame) -> str:
    """A Markdown table without extra dependencies (pandas' to_markdown needs tabulate); every cell escaped."""
    def cell(v):
        if isinstance(v, float):
            return "" if np.isnan(v) else f"{v:.3f}"
        return markdown_text(v)
    header = "| " + " | ".join(markdown_text(c) for c in df.columns) + " |"
    rule = "| " + " | ".join("---" for _ in df.columns) + " |"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([header, rule, *body])


def export_summary(store: FeedbackStore, out: Path, filters: ExportFilters) -> dict:
    """summary.md (and one CSV per table): the tables `summary_tables` computes, user text escaped for
    Markdown/HTML and for spreadsheets."""
    tables = summary_tables(store, filters)
    parts = []
    for name, df in tables.items():
        df.map(csv_safe).to_csv(out / f"summary_{name}.csv", index=False)
        parts.append(f"## {name.replace('_', ' ')}\n\n{_markdown(df)}\n")
    text = "# Feedback summary\n\n" + "\n".join(parts)
    (out / "summary.md").write_text(text)
    print(text)
    totals = tables["totals"].iloc[0].to_dict()
    return {k: (None if isinstance(v, float) and np.isnan(v) else (float(v) if isinstance(v, float) else int(v)))
            for k, v in totals.items()}
