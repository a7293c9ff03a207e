"""Launching dataflows through bytewax's own runner (``python -m bytewax.run``).

featrec never imports bytewax outside ``dataflows/``: the CLI starts the runner as child
processes, one per bytewax process of the cluster, and passes settings as ``FEATREC_*``
environment variables.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Final, TypeVar

import click

from featrec.core.events.formats import FORMATS
from featrec.errors import ConfigError
from featrec.settings import Settings


def free_ports(n: int) -> list[int]:
    """``n`` distinct free TCP ports on the loopback interface."""
    with ExitStack() as stack:
        ports = []
        for _ in range(n):
            s = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            s.bind(("127.0.0.1", 0))
            ports.append(int(s.getsockname()[1]))
        return ports


def flow_command(
    target: str,
    *,
    recovery_dir: Path | None = None,
    snapshot_interval: float = 5.0,
) -> list[str]:
    """The runner's argument list (without the cluster options)."""
    args = [sys.executable, "-m", "bytewax.run", target]
    if recovery_dir is not None:
        # -b 0: keep no older snapshots than needed; the recovery store is for resuming.
        # bytewax's runner takes whole seconds ("5.0" is refused): round, at least 1.
        seconds = max(1, round(snapshot_interval))
        args += ["-r", str(recovery_dir), "-s", str(seconds), "-b", "0"]
    return args


def start_flow(
    target: str,
    env: dict[str, str],
    *,
    processes: int = 1,
    recovery_dir: Path | None = None,
    snapshot_interval: float = 5.0,
) -> list[subprocess.Popen[bytes]]:
    """Start the flow's processes and return them (the caller waits or stops them)."""
    if recovery_dir is not None:
        ensure_recovery_store(recovery_dir, partitions=max(4, processes))
    args = flow_command(target, recovery_dir=recovery_dir, snapshot_interval=snapshot_interval)
    if processes == 1:
        return [subprocess.Popen(args, env=env)]
    addresses = ";".join(f"127.0.0.1:{p}" for p in free_ports(processes))
    return [
        subprocess.Popen([*args, "-i", str(i), "-a", addresses], env=env) for i in range(processes)
    ]


def wait_all(procs: list[subprocess.Popen[bytes]]) -> int:
    """Wait for every process; Ctrl-C is passed on. Returns the first non-zero status, or 0."""
    try:
        codes = [p.wait() for p in procs]
    except KeyboardInterrupt:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        codes = [p.wait() for p in procs]
    return next((c for c in codes if c != 0), 0)


def launch_flow(
    target: str,
    env: dict[str, str],
    *,
    processes: int = 1,
    recovery_dir: Path | None = None,
    snapshot_interval: float = 5.0,
) -> int:
    """Run the flow to completion (or Ctrl-C) and return its exit status."""
    return wait_all(
        start_flow(
            target,
            env,
            processes=processes,
            recovery_dir=recovery_dir,
            snapshot_interval=snapshot_interval,
        )
    )


def ensure_recovery_store(recovery_dir: Path, partitions: int) -> None:
    """Create bytewax's recovery partitions once (``python -m bytewax.recovery DIR N``)."""
    if recovery_dir.is_dir() and any(recovery_dir.glob("*.sqlite3")):
        return
    recovery_dir.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [sys.executable, "-m", "bytewax.recovery", str(recovery_dir), str(partitions)],
        check=True,
    )


F = TypeVar("F", bound=Callable[..., Any])
#: Sources that are the event bus, not files: the Redis stream, the collector log (tailed).
BUS_SOURCES: Final = ("redis", "collector")


def flow_options(command: F) -> F:
    """The options every ``featrec run <flow>`` command takes (see :func:`run_flow`)."""
    options = [
        click.option(
            "--source",
            "sources",
            required=True,
            multiple=True,
            help="An event file (.jsonl .csv .parquet, OTTO jsonl, session-rec .txt), 'redis' "
            "(the stream) or 'collector' (tails the log POST /events writes). Repeat for several "
            "files (one partition each, shared among processes).",
        ),
        click.option(
            "--format",
            "fmt",
            type=click.Choice(FORMATS),
            default=None,
            help="Input format (default: from the file name).",
        ),
        click.option(
            "--speed",
            type=click.FloatRange(0),
            default=0.0,
            show_default=True,
            help="Replay pace: 0 = as fast as possible, N = recorded pace x N.",
        ),
        click.option(
            "--recovery-dir",
            type=click.Path(file_okay=False, path_type=Path),
            default=None,
            help="This flow's bytewax recovery store: state survives a crash and resumes.",
        ),
        click.option(
            "--snapshot-interval",
            type=click.FloatRange(0.1),
            default=5.0,
            show_default=True,
            help="Seconds between recovery snapshots (rounded to whole seconds).",
        ),
        click.option(
            "--processes",
            type=click.IntRange(1, 64),
            default=1,
            show_default=True,
            help="Bytewax processes (a cluster on this host).",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def run_flow(
    target: str,
    settings: Settings,
    *,
    sources: tuple[str, ...],
    fmt: str | None,
    speed: float,
    recovery_dir: Path | None,
    snapshot_interval: float,
    processes: int,
    mapping_table: Mapping[str, Any] | None = None,
) -> None:
    """Check the sources, launch ``target`` with settings in the environment, wait for it.

    ``mapping_table``: an event mapping (:mod:`featrec.core.events.mapping`) the file source
    reads through; checked here against every file, handed to the flow as JSON."""
    for bus in BUS_SOURCES:
        if bus in sources and len(sources) > 1:
            raise ConfigError(f"--source {bus} reads the event bus; do not mix it with files")
    for source in sources:
        if source not in BUS_SOURCES and not Path(source).is_file():
            raise ConfigError(
                f"--source {source!r} is neither 'redis', 'collector' nor an existing file"
            )
    mapping_env: dict[str, str] = {}
    if mapping_table is not None:
        from featrec.adapters.files.mapped_records import open_file_reader
        from featrec.core.events.mapping import parse_mapping

        if set(sources) & set(BUS_SOURCES):
            raise ConfigError("a mapping reads files; the event bus holds featrec events")
        mapping = parse_mapping(mapping_table)
        for source in sources:
            open_file_reader(source, fmt, mapping=mapping).close()
        mapping_env["FEATREC_SOURCE_MAPPING"] = json.dumps(mapping_table)
    env = {
        **os.environ,
        **settings.to_env(),
        "FEATREC_SOURCE": os.pathsep.join(sources),
        "FEATREC_REPLAY_SPEED": str(speed),
        **mapping_env,
    }
    if fmt:
        env["FEATREC_SOURCE_FORMAT"] = fmt
    code = launch_flow(
        target,
        env,
        processes=processes,
        recovery_dir=recovery_dir,
        snapshot_interval=snapshot_interval,
    )
    if code != 0:
        raise click.ClickException(f"the dataflow {target} exited with status {code}")
