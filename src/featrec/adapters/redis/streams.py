"""Redis Streams as featrec's event bus: publishing events, reading the dead-letter stream.

Wire format: one stream entry per event, field ``e`` = the event as featrec JSON (see
:meth:`featrec.core.events.model.Event.to_dict`). The sessions dataflow's ``RedisStreamSource``
reads these entries; refused records go to the dead-letter stream as entries with fields
``origin``, ``reason``, ``payload``, ``at``. Redis errors are translated into
:mod:`featrec.errors` by :func:`featrec.adapters.errors.translated`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from contextlib import closing
from typing import Any, Final

import redis

from featrec.adapters.errors import translated
from featrec.core.events.model import Event

EVENT_FIELD: Final = "e"
DEAD_LETTER_FIELDS: Final = ("origin", "reason", "payload", "at")


def connect(redis_url: str, timeout_s: float = 10.0) -> redis.Redis[bytes]:
    """A client for ``redis_url`` (no connection is made until the first command)."""
    return redis.Redis.from_url(
        redis_url, socket_timeout=timeout_s, socket_connect_timeout=min(timeout_s, 5.0)
    )


def event_json(event: Event | Mapping[str, Any] | str) -> str:
    """The ``e`` field for an event given as an Event, a featrec mapping or a JSON string."""
    if isinstance(event, Event):
        return json.dumps(event.to_dict(), separators=(",", ":"))
    if isinstance(event, str):
        return event
    return json.dumps(dict(event), separators=(",", ":"), default=str)


def publish(
    redis_url: str,
    stream: str,
    events: Iterable[Event | Mapping[str, Any] | str],
    batch: int = 1000,
    maxlen: int | None = None,
) -> int:
    """XADD each event as ``{"e": json}`` in pipelines of ``batch``; returns how many.

    ``maxlen`` trims the stream approximately (``MAXLEN ~``) so a long-lived bus stays bounded.
    """
    if batch < 1:
        raise ValueError("batch must be >= 1")
    sent = 0
    with closing(connect(redis_url)) as client, translated(f"publishing to {stream!r}"):
        pipe = client.pipeline(transaction=False)
        pending = 0
        for event in events:
            pipe.xadd(stream, {EVENT_FIELD: event_json(event)}, maxlen=maxlen, approximate=True)
            pending += 1
            if pending >= batch:
                pipe.execute()
                sent += pending
                pending = 0
        if pending:
            pipe.execute()
            sent += pending
    return sent


def stream_length(redis_url: str, stream: str) -> int:
    """XLEN of ``stream`` (0 if it does not exist)."""
    with (
        closing(connect(redis_url)) as client,
        translated(f"reading the length of {stream!r}"),
    ):
        return int(client.xlen(stream))


def append_dead_letters(
    redis_url: str | redis.Redis[bytes], stream: str, letters: Sequence[Mapping[str, str]]
) -> int:
    """XADD dead letters (mappings with :data:`DEAD_LETTER_FIELDS`) in one pipeline."""
    client = connect(redis_url) if isinstance(redis_url, str) else redis_url
    try:
        with translated(f"writing dead letters to {stream!r}"):
            pipe = client.pipeline(transaction=False)
            for letter in letters:
                pipe.xadd(stream, {k: str(letter.get(k, "")) for k in DEAD_LETTER_FIELDS})
            pipe.execute()
    finally:
        if isinstance(redis_url, str):
            client.close()
    return len(letters)


def read_dead_letters(redis_url: str, stream: str, n: int = 10) -> list[dict[str, str]]:
    """The newest ``n`` dead letters, newest first, each with ``id`` and the letter fields."""
    with closing(connect(redis_url)) as client, translated(f"reading {stream!r}"):
        entries = client.xrevrange(stream, count=n)
    out = []
    for entry_id, fields in entries:
        letter = {"id": _text(entry_id)}
        letter.update({_text(k): _text(v) for k, v in fields.items()})
        out.append(letter)
    return out


def stream_id_ms(entry_id: bytes | str) -> int:
    """The milliseconds part of a stream entry id (the XADD time for auto-generated ids)."""
    text = _text(entry_id)
    return int(text.split("-", 1)[0])


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value
