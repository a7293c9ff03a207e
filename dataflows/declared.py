"""The declared-features dataflow: events -> every declared feature of ``feature_repo/`` -> store.

Steps (ids in quotes; they are the recovery schema, never rename casually)::

    "input" -> "decode" -> "split" --chunks--> "route" -> "declared" -> "unkey_rows" -> "write"
                              +--dead letters--> "dead_letters"

"decode" is the sessions flow's batch decoder (same validation, dead letters with reasons,
deny-list). "route" sends each event to one shard per declared entity it has a key for
(``session/3``, ``user/0``, ``item/7``): a user's events from many sessions meet in one shard.
"declared" is one ``StatefulBatchLogic`` per shard around a
:class:`~featrec.core.features.declared.shard.DeclaredShard` (the pure fold, bucketed partial
aggregates, bounded by the windows); it emits one row per touched key and declaration per
activation, and snapshots as one blob. Rows are written through the configured writer into
each declaration's Feast view.

The flow reads the declarations applied to the Feast registry when it starts: after adding a
feature (``featrec apply``), restart it; a new or changed declaration starts empty, and
``featrec declared backfill`` computes it from the event log.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import partial
from typing import Final, TypeAlias, TypeGuard, cast

import bytewax.operators as op
from bytewax.dataflow import Dataflow, Stream
from bytewax.inputs import Source
from bytewax.operators import KeyedStream, StatefulBatchLogic
from bytewax.outputs import Sink

from dataflows.batching import shard_of
from dataflows.metrics import FlowStats
from dataflows.session_shards import Decoded, ShardItem, decode_to_shards
from dataflows.sessions import DenySource, NothingDenied, open_deny_watcher, source_from_env
from dataflows.sinks import DeadLetterSink, FeatureSink, WriterFactory
from dataflows.sources import SourceItem
from featrec.core.events.batch_decode import Arrival
from featrec.core.events.formats import DeadLetter
from featrec.core.features.declared.model import Declaration
from featrec.core.features.declared.shard import DeclaredShard
from featrec.core.features.rows import FeatureRow
from featrec.core.ports.features import FeatureWriter
from featrec.errors import ConfigError
from featrec.settings import Settings

FLOW_ID: Final = "featrec_declared"
DECLARED_STEP: Final = "declared"
DEFAULT_SHARDS: Final = 8


#: (entity, arrivals); arrivals None: a tombstone passed, drop the forgotten ids' state.
Routed: TypeAlias = tuple[str, list[Arrival] | None]


class DeclaredLogic(StatefulBatchLogic[Routed, list[FeatureRow], tuple[str, bytes]]):
    """Folds a shard's arrivals; emits the touched keys' rows once per activation.

    bytewax gives a builder no key, so the shard learns its entity from its first item and
    then holds that entity's declarations only."""

    def __init__(
        self,
        of_entity: Mapping[str, Sequence[Declaration]],
        resume: tuple[str, bytes] | None = None,
        deny: DenySource | None = None,
    ) -> None:
        self.of_entity = of_entity
        self.deny: DenySource = deny if deny is not None else NothingDenied()
        self.entity: str | None = None
        self.shard: DeclaredShard | None = None
        if resume is not None:
            self.entity = resume[0]
            self.shard = DeclaredShard.from_bytes(resume[1], of_entity.get(resume[0], ()))

    def on_batch(self, values: list[Routed]) -> tuple[Iterable[list[FeatureRow]], bool]:
        if self.shard is None:
            self.entity = values[0][0]
            self.shard = DeclaredShard(self.of_entity[self.entity])
        rows: list[FeatureRow] = []
        arrivals: list[Arrival] = []
        for _, chunk in values:
            if chunk is not None:
                arrivals.extend(chunk)
                continue
            # A tombstone: fold what came before it, then forget (re-read the deny-list: this
            # shard may live in another worker than the "decode" that saw the tombstone).
            rows.extend(self._fold(arrivals))
            arrivals = []
            self.shard.forget(self.deny.refresh().contains)
        rows.extend(self._fold(arrivals))
        return ([rows] if rows else []), StatefulBatchLogic.RETAIN

    def _fold(self, arrivals: list[Arrival]) -> list[FeatureRow]:
        assert self.shard is not None
        if not arrivals:
            return []
        newest = max(a.ingested_at for a in arrivals)
        return self.shard.fold([a.event for a in arrivals], newest)

    def snapshot(self) -> tuple[str, bytes]:
        assert self.shard is not None and self.entity is not None, "snapshot before any item"
        return self.entity, self.shard.to_bytes()


