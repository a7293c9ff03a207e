"""Settings: every ``FEATREC_*`` variable, declared once, read once at the entry point.

Four frozen models (pydantic-settings), one per reader, share one environment reader:

- :class:`Settings` — the stores, streams, micro-batches and session policy; everything that
  runs reads it (CLI, HTTP workers, dataflows).
- :class:`ServeSettings` — ``FEATREC_SERVE_*`` (written by ``featrec serve`` for its HTTP
  workers) and ``FEATREC_ADMIN_TOKEN``.
- :class:`FlowSettings` — what a dataflow process reads beyond :class:`Settings`: its source,
  and the evaluation replay's work directory.
- :class:`KafkaSettings` — ``FEATREC_KAFKA_*``: the Kafka bus's brokers, topics and client
  security (environment only).

:data:`OTHER_VARIABLES` names the rest: one featrec writes for Feast's yaml, and the tests' own.
:func:`variables` lists them all (the README's table is checked against it), and reading warns
(:class:`UnknownVariableWarning`) about any other ``FEATREC_*`` variable, with the closest
known name, so a misspelt variable is not silently ignored.

Nothing reads the environment at import time or on construction: only ``from_env(environ)``
reads, and only the mapping it is given. A bad value is a :class:`~featrec.errors.ConfigError`
with one line that names the variable and its allowed values. Secrets (the Redis password,
the admin token) only ever come from the environment and are never written to disk: the URL
fields are left out of ``repr``, and anything that names a Redis server in a message uses
:func:`redact_url`.
"""

from __future__ import annotations

import difflib
import json
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final, Literal, Self, get_args
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from pydantic import SecretStr, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from featrec.core.sessions.fold import SessionPolicy
from featrec.environment import (
    PREFIX,
    EnvModel,
    UnknownVariableWarning,
    Variable,
    model_variables,
    redact_url,
    var,
)
from featrec.errors import ConfigError

