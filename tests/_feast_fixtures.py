"""Feast fixtures: a copy of ``feature_repo/`` in a tmp dir, applied on SQLite or on the
private redis-server (re-exported by conftest.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from featrec.settings import Settings
from featrec.testing.feast_repo import copy_feature_repo

__all__ = [
    "copy_feature_repo",
    "feast_repo",
    "redis_settings",
    "redis_store",
    "sqlite_settings",
    "sqlite_store",
]


@pytest.fixture
def feast_repo(tmp_path: Path) -> Settings:
    """Settings on a fresh copy of ``feature_repo/`` (not applied), home in tmp."""
    repo = copy_feature_repo(tmp_path / "feature_repo")
    return Settings(home=tmp_path / "home", repo=repo)


@pytest.fixture
def sqlite_settings(feast_repo: Settings) -> Settings:
    return feast_repo.with_(online_store="sqlite")


@pytest.fixture
def redis_settings(feast_repo: Settings, redis_url: str) -> Settings:
    return feast_repo.with_(online_store="redis", redis_url=redis_url)


@pytest.fixture
def sqlite_store(sqlite_settings: Settings) -> Any:
    """An applied Feast store on SQLite."""
    from featrec.adapters.feast.repo import apply_repo, open_store

    apply_repo(sqlite_settings)
    return open_store(sqlite_settings)


@pytest.fixture
def redis_store(redis_settings: Settings) -> Any:
    """An applied Feast store on the private redis-server (emptied after the test)."""
    from featrec.adapters.feast.repo import apply_repo, open_store

    apply_repo(redis_settings)
    return open_store(redis_settings)
