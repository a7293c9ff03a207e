"""The Redis Streams adapter against a real redis-server: publish, lengths, dead letters."""

from __future__ import annotations

import json

import pytest

from featrec.adapters.redis.streams import (
    append_dead_letters,
    connect,
    publish,
    read_dead_letters,
    stream_length,
)
from featrec.core.events.model import event_from_mapping
from featrec.errors import StoreUnavailable
from featrec.testing.redis_server import free_port


def test_publish_writes_one_entry_per_event_in_field_e(redis_url: str) -> None:
    events = [
        event_from_mapping(
            {
                "event_id": f"e{i}",
                "session_id": "s",
                "item_id": "i",
                "type": "view",
                "ts": 1.7e9 + i,
            }
        )
        for i in range(2500)
    ]
    assert publish(redis_url, "events", events, batch=1000) == 2500
    assert stream_length(redis_url, "events") == 2500
    entries = connect(redis_url).xrange("events", count=2)
    assert [json.loads(fields[b"e"]) for _, fields in entries] == [
        events[0].to_dict(),
        events[1].to_dict(),
    ]
    assert publish(redis_url, "events", ['{"raw": 1}', {"event_id": "m"}]) == 2
    assert stream_length(redis_url, "events") == 2502


def test_dead_letters_round_trip_newest_first(redis_url: str) -> None:
    letters = [
        {"origin": f"f:{i}", "reason": "ts: missing", "payload": "{}", "at": "2024"}
        for i in range(5)
    ]
    append_dead_letters(redis_url, "dl", letters)
    assert stream_length(redis_url, "dl") == 5
    newest = read_dead_letters(redis_url, "dl", 2)
    assert [d["origin"] for d in newest] == ["f:4", "f:3"]
    assert set(newest[0]) == {"id", "origin", "reason", "payload", "at"}


def test_unreachable_redis_is_store_unavailable() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    with pytest.raises(StoreUnavailable, match="Redis unreachable"):
        stream_length(url, "events")
    with pytest.raises(StoreUnavailable, match="publishing to 'events'"):
        publish(url, "events", ["{}"])
