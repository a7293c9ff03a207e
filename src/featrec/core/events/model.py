"""The event model: one user action in the shop, validated.

An :class:`Event` is immutable and always valid: every constructor path goes through
:func:`event_from_mapping`, which names the offending field when it refuses input.

Event types are extensible: ``view``, ``click``, ``cart`` and ``purchase`` are known and carry
meaning in features and weights; any other lower-case identifier (``wishlist``, ``search``) is
accepted and counted only in totals.

Time has two bounds. Absolute: 2000..2100 (outside is a bug, not data). Relative to the wall
clock: an event may be at most :data:`MAX_FUTURE_SKEW_S` ahead of the time it entered featrec
(:func:`check_not_ahead`, applied by :func:`featrec.core.events.formats.decode`), because one event
from the future would poison its session: the session's genuine next events would all look
late, and its row version (an event-time clock) would outrank every later row in the store.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from featrec.errors import InvalidEvent

VIEW: Final = "view"
CLICK: Final = "click"
CART: Final = "cart"
PURCHASE: Final = "purchase"
KNOWN_TYPES: Final = (VIEW, CLICK, CART, PURCHASE)

#: Synonyms found in public data sets, mapped onto featrec's names.
TYPE_ALIASES: Final = {
    "clicks": CLICK,
    "carts": CART,
    "orders": PURCHASE,
    "order": PURCHASE,
    "add_to_cart": CART,
    "addtocart": CART,
    "transaction": PURCHASE,
    "views": VIEW,
}

MAX_ID_LENGTH: Final = 128
MAX_TEXT_LENGTH: Final = 256
MAX_QUANTITY: Final = 1_000_000
MAX_PRICE: Final = 1e9
#: Timestamps outside [MIN_TS, MAX_TS] are rejected (before 2000 or after 2100 is a bug, not data).
MIN_TS: Final = datetime(2000, 1, 1, tzinfo=UTC)
MAX_TS: Final = datetime(2100, 1, 1, tzinfo=UTC)
#: How far an event may be ahead of its ingestion time (producer clock skew). Equal to the
#: default allowed lateness: an event this far ahead still leaves the session's genuine next
#: events inside the lateness window.
MAX_FUTURE_SKEW_S: Final = 300.0

_TYPE_RE: Final = re.compile(r"[a-z][a-z0-9_]{0,31}")
_FIELDS: Final = frozenset(
    {"event_id", "session_id", "user_id", "item_id", "type", "ts", "price", "category", "quantity"}
)


@dataclass(frozen=True, slots=True)
class Event:
    """One validated shop event. ``ts`` is always tz-aware UTC."""

    event_id: str
    session_id: str
    item_id: str
    type: str
    ts: datetime
    user_id: str | None = None
    price: float | None = None
    category: str | None = None
    quantity: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """The event in featrec's own JSON schema (``ts`` as ISO-8601 UTC)."""
        out: dict[str, Any] = {
            "event_id": self.event_id,
            "session_id": self.session_id,
            "item_id": self.item_id,
            "type": self.type,
            "ts": self.ts.isoformat(),
        }
        if self.user_id is not None:
            out["user_id"] = self.user_id
        if self.price is not None:
            out["price"] = self.price
        if self.category is not None:
            out["category"] = self.category
        if self.quantity is not None:
            out["quantity"] = self.quantity
        return out


def event_from_mapping(raw: Mapping[str, Any]) -> Event:
    """Validate a mapping in featrec's schema and build an :class:`Event`.

    Raises :class:`~featrec.errors.InvalidEvent` naming the first offending field.
    Unknown fields are rejected so that typos (``sesion_id``) do not pass silently.
    """
    if not isinstance(raw, Mapping):
        raise InvalidEvent("event", f"expected a JSON object, got {type(raw).__name__}")
    unknown = set(raw) - _FIELDS
    if unknown:
        raise InvalidEvent(sorted(map(str, unknown))[0], "unknown field")
    return Event(
        event_id=_identifier(raw, "event_id"),
        session_id=_identifier(raw, "session_id"),
        item_id=_identifier(raw, "item_id"),
        type=parse_type(raw.get("type")),
        ts=parse_timestamp(raw.get("ts")),
        user_id=_optional_identifier(raw, "user_id"),
        price=_price(raw.get("price")),
        category=_text(raw.get("category"), "category"),
        quantity=_quantity(raw.get("quantity")),
    )


def parse_type(value: object) -> str:
    """Normalise an event type (``"orders"`` → ``"purchase"``); reject non-identifiers."""
    if not isinstance(value, str):
        raise InvalidEvent("type", "missing" if value is None else "must be a string")
    name = value.strip().lower()
    name = TYPE_ALIASES.get(name, name)
    if not _TYPE_RE.fullmatch(name):
        raise InvalidEvent("type", f"{_preview(value)} is not a lower-case identifier")
    return name


