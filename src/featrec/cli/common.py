"""What every ``featrec`` subcommand shares: one-line errors and the settings of the context.

A :class:`~featrec.errors.FeatrecError` raised by a command becomes click's one-line
``Error: ...`` with exit status 1 (never a traceback); :func:`context_settings` builds
:class:`~featrec.settings.Settings` once per invocation, for the project the command runs in
(see :mod:`featrec.project`): ``--project``, ``FEATREC_PROJECT``, or the nearest
``featrec.toml`` at or above the working directory.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import click

from featrec.errors import FeatrecError
from featrec.project import HOW_TO_CREATE, Project, find_project, legacy_layout
from featrec.settings import Settings

F = TypeVar("F", bound=Callable[..., Any])


class _Translating:
    """Turns featrec errors into one-line messages with a non-zero exit."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)  # type: ignore[misc]
        except FeatrecError as exc:
            raise click.ClickException(str(exc)) from exc


class FeatrecGroup(_Translating, click.Group):
    """A click group whose featrec errors are one-line messages."""


class FeatrecCommand(_Translating, click.Command):
    """A click command whose featrec errors are one-line messages."""


@dataclass(frozen=True)
class CliState:
    """The typed context object of every command: where it runs and the project found there."""

    cwd: Path
    project: Project | None
    #: Why the named project (--project, FEATREC_PROJECT) is unusable; raised by
    #: :meth:`settings`, so that ``init`` can still create it and ``--help`` still works.
    problem: str | None = None

    @classmethod
    def resolve(cls, explicit: Path | None = None) -> CliState:
        cwd = Path.cwd()
        try:
            return cls(cwd=cwd, project=find_project(cwd, os.environ, explicit))
        except FeatrecError as exc:
            return cls(cwd=cwd, project=None, problem=str(exc))

    def settings(self, *, project_required: bool = True) -> Settings:
        """Settings of the project; without one, from the environment alone where that is
        enough (``FEATREC_REPO`` set, a ``feature_repo/`` here, or ``project_required=False``)."""
        if self.problem is not None:
            raise click.ClickException(self.problem)
        if self.project is not None:
            return self.project.settings(os.environ)
        if project_required and not legacy_layout(self.cwd, os.environ):
            raise click.ClickException(
                f"no featrec project in {self.cwd} or any directory above it: {HOW_TO_CREATE}"
            )
        return Settings.from_env(os.environ)


def context_state(ctx: click.Context) -> CliState:
    """The context's :class:`CliState`, resolved from the working directory on first use."""
    found = ctx.find_object(CliState)
    if found is not None:
        return found
    state = CliState.resolve()
    ctx.obj = state
    return state


def context_settings(ctx: click.Context, *, project_required: bool = True) -> Settings:
    """The settings of the command's project (see :class:`CliState`), built once."""
    given = ctx.find_object(Settings)  # a caller (a test, an embedding app) passed its own
    if given is not None:
        return given
    cached = ctx.meta.get("featrec.settings")
    if isinstance(cached, Settings):
        return cached
    try:
        settings = context_state(ctx).settings(project_required=project_required)
    except FeatrecError as exc:
        raise click.ClickException(str(exc)) from exc
    ctx.meta["featrec.settings"] = settings
    return settings


def pass_settings(command: F) -> F:
    """Pass the project's settings as the command's first argument."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return command(context_settings(click.get_current_context()), *args, **kwargs)

    return wrapper  # type: ignore[return-value]


class ClickProgress:
    """:class:`featrec.core.progress.Progress` drawn with click: a message per stage, a bar
    for stages of known size."""

    def __init__(self) -> None:
        self._bar: Any = None

    def stage(self, message: str, total: int | None = None) -> None:
        self.close()
        if total is None:
            click.echo(message)
        else:
            self._bar = click.progressbar(length=total, label=message)
            self._bar.__enter__()

    def advance(self, n: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)
            self._bar = None
