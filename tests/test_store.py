"""The feedback store: round trips, idempotency, bad input, reviews, migrations, backups, concurrency, crashes."""
from __future__ import annotations

import sqlite3

import numpy as np
import pytest

import store_demo as demo
from v1_schema import V1_DDL
from annotation.schema import RATING_SCALES, SCHEMA_VERSION
from annotation.store import FeedbackError, FeedbackStore, resolve_url
from coreseg.answer import parse_answer
from coreseg.scan_io import Scan

H, W = 64, 80


@pytest.fixture
def store(db_url):
    """A new store on SQLite and on PostgreSQL (the `db_url` fixture of conftest)."""
    s = FeedbackStore(db_url)
    yield s
    s.close()


@pytest.fixture
def group(store):
    """One case, one run of four candidates, two annotators and a reviewer."""
    store.add_annotator("ann-a", "annotator")
    store.add_annotator("ann-b", "annotator")
    store.add_annotator("rev", "reviewer")
    store.add_model_version("v0", "/ckpt/v0")
    scan_hash = store.put_scan(demo.make_scan(1, H, W))
    case_id = store.add_case(scan_hash, "Locate and segment the liver tumor.", "ann-a")
    candidates = demo.make_candidates(H, W, 4, seed=1, model_version="v0")
    run_id, cand_ids = store.add_run(case_id, "v0", {"temperature": 0.7}, candidates)
    return {"scan": scan_hash, "case": case_id, "run": run_id, "cands": cand_ids, "candidates": candidates}


def random_mask(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random((H, W)) > 0.6


# ----------------------------------------------------------------------------------------------- basics
def test_connection_pragmas_and_schema(store):
    assert store.schema_version() == SCHEMA_VERSION
    assert store.integrity_check() == "ok"
    if not store.is_sqlite:  # PostgreSQL: sessions in UTC, so stored times read back as on SQLite
        with store.engine.connect() as conn:
            assert conn.exec_driver_sql("SHOW timezone").scalar() == "UTC"
        return
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL
    assert store.integrity_check() == "ok"


def test_database_url_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'env.db'}")
    assert resolve_url(None) == f"sqlite:///{tmp_path / 'env.db'}"
    assert resolve_url("postgresql+psycopg://u@host/db") == "postgresql+psycopg://u@host/db"  # unchanged
    for plain in ("postgresql://u@host/db", "postgres://u@host/db"):  # as hosts write them: the installed driver
        assert resolve_url(plain) == "postgresql+psycopg://u@host/db"
    with FeedbackStore() as s:
        s.add_annotator("x")
    assert (tmp_path / "env.db").exists()
    monkeypatch.delenv("DATABASE_URL")
    with pytest.raises(FeedbackError, match="DATABASE_URL"):
        FeedbackStore()


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int16", "float32"])
def test_scan_pixels_round_trip_in_original_dtype(store, dtype):
    scan = demo.make_scan(7, 33, 47, dtype)
    meta = dict(scan.meta, PatientName="Doe^John", patient_id="123", StudyInstanceUID="1.2.3", file_name="a.dcm")
    scan_hash = store.put_scan(Scan(scan.pixels, scan.display, meta))
    assert scan_hash == scan.content_hash
    back = store.get_scan_pixels(scan_hash)
    assert back.dtype == np.dtype(dtype) and back.shape == scan.pixels.shape
    assert np.array_equal(back, scan.pixels)
    stored_meta = store.get_scan_meta(scan_hash)
    assert stored_meta == scan.meta  # identifiers dropped, the rest exactly as given
    assert store.put_scan(scan) == scan_hash and store.counts()["scans"] == 1  # stored once


def test_rgb_scan_and_display_round_trip(store):
    rgb = np.random.default_rng(3).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    scan = Scan(rgb, rgb, {"source_format": "jpeg", "height": 20, "width": 30})
    scan_hash = store.put_scan(scan)
    assert np.array_equal(store.get_scan_pixels(scan_hash), rgb)
    from coreseg.scan_io import from_png_bytes
    assert np.array_equal(from_png_bytes(store.get_scan_display_png(scan_hash)), rgb)
    with pytest.raises(FeedbackError, match="height"):
        store.put_scan(Scan(rgb, rgb, {"height": 21, "width": 30}))


