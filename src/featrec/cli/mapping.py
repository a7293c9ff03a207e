"""Event mappings on the command line: ``--mapping`` / ``--map`` and ``featrec map check``.

``--mapping NAME`` names a ``[mappings.NAME]`` table of the project's ``featrec.toml``;
``--mapping FILE.toml`` reads the mapping table from a file; ``--map KEY=VALUE`` (repeatable)
sets or overrides single keys (``fields.session_id=sid``, ``ts.unit=ms``,
``types.addToCart=cart``). See :mod:`featrec.core.events.mapping` for the keys.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import click

from featrec.cli.common import FeatrecCommand, FeatrecGroup, context_state
from featrec.core.events.mapping import (
    EventMapping,
    merge_tables,
    parse_mapping,
    parse_overrides,
)
from featrec.errors import ConfigError

F = TypeVar("F", bound=Callable[..., Any])


def mapping_options(command: F) -> F:
    """``--mapping`` and ``--map``, passed as ``mapping`` and ``map_pairs``."""
    command = click.option(
        "--map",
        "map_pairs",
        multiple=True,
        metavar="KEY=VALUE",
        help="Set one mapping key (fields.session_id=sid, ts.unit=ms, types.addToCart=cart, "
        "delimiter=';'); repeat it. Alone or over --mapping.",
    )(command)
    return click.option(
        "--mapping",
        default=None,
        metavar="NAME|FILE",
        help="Read a shop's own schema through a mapping: [mappings.NAME] in featrec.toml, "
        "or a TOML file holding one (see `featrec map check --help`).",
    )(command)


def resolve_mapping(
    ctx: click.Context, name: str | None, pairs: tuple[str, ...]
) -> tuple[EventMapping, dict[str, Any]] | None:
    """The mapping the options name, with its table (for a child process); ``None`` if none."""
    if name is None and not pairs:
        return None
    table: Mapping[str, Any] = {}
    where = "--map"
    if name is not None:
        path = Path(name)
        if path.suffix == ".toml" or path.is_file():
            table, where = _read_file(path), str(path)
        else:
            state = context_state(ctx)
            project = state.project
            if state.problem is not None:
                raise ConfigError(state.problem)
            if project is None:
                raise ConfigError(
                    f"--mapping {name!r} is not a file, and there is no project whose "
                    "featrec.toml could name it: give a TOML file or run inside a project"
                )
            table = project.mapping(name)
            where = f"{project.config_file} [mappings.{name}]"
    merged = merge_tables(table, parse_overrides(pairs))
    return parse_mapping(merged, where), merged


def _read_file(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"mapping file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None


@click.group("map", cls=FeatrecGroup)
def map_group() -> None:
    """Event mappings: a shop's own CSV, JSON lines or Parquet read as featrec events."""


@map_group.command("check", cls=FeatrecCommand)
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@mapping_options
@click.option(
    "--rows", type=click.IntRange(1), default=10, show_default=True, help="Rows to preview."
)
@click.pass_context
def map_check(
    ctx: click.Context, file: Path, mapping: str | None, map_pairs: tuple[str, ...], rows: int
) -> None:
    """Preview FILE's first rows through a mapping: each row as the event it becomes, or the
    field and reason it is refused. Exits 1 if any previewed row is refused.

    \b
    Keys (in [mappings.NAME] of featrec.toml, a TOML file, or --map KEY=VALUE):
      format = csv|jsonl|parquet   delimiter = ";"   encoding = "latin-1"
      fields.session_id = "sid"    fields.user_id = "user.id" (a JSON path)
      fields.type = { const = "view" }   (--map fields.type.const=view)
      ts.column = "ts_ms"   ts.unit = auto|iso|s|ms|us|"%d.%m.%Y %H:%M"
      ts.date = "date" (then ts.column is an offset into that day)   ts.timezone = "Europe/Berlin"
      types.addToCart = "cart"     other_types = keep|reject
    """
    from featrec.adapters.files.mapped_records import MappedFileReader
    from featrec.core.events.formats import DeadLetter, decode
    from featrec.core.events.model import Event

    resolved = resolve_mapping(ctx, mapping, map_pairs)
    if resolved is None:
        raise click.UsageError("give --mapping NAME|FILE or --map KEY=VALUE")
    event_mapping, _ = resolved
    with MappedFileReader(file, event_mapping) as reader:
        records = reader.read(rows)
        click.echo(
            f"{file}: {reader.layout}"
            + (f", columns: {', '.join(reader.columns)}" if reader.columns else "")
        )
    refused = 0
    first_reason = ""
    for record in records:
        results = [record] if isinstance(record, DeadLetter) else decode(record)
        origin = record.origin.rsplit(":", 1)[-1]
        for item in results:
            if isinstance(item, Event):
                click.echo(f"  {origin:>6}  ok       {_event_line(item)}")
            else:
                refused += 1
                first_reason = first_reason or f"{item.origin}: {item.reason}"
                click.echo(f"  {origin:>6}  refused  {item.reason}")
    click.echo(f"{len(records) - refused} of {len(records)} rows map")
    if refused:
        raise click.ClickException(
            f"{refused} of {len(records)} rows refused, first {first_reason}"
        )


def _event_line(event: Any) -> str:
    parts = [f"{k}={v}" for k, v in event.to_dict().items() if k != "event_id"]
    return " ".join(parts)
