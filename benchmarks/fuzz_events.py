"""Fuzz the event decoder and the sessions dataflow with many hostile records.

The strategies of tests/test_fuzz_events.py (tests/_hostile_events.py), run much longer:

1. **decoder**: ``--inputs`` (100k) hostile records in all three formats through
   ``featrec.core.events.formats.decode``. A crash (an exception out of ``decode``) is counted and
   the run goes on; every record must give dead letters only, naming the expected field.
2. **dataflow**: a sample of those records (up to ``--flow-hostile``, 1 MB lines included)
   interleaved with ``--flow-valid`` generated events, some hostile records in the same
   sessions, through the real sessions dataflow (``bytewax.testing.run_main``, the file
   dead-letter sink), against a run over the valid events alone: the session rows, the event
   log and the valid events' dead letters must be identical, and every hostile record must
   be in the dead-letter file once, with the expected field.

    .venv/bin/python benchmarks/fuzz_events.py [--inputs 100000] [--flow-hostile 20000]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]

from bytewax.testing import TestingSink, TestingSource, run_main  # noqa: E402
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402

from dataflows.sessions import build_flow  # noqa: E402
from dataflows.sinks import DeadLetterSink  # noqa: E402
from featrec.core.events.formats import DeadLetter, RawRecord, decode  # noqa: E402
from featrec.core.events.generator import GeneratorConfig, generate  # noqa: E402
from featrec.core.events.model import Event  # noqa: E402
from featrec.core.features.catalog import SESSION_FEATURES  # noqa: E402
from featrec.core.ports.features import InMemoryFeatureStore  # noqa: E402
from featrec.settings import Settings  # noqa: E402
from featrec.testing.hostile import Hostile, hostile_records  # noqa: E402


class DecoderTally:
    def __init__(self) -> None:
        self.tried = 0
        self.crashes: Counter[str] = Counter()
        self.dead_lettered = 0
        self.wrong: Counter[str] = Counter()  # refused on another field, or not refused
        self.kinds: Counter[str] = Counter()
        self.sample: list[Hostile] = []
        self.large = 0


def fuzz_decoder(n: int, sessions: list[str], now: float, keep: int) -> DecoderTally:
    tally = DecoderTally()

    @settings(
        max_examples=n,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(hostile=hostile_records(sessions, now))
    def one(hostile: Hostile) -> None:
        tally.tried += 1
        tally.kinds[f"{hostile.record.fmt}: {hostile.kind}"] += 1
        try:
            out = decode(hostile.record)
        except Exception as exc:  # the point: count, do not stop
            tally.crashes[f"{type(exc).__name__}: {exc}"[:200]] += 1
            if sum(tally.crashes.values()) <= 3:
                traceback.print_exc()
            return
        good = bool(out) and all(
            isinstance(o, DeadLetter) and o.reason.startswith(f"{hostile.field}: ") for o in out
        )
        if good:
            tally.dead_lettered += 1
        else:
            tally.wrong[f"{hostile.kind} -> {[getattr(o, 'reason', o) for o in out]}"[:200]] += 1
        # a sample for the dataflow run: the first records, with at most 20 large ones
        # (1 MB lines are ~2% of the inputs: 20,000 records would hold hundreds of MB)
        if len(str(hostile.record.payload)) > 65_536:
            if tally.large >= 20:
                return
            tally.large += 1
        if len(tally.sample) < keep:
            tally.sample.append(hostile)

    one()
    return tally


def run_flow(
    records: list[RawRecord], home: Path
) -> tuple[dict[str, object], list[dict[str, str]], list[str]]:
    store = InMemoryFeatureStore()
    logged: list[list[Event]] = []
    letters_file = home / "deadletters.jsonl"
    flow = build_flow(
        TestingSource(records, batch_size=500),
        Settings(home=home),
        writer_factory=lambda: store,
        dead_letter_sink=DeadLetterSink(file=letters_file),
        event_log_sink=TestingSink(logged),
    )
    run_main(flow)  # type: ignore[no-untyped-call]
    rows: dict[str, object] = {}
    for key in store.keys(SESSION_FEATURES.name):
        row = store.row(SESSION_FEATURES.name, key)
        assert row is not None
        rows[key] = (row.values, row.version)
    lines = letters_file.read_text("utf-8").splitlines() if letters_file.exists() else []
    return rows, [json.loads(line) for line in lines], [e.event_id for b in logged for e in b]


def fuzz_flow(valid: list[Event], hostile: list[Hostile], now: float) -> dict[str, object]:
    valid_records = [
        RawRecord("featrec", f"valid:{i}", json.dumps(e.to_dict()), now)
        for i, e in enumerate(valid)
    ]
    hostile = [
        h._replace(record=replace(h.record, origin=f"hostile:{i}")) for i, h in enumerate(hostile)
    ]
    # hostile records at random places, valid events in their order
    rng = random.Random(2)
    slots = [True] * len(valid_records) + [False] * len(hostile)
    rng.shuffle(slots)
    valid_it, hostile_it = iter(valid_records), iter(h.record for h in hostile)
    mixed = [next(valid_it) if is_valid else next(hostile_it) for is_valid in slots]
    with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
        started = time.perf_counter()
        base_rows, base_letters, base_logged = run_flow(valid_records, Path(a))
        rows, letters, logged = run_flow(mixed, Path(b))
        elapsed = time.perf_counter() - started
    by_origin = Counter(d["origin"] for d in letters)
    expected = {h.record.origin: h.field for h in hostile}
    right_field = sum(
        1
        for d in letters
        if d["origin"] in expected and d["reason"].startswith(f"{expected[d['origin']]}: ")
    )
    return {
        "records": len(mixed),
        "hostile": len(hostile),
        "hostile dead-lettered once": sum(by_origin[o] == 1 for o in expected),
        "with the expected field": right_field,
        "valid rows identical": rows == base_rows,
        "sessions": len(rows),
        "event log identical": sorted(logged) == sorted(base_logged),
        "valid dead letters identical": sorted(
            d["origin"] for d in letters if d["origin"] not in expected
        )
        == sorted(d["origin"] for d in base_letters),
        "seconds (both runs)": round(elapsed, 1),
    }


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--inputs", type=int, default=100_000)
    ap.add_argument("--flow-hostile", type=int, default=20_000)
    ap.add_argument("--flow-valid", type=int, default=50_000)
    args = ap.parse_args(argv)
    now = time.time()
    valid = list(
        generate(GeneratorConfig(n_events=args.flow_valid, seed=5, concurrent_sessions=200))
    )
    sessions = sorted({e.session_id for e in valid})

    started = time.perf_counter()
    tally = fuzz_decoder(args.inputs, sessions, now, args.flow_hostile)
    elapsed = time.perf_counter() - started
    crashes = sum(tally.crashes.values())
    print(f"decoder: {tally.tried:,} hostile inputs tried in {elapsed:.0f} s")
    print(f"  crashes {crashes:,}; dead-lettered with the expected field {tally.dead_lettered:,}")
    print(f"  not as expected {sum(tally.wrong.values()):,}")
    for what, count in (tally.crashes + tally.wrong).most_common(10):
        print(f"    {count:>6}  {what}")
    print("  inputs by format and kind:")
    for kind, count in sorted(tally.kinds.items()):
        print(f"    {count:>7,}  {kind}")

    flow = fuzz_flow(valid, tally.sample, now)
    print(f"dataflow: {len(valid):,} valid events + {len(tally.sample):,} hostile records")
    for key, value in flow.items():
        print(f"  {key}: {value}")
    ok = (
        not crashes
        and not tally.wrong
        and flow["hostile dead-lettered once"] == flow["hostile"] == flow["with the expected field"]
        and flow["valid rows identical"]
        and flow["event log identical"]
        and flow["valid dead letters identical"]
    )
    print("RESULT:", "ok" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
