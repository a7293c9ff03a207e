"""Launching dataflows through bytewax's own runner (``python -m bytewax.run``).

featrec never imports bytewax outside ``dataflows/``: the CLI starts the runner as child
processes, one per bytewax process of the cluster (``-i``/``-a``: the processes share the
source's partitions, e.g. a Kafka topic's), and passes settings as ``FEATREC_*`` environment
variables. With a recovery store the set is supervised (:mod:`featrec.jobs.cluster`): when one
process dies, all are restarted from the store with back-off.
"""

from __future__ import annotations

import json
import logging
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
from featrec.jobs.cluster import ClusterSupervisor, RestartPolicy
from featrec.settings import Settings

#: Recovery partitions created for a new store: at least this many, and at least the
#: processes of the first run (a store cannot be resumed by more processes than partitions).
MIN_RECOVERY_PARTITIONS = 4
#: Sources that are the event bus, not files: the Redis stream, the Kafka topic, the
#: collector log (tailed).
BUS_SOURCES: Final = ("redis", "kafka", "collector")


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
    recovery_partitions: int | None = None,
) -> list[subprocess.Popen[bytes]]:
    """Start the flow's processes and return them (the caller waits or stops them)."""
    if recovery_dir is not None:
        partitions = recovery_partitions or max(MIN_RECOVERY_PARTITIONS, processes)
        ensure_recovery_store(recovery_dir, partitions=partitions, processes=processes)
        env = with_cold_sessions(env, recovery_dir)
    args = flow_command(target, recovery_dir=recovery_dir, snapshot_interval=snapshot_interval)
    if processes == 1:
        return [subprocess.Popen(args, env=env)]
    addresses = cluster_addresses(processes)
    return [
        subprocess.Popen([*args, "-i", str(i), "-a", addresses], env=process_env(env, i))
        for i in range(processes)
    ]


def cold_sessions_path(recovery_dir: Path) -> Path:
    """The store of idle sessions inside a recovery store (beside bytewax's
    ``part-*.sqlite3``, in a directory of its own): it is resumed, moved and deleted with it.
    The sessions flow uses it; the items flow's pair step its ``items`` directory."""
    return recovery_dir / "featrec" / "cold-sessions"


def with_cold_sessions(env: dict[str, str], recovery_dir: Path) -> dict[str, str]:
    """``env`` with ``FEATREC_COLD_SESSIONS`` inside the recovery store, unless already set."""
    if env.get("FEATREC_COLD_SESSIONS"):
        return env
    return {**env, "FEATREC_COLD_SESSIONS": str(cold_sessions_path(recovery_dir))}


def process_env(env: dict[str, str], index: int) -> dict[str, str]:
    """Process ``index``'s environment: with bytewax's dataflow API on, each process of a
    cluster on one host serves its metrics on its own port, ``BYTEWAX_DATAFLOW_API_PORT``
    (default 3030) + ``index``."""
    if env.get("BYTEWAX_DATAFLOW_API_ENABLED") not in {"1", "true", "True"}:
        return env
    base = int(env.get("BYTEWAX_DATAFLOW_API_PORT") or 3030)
    return {**env, "BYTEWAX_DATAFLOW_API_PORT": str(base + index)}


def cluster_addresses(processes: int) -> str:
    """``-a`` for a cluster on this host: free loopback ports (fresh for every start, so a
    restart never waits for a dead process's port)."""
    return ";".join(f"127.0.0.1:{p}" for p in free_ports(processes))


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
    restart: RestartPolicy | None = None,
    home: Path | None = None,
    recovery_partitions: int | None = None,
) -> int:
    """Run the flow to completion (or Ctrl-C) and return its exit status.

    With a recovery store and a ``restart`` policy, the processes are supervised: when one
    dies, all are restarted from the store (:class:`~featrec.jobs.cluster.ClusterSupervisor`;
    ``home`` gets its status file). Without a store nothing is restarted (a restart would
    start over from scratch)."""

    def start() -> list[subprocess.Popen[bytes]]:
        return start_flow(
            target,
            env,
            processes=processes,
            recovery_dir=recovery_dir,
            snapshot_interval=snapshot_interval,
            recovery_partitions=recovery_partitions,
        )

    if recovery_dir is None or restart is None or restart.max_restarts == 0:
        return wait_all(start())
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s"
        )
    name = target.split(":", 1)[0].rsplit(".", 1)[-1]
    return ClusterSupervisor(start, restart, flow=name, home=home).run().status