OnlineStore = Literal["sqlite", "redis"]
Writer = Literal["fast", "feast"]
RequestLog = Literal["sqlite", "redis"]
SourceFormat = Literal["featrec", "otto", "session-rec"]
FlowShape = Literal["batch", "per-event"]
Bus = Literal["redis", "kafka"]
KafkaSecurity = Literal["plaintext", "ssl", "sasl_plaintext", "sasl_ssl"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
CollectBus = Literal["auto", "redis", "kafka", "file"]
ONLINE_STORES: Final = get_args(OnlineStore)
WRITERS: Final = get_args(Writer)
REDIS_SCHEMES: Final = ("redis://", "rediss://", "unix://")
#: redis-py's URL option (passed on to ``ssl.SSLContext.load_verify_locations``).
CA_OPTION: Final = "ssl_ca_certs"

#: Variables featrec knows but no model reads: name -> (default, allowed, meaning).
OTHER_VARIABLES: Final = {
    "FEATREC_FEAST_REDIS": (
        "derived",
        "a Feast Redis connection string",
        "Feast's Redis connection string, read by `feature_store.redis.yaml`; featrec derives "
        "it from `FEATREC_REDIS_URL` (set it yourself only to run stock `feast` on that yaml)",
    ),
    "FEATREC_KILL_SEED": (
        "random",
        "an integer",
        "tests only: replays the kill times of the crash-recovery test",
    ),
    "FEATREC_SHOP_SCREENSHOTS": (
        "the test's temp dir",
        "a path",
        "tests only: where the shop's browser test saves its screenshots",
    ),
    "FEATREC_SHARED_DATA": (
        "`../shared/data` beside the clone",
        "a path",
        "tests only: the shared event data (RSC15 and OTTO samples), never copied into the repo",
    ),
}

_URL_ALLOWED: Final = "a URL starting with redis://, rediss:// or unix://"


class Settings(EnvModel):
    """The stores, streams, micro-batches and session policy. Validated, frozen."""

    home: Path = var(
        Path(".featrec"),
        "local data: event log, dead letters, recovery store, flow status, models, request log",
    )
    repo: Path = var(Path("feature_repo"), "the Feast feature repo")
    online_store: OnlineStore = var(
        "sqlite", "the online store: `sqlite` (embedded, no server) or `redis`"
    )
    redis_url: str = var(
        "redis://127.0.0.1:6379/0",
        "redis-py URL of the online store: `rediss://` for TLS, the password as "
        "`redis://:PASSWORD@host:port/0` (it only ever comes from here)",
        allowed=_URL_ALLOWED,
        secret=True,
    )
    redis_ca_cert: Path | None = var(
        None,
        "CA bundle (PEM) that verifies the server of a `rediss://` URL; added to every "
        "client's URL as `?ssl_ca_certs=PATH`, Feast's included",
        shown="system CAs",
    )
    redis_cluster_nodes: str | None = var(
        None,
        "seed nodes of a Redis Cluster online store, `host:port,host:port,...`; when set, "
        "every featrec Redis client (and Feast, as `redis_type: redis_cluster`) uses the "
        "cluster; password and TLS still come from `FEATREC_REDIS_URL`, whose host is unused",
        shown="none (a single Redis)",
        allowed="comma-separated `host:port`",
    )
    redis_cluster_wait_replicas: int = var(
        0,
        "Redis Cluster: the dataflow writer ends each flush with `WAIT N` on every master it "
        "wrote to, and retries the flush unless N replicas acknowledged it (1: no acknowledged "
        "row is lost when a master fails over; 0: no wait)",
        ge=0,
    )
    bus_url: str | None = var(
        None,
        "redis-py URL of the event bus (event and dead-letter streams) on a Redis of its own",
        shown="`FEATREC_REDIS_URL`",
        allowed=_URL_ALLOWED,
        secret=True,
    )
    stream: str = var(
        "featrec:events", "Redis stream(s) of raw events (several: comma-separated)", min_length=1
    )
    bus: Bus = var(
        "redis",
        "the event bus `featrec publish` writes to: `redis` (the stream `FEATREC_STREAM`) or "
        "`kafka` (the topic `FEATREC_KAFKA_TOPIC`)",
    )
    dead_letter_stream: str = var(
        "featrec:deadletters",
        "Redis stream of refused events (the item flow's: this name + `:items`)",
        min_length=1,
    )
    writer: Writer = var(
        "fast",
        "`fast` (Feast's Redis layout written directly / provider batch on SQLite) or `feast` "
        "(stock `write_to_online_store`)",
    )
    batch_max_rows: int = var(1000, "micro-batch size bound (rows)", ge=1)
    batch_deadline_ms: float = var(10.0, "micro-batch latency bound (ms)", gt=0)
    session_gap_s: float = var(1800.0, "session inactivity gap (event time, s)", gt=0)
    allowed_lateness_s: float = var(
        300.0, "out-of-order tolerance (event time, s; at most the gap)", ge=0
    )
    state_ttl_s: float | None = var(
        None,
        "system time after which an idle session's state is discarded (s)",
        shown="the gap",
        gt=0,
    )
    item_write_interval_s: float = var(
        5.0, "item signals: least system time between two rows of one item (s)", ge=0
    )
    item_idle_s: float = var(
        600.0,
        "item signals: system time before an idle item's state is checked, dropped once "
        "negligible (s)",
        gt=0,
    )
    project: Path | None = var(
        None,
        "the project directory, holding `featrec.toml` (see `featrec.project`); inside one, "
        "`home` and `repo` default to its `.featrec/` and `feature_repo/`",
        shown="found from the working directory",
    )
    flow_shape: FlowShape = var(
        "batch",
        "sessions and items dataflow shape: `batch` (state folded per shard, one item per "
        "shard and source batch) or `per-event` (the previous shape, kept as the benchmarks' "
        "baseline)",
    )

    @field_validator("redis_cluster_nodes")
    @classmethod
    def _cluster_nodes(cls, nodes: str | None) -> str | None:
        if nodes is None or not nodes.strip():
            return None
        for node in nodes.split(","):
            host, _, port = node.strip().rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"a comma-separated list of host:port, got {node.strip()!r}")
        return ",".join(n.strip() for n in nodes.split(","))

    @field_validator("redis_url", "bus_url")
    @classmethod
    def _redis_scheme(cls, url: str | None) -> str | None:
        if url is not None and not url.startswith(REDIS_SCHEMES):
            raise ValueError(_URL_ALLOWED)
        return url

    @model_validator(mode="after")
    def _derive(self) -> Self:
        if self.redis_ca_cert is not None:
            # Frozen, but the URLs are what every client is built from: carry the CA there.
            object.__setattr__(self, "redis_url", with_ca_cert(self.redis_url, self.redis_ca_cert))
            if self.bus_url is not None and self.bus_url.startswith("rediss://"):
                object.__setattr__(self, "bus_url", with_ca_cert(self.bus_url, self.redis_ca_cert))
        if self.allowed_lateness_s > self.session_gap_s:
            raise ConfigError(
                f"{self.variable('allowed_lateness_s')}={self.allowed_lateness_s!r} is not a "
                f"finite number from 0 to {self.variable('session_gap_s')} "
                f"({self.session_gap_s!r}): the allowed lateness is at most the session gap"
            )
        self.session_policy  # noqa: B018 - validates gap and lateness early
        return self

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

    @property
    def collector_log(self) -> Path:
        """The append-only log ``POST /events`` writes when the bus is not Redis."""
        return self.home / "collector" / "events.jsonl"

    def collector_bus(self, choice: str) -> str:
        """``redis``, ``kafka`` or ``file``: ``FEATREC_SERVE_COLLECT_BUS`` with ``auto``
        resolved (the Kafka topic when ``FEATREC_BUS=kafka``, else the stream when the online
        store is Redis, else the collector log)."""
        if choice == "auto":
            if self.bus == "kafka":
                return "kafka"
            return "redis" if self.online_store == "redis" else "file"
        return choice

    @classmethod
    def from_env(cls, environ: Mapping[str, str], **overrides: Any) -> Settings:
        """Build settings from ``FEATREC_*`` variables, then apply explicit overrides.

        Every entry point starts here, so this is where unknown ``FEATREC_*`` variables are
        reported (:func:`warn_unknown`).
        """
        warn_unknown(environ, stacklevel=2)
        values = cls.read(environ)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


