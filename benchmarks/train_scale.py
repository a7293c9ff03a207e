"""Training at scale: time and peak RSS of each phase of `featrec train` on generated events.

In one project directory (kept between runs, so the log is generated and imported once):

- ``generate`` + ``import`` + ``batch``: ``featrec generate --events N``, ``featrec log import``,
  ``featrec batch run`` (skipped when the log already holds N events);
- ``dataset``: ``featrec dataset build --max-points P``;
- ``train``: ``featrec train``.

Each phase runs as its own process; its wall time, CPU time and peak RSS (``ru_maxrss`` of
that process, from ``wait4``) are printed. ``--baseline FEATREC`` runs the ``dataset`` and
``train`` phases with another featrec executable too (e.g. a checkout of main), in the same
run, on the same log, and prints the ratios. Run it under the shared lock:

    flock /tmp/featrec-heavy.lock .venv/bin/python benchmarks/train_scale.py \\
        --work /tmp/train-scale-1m --events 1000000 --max-points 20000 \\
        --baseline /work/main/.venv/bin/featrec
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

HERE = Path(sys.executable).parent / "featrec"


@dataclass(frozen=True)
class Phase:
    name: str
    wall_s: float
    cpu_s: float
    peak_mb: float
    tail: str


def run(name: str, command: list[str], cwd: Path, *, own_path: bool = True) -> Phase:
    """Run ``command`` in ``cwd``; its wall/CPU time and peak RSS (this process alone).
    ``own_path`` False: without this process's PYTHONPATH (another checkout's featrec)."""
    env = dict(os.environ)
    if not own_path:
        env.pop("PYTHONPATH", None)
    started = time.perf_counter()
    with open(cwd / f"{name}.log", "wb") as log:
        child = subprocess.Popen(command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - started
    text = (cwd / f"{name}.log").read_text(errors="replace").replace("\r", "\n")
    lines = [line for line in text.splitlines() if line.strip() and "Warning" not in line]
    tail = " | ".join(lines[-3:])
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{name} failed ({' '.join(command)}): {tail}")
    return Phase(name, wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, tail)


def show(phase: Phase) -> None:
    print(
        f"{phase.name:<22} {phase.wall_s:8.1f} s wall {phase.cpu_s:8.1f} s CPU "
        f"{phase.peak_mb:8.0f} MB peak RSS",
        flush=True,
    )
    print(f"    {phase.tail[-300:]}", flush=True)


def logged_events(project: Path) -> int:
    events = project / ".featrec" / "events"
    return sum(pq.ParquetFile(f).metadata.num_rows for f in events.glob("date=*/*.parquet"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, required=True, help="Project directory (kept).")
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--max-points", type=int, default=200_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--featrec", default=str(HERE), help="The featrec under test.")
    parser.add_argument("--baseline", default=None, help="Another featrec to compare with.")
    parser.add_argument("--phases", default="dataset,train", help="dataset,train (after setup)")
    args = parser.parse_args()

    project = args.work.resolve()
    print(f"load average at start: {os.getloadavg()}", flush=True)
    if not (project / "featrec.toml").is_file():
        subprocess.run([args.featrec, "init", str(project)], check=True, capture_output=True)
    if logged_events(project) != args.events:
        for name, command in (
            ("generate", ["generate", "--out", "gen.parquet", "--events", str(args.events)]),
            ("import", ["log", "import", "gen.parquet"]),
            ("batch", ["batch", "run"]),
        ):
            show(
                run(
                    name,
                    [
                        args.featrec,
                        *command,
                        *(["--seed", str(args.seed)] if name == "generate" else []),
                    ],
                    project,
                )
            )
    print(f"{logged_events(project):,} events in the log", flush=True)

    phases = args.phases.split(",")
    results: dict[str, dict[str, Phase]] = {}
    for label, featrec in (("baseline", args.baseline), ("this", args.featrec)):
        if featrec is None:
            continue
        out = project / f"dataset-{label}.parquet"
        done: dict[str, Phase] = {}
        if "dataset" in phases:
            done["dataset"] = run(
                f"{label}-dataset",
                [
                    featrec,
                    "dataset",
                    "build",
                    "--max-points",
                    str(args.max_points),
                    "--out",
                    str(out),
                ],
                project,
                own_path=label == "this",
            )
            show(done["dataset"])
        if "train" in phases:
            done["train"] = run(
                f"{label}-train",
                [featrec, "train", "--dataset", str(out)],
                project,
                own_path=label == "this",
            )
            show(done["train"])
        results[label] = done
    if "baseline" in results:
        for name, phase in results["this"].items():
            base = results["baseline"][name]
            print(
                f"{name}: wall {phase.wall_s / base.wall_s:.2f}x, "
                f"CPU {phase.cpu_s / base.cpu_s:.2f}x, "
                f"peak RSS {phase.peak_mb / base.peak_mb:.2f}x of the baseline"
            )
    print(f"load average at end: {os.getloadavg()}", flush=True)


if __name__ == "__main__":
    main()