def recovery_partition_count(recovery_dir: Path) -> int:
    """How many partitions a recovery store has (0: none yet)."""
    return len(list(recovery_dir.glob("part-*.sqlite3"))) if recovery_dir.is_dir() else 0


def ensure_recovery_store(recovery_dir: Path, partitions: int, processes: int = 1) -> None:
    """Create bytewax's recovery partitions once (``python -m bytewax.recovery DIR N``).

    An existing store is kept; it must have at least as many partitions as processes (the
    sizing rule: create it with as many as the most processes you will ever run)."""
    existing = recovery_partition_count(recovery_dir)
    if existing:
        if existing < processes:
            raise ConfigError(
                f"the recovery store {recovery_dir} has {existing} partitions, fewer than "
                f"{processes} processes: resume with at most {existing} processes, or start a "
                "new store with at least as many partitions as the most processes you will run"
            )
        return
    recovery_dir.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [sys.executable, "-m", "bytewax.recovery", str(recovery_dir), str(partitions)],
        check=True,
    )


F = TypeVar("F", bound=Callable[..., Any])


def flow_options(command: F) -> F:
    """The options every ``featrec run <flow>`` command takes (see :func:`run_flow`)."""
    options = [
        click.option(
            "--source",
            "sources",
            required=True,
            multiple=True,
            help="An event file (.jsonl .csv .parquet, OTTO jsonl, session-rec .txt), or a bus: "
            "'redis' (the stream), 'kafka' (the topic) or 'collector' (tails the log POST /events "
            "writes). Repeat for several files (one partition each, shared among processes).",
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
            help="Bytewax processes (a cluster on this host; they share the source's "
            "partitions: at most as many as partitions do work).",
        ),
        click.option(
            "--recovery-partitions",
            type=click.IntRange(1, 1024),
            default=None,
            help="Partitions of a new recovery store (default: max(4, processes)); at least "
            "the most processes this flow will ever run.",
        ),
        click.option(
            "--max-restarts",
            type=click.IntRange(0),
            default=10,
            show_default=True,
            help="With --recovery-dir: restarts of the whole cluster in a row, from recovery, "
            "after a process dies (0: none).",
        ),
        click.option(
            "--restart-backoff",
            type=click.FloatRange(0),
            default=1.0,
            show_default=True,
            help="Seconds before the first restart; doubles per restart in a row, up to 60.",
        ),
        click.option(
            "--metrics-port",
            type=click.IntRange(1, 65535),
            default=None,
            help="Serve the launcher's Prometheus metrics (featrec_cluster_*) on this port.",
        ),
        click.option(
            "--metrics-host",
            default="127.0.0.1",
            show_default=True,
            help="Address the launcher's metrics listen on (0.0.0.0 in a container).",
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
    recovery_partitions: int | None = None,
    max_restarts: int = 10,
    restart_backoff: float = 1.0,
    metrics_port: int | None = None,
    metrics_host: str = "127.0.0.1",
    mapping_table: Mapping[str, Any] | None = None,
) -> None:
    """Check the sources, launch ``target`` with settings in the environment, wait for it.

    ``mapping_table``: an event mapping (:mod:`featrec.core.events.mapping`) the file source
    reads through; checked here against every file, handed to the flow as JSON."""
    bus = [s for s in sources if s in BUS_SOURCES]
    if bus and len(sources) > 1:
        raise ConfigError(f"--source {bus[0]} reads the bus; do not mix it with other sources")
    for source in sources:
        if source not in BUS_SOURCES and not Path(source).is_file():
            raise ConfigError(
                f"--source {source!r} is neither 'redis', 'kafka', 'collector' nor an existing file"
            )
    mapping_env: dict[str, str] = {}
    if mapping_table is not None:
        from featrec.adapters.files.mapped_records import open_file_reader
        from featrec.core.events.mapping import parse_mapping

        if bus:
            raise ConfigError("a mapping reads files; the bus holds featrec events")
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
    if metrics_port is not None:
        from prometheus_client import start_http_server

        start_http_server(metrics_port, addr=metrics_host)
    policy = RestartPolicy(max_restarts=max_restarts, backoff_s=restart_backoff)
    code = launch_flow(
        target,
        env,
        processes=processes,
        recovery_dir=recovery_dir,
        snapshot_interval=snapshot_interval,
        restart=policy,
        home=settings.home,
        recovery_partitions=recovery_partitions,
    )
    if code != 0:
        raise click.ClickException(f"the dataflow {target} exited with status {code}")
