"""What every ``featrec`` subcommand shares: one-line errors and the settings of the context.

A :class:`~featrec.errors.FeatrecError` raised by a command becomes click's one-line
``Error: ...`` with exit status 1 (never a traceback); :func:`context_settings` builds
:class:`~featrec.settings.Settings` from the environment once per invocation.
"""

from __future__ import annotations

import os
from typing import Any

import click

from featrec.errors import FeatrecError
from featrec.settings import Settings


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


def context_settings(ctx: click.Context) -> Settings:
    """The context's settings, built from ``FEATREC_*`` variables on first use."""
    found = ctx.find_object(Settings)
    if found is not None:
        return found
    try:
        settings = Settings.from_env(os.environ)
    except FeatrecError as exc:
        raise click.ClickException(str(exc)) from exc
    ctx.obj = settings
    return settings
