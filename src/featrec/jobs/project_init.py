"""``featrec init DIR``: a new project from the template shipped in the package.

As ``feast init`` does, the project gets a Feast repo its data scientists own (entities,
views, services, ``feature_store.yaml`` for the embedded default and
``feature_store.redis.yaml`` for Redis), plus ``featrec.toml``, a ``.gitignore`` and the local
stores under ``.featrec/``; then the repo is applied. An existing project is never
overwritten.

The template: in a wheel, ``featrec/templates/feature_repo/`` (the build copies featrec's
own ``feature_repo/`` there, see ``pyproject.toml``) and ``featrec/templates/project/``; in a
source checkout, the checkout's ``feature_repo/`` itself.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Final

from featrec.errors import ConfigError
from featrec.project import CONFIG_FILE, REPO_DIR, Project, load_project
from featrec.settings import Settings

#: The files of a Feast repo template (``data/`` and caches are never copied).
REPO_PATTERNS: Final = ("*.py", "*.yaml")
_PACKAGE_ROOT: Final = Path(__file__).resolve().parents[1]
_LOCATION_VARIABLES: Final = frozenset({"FEATREC_HOME", "FEATREC_REPO", "FEATREC_PROJECT"})


@dataclass(frozen=True, slots=True)
class InitReport:
    """What ``init`` created, and the lines of the Feast apply."""

    project: Project
    created: list[Path]
    applied: list[str]


def template_dir() -> Path:
    """The directory of the project template (``featrec.toml``, ``gitignore``)."""
    return _PACKAGE_ROOT / "templates" / "project"


def feature_repo_template() -> Path:
    """The Feast repo template: the wheel's copy, or the checkout's ``feature_repo/``."""
    shipped = Path(str(resources.files("featrec") / "templates" / REPO_DIR))
    if (shipped / "feature_store.yaml").is_file():
        return shipped
    checkout = _PACKAGE_ROOT.parents[1] / REPO_DIR
    if (checkout / "feature_store.yaml").is_file():
        return checkout
    raise ConfigError(
        f"this featrec installation has no Feast repo template (looked in {shipped} and "
        f"{checkout}): reinstall featrec"
    )


def copy_repo_template(target: Path) -> list[Path]:
    """Copy the Feast repo template's files into ``target`` (created); returns the files."""
    source = feature_repo_template()
    target.mkdir(parents=True, exist_ok=True)
    copied = []
    for pattern in REPO_PATTERNS:
        for path in sorted(source.glob(pattern)):
            shutil.copyfile(path, target / path.name)
            copied.append(target / path.name)
    return copied


def create_project(root: Path) -> list[Path]:
    """Lay out a new project at ``root`` (no Feast apply); refuses to touch an existing one."""
    root = root.resolve()
    if root.exists() and not root.is_dir():
        raise ConfigError(f"{root} exists and is not a directory")
    existing = [root / name for name in (CONFIG_FILE, REPO_DIR) if (root / name).exists()]
    if existing:
        raise ConfigError(
            f"{existing[0]} already exists: {root} is already a featrec project (or holds a "
            "Feast repo); featrec init never overwrites one. Re-apply it with `featrec apply`"
        )
    root.mkdir(parents=True, exist_ok=True)
    created = []
    for name, target in ((CONFIG_FILE, CONFIG_FILE), ("gitignore", ".gitignore")):
        destination = root / target
        if destination.exists():  # a .gitignore of the user's: leave it alone
            continue
        shutil.copyfile(template_dir() / name, destination)
        created.append(destination)
    created += copy_repo_template(root / REPO_DIR)
    return created


def init_project(root: Path, environ: dict[str, str]) -> InitReport:
    """Create the project at ``root``, its local stores, and apply its Feast repo."""
    created = create_project(root)
    project = load_project(root.resolve())
    # A new project's stores and repo are its own, whatever an enclosing shell points at.
    own = {k: v for k, v in environ.items() if k not in _LOCATION_VARIABLES}
    settings = project.settings(own)
    return InitReport(project=project, created=created, applied=apply_project(settings))


def apply_project(settings: Settings) -> list[str]:
    """Create the local stores and ``feast apply`` the repo (safe to repeat)."""
    from featrec.adapters.feast.repo import apply_repo

    for path in (settings.home, settings.event_log_dir, settings.home / "status"):
        path.mkdir(parents=True, exist_ok=True)
    return apply_repo(settings)
