"""The Redis stream as the collector's bus: one ``XADD`` per event, pipelined per request.

Each entry carries the event JSON in ``e`` (as :mod:`featrec.adapters.redis.streams` publishes
it) and the server's receive time in ``r`` (unix seconds), which the stream source reads as
the event's ``ingested_at``. The stream is trimmed approximately to ``maxlen`` entries.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from featrec.adapters.errors import translated
from featrec.adapters.redis.streams import EVENT_FIELD, connect

#: The entry field holding the server's receive time.
RECEIVED_FIELD: Final = "r"
#: Entries a stream keeps (approximately) when the collector trims it.
DEFAULT_MAXLEN: Final = 10_000_000


class RedisBus:
    """Appends accepted events to ``stream`` (an :class:`~featrec.app.collector.EventBus`)."""

    name = "redis"
    atomic = True  # one MULTI/EXEC per request

    def __init__(self, redis_url: str, stream: str, maxlen: int = DEFAULT_MAXLEN) -> None:
        self.stream = stream
        self.maxlen = maxlen
        self.client = connect(redis_url, timeout_s=2.0)

    def append(self, received_at: float, events: Sequence[str]) -> None:
        stamp = f"{received_at:.6f}"
        with translated(f"appending to the stream {self.stream!r}"):
            pipe = self.client.pipeline(transaction=True)
            for text in events:
                pipe.xadd(
                    self.stream,
                    {EVENT_FIELD: text, RECEIVED_FIELD: stamp},
                    maxlen=self.maxlen,
                    approximate=True,
                )
            pipe.execute()

    def close(self) -> None:
        self.client.close()
