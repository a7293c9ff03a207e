"""Project discovery on a real directory tree: featrec.toml found from any directory below it,
--project / FEATREC_PROJECT, settings precedence, and bad config files refused by name."""

from __future__ import annotations

from pathlib import Path

import pytest

from featrec.errors import ConfigError
from featrec.jobs.project_init import create_project, feature_repo_template
from featrec.project import CONFIG_FILE, find_project, legacy_layout, load_project


@pytest.fixture
def shop(tmp_path: Path) -> Path:
    root = tmp_path / "shop"
    create_project(root)
    return root


def test_created_project_has_repo_config_gitignore(shop: Path) -> None:
    assert (shop / CONFIG_FILE).is_file()
    assert ".featrec/" in (shop / ".gitignore").read_text()
    repo = shop / "feature_repo"
    names = sorted(p.name for p in repo.iterdir())
    template = sorted(
        p.name for pattern in ("*.py", "*.yaml") for p in feature_repo_template().glob(pattern)
    )
    assert names == template
    assert {"feature_store.yaml", "feature_store.redis.yaml"} <= set(names)
    assert not (repo / "data").exists()


def test_create_refuses_an_existing_project(shop: Path) -> None:
    before = (shop / CONFIG_FILE).read_text()
    with pytest.raises(ConfigError, match="already a featrec project"):
        create_project(shop)
    assert (shop / CONFIG_FILE).read_text() == before


def test_found_from_a_subdirectory_and_settings_are_absolute(shop: Path) -> None:
    deep = shop / "a" / "b"
    deep.mkdir(parents=True)
    project = find_project(deep, {})
    assert project is not None and project.root == shop.resolve()
    settings = project.settings({})
    assert settings.home == shop.resolve() / ".featrec"
    assert settings.repo == shop.resolve() / "feature_repo"
    assert settings.project == shop.resolve()


def test_none_outside_a_project(tmp_path: Path) -> None:
    assert find_project(tmp_path, {}) is None
    assert not legacy_layout(tmp_path, {})
    assert legacy_layout(tmp_path, {"FEATREC_REPO": "/somewhere"})


def test_explicit_and_env_project(shop: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    by_env = find_project(elsewhere, {"FEATREC_PROJECT": str(shop)})
    by_flag = find_project(elsewhere, {}, explicit=shop)
    assert by_env is not None and by_flag is not None
    assert by_env.root == by_flag.root == shop.resolve()
    with pytest.raises(ConfigError, match=r"not a featrec project .*featrec init"):
        find_project(shop, {}, explicit=elsewhere)


def test_precedence_env_over_file_over_layout(shop: Path) -> None:
    (shop / CONFIG_FILE).write_text('[settings]\nsession_gap_s = 600\nhome = "state"\n')
    project = load_project(shop)
    assert project.settings({}).session_gap_s == 600
    assert project.settings({}).home == shop / "state"
    overridden = project.settings({"FEATREC_SESSION_GAP_S": "900", "FEATREC_HOME": "/x"})
    assert overridden.session_gap_s == 900
    assert overridden.home == Path("/x")


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("[setings]\n", "unknown table 'setings'"),
        ("[settings]\nsesion_gap_s = 1\n", "unknown setting 'sesion_gap_s'"),
        ('[settings]\nredis_url = "redis://:pw@h"\n', "from the environment only"),
        ("[settings\n", "not valid TOML"),
        ("[settings]\nsession_gap_s = 'soon'\n", r"\[settings\]: session_gap_s='soon' is not a"),
    ],
)
def test_bad_config_is_refused_by_name(shop: Path, text: str, needle: str) -> None:
    (shop / CONFIG_FILE).write_text(text)
    with pytest.raises(ConfigError, match=needle):
        load_project(shop).settings({})
