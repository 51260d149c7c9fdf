"""What the page shows, as text and tables: candidate cards, the reviewer's account of a submission, and the
dashboard's tables. Every piece of text a person or the model wrote goes through `esc` (HTML escaped and
Markdown punctuation backslashed), so a reasoning that holds `<form>`, `<img src=…>` or `![](http://…)` is
shown as those characters, never as a live tag or a fetched image.
"""
from __future__ import annotations

import html
import math
import re
from datetime import timezone

import pandas as pd

_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|~>])")

# dashboard column titles, in words (units in brackets)
COLUMN_TITLES = {
    "feedback": "Feedback", "annotators": "Annotators", "runs": "Runs", "cases": "Cases", "scans": "Scans",
    "candidates": "Candidates", "rankings": "Rankings", "ratings": "Ratings", "corrections": "Corrections",
    "reviews": "Reviews", "training_rounds": "Training rounds", "model_versions": "Model versions",
    "accepted_masks": "Accepted masks", "mean_proposal_vs_accepted_dice": "Mean Dice, proposal vs accepted",
    "annotator": "Annotator", "edits": "Edited reasonings", "mean_seconds": "Mean time per case (s)",
    "mean_proposal_dice": "Mean Dice, proposal vs correction", "accepted": "Accepted", "rejected": "Rejected",
    "flagged": "Flagged", "model_version": "Model version", "mean_rank": "Mean rank (1 = best)",
    "scale": "Scale", "count": "Count", "mean": "Mean (1–5)", "std": "Standard deviation",
    "signal": "Signal", "items": "Items", "pairs": "Pairs", "exact_agreement": "Exact agreement (share)",
    "mean_abs_diff": "Mean absolute difference", "krippendorff_alpha_interval": "Krippendorff's alpha (interval)",
    "mean_kendall_tau": "Mean Kendall tau", "day": "Day", "mean_dice": "Mean Dice, proposal vs accepted",
}
NO_DATA = "_No data yet: accepted corrections appear here once a reviewer accepts a submission._"


def esc(text) -> str:
    """User or model text, safe inside Markdown: HTML escaped, Markdown punctuation backslashed."""
    return _MD_SPECIAL.sub(r"\\\1", html.escape(str(text or ""), quote=True))


def candidate_markdown(index: int, card: dict) -> str:
    """A candidate's card: score, target, boxes, reasoning, findings (✔/✘) and any parse problem."""
    lines = [f"**#{index + 1}** · mask score {card['mask_score']:.2f} · area {card['mask_area']:,} px"]
    absent = card.get("present") is False and not card.get("parse_errors")
    if absent:
        lines.append(f"**Answer:** no {esc(card.get('target') or 'lesion')} is visible (empty mask).")
    elif card.get("target"):
        lines.append(f"**Target:** {esc(card['target'])}")
    if card.get("boxes"):
        lines.append("**Boxes:** " + ", ".join(esc(list(b)) for b in card["boxes"]))
    lines.append(f"**Reasoning:** {esc(card['reasoning']) or '_(no reasoning could be parsed)_'}")
    findings = card.get("findings")
    if findings:
        rows = []
        for f in findings:
            mark = "✔" if f.get("agrees") else "✘"
            measured = f" (measured: {esc(f.get('measured'))})" if f.get("measured") not in (None, "") else ""
            rows.append(f"- {mark} {esc(f.get('claim'))}{measured}")
        lines.append("**Findings checked against the mask:**\n" + "\n".join(rows))
    if (card.get("sampling") or {}).get("revised_from") is not None:
        lines.append("_Where, how large, what shape and how many parts were measured on a first look at the lesion "
                     "(the mask drawn in its box), and this mask was drawn from those words._")
    if card.get("parse_errors"):
        lines.append(f"⚠ {esc('; '.join(card['parse_errors']))}")
        lines.append(f"<details><summary>raw answer</summary>\n\n{esc(card['text'])}\n\n</details>")
    return "\n\n".join(lines)


