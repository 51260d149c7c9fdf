"""The feedback store under several writer processes, and a writer killed in the middle of a transaction,
on SQLite and on PostgreSQL (the `db_url` fixture).

`CORESEG_STRESS_SECONDS` (default 30) sets how long the eight writers write; the suite runs the full 30 s.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import signal

import numpy as np
import pytest

import store_demo as demo
from annotation.store import FeedbackStore, StoreBusy

STRESS_SECONDS = float(os.environ.get("CORESEG_STRESS_SECONDS", "20"))
WRITERS = 8


@pytest.mark.stress
def test_eight_writer_processes_lose_nothing(db_url):
    path = db_url
    with FeedbackStore(path) as store:
        made = demo.populate(store, n_cases=2, annotators=("ann-a",), review=False)
        names = [f"writer-{i}" for i in range(WRITERS)]
        for name in names:
            store.add_annotator(name)
        before = store.counts()
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(WRITERS), ctx.Queue()
    procs = [ctx.Process(target=demo.writer_process,
                         args=(path, i, made["cases"][i % 2], made["runs"][i % 2], names[i], STRESS_SECONDS, barrier,
                               results))
             for i in range(WRITERS)]
    for p in procs:
        p.start()
    reports = [results.get(timeout=STRESS_SECONDS + 240) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    errors = [e for r in reports for e in r["errors"]]
    assert errors == [], errors[0]
    assert all(p.exitcode == 0 for p in procs)
    ids = [i for r in reports for i in r["ids"]]
    assert len(ids) == len(set(ids))
    with FeedbackStore(path) as store:
        after = store.counts()
        assert store.integrity_check() == "ok"
        stored = {q["feedback_id"] for q in store.queue(status="submitted")}
    assert after["feedback"] - before["feedback"] == len(ids)  # no lost row, no duplicate from resending
    assert set(ids) <= stored
    assert after["rankings"] - before["rankings"] == 4 * len(ids)
    assert after["corrections"] - before["corrections"] == len(ids)
    assert all(r["resent"] > 0 for r in reports)
    rate = len(ids) / STRESS_SECONDS
    print(f"\n{WRITERS} writers, {STRESS_SECONDS:.0f} s: {len(ids)} submissions, {rate:.0f}/s")


@pytest.mark.parametrize("how", ["exit", "hang"])
def test_writer_killed_mid_transaction_leaves_database_consistent(db_url, how):
    path = db_url
    sqlite = "://" not in db_url
    with FeedbackStore(path) as store:
        made = demo.populate(store, n_cases=2, annotators=("ann-a", "ann-b"))
        before = store.counts()
        kept = {fid: store.get_feedback(fid) for fid in made["feedback"]}
        annotator_id = store.get_annotator("ann-a")["id"]
    ctx = mp.get_context("spawn")
    ready = ctx.Event()
    proc = ctx.Process(target=demo.crash_in_transaction,
                       args=(path, made["cases"][0], made["runs"][0], annotator_id, ready, how))
    proc.start()
    if how == "hang":
        assert ready.wait(timeout=120), "the child never reached its open transaction"
        if sqlite:
            for host_lock in (True, False):  # the lock really is held: queued on the lock file, or refused by SQLite
                with FeedbackStore(path, max_wait_s=0.3, busy_timeout_s=0.1, host_lock=host_lock) as blocked:
                    with pytest.raises(StoreBusy, match="nothing was written"):
                        blocked.add_annotator("late")
        else:  # PostgreSQL locks rows, not the database: others write on and never see the open transaction
            with FeedbackStore(path) as other:
                assert other.counts() == before
                other.add_annotator("late")
            before["annotators"] += 1
        os.kill(proc.pid, signal.SIGKILL)
    proc.join(timeout=120)
    assert proc.exitcode == (1 if how == "exit" else -signal.SIGKILL)
    with FeedbackStore(path) as store:
        assert store.integrity_check() == "ok"
        if sqlite:
            with store.engine.connect() as conn:
                assert conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall() == []
        assert store.counts() == before  # the uncommitted row and ranking are gone
        for fid, row in kept.items():
            again = store.get_feedback(fid)
            assert again["ranking"] == row["ranking"] and again["ratings"] == row["ratings"]
            assert np.array_equal(again["mask"], row["mask"]) and again["edited_reasoning"] == row["edited_reasoning"]
        c = made["candidates"][made["runs"][0]]
        store.submit_feedback(made["cases"][0], made["runs"][0], "ann-a", ranking={c[0]: 1},
                              submission_id="never-committed")  # the id of the lost row is free again
        assert store.counts()["feedback"] == before["feedback"] + 1
