"""Settings: one frozen object, read once at the entry point and passed down.

Every field can be set with a ``FEATREC_*`` environment variable (name in the table below);
nothing reads the environment at import time. Secrets (the Redis password) only ever come from
the environment and are never written to disk: the URL fields are left out of ``repr``, and
anything that names a Redis server in a message uses :func:`redact_url`.

=============================  =================================  ==========================
variable                       meaning                            default
=============================  =================================  ==========================
FEATREC_HOME                   local data: event log, dead        ``.featrec``
                               letters, recovery store
FEATREC_REPO                   the Feast repo                     ``feature_repo``
FEATREC_ONLINE_STORE           ``sqlite`` (embedded) or ``redis`` ``sqlite``
FEATREC_REDIS_URL              redis-py URL of the online store   ``redis://127.0.0.1:6379/0``
                               (``redis://``, ``rediss://`` for
                               TLS; password as
                               ``redis://:PASSWORD@host:port/0``)
FEATREC_REDIS_CA_CERT          CA bundle (PEM) that verifies the  none (system CAs)
                               server of a ``rediss://`` URL;
                               added to the URLs as
                               ``?ssl_ca_certs=PATH``
FEATREC_BUS_URL                redis-py URL of the event bus      FEATREC_REDIS_URL
                               (event and dead-letter streams)
FEATREC_STREAM                 Redis stream of raw events         ``featrec:events``
FEATREC_DEAD_LETTER_STREAM     Redis stream of refused events     ``featrec:deadletters``
FEATREC_WRITER                 ``fast`` or ``feast``              ``fast``
FEATREC_BATCH_MAX_ROWS         micro-batch size bound             ``1000``
FEATREC_BATCH_DEADLINE_MS      micro-batch latency bound          ``20``
FEATREC_SESSION_GAP_S          inactivity gap (event time)        ``1800``
FEATREC_ALLOWED_LATENESS_S     out-of-order tolerance             ``300``
FEATREC_STATE_TTL_S            system-time GC of idle sessions    the gap
FEATREC_ITEM_WRITE_INTERVAL_S  item signals: least system time    ``5``
                               between two rows of one item
FEATREC_ITEM_IDLE_S            item signals: system time before   ``600``
                               an idle item's state is checked
                               (dropped once negligible)
FEATREC_PROJECT                the project directory (holds       found from the working
                               ``featrec.toml``; see              directory
                               :mod:`featrec.project`)
=============================  =================================  ==========================
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Final
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from featrec.core.sessions.fold import SessionPolicy
from featrec.errors import ConfigError

ONLINE_STORES = ("sqlite", "redis")
WRITERS = ("fast", "feast")
REDIS_SCHEMES: Final = ("redis://", "rediss://", "unix://")
#: redis-py's URL option (passed on to ``ssl.SSLContext.load_verify_locations``).
CA_OPTION: Final = "ssl_ca_certs"


@dataclass(frozen=True)
class Settings:
    home: Path = Path(".featrec")
    repo: Path = Path("feature_repo")
    online_store: str = "sqlite"
    redis_url: str = field(default="redis://127.0.0.1:6379/0", repr=False)
    redis_ca_cert: Path | None = None
    bus_url: str | None = field(default=None, repr=False)
    stream: str = "featrec:events"
    dead_letter_stream: str = "featrec:deadletters"
    writer: str = "fast"
    batch_max_rows: int = 1000
    batch_deadline_ms: float = 20.0
    session_gap_s: float = 1800.0
    allowed_lateness_s: float = 300.0
    state_ttl_s: float | None = None
    item_write_interval_s: float = 5.0
    item_idle_s: float = 600.0
    project: Path | None = None

    def __post_init__(self) -> None:
        if self.online_store not in ONLINE_STORES:
            raise ConfigError(
                f"online store must be one of {', '.join(ONLINE_STORES)}, got {self.online_store!r}"
            )
        if self.writer not in WRITERS:
            raise ConfigError(f"writer must be one of {', '.join(WRITERS)}, got {self.writer!r}")
        if self.batch_max_rows < 1:
            raise ConfigError(f"batch max rows must be >= 1, got {self.batch_max_rows}")
        if not self.batch_deadline_ms > 0:
            raise ConfigError(f"batch deadline must be > 0 ms, got {self.batch_deadline_ms}")
        if not self.redis_url.startswith(REDIS_SCHEMES):
            raise ConfigError("FEATREC_REDIS_URL must start with redis://, rediss:// or unix://")
        if self.bus_url is not None and not self.bus_url.startswith(REDIS_SCHEMES):
            raise ConfigError("FEATREC_BUS_URL must start with redis://, rediss:// or unix://")
        if self.redis_ca_cert is not None:
            # Frozen, but the URLs are what every client is built from: carry the CA there.
            object.__setattr__(self, "redis_url", with_ca_cert(self.redis_url, self.redis_ca_cert))
            if self.bus_url is not None and self.bus_url.startswith("rediss://"):
                object.__setattr__(self, "bus_url", with_ca_cert(self.bus_url, self.redis_ca_cert))
        if not self.item_write_interval_s >= 0:
            raise ConfigError(
                f"item write interval must be >= 0 s, got {self.item_write_interval_s}"
            )
        if not self.item_idle_s > 0:
            raise ConfigError(f"item idle time must be > 0 s, got {self.item_idle_s}")
        self.session_policy  # noqa: B018 - validates gap and lateness early

    @property
    def items_dead_letter_stream(self) -> str:
        """The item signals flow's dead-letter stream (beside the sessions flow's)."""
        return self.dead_letter_stream + ":items"

    @property
    def session_policy(self) -> SessionPolicy:
        return SessionPolicy(gap_s=self.session_gap_s, allowed_lateness_s=self.allowed_lateness_s)

    @property
    def stream_url(self) -> str:
        """The Redis URL of the event bus (``bus_url``, else the online store's)."""
        return self.bus_url or self.redis_url

    @property
    def state_ttl(self) -> float:
        """Seconds of system time after which an idle session's state is discarded."""
        return self.state_ttl_s if self.state_ttl_s is not None else self.session_gap_s

    @property
    def event_log_dir(self) -> Path:
        return self.home / "events"

    @property
    def dead_letter_file(self) -> Path:
        return self.home / "deadletters.jsonl"

    @property
    def recovery_dir(self) -> Path:
        return self.home / "recovery"

    @classmethod
    def from_env(cls, environ: Mapping[str, str], **overrides: Any) -> Settings:
        """Build settings from ``FEATREC_*`` variables, then apply explicit overrides."""
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = environ.get(f"FEATREC_{f.name.upper()}")
            if raw is None or raw == "":
                continue
            values[f.name] = _convert(f.name, raw, f.type)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def with_(self, **changes: Any) -> Settings:
        return replace(self, **changes)

    def to_env(self) -> dict[str, str]:
        """The ``FEATREC_*`` variables that rebuild these settings in a child process."""
        env: dict[str, str] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None:
                env[f"FEATREC_{f.name.upper()}"] = str(value)
        return env


def with_ca_cert(url: str, ca_cert: Path) -> str:
    """``url`` with ``ssl_ca_certs=<ca_cert>`` in its query (unchanged if already there).

    Only a ``rediss://`` URL can use a CA, and the file must exist: both are checked here so
    that a typo fails at start-up with a message, not at the first TLS handshake.
    """
    parts = urlsplit(url)
    if parts.scheme != "rediss":
        raise ConfigError(
            "FEATREC_REDIS_CA_CERT is set but the Redis URL does not use TLS: "
            "write it as rediss://..."
        )
    if not ca_cert.is_file():
        raise ConfigError(f"FEATREC_REDIS_CA_CERT={str(ca_cert)!r} is not a readable file")
    query = parse_qsl(parts.query)
    present = [value for key, value in query if key == CA_OPTION]
    if present:
        if present != [str(ca_cert)]:
            raise ConfigError(
                f"the Redis URL names another CA ({CA_OPTION}) than FEATREC_REDIS_CA_CERT"
            )
        return url
    query.append((CA_OPTION, str(ca_cert)))
    return urlunsplit(parts._replace(query=urlencode(query, safe="/")))


def redact_url(url: str) -> str:
    """``url`` with its password replaced by ``***`` (safe for messages and logs)."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return "<unparseable Redis URL>"
    if not password:
        return url
    user = parts.username or ""
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def _convert(name: str, raw: str, type_: Any) -> Any:
    text = str(type_)
    try:
        if "Path" in text:
            return Path(raw)
        if text.startswith("int"):
            return int(raw)
        if text.startswith("float"):
            return float(raw)
    except ValueError:
        raise ConfigError(f"FEATREC_{name.upper()}={raw!r} is not a number") from None
    return raw
