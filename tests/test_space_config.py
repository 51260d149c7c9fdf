"""On a Hugging Face Space the database defaults to the persistent /data disk, and start-up says when the
database sits on a disk that does not survive a restart (without paths or names)."""
from __future__ import annotations

import logging

import pytest

from coreseg.config import AppConfig


@pytest.fixture
def clean_env(monkeypatch):
    for name in ("SPACE_ID", "DATABASE_URL", "CORESEG_DB"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_space_with_persistent_storage_keeps_the_database_there(clean_env, tmp_path, caplog):
    clean_env.setenv("SPACE_ID", "someone/coreseg")
    with caplog.at_level(logging.WARNING, logger="coreseg"):
        config = AppConfig.from_env(space_data=tmp_path)
    assert config.database_url == f"sqlite:///{tmp_path / 'coreseg.db'}"
    assert not [r for r in caplog.records if "ephemeral" in r.getMessage()]


def test_space_without_persistent_storage_warns_at_start_up(clean_env, tmp_path, caplog):
    clean_env.setenv("SPACE_ID", "someone/coreseg")
    with caplog.at_level(logging.WARNING, logger="coreseg"):
        config = AppConfig.from_env(space_data=tmp_path / "absent")
    assert config.database_url == AppConfig.database_url
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "lost when the Space restarts" in warnings[0]
    assert "someone" not in warnings[0] and "coreseg.db" not in warnings[0]  # no identifiers, no paths
    caplog.clear()  # a database file set outside /data on a Space is just as ephemeral
    clean_env.setenv("CORESEG_DB", str(tmp_path / "elsewhere.db"))
    with caplog.at_level(logging.WARNING, logger="coreseg"):
        AppConfig.from_env(space_data=tmp_path / "absent")
    assert any("ephemeral" in r.getMessage() for r in caplog.records)


def test_database_server_or_laptop_gives_no_warning(clean_env, tmp_path, caplog):
    clean_env.setenv("SPACE_ID", "someone/coreseg")
    clean_env.setenv("DATABASE_URL", "postgresql://u@db.example/feedback")
    with caplog.at_level(logging.WARNING, logger="coreseg"):
        assert AppConfig.from_env(space_data=tmp_path / "absent").database_url.startswith("postgresql")
    clean_env.delenv("SPACE_ID")
    clean_env.delenv("DATABASE_URL")
    with caplog.at_level(logging.WARNING, logger="coreseg"):
        assert AppConfig.from_env(space_data=tmp_path).database_url == AppConfig.database_url  # not a Space
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