def feedback_markdown(fb: dict, case: dict, candidates: dict, proposal_id) -> str:
    """The reviewer's account of one submission; every name and text escaped."""
    order = {cid: i + 1 for i, cid in enumerate(sorted(candidates))}
    lines = [f"**Feedback {fb['id']}** on case {fb['case_id']} (run {fb['run_id']}) by **{esc(fb['annotator'])}** "
             f"— {esc(fb['status'])}", f"Question: {esc(case['question'])}"]
    corr = fb["correction"]
    if corr:
        lines.append(f"Correction of candidate #{order.get(proposal_id)}: Dice vs proposal "
                     f"{corr['proposal_dice']:.3f}, area {corr['mask_area']:,} px, {fb['clicks']} clicks, "
                     f"{fb['strokes']} strokes, {fb['seconds']:.0f} s")
    if fb["ranking"]:
        lines.append("Ranking: " + ", ".join(f"#{order.get(c)} → {r}" for c, r in sorted(fb["ranking"].items(),
                                                                                        key=lambda t: t[1])))
    for cid, scales in sorted(fb["ratings"].items()):
        lines.append(f"Ratings #{order.get(cid)}: " + ", ".join(f"{esc(s)} {v}" for s, v in scales.items()))
    proposal = candidates.get(proposal_id)
    if proposal:
        lines.append(f"Proposal reasoning: {esc(proposal['reasoning']) or '(none parsed)'}")
    if fb["edited_reasoning"]:
        lines.append(f"Edited reasoning: {esc(fb['edited_reasoning'])}")
    if fb.get("comment"):
        lines.append(f"Comment: {esc(fb['comment'])}")
    for rev in fb["reviews"]:
        lines.append(f"Review: {esc(rev['decision'])} by {esc(rev['reviewer'])} — {esc(rev['reason'])}")
    return "\n\n".join(lines)


def _rounded(value):
    if isinstance(value, float):
        return None if math.isnan(value) else round(value, 3)
    return value


def readable(df: pd.DataFrame) -> pd.DataFrame:
    """Columns in words, numbers rounded to 3 decimals (seconds to 1), NaN shown as empty."""
    df = df.copy()
    for column in df.columns:
        if pd.api.types.is_float_dtype(df[column]) or df[column].dtype == object:
            digits = 1 if "seconds" in str(column) else 3
            df[column] = [None if isinstance(v, float) and math.isnan(v) else
                          (round(v, digits) if isinstance(v, float) else v) for v in df[column]]
    return df.rename(columns={c: COLUMN_TITLES.get(c, str(c).replace("_", " ").capitalize()) for c in df.columns})


def dashboard_tables(store) -> dict:
    """The dashboard: counts, Dice over time (plot data and table), per version/annotator, ratings, agreement."""
    from annotation.export import ExportFilters, summary_tables

    tables = summary_tables(store, ExportFilters())
    rows = store.feedback_rows(status="submitted")
    version_of = {r["id"]: r["model_version"] for r in rows}
    accepted = store.accepted_corrections()
    over_time = pd.DataFrame([
        {"day": a["reviewed_at"].astimezone(timezone.utc).strftime("%Y-%m-%d"),
         "model_version": version_of.get(a["feedback_id"], "?"), "dice": float(a["proposal_dice"])}
        for a in accepted.values() if a["feedback_id"] in version_of], columns=["day", "model_version", "dice"])
    if len(over_time):
        over_time = (over_time.groupby(["day", "model_version"])["dice"].agg(["mean", "count"]).reset_index()
                     .rename(columns={"mean": "mean_dice", "count": "accepted"}))
        over_time["mean_dice"] = over_time["mean_dice"].round(3)
    else:
        over_time = pd.DataFrame(columns=["day", "model_version", "mean_dice", "accepted"])
    plot = over_time.copy()
    if len(plot):
        plot["day"] = pd.to_datetime(plot["day"])
    return {"counts": readable(pd.DataFrame([store.counts()])), "dice_plot": plot,
            "has_dice": bool(len(over_time)), "dice_over_time": readable(over_time),
            **{name: readable(df) for name, df in tables.items()}}