def test_same_pixels_from_another_file_keep_their_own_meta_and_display(store):
    """A DICOM whose pixels equal an earlier PNG's is stored as its own scan: refine, review and exports read
    each file's own meta and display image."""
    pixels = (np.arange(H * W).reshape(H, W) % 200).astype(np.uint8)
    png = Scan(pixels, np.repeat(pixels[..., None], 3, axis=2), {"source_format": "png", "modality": "OT"})
    shown = np.repeat(np.clip(pixels.astype(int) * 2, 0, 255).astype(np.uint8)[..., None], 3, axis=2)
    dicom = Scan(pixels.copy(), shown, {"source_format": "dicom", "modality": "MR",
                                        "window": {"name": "file", "level": 60.0, "width": 120.0}})
    first, second = store.put_scan(png), store.put_scan(dicom)
    assert first != second and store.counts()["scans"] == 2
    from coreseg.scan_io import from_png_bytes
    for key, scan in ((first, png), (second, dicom)):
        assert store.get_scan_meta(key) == scan.meta
        assert np.array_equal(from_png_bytes(store.get_scan_display_png(key)), scan.display)
        assert np.array_equal(store.get_scan_pixels(key), pixels)
    assert store.put_scan(dicom) == second and store.counts()["scans"] == 2  # the same file again: stored once


