"""The event collector's use case: check posted events, then append them to the bus.

A shop's pages post events to ``POST /events`` (:mod:`featrec.server.collector`). Each event
is checked by the dataflows' own decoder (:func:`featrec.core.events.batch_decode.decode_records`,
the msgspec batch decoder of the sessions flow), with the server's receive time as the record's
ingestion time, so the collector refuses exactly what the flow would dead-letter, the
far-future rule included (an event more than ``MAX_FUTURE_SKEW_S`` ahead of the server's
clock). Events naming a forgotten user or session are refused too: they must never be stored.

A request is all or nothing: one refused event refuses the whole request and nothing is
appended, so a client can fix and resend the batch without duplicating the rest. The events
are appended as their JSON text next to the receive time (``received_at``): the sessions flow
reads that time as the event's ``ingested_at`` (freshness, skew), while the event keeps the
client's ``ts``.

A shop that posts its own schema configures an event mapping
(:mod:`featrec.core.events.mapping`, ``featrec serve --mapping NAME``): each posted object is
mapped first (an object that does not map is refused with the featrec field and the reason,
as a file source would dead-letter it), then checked as above, and appended in featrec's own
schema, so every flow reads the bus unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final, Protocol

from featrec.core.events.batch_decode import Arrival, decode_records
from featrec.core.events.formats import DeadLetter, RawRecord
from featrec.core.events.mapping import EventMapping, map_record
from featrec.core.privacy import DenySet

#: The reason given for an event of a forgotten user or session.
FORGOTTEN_REASON: Final = "forgotten user or session: its events are not collected"


class EventBus(Protocol):
    """Where accepted events go: the Redis stream, the Kafka topic, or the collector log file."""

    #: ``redis``, ``kafka`` or ``file`` (shown in answers and metrics).
    name: str
    #: True when a failed append stored none of its events (a Redis transaction, one locked
    #: file write); False when some may have been stored (Kafka without transactions).
    atomic: bool

    def append(self, received_at: float, events: Sequence[str]) -> None:
        """Append ``events`` (one JSON object each, without newlines) atomically and in order;
        raises :class:`~featrec.errors.StoreUnavailable` when the bus cannot be reached."""
        ...


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why event ``index`` of a request was refused: the field at fault and the reason."""

    index: int
    field: str
    reason: str


@dataclass(frozen=True, slots=True)
class Checked:
    """The outcome of checking one request's events."""

    accepted: tuple[str, ...]
    refused: tuple[Refusal, ...]
    forgotten: int


def field_of(reason: str) -> str:
    """The field a decoder reason names (``"price: -3.0 is not ..."`` -> ``price``)."""
    head, sep, _ = reason.partition(":")
    return head if sep and head.replace("_", "").isalnum() else "event"


def check_events(
    texts: Sequence[str],
    received_at: float,
    deny: DenySet | None = None,
    mapping: EventMapping | None = None,
) -> Checked:
    """Check each JSON event text in ``texts`` as the sessions flow would, at ``received_at``;
    through ``mapping`` first when the shop posts its own schema (the accepted texts are then
    the mapped events, in featrec's schema)."""
    records = [RawRecord("featrec", str(i), text, received_at) for i, text in enumerate(texts)]
    refused: list[Refusal] = []
    if mapping is not None:
        mapped: list[RawRecord] = []
        for record in records:
            result = map_record(mapping, record)
            if isinstance(result, DeadLetter):
                refused.append(Refusal(int(record.origin), field_of(result.reason), result.reason))
            else:
                mapped.append(result)
        records = mapped
    forgotten = 0
    accepted: list[str] = []
    for item in decode_records(records):
        if isinstance(item, Arrival):
            event = item.event
            if deny is not None and (
                deny.contains("session", event.session_id) or deny.contains("user", event.user_id)
            ):
                forgotten += 1
                which = "user_id" if deny.contains("user", event.user_id) else "session_id"
                refused.append(Refusal(int(item.origin), which, FORGOTTEN_REASON))
            elif mapping is not None:
                accepted.append(json.dumps(event.to_dict(), separators=(",", ":")))
        else:
            refused.append(Refusal(int(item.origin), field_of(item.reason), item.reason))
    if refused:
        refused.sort(key=lambda r: r.index)
        return Checked((), tuple(refused), forgotten)
    return Checked(tuple(accepted) if mapping is not None else tuple(texts), (), 0)


class Collector:
    """Checks a request's events and appends the accepted ones to ``bus``."""

    def __init__(
        self,
        bus: EventBus,
        deny: Callable[[], DenySet] | None = None,
        mapping: EventMapping | None = None,
    ) -> None:
        self.bus = bus
        self.deny = deny
        self.mapping = mapping

    def collect(self, texts: Sequence[str], received_at: float) -> Checked:
        deny = self.deny() if self.deny else None
        checked = check_events(texts, received_at, deny, self.mapping)
        if checked.accepted:
            self.bus.append(received_at, checked.accepted)
        return checked
