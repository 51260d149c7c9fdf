"""Attack the app as an outsider and as a malicious annotator would (issue 11), through its server.

    python bench/attack.py                # the tests' small model (real LiteMedSAM weights), a temporary database

Starts the app with a users file (two annotators, two reviewers, an admin) on a free port and tries every kind of
bad input listed in issue 11 and in the test suite. Prints a Markdown table (kind, input, result) and the totals:
kinds tried, crashes (a server error or a dead server), leaks (an identifier or someone else's data in an answer),
bypasses (something refused that went through), acknowledged rows lost. Target: ≥ 40 kinds, 0 / 0 / 0 / 0.
"""
from __future__ import annotations

import json
import os
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
for key, value in {"GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
                   "TRANSFORMERS_OFFLINE": "1"}.items():
    os.environ.setdefault(key, value)

import httpx  # noqa: E402
import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
import pydicom  # noqa: E402
import pydicom.data  # noqa: E402
from markdown_it import MarkdownIt  # noqa: E402

DICOM = pydicom.data.get_testdata_file("CT_small.dcm", download=False)
PATIENT = "Attack^Planted^Name"
PASSWORDS = {"alice": "alice-pw", "dave": "dave-pw", "bob": "bob-pw", "erin": "erin-pw", "carol": "carol-pw"}
ROLES = {"alice": "annotator", "dave": "annotator", "bob": "reviewer", "erin": "reviewer", "carol": "admin"}
Q = "Where is the lesion? Find it and identify its boundaries."
HOSTILE = '<img src="http://127.0.0.1:9/x.png"><form action="http://127.0.0.1:9/"><input type=password></form>'


class Bench:
    def __init__(self):
        self.rows: list[tuple[str, str, str, str]] = []   # kind, input, result, verdict

    def kind(self, name: str, given: str, fn, expect: str = "refused") -> None:
        """Run one attack: `fn` returns (result text, verdict) or raises (an error message is a refusal)."""
        try:
            result, verdict = fn()
        except Exception as exc:  # noqa: BLE001 - every failure is classified
            text = str(exc).strip().splitlines()[-1][:90] if str(exc).strip() else type(exc).__name__
            crashed = "Something went wrong on the server" in text or not _is_app_error(exc)
            result, verdict = text, ("crash" if crashed else ("ok" if expect == "refused" else "bypass"))
        self.rows.append((name, given, result.replace("|", "/"), verdict))
        print(f"{verdict:7s} {name}: {result[:100]}", file=sys.stderr)

    def table(self) -> str:
        lines = ["| kind | input | result | verdict |", "|---|---|---|---|"]
        lines += [f"| {k} | {i} | {r} | {v} |" for k, i, r, v in self.rows]
        return "\n".join(lines)


def _is_app_error(exc) -> bool:
    from gradio_client.exceptions import AppError

    from studio.inputs import StudioError
    from studio.users import AccessDenied
    return isinstance(exc, (AppError, StudioError, AccessDenied, ValueError, PermissionError))


def planted_dicom(folder: Path) -> Path:
    ds = pydicom.dcmread(DICOM)
    ds.PatientName = PATIENT
    path = folder / "planted.dcm"
    ds.save_as(path)
    return path