def json_object(value: Any) -> Any:
    """A variable holding a JSON object, parsed (a value that is not a string is kept)."""
    if not isinstance(value, str):
        return value
    try:
        data = json.loads(value)
    except ValueError:
        raise ValueError("not JSON") from None
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    return data


class ServeSettings(EnvModel):
    """The HTTP app's limits and serving options (``featrec serve`` writes them for its
    workers: see :mod:`featrec.app.serving.http_limits` and :mod:`featrec.jobs.serving`), and
    the admin token (a secret: from the environment only)."""

    model_config = SettingsConfigDict(env_prefix=PREFIX + "SERVE_")

    max_body_bytes: int = var(65536, "larger request bodies are refused (413)", ge=1)
    rate_limit: float = var(200.0, "requests/s per client and worker (0: no limit)", ge=0)
    rate_burst: int = var(400, "requests a client may send at once", ge=1)
    max_concurrent: int = var(1, "recommendations computed at once per worker", ge=1, le=64)
    max_inflight: int = var(0, "requests in progress per worker before 503 (0: off)", ge=0)
    deadline_ms: float = var(
        50.0, "a request not answerable within this many ms is shed (degraded or 503)", gt=0
    )
    model: str = var(
        "auto",
        "model version under `<home>/models`: `auto` (newest, if any), `latest`, `none` or a "
        "version name",
        allowed="a model version, `auto`, `latest` or `none`",
        min_length=1,
    )
    request_log: RequestLog = var("sqlite", "where served requests are logged")
    request_log_keep_h: float = var(
        168.0, "hours the request log keeps an entry (SQLite: whole hours deleted)", ge=1
    )
    max_session_age_s: float = var(
        600.0, "a session row older than this is stale: degraded answer (s)", ge=0
    )
    item_cache_s: float = var(5.0, "staleness bound of cached item rows and lists (s)", ge=0)
    candidates: int = var(100, "candidates scored per request", ge=1, le=5000)
    experiment: dict[str, Any] | None = var(
        None, "the A/B experiment as JSON (`featrec serve --experiment` writes it)", shown="none"
    )
    admin_token: SecretStr | None = var(
        None,
        "bearer token of the HTTP admin endpoints, at least 16 characters (unset: admin off)",
        shown="none",
        secret=True,
        alias=PREFIX + "ADMIN_TOKEN",
    )

    collect_bus: CollectBus = var(
        "auto",
        "where `POST /events` appends: `redis` (the stream `FEATREC_STREAM`), `kafka` (the "
        "topic `FEATREC_KAFKA_TOPIC`), `file` (the collector log "
        "`<home>/collector/events.jsonl`, no server) or `auto` (kafka when `FEATREC_BUS` is "
        "kafka, else redis when the online store is Redis, else file)",
    )
    collect_rate: float = var(
        100.0, "events/s per client and worker accepted by `POST /events` (0: no limit)", ge=0
    )
    collect_burst: int = var(500, "events a client may post at once", ge=1)
    collect_max_events: int = var(200, "events in one `POST /events` batch", ge=1, le=10_000)
    collect_mapping: dict[str, Any] | None = var(
        None,
        "the event mapping `POST /events` reads a shop's own schema through, as JSON "
        "(`featrec serve --mapping` writes it; see `featrec.core.events.mapping`)",
        shown="none",
    )
    cors_origins: str = var(
        "",
        "browser origins allowed to call `/events` and `/recommend` from another site, "
        "comma-separated (`*`: any; empty: same origin only)",
        shown="none",
        allowed="comma-separated origins, or `*`",
    )
    ingest_token: SecretStr | None = var(
        None,
        "bearer token `POST /events` requires, at least 16 characters (unset: open); the "
        "shop page reads it from its URL fragment `#token=...`",
        shown="none",
        secret=True,
        alias=PREFIX + "INGEST_TOKEN",
    )

    @field_validator("experiment", "collect_mapping", mode="before")
    @classmethod
    def _json_object(cls, value: Any) -> Any:
        return json_object(value)

    @field_validator("admin_token", "ingest_token", mode="before")
    @classmethod
    def _blank_is_unset(cls, token: Any) -> Any:
        return None if isinstance(token, str) and not token.strip() else token

    @property
    def cors_origin_list(self) -> list[str]:
        return [o.strip() for o in self.cors_origins.split(",") if o.strip()]

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> ServeSettings:
        return cls(**cls.read(environ))