def route(
    chunks: list[ShardItem], by_entity: Mapping[str, str], shards: int
) -> list[tuple[str, Routed]]:
    """Each arrival to one shard per declared entity it has a key for (order kept)."""
    out: dict[str, list[Arrival]] = {}
    entity_of: dict[str, str] = {}
    items: list[tuple[str, Routed]] = []

    def flush() -> None:
        items.extend((name, (entity_of[name], arrivals)) for name, arrivals in out.items())
        out.clear()

    purged = False  # a tombstone names many sessions: one purge per run of them
    for _, value in chunks:
        if not isinstance(value, list):
            # A tombstone's Forget: the user's later events are dropped at "decode"; every
            # shard drops the state it keeps of them (keys, and ids kept as values).
            if not purged:
                flush()
                items.extend(
                    (f"{entity}/{i}", (entity, None)) for entity in by_entity for i in range(shards)
                )
                purged = True
            continue
        purged = False
        for arrival in value:
            for entity, join_key in by_entity.items():
                key = getattr(arrival.event, join_key)
                if key is not None:
                    name = f"{entity}/{shard_of(key, shards)}"
                    entity_of[name] = entity
                    out.setdefault(name, []).append(arrival)
    flush()
    return items


def build_flow(
    source: Source[SourceItem],
    declarations: Sequence[Declaration],
    *,
    writer_factory: WriterFactory,
    dead_letter_sink: Sink[DeadLetter],
    shards: int = DEFAULT_SHARDS,
    stats: FlowStats | None = None,
    deny: DenySource | None = None,
) -> Dataflow:
    """The declared-features dataflow over ``source`` (see the module doc)."""
    if not declarations:
        raise ConfigError(
            "no declared features: add a declared_view to feature_repo/ and run featrec apply"
        )
    if shards < 1:
        raise ConfigError(f"shards must be >= 1, got {shards}")
    stats = stats if stats is not None else FlowStats()
    deny_source: DenySource = deny if deny is not None else NothingDenied()
    by_entity = {d.entity: d.join_key for d in declarations}
    of_entity = {e: [d for d in declarations if d.entity == e] for e in by_entity}

    def builder(resume: tuple[str, bytes] | None) -> DeclaredLogic:
        return DeclaredLogic(of_entity, resume, deny_source)

    def is_chunk(item: Decoded) -> TypeGuard[ShardItem]:
        return type(item) is tuple

    flow = Dataflow(FLOW_ID)
    records = op.input("input", flow, source)
    decoded = op.flat_map_batch(
        "decode", records, partial(decode_to_shards, shards=1, stats=stats, deny=deny_source)
    )
    split = op.branch("split", decoded, is_chunk)
    keyed: KeyedStream[Routed] = op.flat_map_batch(
        "route", split.trues, partial(route, by_entity=by_entity, shards=shards)
    )
    rows = op.stateful_batch(DECLARED_STEP, keyed, builder)
    sink = FeatureSink(writer_factory, stats=stats, flow_name="declared")
    op.output("write", op.key_rm("unkey_rows", rows), sink)
    op.output("dead_letters", cast(Stream[DeadLetter], split.falses), dead_letter_sink)
    return flow


def open_declared(settings: Settings) -> list[Declaration]:
    """The declarations applied to the Feast registry (imported here: Feast is slow)."""
    from featrec.adapters.feast.declared import applied_declarations
    from featrec.adapters.feast.repo import open_store

    return applied_declarations(open_store(settings))


def open_declared_writer(settings: Settings, declarations: Sequence[Declaration]) -> FeatureWriter:
    from featrec.adapters.feast.writers import open_writer

    views = {d.name: d.view() for d in declarations}
    writer: FeatureWriter = open_writer(settings, flow=True, exclusive=True, views=views)
    return writer


def flow(environ: Mapping[str, str] | None = None) -> Dataflow:
    """Factory for ``python -m bytewax.run "dataflows.declared:flow()"`` (FEATREC_* settings)."""
    env = os.environ if environ is None else environ
    settings = Settings.from_env(env)
    declarations = open_declared(settings)
    source = source_from_env(env, settings)
    factory: Callable[[], FeatureWriter] = partial(open_declared_writer, settings, declarations)
    return build_flow(
        source,
        declarations,
        writer_factory=factory,
        dead_letter_sink=DeadLetterSink(file=settings.home / "declared-deadletters.jsonl"),
        deny=open_deny_watcher(settings),
    )
