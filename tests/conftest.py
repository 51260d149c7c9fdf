"""Test-wide settings: offline, one torch thread (two threads on a busy 2-core machine run up to 40× slower)."""
import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

try:
    import torch

    torch.set_num_threads(1)
except ImportError:  # pragma: no cover
    pass


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_sft(tmp_path_factory):
    """A tiny BUS-BRA-shaped set, its feature cache and a 2-epoch SFT run of a tiny compact model,
    made once through the real entry points (shared by the pipeline and feedback-loop tests)."""
    from fake_data import make_busbra
    from trainers import features, sft

    root = tmp_path_factory.mktemp("tiny-sft")
    data = make_busbra(root / "data", n=8)
    cache = root / "features"
    features.main(["--data", str(data), "--out", str(cache), "--sets", "busbra"])
    sft.main(["--data", str(data), "--cache", str(cache), "--out", str(root / "sft"), "--sets", "busbra",
              "--epochs", "2", "--batch-size", "3", "--lr", "3e-3", "--decoder-lr", "3e-4", "--val-limit", "2",
              "--hidden", "64", "--layers", "2", "--heads", "2", "--threads", "1"])
    return root, data, cache


@pytest.fixture(scope="session")
def postgres_server():
    """A throwaway PostgreSQL server for this test session (see tests/pg_server.py). When it cannot be
    started the PostgreSQL tests fail, with the reason: they are never skipped."""
    from pg_server import PostgresUnavailable, start_server

    try:
        server = start_server()
    except PostgresUnavailable as exc:
        pytest.fail(f"the PostgreSQL test server could not be started ({exc}); install it with "
                    "`bash scripts/install.sh --test`", pytrace=False)
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    """An empty feedback database on each backend: a SQLite file, a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return str(tmp_path / "feedback.db")
    return request.getfixturevalue("postgres_server").new_database()


# Tests that need a training run are `slow` (each takes well over 20 s here), whatever file they are in:
# the fixtures that make one mark every test that uses them, so a new test on them cannot slip into the fast run.
SLOW_FIXTURES = ("tiny_sft",)


@pytest.hookimpl(tryfirst=True)   # before pytest's own -m selection
def pytest_collection_modifyitems(config, items):
    for item in items:
        if set(SLOW_FIXTURES) & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