def main() -> int:
    import app
    from annotation.store import FeedbackStore
    from coreseg.config import AppConfig
    from gradio_client import Client, handle_file
    from studio import scans
    from studio.session import Session
    from studio.users import hash_password
    from tests.test_app import bad_files, free_port, png_header_only, small_predictor

    work = Path(tempfile.mkdtemp(prefix="attack-"))
    users = work / "users.json"
    users.write_text(json.dumps({"users": [{"name": n, "role": ROLES[n], "password_hash": hash_password(pw)}
                                           for n, pw in PASSWORDS.items()]}))
    config = AppConfig(database_url=f"sqlite:///{work / 'f.db'}", users_file=str(users), temp_dir=str(work / "tmp"),
                       n_candidates=2)
    store = FeedbackStore(work / "f.db")
    demo = app.build_app(config, predictor=small_predictor(), store=store)
    studio = demo.coreseg_studio
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    app.launch_app(demo, server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    b = Bench()
    acked: list[int] = []
    tmp = studio.temp_dir

    def client(name, password=None):
        return Client(url, auth=(name, password or PASSWORDS[name]), verbose=False)

    alice, dave, bob, erin, carol = (client(n) for n in ("alice", "dave", "bob", "erin", "carol"))
    planted = planted_dicom(work)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    mine, gallery = alice.predict(handle_file(str(planted)), Q, 2, "", api_name="/predict")
    theirs, _ = dave.predict(handle_file(DICOM), Q, 2, "", api_name="/predict")
    case, run, ids = mine["case_id"], mine["run_id"], mine["candidate_ids"]

    def must_fail(fn, message: str):
        def run_():
            try:
                out = fn()
            except Exception as exc:  # noqa: BLE001
                text = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
                if "Something went wrong" in text:
                    return text[:90], "crash"
                return text[:90], "ok"          # refused with a message (the table shows which)
            return f"accepted: {str(out)[:60]}", "bypass"
        return run_

    def check(fn):
        return fn

    # -- sign-in ------------------------------------------------------------------------------------------------
    b.kind("no sign-in", "/session without auth", must_fail(lambda: Client(url, verbose=False).predict(
        api_name="/session"), ""))
    b.kind("wrong password", "alice / wrong", must_fail(lambda: Client(url, auth=("alice", "x"), verbose=False), ""))
    b.kind("raw fn_index call", "POST queue/join fn_index=0, no cookie", check(lambda: (
        lambda r: (f"HTTP {r.status_code}", "ok" if r.status_code in (401, 403, 404, 422) else "bypass"))(
        httpx.post(f"{url}gradio_api/queue/join", json={"data": [], "fn_index": 0, "session_hash": "x"}))))

    def name_throttle():
        for _ in range(5):
            studio.users.authenticate("erin", "wrong")
        ok = studio.users.authenticate("erin", PASSWORDS["erin"])
        studio.users.throttle.succeed("name:erin")
        return ("right password refused after 5 wrong" if not ok else "right password accepted", "ok" if not ok
                else "bypass")
    b.kind("password guessing (per name)", "5 wrong, then the right one", name_throttle)

    def timing():
        t0 = time.perf_counter()
        studio.users.authenticate("alice", "nope")
        known = time.perf_counter() - t0
        t0 = time.perf_counter()
        studio.users.authenticate("no-such-user", "nope")
        unknown = time.perf_counter() - t0
        studio.users.throttle.succeed("name:alice")
        ratio = unknown / max(known, 1e-9)
        return f"unknown/known time {ratio:.2f}", "ok" if ratio > 0.5 else "leak"
    b.kind("user names by timing", "unknown vs real name", timing)

    # -- roles --------------------------------------------------------------------------------------------------
    a_user, d_user, b_user, e_user, c_user = (studio.identify(n, None) for n in ("alice", "dave", "bob", "erin",
                                                                                 "carol"))
    b.kind("annotator reviews", "review_queue as alice", must_fail(lambda: studio.review_queue(a_user), "reviewer"))
    b.kind("annotator dashboard", "dashboard as alice", must_fail(lambda: studio.dashboard(a_user), "reviewer"))
    b.kind("reviewer exports", "export as bob", must_fail(lambda: studio.export_data(b_user, "sft"), "admin"))
    b.kind("reviewer switches model", "serve_model as bob", must_fail(lambda: studio.serve_model(b_user, "x"),
                                                                     "admin"))

    # -- ownership ----------------------------------------------------------------------------------------------
    b.kind("refine another's case", f"dave /refine alice's case {case}",
           must_fail(lambda: dave.predict(case, ids[0], "[[5, 5, 1]]", "", api_name="/refine"), "among yours"))
    b.kind("submit on another's case", "dave /submit alice's case", must_fail(lambda: dave.predict(
        case, run, json.dumps({str(ids[0]): 1}), "", None, "", "submitted", 0, "", api_name="/submit"), "among yours"))
    b.kind("another's run under own case", "dave: his case, alice's run", must_fail(lambda: dave.predict(
        theirs["case_id"], run, json.dumps({str(ids[0]): 1}), "", None, "", "submitted", 0, "", api_name="/submit"),
        "among yours"))

    def candidate_probe():
        try:
            dave.predict(theirs["case_id"], ids[0], "[[5, 5, 1]]", "", api_name="/refine")
        except Exception as exc:  # noqa: BLE001
            text = str(exc).splitlines()[-1]
            return text[:90], "leak" if str(case) in text.replace(str(theirs["case_id"]), "") else "ok"
        return "refined another's candidate", "bypass"
    b.kind("another's candidate, message", "dave: his case, alice's candidate", candidate_probe)
    b.kind("missing case reads the same", "dave /refine case 999999", must_fail(lambda: dave.predict(
        999999, ids[0], "[[5, 5, 1]]", "", api_name="/refine"), "among yours"))

    # -- sessions -----------------------------------------------------------------------------------------------
    def borrowed_session():
        thief = client("bob")
        thief.session_hash = alice.session_hash
        seen = thief.predict(api_name="/session")
        return f"bob sees case {seen['case_id']}", "ok" if seen["case_id"] is None else "leak"
    b.kind("borrowed session id", "bob with alice's session_hash", borrowed_session)

    def session_bytes():
        fresh = Session()
        studio.open_scan(fresh, open(DICOM, "rb").read(), filename="x.dcm", keep_bytes=True)
        studio.predict(a_user, fresh, Q, 4)
        before = fresh.nbytes()
        held = Session()
        held.adopt_api_case(fresh)
        stats = studio.sessions.stats()
        return (f"held per API session {before:,} B (full) → {held.nbytes():,} B; registry {stats['sessions']} "
                f"sessions, {stats['bytes']:,} B", "ok" if held.nbytes() < 65536 else "leak")
    b.kind("memory per API session", "predict n=4, 128² CT", session_bytes)

    def many_sessions():
        for i in range(200):
            studio.sessions.get("alice", f"flood-{i}")
        n = studio.sessions.stats()["sessions"]
        return f"{n} sessions held after 200 opened", "ok" if n <= studio.sessions.max_sessions else "bypass"
    b.kind("session flood", "200 sessions", many_sessions)

    # -- text and clicks ----------------------------------------------------------------------------------------
    b.kind("5,000 clicks", "/refine with 5,000 clicks", must_fail(lambda: alice.predict(
        case, ids[0], json.dumps([[5, 5, 1]] * 5000), "", api_name="/refine"), "at most 64"))
    b.kind("click outside", "[[500, 5, 1]]", must_fail(lambda: alice.predict(case, ids[0], "[[500, 5, 1]]", "",
                                                                              api_name="/refine"), "outside"))
    b.kind("NaN click", "[[NaN, 5, 1]]", must_fail(lambda: alice.predict(case, ids[0], "[[NaN, 5, 1]]", "",
                                                                          api_name="/refine"), "outside"))
    b.kind("infinite box", "[0, 0, Infinity, 1e400]", must_fail(lambda: alice.predict(
        case, ids[0], "[]", "[0, 0, Infinity, 1e400]", api_name="/refine"), "finite"))
    b.kind("nested JSON bomb", "100,000 nested lists as clicks", must_fail(lambda: alice.predict(
        case, ids[0], "[" * 50_000 + "]" * 50_000, "", api_name="/refine"), "characters"))
    b.kind("JSON too deep", "3,000 nested lists", must_fail(lambda: alice.predict(
        case, ids[0], "[" * 3000 + "]" * 3000, "", api_name="/refine"), ""))
    b.kind("20 MB reasoning", "edited reasoning of 1 MB", must_fail(lambda: alice.predict(
        case, run, json.dumps({str(ids[0]): 1}), "", None, "x" * 1_000_000, "submitted", 0, "", api_name="/submit"),
        "limit"))
    b.kind("long question", "10,000 characters", must_fail(lambda: alice.predict(
        handle_file(DICOM), "x" * 10_000, 1, "", api_name="/predict"), "characters long"))
    for n in (0, 9, -3):
        b.kind(f"n = {n}", f"/predict n={n}", must_fail(lambda n=n: alice.predict(handle_file(DICOM), Q, n, "",
                                                                                   api_name="/predict"), "1 to 8"))
    b.kind("no ranking, no rating", "/submit status submitted, nothing else", must_fail(lambda: alice.predict(
        case, run, "", "", None, "", "submitted", ids[0], "", api_name="/submit"), "rank the candidates"))
    b.kind("rank of another run's candidate", "ranking {dave's candidate: 1}", must_fail(lambda: alice.predict(
        case, run, json.dumps({str(theirs["candidate_ids"][0]): 1}), "", None, "", "submitted", 0, "",
        api_name="/submit"), "not one of this run"))

    # -- escaping -----------------------------------------------------------------------------------------------
    def hostile_review():
        stored = alice.predict(case, run, json.dumps({str(ids[0]): 1}), "", None, HOSTILE + " ![p](http://x/p.png)",
                               "submitted", 0, "attack-1", api_name="/submit")
        acked.append(stored["feedback_id"])
        page = MarkdownIt("commonmark", {"html": True}).render(studio.feedback_view(e_user, stored["feedback_id"])
                                                               ["markdown"])
        live = [t for t in ("<img", "<form", "<input") if t in page]
        return (f"live tags: {live or 'none'}", "leak" if live else "ok")
    b.kind("HTML in edited reasoning", "<img src=…><form><input type=password>, ![](…)", hostile_review)
    b.kind("reviewer accepts own", "bob reviews bob's submission", check(lambda: _own_review(studio, bob, b_user)))

    # -- uploads and temporary files ----------------------------------------------------------------------------
    def leftovers():
        names = [p.name for p in tmp.rglob("*") if p.is_file() and p.suffix in (".dcm", ".nii", ".gz")]
        return names
    b.kind("bad options keep the upload?", "planted DICOM, options '{bad'", check(lambda: _bad_options(
        alice, planted, leftovers)))
    for label, (path, message) in bad_files(work).items():
        b.kind(f"bad scan: {label}", path.name, must_fail(lambda p=path: alice.predict(
            handle_file(str(p)), Q, 1, "", api_name="/predict"), message))
    extra = {"empty file": (b"", "x.png", "empty"), "truncated DICOM": (open(DICOM, "rb").read()[:700], "t.dcm", ""),
             "PNG bomb header": (png_header_only(100_000, 100_000), "b.png", "too large"),
             "zip named .png": (b"PK\x03\x04" + b"\0" * 200, "z.png", ""), "random bytes .nii": (os.urandom(400),
                                                                                                "r.nii", "")}
    for label, (data, name, message) in extra.items():
        path = work / name
        path.write_bytes(data)
        b.kind(f"bad scan: {label}", name, must_fail(lambda p=path: alice.predict(
            handle_file(str(p)), Q, 1, "", api_name="/predict"), message))
    nan = work / "nan.nii"
    nib.save(nib.Nifti1Image(np.full((8, 8, 3), np.nan, np.float32), np.eye(4)), nan)
    b.kind("NaN NIfTI", "8×8×3 of NaN", check(lambda: _answers_or_refuses(alice, nan)))
    b.kind("leftovers after bad uploads", "temp folder", check(lambda: (f"{len(leftovers())} raw files left",
                                                                        "leak" if leftovers() else "ok")))

    def same_file():
        out, errors = [], []
        gate = threading.Barrier(2)

        def go(c):
            gate.wait()
            try:
                out.append(c.predict(handle_file(DICOM), Q, 1, "", api_name="/predict")[0]["case_id"])
            except Exception as exc:  # noqa: BLE001
                errors.append(str(exc)[-80:])
        threads = [threading.Thread(target=go, args=(c,)) for c in (alice, dave)]
        [t.start() for t in threads]
        [t.join() for t in threads]
        return f"{len(out)} of 2 succeeded {errors or ''}", "ok" if len(out) == 2 else "bypass"
    b.kind("same file, two people, same moment", "CT_small.dcm ×2", same_file)

    def restart_cleans():
        folder = studio.temp_dir
        (folder / "killed-run").mkdir(exist_ok=True)
        (folder / "killed-run" / "upload.dcm").write_bytes(b"DICM")
        (folder / "killed-run" / "coreseg-sft-x.zip").write_bytes(b"PK")
        (folder / scans.OWNER_FILE).write_text("999999999")
        removed = scans.clean_leftovers(folder)
        return f"{removed} files removed at start-up", "ok" if not (folder / "killed-run").exists() else "leak"
    b.kind("files left by a killed process", "upload + export zip", restart_cleans)

    # -- files by path ------------------------------------------------------------------------------------------
    archive = studio.export_data(c_user, "summary")

    def fetch(c, path):
        return httpx.get(f"{url}gradio_api/file={path}", cookies=c.cookies, timeout=30).status_code
    b.kind("annotator downloads an export", "GET file=<export zip> as dave", check(lambda: (
        lambda code: (f"HTTP {code}", "ok" if code == 404 else "bypass"))(fetch(dave, archive))))
    b.kind("admin downloads the export", "GET as carol", check(lambda: (
        lambda code: (f"HTTP {code} (guard lets admins through)", "ok" if code != 404 else "bypass"))(
        fetch(carol, archive))))
    alices = [p for p in studio.files._owners if studio.files.owners(p) == frozenset({"alice"})]
    b.kind("another's overlay by path", "GET alice's overlay as dave", check(lambda: (
        lambda code: (f"HTTP {code}", "ok" if code == 404 else "bypass"))(fetch(dave, alices[0]))))
    b.kind("path traversal", "file=../../../../etc/passwd", check(lambda: (
        lambda r: (f"HTTP {r.status_code}", "leak" if "root:" in r.text else "ok"))(
        httpx.get(f"{url}gradio_api/file=../../../../etc/passwd", cookies=dave.cookies))))

    # -- store --------------------------------------------------------------------------------------------------
    b.kind("SQL in submission id", "x'); DROP TABLE feedback;--", check(lambda: _sql(alice, case, run, ids, acked,
                                                                                     store)))

    def idem():
        first = alice.predict(case, run, json.dumps({str(ids[1]): 1}), "", None, "", "submitted", 0, "same-id",
                              api_name="/submit")
        again = alice.predict(case, run, json.dumps({str(ids[1]): 1}), "", None, "", "submitted", 0, "same-id",
                              api_name="/submit")
        acked.append(first["feedback_id"])
        return f"ids {first['feedback_id']} = {again['feedback_id']}", ("ok" if first["feedback_id"] ==
                                                                         again["feedback_id"] else "bypass")
    b.kind("retry with the same submission id", "two identical /submit", idem)

    def borrowed_submission_id():
        result, _ = dave.predict(handle_file(DICOM), Q, 1, "", api_name="/predict")
        out = dave.predict(result["case_id"], result["run_id"], json.dumps({str(result["candidate_ids"][0]): 1}), "",
                           None, "", "submitted", 0, "same-id", api_name="/submit")
        acked.append(out["feedback_id"])
        return f"dave's row {out['feedback_id']}", "ok" if out["feedback_id"] not in acked[:-1] else "leak"
    b.kind("another's submission id", "dave reuses alice's 'same-id'", borrowed_submission_id)

    def burst():
        for k in range(10):
            out = alice.predict(case, run, json.dumps({str(ids[0]): 1 + k % 2}), "", None, "", "draft", 0,
                                f"burst-{k}", api_name="/submit")
            acked.append(out["feedback_id"])
        return f"{len(acked)} acknowledged so far", "ok"
    b.kind("submit burst", "10 drafts", burst)
    b.kind("per-client sign-in flood", "25 wrong passwords from one address", check(lambda: _client_flood(url)))

    # -- totals -------------------------------------------------------------------------------------------------
    stored = {r["id"] for r in store.feedback_rows(status=None)}
    lost = [f for f in acked if f not in stored]
    planted_seen = any(PATIENT.lower() in str(r).lower() for r in store.feedback_rows(status=None)) or \
        PATIENT in json.dumps(mine)
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    alive = alice.predict(api_name="/session")["user"] == "alice"
    verdicts = [r[3] for r in b.rows]
    print(b.table())
    print()
    print(f"kinds tried: {len(b.rows)} · crashes: {verdicts.count('crash') + (0 if alive else 1)} · "
          f"leaks: {verdicts.count('leak') + int(planted_seen)} · bypasses: "
          f"{sum(v.startswith('bypass') for v in verdicts)} · acknowledged rows lost: {len(lost)} of {len(acked)}")
    print(f"peak RSS {rss0 / 1024:,.0f} → {rss1 / 1024:,.0f} MB over the run (server and clients in one process)")
    demo.close()
    store.close()
    return 0


def _own_review(studio, bob, b_user):
    from gradio_client import handle_file

    result, _ = bob.predict(handle_file(DICOM), Q, 1, "", api_name="/predict")
    out = bob.predict(result["case_id"], result["run_id"], json.dumps({str(result["candidate_ids"][0]): 1}), "",
                      None, "", "submitted", 0, "", api_name="/submit")
    try:
        studio.review(b_user, out["feedback_id"], "accept")
    except Exception as exc:  # noqa: BLE001
        return str(exc)[:90], "ok"
    return "accepted own submission", "bypass"


def _bad_options(alice, planted, leftovers):
    from gradio_client import handle_file

    try:
        alice.predict(handle_file(str(planted)), Q, 2, "{bad", api_name="/predict")
    except Exception as exc:  # noqa: BLE001
        left = leftovers()
        return f"{str(exc).splitlines()[-1][:50]}; {len(left)} raw files left", "leak" if left else "ok"
    return "bad options accepted", "bypass"


def _answers_or_refuses(alice, path):
    from gradio_client import handle_file

    try:
        result, _ = alice.predict(handle_file(str(path)), Q, 1, "", api_name="/predict")
        return f"answered (case {result['case_id']})", "ok"
    except Exception as exc:  # noqa: BLE001
        text = str(exc).splitlines()[-1]
        return text[:90], "crash" if "Something went wrong" in text else "ok"


def _sql(alice, case, run, ids, acked, store):
    out = alice.predict(case, run, json.dumps({str(ids[0]): 2}), "", None, "", "submitted", 0,
                        "x'); DROP TABLE feedback;--", api_name="/submit")
    acked.append(out["feedback_id"])
    return f"stored as text; feedback rows {store.counts()['feedback']}", "ok"


def _client_flood(url):
    codes = [httpx.post(f"{url}login", data={"username": "nobody", "password": "x"}).status_code for _ in range(25)]
    return f"HTTP {codes[0]} … {codes[-1]} ({codes.count(429)} refused as too many)", (
        "ok" if codes[-1] == 429 else "bypass")


if __name__ == "__main__":
    sys.exit(main())
