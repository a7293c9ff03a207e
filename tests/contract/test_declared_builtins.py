"""The built-in session features that are natural declarations
(:mod:`featrec.core.features.declared.builtins`) equal the sessions fold's, on the same
traffic, at every event (both engines of the declarations: the stream fold and DuckDB)."""

from __future__ import annotations

import pyarrow as pa

from featrec.adapters.duckdb.declared import POINTS_SCHEMA, DeclaredBatch
from featrec.adapters.files.event_log import events_to_table
from featrec.core.events.generator import GeneratorConfig, generate
from featrec.core.features.declared.builtins import BUILTIN_SESSION
from featrec.core.features.declared.model import AS_OF
from featrec.core.features.declared.shard import DeclaredShard
from featrec.core.features.rows import micros
from featrec.core.sessions.fold import SessionPolicy, SessionState, fold, session_row
from featrec.testing.declared import same_value


def test_builtin_session_features_as_declarations_equal_the_sessions_fold() -> None:
    # In time order, no session gap: the fold's gap and lateness rules do not apply.
    events = list(generate(GeneratorConfig(n_events=1500, seed=5, concurrent_sessions=25)))
    policy = SessionPolicy(gap_s=10**7, allowed_lateness_s=10**6)
    shard = DeclaredShard(BUILTIN_SESSION)
    states: dict[str, SessionState] = {}
    fold_rows: list[tuple[str, int, dict[str, object]]] = []
    compared = 0
    for event in events:
        state = states.setdefault(event.session_id, SessionState(event.session_id))
        fold(state, event, policy)
        expected = session_row(state).values
        fold_rows.append((event.session_id, micros(event.ts), expected))
        shard.fold([event])
        for i, decl in enumerate(BUILTIN_SESSION):
            got = shard.states[(i, event.session_id)].values()
            for agg in decl.aggregations:
                assert same_value(got[agg.name], expected[agg.name]), (agg.name, event)
                compared += 1
    assert compared > 10_000
    # The batch engine agrees at every event time too (as of a time: every event at it).
    final = {(s, t): row for s, t, row in fold_rows}
    points = pa.table(
        {"key": [s for s, _ in final], AS_OF: [t for _, t in final]}, schema=POINTS_SCHEMA
    )
    with DeclaredBatch(events_to_table(events), threads=1) as batch:
        for decl in BUILTIN_SESSION:
            rows = {(r["session_id"], r[AS_OF]): r for r in batch.compute(decl, points).to_pylist()}
            for (session, t), expected in final.items():
                for agg in decl.aggregations:
                    assert same_value(rows[(session, t)][agg.name], expected[agg.name])