class FlowSettings(EnvModel):
    """What a dataflow process reads beyond :class:`Settings`."""

    source: str | None = var(
        None,
        "a flow's source: event files joined by the OS path separator, `redis` (the "
        "stream `FEATREC_STREAM`), `kafka` (the topic `FEATREC_KAFKA_TOPIC`) or `collector` "
        "(tails the collector log)",
        shown="none",
        allowed="event file paths, `redis`, `kafka` or `collector`",
    )
    source_format: SourceFormat | None = var(
        None, "format of the source files", shown="from the file"
    )
    replay_speed: float = var(
        0.0, "file replay pace: 0 as fast as possible, N times the recorded pace", ge=0
    )
    eval_dir: Path | None = var(
        None, "work directory of `featrec evaluate`'s replay flow (set by it)", shown="none"
    )
    source_mapping: dict[str, Any] | None = var(
        None,
        "an event mapping the source files are read through, as JSON (`--mapping` writes it; "
        "see `featrec.core.events.mapping`)",
        shown="none",
    )

    cold_sessions: Path | None = var(
        None,
        "the dataflows' store of idle sessions (a directory, one SQLite file per shard; the "
        "items flow's pair step uses its `items` directory): sessions idle for "
        "`FEATREC_SESSION_COOL_S` leave memory and the recovery snapshots for it; the launcher "
        "puts it inside the recovery store (`featrec run sessions|items --recovery-dir`)",
        shown="none (every session stays in memory)",
    )
    session_cool_s: float = var(
        60.0,
        "the sessions flow and the items flow's pair step: system time after which an idle "
        "session moves to the store of idle sessions, when there is one (s)",
        gt=0,
    )

    source_until_end: bool = var(
        False,
        "a Kafka source stops once every partition is read to its end (backfills, tests, "
        "benchmarks); by default it waits for new events",
        allowed="`1`/`true` or `0`/`false`",
    )

    @field_validator("source_mapping", mode="before")
    @classmethod
    def _mapping_json(cls, value: Any) -> Any:
        return json_object(value)

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> FlowSettings:
        return cls(**cls.read(environ))


