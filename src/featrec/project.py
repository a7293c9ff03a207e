"""A featrec project: the directory a shop runs featrec from, found the way git finds a repo.

A project is a directory holding ``featrec.toml`` (created by ``featrec init``)::

    shop/
      featrec.toml        settings (``[settings]``) and event mappings (``[mappings.NAME]``)
      feature_repo/       the Feast repo the data scientists own
      .featrec/           local stores: event log, dead letters, recovery, models
      .gitignore

A command finds its project from ``--project DIR`` or ``FEATREC_PROJECT``, else by walking up
from the working directory, so every command works from any directory inside it. Inside a
project, ``home`` and ``repo`` default to the project's ``.featrec/`` and ``feature_repo/``
(absolute, so child processes and other directories agree); ``[settings]`` gives defaults for
any other field; ``FEATREC_*`` variables override both.

Without a project, ``FEATREC_REPO`` (or a ``feature_repo/`` in the working directory, as in
featrec's own checkout) keeps the old behaviour: settings from the environment, relative to
the working directory.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from featrec.errors import ConfigError
from featrec.settings import Settings

CONFIG_FILE: Final = "featrec.toml"
PROJECT_ENV: Final = "FEATREC_PROJECT"
HOME_DIR: Final = ".featrec"
REPO_DIR: Final = "feature_repo"
_TOP_LEVEL: Final = frozenset({"settings", "mappings"})
_SETTINGS_FIELDS: Final = frozenset(Settings.model_fields)
#: Fields that never come from a file: secrets live in the environment only.
_SECRET_FIELDS: Final = frozenset({"redis_url", "bus_url"})

HOW_TO_CREATE: Final = (
    "create one with `featrec init DIR` (then cd DIR), or point at one with "
    f"--project DIR / {PROJECT_ENV}"
)


@dataclass(frozen=True)
class Project:
    """A project directory and its parsed ``featrec.toml``."""

    root: Path
    settings_table: Mapping[str, Any] = field(default_factory=dict)
    mappings: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    @property
    def config_file(self) -> Path:
        return self.root / CONFIG_FILE

    def settings(self, environ: Mapping[str, str]) -> Settings:
        """Settings of this project: ``environ`` over ``[settings]`` over the project layout."""
        defaults: dict[str, str] = {
            "FEATREC_HOME": str(self.root / HOME_DIR),
            "FEATREC_REPO": str(self.root / REPO_DIR),
        }
        for name, value in self.settings_table.items():
            text = str(value)
            if name in ("home", "repo") and not Path(text).is_absolute():
                text = str(self.root / text)
            defaults[f"FEATREC_{name.upper()}"] = text
        if self.settings_table:
            try:  # the file's values alone first, so that a bad one is blamed on the file
                Settings.from_env({**defaults, PROJECT_ENV: str(self.root)})
            except ConfigError as exc:
                message = str(exc)
                for name in self.settings_table:
                    message = message.replace(f"FEATREC_{name.upper()}", name)
                raise ConfigError(f"{self.config_file} [settings]: {message}") from None
        merged = {**defaults, **{k: v for k, v in environ.items() if v != ""}}
        merged[PROJECT_ENV] = str(self.root)
        return Settings.from_env(merged)

    def mapping(self, name: str) -> Mapping[str, Any]:
        """The ``[mappings.NAME]`` table (raw; parsed by :mod:`featrec.core.events.mapping`)."""
        try:
            return self.mappings[name]
        except KeyError:
            known = ", ".join(sorted(self.mappings)) or "none"
            raise ConfigError(
                f"{self.config_file} has no mapping {name!r} (mappings: {known}); add a "
                f"[mappings.{name}] table or give a mapping file"
            ) from None


def find_project(
    start: Path, environ: Mapping[str, str], explicit: Path | None = None
) -> Project | None:
    """The project named by ``explicit`` or ``FEATREC_PROJECT``, else the nearest directory at
    or above ``start`` holding ``featrec.toml``; ``None`` if there is none."""
    named = explicit if explicit is not None else environ.get(PROJECT_ENV) or None
    if named is not None:
        root = Path(named).expanduser().resolve()
        if not (root / CONFIG_FILE).is_file():
            source = "--project" if explicit is not None else PROJECT_ENV
            raise ConfigError(
                f"{source} {root} is not a featrec project (no {CONFIG_FILE}): "
                f"create it with `featrec init {named}`"
            )
        return load_project(root)
    here = start.resolve()
    for directory in (here, *here.parents):
        if (directory / CONFIG_FILE).is_file():
            return load_project(directory)
    return None


def load_project(root: Path) -> Project:
    """Parse ``root/featrec.toml``; unknown tables and settings are refused with their name."""
    path = root / CONFIG_FILE
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    unknown = sorted(set(raw) - _TOP_LEVEL)
    if unknown:
        raise ConfigError(
            f"{path}: unknown table {unknown[0]!r} (featrec.toml holds [settings] and "
            "[mappings.NAME])"
        )
    settings_table = raw.get("settings", {})
    if not isinstance(settings_table, dict):
        raise ConfigError(f"{path}: [settings] must be a table")
    for name in settings_table:
        if name in _SECRET_FIELDS:
            raise ConfigError(
                f"{path}: {name} may hold a password, so it comes from the environment only "
                f"(FEATREC_{name.upper()})"
            )
        if name not in _SETTINGS_FIELDS or name == "project":
            raise ConfigError(
                f"{path}: unknown setting {name!r} in [settings] "
                f"(known: {', '.join(sorted(_SETTINGS_FIELDS - _SECRET_FIELDS - {'project'}))})"
            )
    mappings = raw.get("mappings", {})
    if not isinstance(mappings, dict) or not all(isinstance(v, dict) for v in mappings.values()):
        raise ConfigError(f"{path}: mappings must be tables, [mappings.NAME]")
    return Project(root=root, settings_table=settings_table, mappings=mappings)


def legacy_layout(cwd: Path, environ: Mapping[str, str]) -> bool:
    """True where settings come from the environment alone: ``FEATREC_REPO`` is set, or the
    working directory holds a Feast ``feature_repo/`` (featrec's own checkout)."""
    return bool(environ.get("FEATREC_REPO")) or (cwd / REPO_DIR / "feature_store.yaml").is_file()