def parse_timestamp(value: object) -> datetime:
    """Parse an ISO-8601 string, unix seconds, or a datetime into tz-aware UTC.

    Naive strings and datetimes are taken as UTC. NaN, infinities and values outside
    2000..2100 are rejected.
    """
    if value is None:
        raise InvalidEvent("ts", "missing")
    try:
        if isinstance(value, datetime):
            ts = value
        elif isinstance(value, bool):
            raise InvalidEvent("ts", "must be a timestamp, not a boolean")
        elif isinstance(value, int | float):
            if not math.isfinite(value):
                raise InvalidEvent("ts", "must be finite")
            ts = datetime.fromtimestamp(value, tz=UTC)
        elif isinstance(value, str):
            ts = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        else:
            raise InvalidEvent("ts", f"unsupported type {type(value).__name__}")
    except (ValueError, OverflowError, OSError) as exc:
        raise InvalidEvent("ts", f"cannot parse {_preview(value)}: {exc}") from None
    ts = ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)
    if not MIN_TS <= ts < MAX_TS:
        raise InvalidEvent("ts", f"{ts.isoformat()} is outside 2000..2100")
    return ts


def check_not_ahead(event: Event, ingested_at: float) -> Event:
    """``event`` if its time is at most :data:`MAX_FUTURE_SKEW_S` after ``ingested_at`` (unix
    seconds, the wall clock when it entered featrec); else :class:`InvalidEvent` on ``ts``."""
    ahead = event.ts.timestamp() - ingested_at
    if ahead > MAX_FUTURE_SKEW_S:
        received = datetime.fromtimestamp(ingested_at, UTC).isoformat()
        raise InvalidEvent(
            "ts",
            f"{event.ts.isoformat()} is {ahead:.0f} s ahead of its ingestion time ({received}); "
            f"at most {MAX_FUTURE_SKEW_S:g} s of clock skew is allowed",
        )
    return event


def _identifier(raw: Mapping[str, Any], field: str) -> str:
    value = _optional_identifier(raw, field)
    if value is None:
        raise InvalidEvent(field, "missing")
    return value


def _optional_identifier(raw: Mapping[str, Any], field: str) -> str | None:
    value = raw.get(field)
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise InvalidEvent(field, f"must be a string or integer, got {type(value).__name__}")
    try:
        text = str(value)
    except ValueError:  # an int beyond str()'s digit limit
        raise InvalidEvent(field, f"longer than {MAX_ID_LENGTH} characters") from None
    if len(text) > MAX_ID_LENGTH:
        raise InvalidEvent(field, f"longer than {MAX_ID_LENGTH} characters")
    if not text.isprintable() or text != text.strip():
        raise InvalidEvent(field, "contains control characters or surrounding whitespace")
    return text


def _text(value: object, field: str) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise InvalidEvent(field, f"must be a string, got {type(value).__name__}")
    if len(value) > MAX_TEXT_LENGTH:
        raise InvalidEvent(field, f"longer than {MAX_TEXT_LENGTH} characters")
    if not value.isprintable():
        raise InvalidEvent(field, "contains control characters")
    return value


def _price(value: object) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise InvalidEvent("price", f"must be a number, got {type(value).__name__}")
    try:
        price = float(value)
    except OverflowError:  # an int beyond float range
        price = math.inf
    except ValueError:
        raise InvalidEvent("price", f"{_preview(value)} is not a number") from None
    if not math.isfinite(price) or not 0 <= price <= MAX_PRICE:
        raise InvalidEvent("price", f"{price} is not a finite price in [0, {MAX_PRICE:g}]")
    return price


def _quantity(value: object) -> int | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise InvalidEvent("quantity", "must be an integer, not a boolean")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    # isdecimal, not isdigit: int() refuses digits such as "³".
    if isinstance(value, str) and value.strip().isdecimal():
        try:
            value = int(value)
        except ValueError:  # beyond int()'s digit limit, so out of range anyway
            raise InvalidEvent(
                "quantity", f"{_preview(value)} is not in [1, {MAX_QUANTITY}]"
            ) from None
    if not isinstance(value, int):
        raise InvalidEvent("quantity", f"{_preview(value)} is not an integer")
    if not 1 <= value <= MAX_QUANTITY:
        raise InvalidEvent("quantity", f"{_preview(value)} is not in [1, {MAX_QUANTITY}]")
    return value


def _preview(value: object, limit: int = 40) -> str:
    try:
        text = repr(value)
    except ValueError:  # an int beyond repr()'s digit limit
        return f"<{type(value).__name__} too long to show>"
    return text if len(text) <= limit else text[: limit - 3] + "..."