def test_two_users_storing_the_same_scan_at_once_both_succeed(db_url):
    """Two app processes (two stores) put the same scans at the same moment: both get the key, one row each."""
    import threading

    stores = [FeedbackStore(db_url), FeedbackStore(db_url)]
    scans = [demo.make_scan(100 + i, 24, 32) for i in range(12)]
    barrier, results, errors = threading.Barrier(2), [[], []], []

    def put(k: int) -> None:
        try:
            for scan in scans:
                barrier.wait(timeout=60)
                results[k].append(stores[k].put_scan(scan))
        except BaseException as exc:  # reported below: the test asserts there was none
            errors.append(repr(exc))
            barrier.abort()

    threads = [threading.Thread(target=put, args=(k,)) for k in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert errors == [] and results[0] == results[1] == [s.content_hash for s in scans]
    assert stores[0].counts()["scans"] == len(scans)
    for s in stores:
        s.close()


def test_candidates_round_trip(store, group):
    stored = store.get_candidates(group["run"])
    assert [c["id"] for c in stored] == group["cands"]
    for cand, row in zip(group["candidates"], stored):
        parsed = parse_answer(cand.text, (H, W)).answer
        assert row["text"] == cand.text and row["reasoning"] == parsed.reasoning and row["target"] == parsed.target
        assert [tuple(b) for b in row["boxes"]] == list(parsed.boxes) and row["parse_errors"] == []
        assert np.array_equal(row["mask"], cand.mask) and row["mask"].dtype == bool
        assert row["mask_score"] == cand.mask_score
        assert row["token_ids"] == cand.token_ids and row["token_logprobs"] == cand.token_logprobs  # exact floats
        assert row["sampling"] == cand.sampling


# ----------------------------------------------------------------------------------------------- round trip
def test_feedback_round_trip_exact(store, group):
    c = group["cands"]
    ranking = {c[0]: 2, c[1]: 1, c[2]: 2, c[3]: 4}  # a tie at 2 and a gap: kept exactly (Argilla #5712)
    ratings = {c[1]: {"correctness": 5, "completeness": 3, "clinical_relevance": 1}, c[3]: {"correctness": 1}}
    edited = "Normal liver is homogeneous.\nThe lesion is darker — with ill-defined margins; ünïcode kept.  "
    mask = random_mask(11)
    fid = store.submit_feedback(group["case"], group["run"], "ann-a", ranking=ranking, ratings=ratings,
                                chosen_candidate_id=c[1], edited_reasoning=edited, mask=mask, clicks=7, strokes=3,
                                seconds=41.25, submission_id="form-1", comment="margins unclear")
    fb = store.get_feedback(fid)
    assert fb["ranking"] == ranking and fb["ratings"] == ratings
    assert fb["edited_reasoning"] == edited and fb["edited_candidate_id"] == c[1]
    assert fb["mask"].dtype == bool and np.array_equal(fb["mask"], mask)
    assert (fb["clicks"], fb["strokes"], fb["seconds"], fb["comment"]) == (7, 3, 41.25, "margins unclear")
    assert fb["status"] == "submitted" and fb["annotator"] == "ann-a" and fb["created_at"].tzinfo is not None
    from coreseg.metrics import dice
    assert fb["correction"]["proposal_candidate_id"] == c[1]
    assert fb["correction"]["proposal_dice"] == pytest.approx(dice(group["candidates"][1].mask, mask))


def test_submission_is_idempotent(store, group):
    c = group["cands"]
    args = dict(ranking={c[0]: 1, c[1]: 2}, mask=random_mask(2), chosen_candidate_id=c[0], submission_id="s-1")
    first = store.submit_feedback(group["case"], group["run"], "ann-a", **args)
    assert store.submit_feedback(group["case"], group["run"], "ann-a", **args) == first
    assert store.counts()["feedback"] == 1 and store.counts()["rankings"] == 2 and store.counts()["corrections"] == 1
    with pytest.raises(FeedbackError, match="different content"):
        store.submit_feedback(group["case"], group["run"], "ann-a", **dict(args, ranking={c[0]: 2, c[1]: 1}))
    assert store.counts()["feedback"] == 1
    # without a submission id, two sends are two rows (two separate opinions)
    store.submit_feedback(group["case"], group["run"], "ann-b", ranking={c[0]: 1})
    store.submit_feedback(group["case"], group["run"], "ann-b", ranking={c[0]: 1})
    assert store.counts()["feedback"] == 3


def test_registrations_are_idempotent(store):
    assert store.add_annotator("a", "reviewer") == store.add_annotator("a") == store.add_annotator(" a ", "reviewer")
    with pytest.raises(FeedbackError, match="already exists with role"):
        store.add_annotator("a", "admin")
    assert store.get_annotator("a")["role"] == "reviewer" and store.get_annotator("nobody") is None
    v = store.add_model_version("m1", "/ck/1", metrics={"dice": 0.3})
    assert store.add_model_version("m1", "/ck/1") == v == store.add_model_version("m1")
    with pytest.raises(FeedbackError, match="already registered"):
        store.add_model_version("m1", "/ck/other")
    store.add_model_version("m2", "/ck/2", parent="m1", notes="GRPO round 1")
    versions = store.list_model_versions()
    assert [(m["name"], m["parent"]) for m in versions] == [("m1", None), ("m2", "m1")]
    assert versions[0]["metrics"] == {"dice": 0.3}


# ----------------------------------------------------------------------------------------------- bad input
def _bad_submissions(group):
    c = group["cands"]
    return [
        ("wrong size", dict(mask=np.zeros((H, W + 1), bool), chosen_candidate_id=c[0]), "64×81"),
        ("transposed", dict(mask=np.zeros((W, H), bool), chosen_candidate_id=c[0]), "must match"),
        ("3-D mask", dict(mask=np.zeros((2, H, W), bool), chosen_candidate_id=c[0]), "2-D"),
        ("float mask", dict(mask=np.zeros((H, W), np.float32), chosen_candidate_id=c[0]), "boolean"),
        ("label mask", dict(mask=np.full((H, W), 3, np.uint8), chosen_candidate_id=c[0]), "only 0/1"),
        ("unknown candidate", dict(ranking={c[0]: 1, 99999: 2}), "not one of run"),
        ("unknown rated", dict(ratings={99999: {"correctness": 3}}), "not one of run"),
        ("unknown chosen", dict(chosen_candidate_id=99999), "not one of run"),
        ("rank 0", dict(ranking={c[0]: 0}), "out of range"),
        ("rank too big", dict(ranking={c[0]: 1, c[1]: 5}), "out of range"),
        ("rank float", dict(ranking={c[0]: 1.5}), "integer"),
        ("rank bool", dict(ranking={c[0]: True}), "integer"),
        ("rating high", dict(ratings={c[0]: {"correctness": 6}}), "off the scale"),
        ("rating low", dict(ratings={c[0]: {"completeness": 0}}), "off the scale"),
        ("rating scale", dict(ratings={c[0]: {"beauty": 3}}), "unknown rating scale"),
        ("rating float", dict(ratings={c[0]: {"correctness": 4.5}}), "integer"),
        ("empty", dict(), "empty submission"),
        ("empty dicts", dict(ranking={}, ratings={}), "empty submission"),
        ("blank edit", dict(edited_reasoning="   ", chosen_candidate_id=c[0]), "non-empty"),
        ("tagged edit", dict(edited_reasoning="<think>x</think>", chosen_candidate_id=c[0]), "plain text"),
        ("edit of whom", dict(edited_reasoning="text", ranking={c[0]: 1, c[1]: 1}), "chosen_candidate_id"),
        ("mask of whom", dict(mask=np.zeros((H, W), bool)), "chosen_candidate_id"),
        ("status", dict(ranking={c[0]: 1}, status="final"), "unknown status"),
        ("negative clicks", dict(ranking={c[0]: 1}, clicks=-1), "negative"),
        ("nan seconds", dict(ranking={c[0]: 1}, seconds=float("nan")), "finite"),
        ("supersede nothing", dict(ranking={c[0]: 1}, supersedes=424242), "not this annotator"),
    ]


def test_bad_input_is_refused_and_nothing_is_stored(store, group):
    before = store.counts()
    for name, kwargs, message in _bad_submissions(group):
        with pytest.raises(FeedbackError, match=message):
            store.submit_feedback(group["case"], group["run"], "ann-a", **kwargs)
        assert store.counts() == before, name
    with pytest.raises(FeedbackError, match="unknown annotator"):
        store.submit_feedback(group["case"], group["run"], "stranger", ranking={group["cands"][0]: 1})
    with pytest.raises(FeedbackError, match="unknown run"):
        store.submit_feedback(group["case"], 999, "ann-a", ranking={group["cands"][0]: 1})
    other_case = store.add_case(group["scan"], "Where is the lesion?", "ann-a")
    with pytest.raises(FeedbackError, match="belongs to case"):
        store.submit_feedback(other_case, group["run"], "ann-a", ranking={group["cands"][0]: 1})
    assert store.counts() == dict(before, cases=before["cases"] + 1)


def test_bad_runs_and_cases_are_refused(store, group):
    before = store.counts()
    bad = demo.make_candidates(H + 1, W, 2, model_version="v0")
    with pytest.raises(FeedbackError, match="65×80"):
        store.add_run(group["case"], "v0", {}, bad)
    with pytest.raises(FeedbackError, match="at least one candidate"):
        store.add_run(group["case"], "v0", {}, [])
    with pytest.raises(FeedbackError, match="unknown model version"):
        store.add_run(group["case"], "v9", {}, group["candidates"])
    mismatched = demo.make_candidates(H, W, 1, model_version="v0")
    mismatched[0].token_logprobs = mismatched[0].token_logprobs[:-1]
    with pytest.raises(FeedbackError, match="log-probs"):
        store.add_run(group["case"], "v0", {}, mismatched)
    with pytest.raises(FeedbackError, match="unknown scan"):
        store.add_case("ab" * 32, "q", "ann-a")
    with pytest.raises(FeedbackError, match="question"):
        store.add_case(group["scan"], "  ", "ann-a")
    assert store.counts() == before


def test_unparseable_candidate_is_kept_with_its_errors(store, group):
    cand = demo.make_candidates(H, W, 1, model_version="v0")[0]
    cand.text = "I think it is somewhere on the left."
    run_id, (cid,) = store.add_run(group["case"], "v0", {}, [cand])
    (stored,) = store.get_candidates(run_id)
    assert stored["id"] == cid and stored["text"] == cand.text and stored["boxes"] == [] and stored["parse_errors"]


# ----------------------------------------------------------------------------------------------- reviews
def test_accepted_mask_is_latest_accepted_correction(store, group):
    c, case, run = group["cands"], group["case"], group["run"]
    masks = [random_mask(s) for s in (21, 22, 23)]
    f1 = store.submit_feedback(case, run, "ann-a", chosen_candidate_id=c[0], mask=masks[0])
    f2 = store.submit_feedback(case, run, "ann-b", chosen_candidate_id=c[1], mask=masks[1])
    f3 = store.submit_feedback(case, run, "ann-a", chosen_candidate_id=c[2], mask=masks[2])
    assert store.accepted_mask(case) is None
    store.review(f1, "rev", "accept")
    assert np.array_equal(store.accepted_mask(case), masks[0])
    store.review(f3, "rev", "accept")
    store.review(f2, "rev", "accept")  # accepted later, but an older correction: f3 stays the accepted mask
    assert np.array_equal(store.accepted_mask(case), masks[2])
    store.review(f3, "rev", "reject", reason="missed the satellite lesion")  # the latest review decides
    assert np.array_equal(store.accepted_mask(case), masks[1])
    store.review(f2, "rev", "flag", reason="second opinion needed")
    assert np.array_equal(store.accepted_mask(case), masks[0])
    # nothing was overwritten: every row and review is still there
    assert store.counts()["corrections"] == 3 and store.counts()["reviews"] == 5
    assert [r["decision"] for r in store.get_feedback(f3)["reviews"]] == ["accept", "reject"]


def test_review_rules(store, group):
    c = group["cands"]
    fid = store.submit_feedback(group["case"], group["run"], "ann-a", ranking={c[0]: 1})
    with pytest.raises(FeedbackError, match="only reviewers and admins"):
        store.review(fid, "ann-b", "accept")
    with pytest.raises(FeedbackError, match="needs a reason"):
        store.review(fid, "rev", "reject")
    with pytest.raises(FeedbackError, match="needs a reason"):
        store.review(fid, "rev", "flag", reason="  ")
    with pytest.raises(FeedbackError, match="unknown decision"):
        store.review(fid, "rev", "approve")
    with pytest.raises(FeedbackError, match="unknown feedback"):
        store.review(98765, "rev", "accept")
    draft = store.submit_feedback(group["case"], group["run"], "ann-b", ranking={c[0]: 1}, status="draft")
    with pytest.raises(FeedbackError, match="only submitted"):
        store.review(draft, "rev", "accept")
    first = store.review(fid, "rev", "flag", reason="unclear", review_id="r-1")
    assert store.review(fid, "rev", "flag", reason="unclear", review_id="r-1") == first
    assert store.counts()["reviews"] == 1


def test_drafts_are_superseded_not_overwritten(store, group):
    c, case, run = group["cands"], group["case"], group["run"]
    draft = store.submit_feedback(case, run, "ann-a", ranking={c[0]: 1, c[1]: 2}, status="draft")
    assert [q["feedback_id"] for q in store.queue(status="draft")] == [draft]
    with pytest.raises(FeedbackError, match="not this annotator"):
        store.submit_feedback(case, run, "ann-b", ranking={c[0]: 1}, supersedes=draft)
    final = store.submit_feedback(case, run, "ann-a", ranking={c[0]: 2, c[1]: 1}, supersedes=draft)
    assert store.queue(status="draft") == [] and [q["feedback_id"] for q in store.queue()] == [final]
    with pytest.raises(FeedbackError, match="already superseded"):
        store.submit_feedback(case, run, "ann-a", ranking={c[0]: 1}, supersedes=draft)
    with pytest.raises(FeedbackError, match="only a draft"):
        store.submit_feedback(case, run, "ann-a", ranking={c[0]: 1}, supersedes=final)
    other = store.submit_feedback(case, run, "ann-b", ranking={c[0]: 1}, status="draft")
    discard = store.submit_feedback(case, run, "ann-b", status="discarded", supersedes=other)  # empty is fine here
    assert store.get_feedback(draft)["ranking"] == {c[0]: 1, c[1]: 2}  # the draft itself is untouched
    assert store.get_feedback(discard)["status"] == "discarded"


def test_queue_and_history(store, group):
    c, case, run = group["cands"], group["case"], group["run"]
    f1 = store.submit_feedback(case, run, "ann-a", chosen_candidate_id=c[0], mask=random_mask(1), seconds=9.0)
    f2 = store.submit_feedback(case, run, "ann-b", ratings={c[1]: {"correctness": 4}},
                               edited_reasoning="rewritten", chosen_candidate_id=c[1])
    store.review(f1, "rev", "accept")
    assert [q["feedback_id"] for q in store.queue(review_state="unreviewed")] == [f2]
    assert [q["feedback_id"] for q in store.queue(review_state="accept")] == [f1]
    assert [q["feedback_id"] for q in store.queue(annotator="ann-b")] == [f2]
    assert store.queue(model_version="nope") == []
    row = store.queue(annotator="ann-a")[0]
    assert row["has_mask"] and not row["edited"] and row["reviewer"] == "rev" and row["model_version"] == "v0"
    assert row["question"] == "Locate and segment the liver tumor." and row["scan_hash"] == group["scan"]
    history = store.feedback_history(case)
    assert [e["kind"] for e in history] == ["case", "run", "feedback", "feedback", "review"]
    assert history[2]["actor"] == "ann-a" and history[2]["correction"]["proposal_candidate_id"] == c[0]
    assert history[3]["edited_reasoning"] == "rewritten" and history[4]["decision"] == "accept"
    assert [e["at"] for e in history] == sorted(e["at"] for e in history)


def test_training_rounds(store, group):
    c = group["cands"]
    ids = [store.submit_feedback(group["case"], group["run"], "ann-a", ranking={c[0]: 1}) for _ in range(3)]
    store.add_model_version("v1", "/ckpt/v1", parent="v0")
    round_id = store.add_training_round("v0", "v1", ids + ids[:1], {"dice": 0.41}, "runs/r1/report.md")
    (r,) = store.list_training_rounds()
    assert r["id"] == round_id and (r["base_version"], r["out_version"]) == ("v0", "v1")
    assert r["feedback_ids"] == sorted(ids) and r["metrics"] == {"dice": 0.41}
    with pytest.raises(FeedbackError, match="unknown feedback"):
        store.add_training_round("v0", "v1", [ids[0], 99999], {}, None)
    with pytest.raises(FeedbackError, match="unknown model version"):
        store.add_training_round("v0", "v7", ids, {}, None)


# ----------------------------------------------------------------------------------------------- migrations, backups
def _v1_database(url: str) -> None:
    """A version-1 database with one row of everything: SQLite from the DDL as it shipped, PostgreSQL from the
    frozen step 1 (the first release never ran on PostgreSQL)."""
    from sqlalchemy import create_engine, text

    from annotation import migrations
    from annotation.store import resolve_url

    engine = create_engine(resolve_url(url))
    stamp = "2025-01-02 03:04:05"
    with engine.begin() as conn:
        if conn.dialect.name == "sqlite":
            for ddl in V1_DDL:
                conn.exec_driver_sql(ddl)
        else:
            assert migrations.upgrade(conn, 0, 1) == [1]
        for sql in (
                "INSERT INTO annotators (name, role, created_at) VALUES ('old-timer', 'annotator', :t)",
                "INSERT INTO model_versions (name, checkpoint_path, created_at) VALUES ('v-old', '/ck', :t)",
                "INSERT INTO scans (hash, codec, dtype, shape, height, width, modality, source_format, meta, pixels,"
                " created_at) VALUES ('ab', 'png', '|u1', '[1, 1]', 1, 1, 'CT', 'png', '{}', :blob, :t)",
                "INSERT INTO cases (scan_hash, question, created_by, created_at) VALUES ('ab', 'Where?', 1, :t)",
                "INSERT INTO runs (case_id, model_version_id, sampling, created_at) VALUES (1, 1, '{}', :t)",
                "INSERT INTO candidates (run_id, group_index, text, reasoning, target, boxes, parse_errors, mask_png,"
                " mask_area, mask_score, token_ids, token_logprobs, sampling, trained) VALUES (1, 0, 'text', 'r', 't',"
                " '[]', '[]', :blob, 0, 0.5, :empty, :empty, '{}', :yes)",
                "INSERT INTO feedback (case_id, run_id, annotator_id, status, submission_id, payload_sha256,"
                " chosen_candidate_id, edited_reasoning, edited_candidate_id, clicks, strokes, seconds, created_at)"
                " VALUES (1, 1, 1, 'submitted', 's-old', 'h', 1, 'edited', 1, 2, 1, 3.5, :t)",
                "INSERT INTO rankings (feedback_id, candidate_id, rank) VALUES (1, 1, 1)"):
            names = {k: v for k, v in dict(t=stamp, blob=b"\0", empty=b"", yes=True).items() if f":{k}" in sql}
            conn.execute(text(sql), names)
    engine.dispose()


def _schema(url: str) -> dict:
    """Every table's columns (name, type, nullable), primary key, foreign keys, unique sets and indexes."""
    from sqlalchemy import create_engine, inspect

    from annotation.store import resolve_url

    engine = create_engine(resolve_url(url))
    with engine.connect() as conn:
        insp = inspect(conn)
        out = {}
        for t in insp.get_table_names():
            out[t] = {
                "columns": sorted((c["name"], type(c["type"]).__name__, c["nullable"]) for c in insp.get_columns(t)),
                "pk": sorted(insp.get_pk_constraint(t)["constrained_columns"]),
                "fks": sorted((tuple(f["constrained_columns"]), f["referred_table"], tuple(f["referred_columns"]))
                              for f in insp.get_foreign_keys(t)),
                "unique": sorted(tuple(sorted(u["column_names"])) for u in insp.get_unique_constraints(t)),
                "indexes": sorted((i["name"], tuple(i["column_names"]), bool(i["unique"]))
                                  for i in insp.get_indexes(t)),
            }
    engine.dispose()
    return out


def _second_database(request, db_url: str, tmp_path) -> str:
    if "://" not in db_url:
        return str(tmp_path / "second.db")
    return request.getfixturevalue("postgres_server").new_database()


def test_v1_database_is_upgraded_in_place(db_url, tmp_path, request):
    _v1_database(db_url)
    store = FeedbackStore(db_url)
    assert store.schema_version() == SCHEMA_VERSION
    if store.is_sqlite:
        assert len(list(tmp_path.glob("feedback.db.v1-*.bak"))) == 1  # a copy of the version-1 file was taken first
    fb = store.get_feedback(1, with_mask=False)
    assert fb["annotator"] == "old-timer" and fb["edited_reasoning"] == "edited" and fb["ranking"] == {1: 1}
    assert fb["supersedes_id"] is None and fb["comment"] is None
    assert store.get_case(1)["target"] is None
    store.add_model_version("v-new", "/ck2", parent="v-old")
    assert store.add_training_round("v-old", "v-new", [1], {"dice": 0.2}, None) == 1
    assert store.integrity_check() == "ok"
    store.close()
    # the upgraded schema is the one a new database gets
    fresh = _second_database(request, db_url, tmp_path)
    FeedbackStore(fresh).close()
    assert _schema(db_url) == _schema(fresh)
    with FeedbackStore(db_url) as again:  # reopening does nothing more
        assert again.schema_version() == SCHEMA_VERSION and again.counts()["feedback"] == 1
    if "://" not in db_url:
        assert len(list(tmp_path.glob("feedback.db.v1-*.bak"))) == 1


def test_migration_step_1_is_the_shipped_v1_schema(tmp_path):
    """The frozen step 1 builds exactly the schema the first release shipped (its SQL kept in v1_schema.py)."""
    from sqlalchemy import create_engine

    from annotation import migrations

    shipped, frozen = tmp_path / "shipped.db", tmp_path / "frozen.db"
    with sqlite3.connect(shipped) as con:
        for ddl in V1_DDL:
            con.execute(ddl)
    engine = create_engine(f"sqlite:///{frozen}")
    with engine.begin() as conn:
        migrations.upgrade(conn, 0, 1)
    engine.dispose()
    assert _schema(str(frozen)) == _schema(str(shipped))


def test_migrations_build_the_models_schema(db_url, tmp_path, request):
    """Running every frozen step gives the schema the current models declare (so models and steps agree)."""
    from sqlalchemy import create_engine
    from sqlmodel import SQLModel

    from annotation.store import resolve_url

    FeedbackStore(db_url).close()
    from_models = _second_database(request, db_url, tmp_path)
    engine = create_engine(resolve_url(from_models))
    SQLModel.metadata.create_all(engine)
    engine.dispose()
    assert _schema(db_url) == _schema(from_models)


def test_newer_database_is_refused(db_url):
    FeedbackStore(db_url).close()
    from sqlalchemy import create_engine

    from annotation.store import resolve_url

    engine = create_engine(resolve_url(db_url))
    with engine.begin() as conn:
        conn.exec_driver_sql(f"UPDATE schema_info SET version = {SCHEMA_VERSION + 1}")
    engine.dispose()
    with pytest.raises(FeedbackError, match="update the code"):
        FeedbackStore(db_url)


def test_backup_is_a_consistent_read_only_copy(store, group, tmp_path):
    c = group["cands"]
    if not store.is_sqlite:  # PostgreSQL has its own tools; the store says so instead of copying half a database
        with pytest.raises(FeedbackError, match="pg_dump"):
            store.backup(tmp_path / "copy.db")
        return
    fid = store.submit_feedback(group["case"], group["run"], "ann-a", ranking={c[0]: 1, c[1]: 1}, mask=random_mask(5),
                                chosen_candidate_id=c[0])
    copy_path = store.backup(tmp_path / "backups" / "copy.db")
    with pytest.raises(FeedbackError, match="never overwrites"):
        store.backup(copy_path)
    store.submit_feedback(group["case"], group["run"], "ann-b", ranking={c[0]: 1})  # the live store moves on
    import hashlib
    digest = hashlib.sha256(copy_path.read_bytes()).hexdigest()
    with FeedbackStore(copy_path, read_only=True) as copy:
        assert copy.counts()["feedback"] == 1
        assert copy.get_feedback(fid)["ranking"] == {c[0]: 1, c[1]: 1}
        with pytest.raises(FeedbackError, match="read-only"):
            copy.add_annotator("intruder")
    assert hashlib.sha256(copy_path.read_bytes()).hexdigest() == digest  # reading never changed a byte
    from annotation.store import main
    assert main(["backup", "--db", str(store.path), "--out", str(tmp_path / "cli.db")]) == 0
    assert (tmp_path / "cli.db").exists()


def test_one_store_shared_by_threads(store, group):
    """The app serves several users from one process: one store, many threads, nothing lost."""
    from concurrent.futures import ThreadPoolExecutor

    c = group["cands"]

    def submit(i: int) -> int:
        k = i % 30  # every submission is sent twice, from different threads
        return store.submit_feedback(group["case"], group["run"], "ann-a", ranking={c[k % 4]: 1},
                                     chosen_candidate_id=c[k % 4], mask=random_mask(k), submission_id=f"t-{k}")

    with ThreadPoolExecutor(6) as pool:
        ids = list(pool.map(submit, range(60)))
    assert len(set(ids)) == 30 and store.counts()["feedback"] == 30  # each id stored once, resends deduplicated
    assert all(ids[i] == ids[i + 30] for i in range(30))


def test_rating_scales_are_declared_once():
    assert RATING_SCALES == {"correctness": (1, 5), "completeness": (1, 5), "clinical_relevance": (1, 5)}