class KafkaSettings(EnvModel):
    """The Kafka bus (``FEATREC_KAFKA_*``): brokers, topics and client security.

    Read from the environment only (a project's ``featrec.toml`` never holds them), so SASL
    credentials and TLS paths are never written to disk; they are passed through to
    librdkafka by :func:`featrec.adapters.kafka.config.client_config`.
    """

    model_config = SettingsConfigDict(env_prefix=PREFIX + "KAFKA_")

    brokers: str = var(
        "127.0.0.1:9092",
        "bootstrap brokers of the Kafka bus, `host:port` comma-separated",
        min_length=1,
    )
    topic: str = var(
        "featrec.events",
        "Kafka topic of raw events, keyed by session id (its partitions are the flows' unit "
        "of parallelism)",
        min_length=1,
    )
    dead_letter_topic: str = var(
        "featrec.deadletters",
        "Kafka topic of refused events (the item flow's: this name + `.items`)",
        min_length=1,
    )
    security_protocol: KafkaSecurity = var(
        "plaintext", "librdkafka `security.protocol` (TLS and/or SASL to the brokers)"
    )
    sasl_mechanism: SaslMechanism | None = var(
        None, "librdkafka `sasl.mechanism`, with a `sasl_*` protocol", shown="none"
    )
    sasl_username: str | None = var(None, "SASL user name", shown="none")
    sasl_password: SecretStr | None = var(
        None, "SASL password (it only ever comes from here)", shown="none", secret=True
    )
    ssl_ca_location: Path | None = var(
        None, "CA bundle (PEM) that verifies the brokers' TLS certificates", shown="system CAs"
    )

    @property
    def items_dead_letter_topic(self) -> str:
        """The item signals flow's dead-letter topic (beside the sessions flow's)."""
        return self.dead_letter_topic + ".items"

    @model_validator(mode="after")
    def _sasl_complete(self) -> Self:
        if self.security_protocol.startswith("sasl") and (
            self.sasl_mechanism is None or self.sasl_username is None or self.sasl_password is None
        ):
            raise ConfigError(
                f"{self.variable('security_protocol')}={self.security_protocol!r} needs "
                f"{self.variable('sasl_mechanism')}, {self.variable('sasl_username')} and "
                f"{self.variable('sasl_password')}"
            )
        return self

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> KafkaSettings:
        return cls(**cls.read(environ))


MODELS: Final[tuple[type[EnvModel], ...]] = (Settings, ServeSettings, FlowSettings, KafkaSettings)


def variables() -> list[Variable]:
    """Every ``FEATREC_*`` variable featrec reads or writes, in declaration order."""
    found = [v for model in MODELS for v in model_variables(model)]
    return found + [Variable(name, *about) for name, about in OTHER_VARIABLES.items()]


def warn_unknown(environ: Mapping[str, str], *, stacklevel: int = 1) -> list[str]:
    """Warn about each ``FEATREC_*`` variable in ``environ`` that featrec does not read,
    suggesting the closest known name. Returns the unknown names. ``stacklevel`` 1 blames the
    caller, 2 the caller's caller."""
    known = [v.name for v in variables()]
    unknown = sorted(k for k in environ if k.upper().startswith(PREFIX) and k.upper() not in known)
    # Compared without the prefix, which every name shares (it would make any two look close).
    suffixes = [name.removeprefix(PREFIX) for name in known]
    for name in unknown:
        close = difflib.get_close_matches(
            name.upper().removeprefix(PREFIX), suffixes, n=1, cutoff=0.7
        )
        hint = f"; did you mean {PREFIX}{close[0]}?" if close else ""
        warnings.warn(
            f"{name} is not a featrec variable, ignored{hint}",
            UnknownVariableWarning,
            stacklevel=stacklevel + 1,
        )
    return unknown


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


__all__ = [
    "MODELS",
    "ONLINE_STORES",
    "OTHER_VARIABLES",
    "WRITERS",
    "EnvModel",
    "FlowSettings",
    "KafkaSettings",
    "ServeSettings",
    "Settings",
    "UnknownVariableWarning",
    "Variable",
    "redact_url",
    "variables",
    "warn_unknown",
    "with_ca_cert",
]
