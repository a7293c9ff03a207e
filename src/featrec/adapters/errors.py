"""The one error-translation table: what each redis-py, sqlite3 and Feast exception becomes in
:mod:`featrec.errors`, and :func:`translated`, which applies it at an adapter's boundary.

An adapter wraps each call into a store library in ``with translated("what it was doing"):``.
An exception raised inside is looked up along its class's MRO: the first class with an entry in
:data:`TABLE` decides, so a subclass without an entry of its own maps like its nearest listed
base. The featrec error says what was being done, names the library's class, keeps the first
line of its message (passwords redacted), adds a hint on how to fix it where there is one, and
chains the original (``raise ... from exc``), e.g. ``publishing to 'events': Redis
unreachable: ConnectionError: Error 111 connecting to 127.0.0.1:6390. Connection refused.``

In short (:data:`TABLE` is the exact list, :data:`SQLITE_CODES` refines sqlite3 errors)::

    redis ConnectionError, TimeoutError,       -> StoreUnavailable  (retrying may help)
      BusyLoadingError, MaxConnectionsError,
      ClusterDownError, MasterDownError, TryAgainError,
      ClusterError, SlotNotCoveredError (a Redis Cluster failing over)
    redis AuthenticationError                  -> ConfigError       (check the password)
    redis NoPermissionError (ACL)              -> ConfigError       (the user lacks a command)
    any other RedisError, RedisClusterException -> StoreError       (WRONGTYPE, OOM, ...)
    sqlite3 SQLITE_BUSY / SQLITE_LOCKED        -> StoreUnavailable  ("database is locked")
    sqlite3 SQLITE_READONLY, _CANTOPEN, _FULL,  -> StoreError       (hint: permissions, path,
      _CORRUPT, _NOTADB                                              disk, damaged file)
    any other sqlite3.Error                    -> StoreError
    builtin ConnectionError, TimeoutError      -> StoreUnavailable  (a socket under a client)
    Feast "object not found" errors            -> StoreError        (apply the repo first)
    Feast errors about the repo or its yaml    -> ConfigError       (fix feature_repo/)
    any other FeastError                       -> StoreError

sqlite3 errors are refined by their result code (:data:`SQLITE_CODES`, which wins over the
class entry): a locked file is one OperationalError among many, and a reader retries it.

Feast's "not found" errors become :class:`~featrec.errors.StoreError`, not
:class:`~featrec.errors.NotFound`: they name a repo object (a view, a project) that is missing
because the repo was not applied, while ``NotFound`` means an entity that has no data. Serving
degrades on a ``StoreError`` instead of failing.

:data:`NOT_LISTED` names the classes of those libraries that have no entry, and why: featrec
cannot meet them (cloud stores, Redis Cluster redirections it never sees, pub/sub) or they map
like their base. Exceptions with no listed class in their MRO (``KeyError``, a file's
``OSError``, redis-py's ``ChildDeadlockedError``) pass through unchanged: they are bugs or belong
to another layer, not store failures. ``tests/contract/test_error_translation.py`` walks the
libraries' modules, so a class added by an upgrade fails the test until it is listed here.

Keys are dotted class names, so Feast (seconds to import) is never imported for this table.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Mapping
from contextlib import ContextDecorator
from dataclasses import dataclass
from types import TracebackType
from typing import Final

from featrec.errors import ConfigError, FeatrecError, StoreError, StoreUnavailable
from featrec.settings import redact_url


@dataclass(frozen=True)
class Rule:
    """What one library exception class becomes: the featrec class, an optional ``summary``
    put before the library's message, and an optional ``hint`` on how to fix it."""

    becomes: type[FeatrecError]
    summary: str = ""
    hint: str = ""


_R: Final = "redis.exceptions."
_F: Final = "feast.errors."

_REDIS_DOWN: Final = Rule(StoreUnavailable, "Redis unreachable")
_REDIS_PASSWORD: Final = Rule(ConfigError, hint="check the password in FEATREC_REDIS_URL")
_APPLY_FIRST: Final = Rule(StoreError, hint="apply the feature repo first: `feast apply`")
_FIX_REPO: Final = Rule(ConfigError, hint="check the Feast feature repo")
_FIX_YAML: Final = Rule(ConfigError, hint="check the repo's feature_store yaml")

#: Library exception class (dotted name) -> featrec error. See the module docstring.
TABLE: Final[Mapping[str, Rule]] = {
    # -- redis-py -----------------------------------------------------------------------------
    f"{_R}RedisError": Rule(StoreError),
    f"{_R}ConnectionError": _REDIS_DOWN,
    f"{_R}TimeoutError": Rule(StoreUnavailable, "Redis did not answer in time"),
    f"{_R}BusyLoadingError": Rule(StoreUnavailable, "Redis is loading its data set"),
    f"{_R}MaxConnectionsError": Rule(StoreUnavailable, "no free Redis connection in the pool"),
    f"{_R}ExternalAuthProviderError": Rule(StoreUnavailable, "Redis's auth service failed"),
    f"{_R}AuthenticationError": _REDIS_PASSWORD,
    f"{_R}AuthenticationWrongNumberOfArgsError": Rule(
        ConfigError, hint="check the user and password in FEATREC_REDIS_URL"
    ),
    f"{_R}ResponseError": Rule(StoreError),
    f"{_R}NoPermissionError": Rule(
        ConfigError, hint="the Redis user of FEATREC_REDIS_URL lacks this command or key (ACL)"
    ),
    f"{_R}ReadOnlyError": Rule(
        StoreError, hint="FEATREC_REDIS_URL must name the primary, not a read-only replica"
    ),
    f"{_R}OutOfMemoryError": Rule(
        StoreError, hint="Redis reached maxmemory: raise it or expire keys (key_ttl_seconds)"
    ),
    f"{_R}NoScriptError": Rule(StoreError),
    f"{_R}ExecAbortError": Rule(StoreError),
    f"{_R}ModuleError": Rule(StoreError),
    f"{_R}DataError": Rule(StoreError),
    f"{_R}InvalidResponse": Rule(
        StoreError, hint="does FEATREC_REDIS_URL name a Redis server? (redis:// or rediss://)"
    ),
    # redis-py's cluster client gave up after its retries (a failover under way): retry later
    f"{_R}ClusterError": Rule(StoreUnavailable, "Redis Cluster did not answer"),
    f"{_R}SlotNotCoveredError": Rule(StoreUnavailable, "Redis Cluster has a slot without a node"),
    f"{_R}ClusterDownError": Rule(StoreUnavailable, "Redis Cluster is down"),
    f"{_R}MasterDownError": Rule(StoreUnavailable, "the Redis primary is down"),
    f"{_R}TryAgainError": Rule(StoreUnavailable, "Redis Cluster is resharding"),
    f"{_R}RedisClusterException": Rule(StoreError),
    # -- sqlite3 (refined by result code: SQLITE_CODES) ---------------------------------------
    "sqlite3.Error": Rule(StoreError),
    "sqlite3.DatabaseError": Rule(StoreError),
    "sqlite3.OperationalError": Rule(StoreError),
    "sqlite3.IntegrityError": Rule(StoreError),
    "sqlite3.DataError": Rule(StoreError),
    "sqlite3.InternalError": Rule(StoreError),
    "sqlite3.NotSupportedError": Rule(StoreError),
    "sqlite3.ProgrammingError": Rule(StoreError),
    "sqlite3.InterfaceError": Rule(StoreError),
    # -- the standard library's network errors (sockets under a client) -----------------------
    "builtins.ConnectionError": Rule(StoreUnavailable, "unreachable"),
    "builtins.TimeoutError": Rule(StoreUnavailable, "timed out"),
    # -- Feast --------------------------------------------------------------------------------
    f"{_F}FeastError": Rule(StoreError),
    # a repo object is missing: the repo was not applied (or names another project)
    f"{_F}FeastObjectNotFoundException": _APPLY_FIRST,
    f"{_F}EntityNotFoundException": _APPLY_FIRST,
    f"{_F}FeatureViewNotFoundException": _APPLY_FIRST,
    f"{_F}OnDemandFeatureViewNotFoundException": _APPLY_FIRST,
    f"{_F}FeatureServiceNotFoundException": _APPLY_FIRST,
    f"{_F}DataSourceObjectNotFoundException": _APPLY_FIRST,
    f"{_F}ProjectObjectNotFoundException": _APPLY_FIRST,
    f"{_F}ProjectNotFoundException": _APPLY_FIRST,
    f"{_F}PushSourceNotFoundException": _APPLY_FIRST,
    # the rows or entity frame featrec passed lack what a view needs
    f"{_F}RequestDataNotFoundInEntityDfException": Rule(StoreError),
    f"{_F}RequestDataNotFoundInEntityRowsException": Rule(StoreError),
    f"{_F}FeastEntityDFMissingColumnsError": Rule(StoreError),
    f"{_F}EntityDFNotDateTime": Rule(StoreError),
    f"{_F}EntityTimestampInferenceException": Rule(StoreError),
    f"{_F}InvalidEntityType": Rule(StoreError),
    f"{_F}InvalidFeaturesParameterType": Rule(StoreError),
    f"{_F}FeatureNameCollisionError": Rule(StoreError),
    f"{_F}DataFrameSerializationError": Rule(StoreError),
    f"{_F}DataSourceNotFoundException": Rule(
        StoreError, hint="a view's batch source is missing: apply the feature repo again"
    ),
    # the feature repo's definitions are wrong
    f"{_F}ConflictingFeatureViewNames": _FIX_REPO,
    f"{_F}DataSourceNoNameException": _FIX_REPO,
    f"{_F}DataSourceRepeatNamesException": _FIX_REPO,
    f"{_F}RegistryInferenceFailure": _FIX_REPO,
    f"{_F}FeatureViewMissingDuringFeatureServiceInference": _FIX_REPO,
    f"{_F}SpecifiedFeaturesNotPresentError": _FIX_REPO,
    f"{_F}FeastJoinKeysDuringMaterialization": _FIX_REPO,
    # the repo's yaml names a store, provider or class that does not exist or does not fit
    f"{_F}FeastProviderNotImplementedError": _FIX_YAML,
    f"{_F}FeastRegistryNotSetError": _FIX_YAML,
    f"{_F}FeastRegistryTypeInvalidError": _FIX_YAML,
    f"{_F}FeastFeatureServerTypeInvalidError": _FIX_YAML,
    f"{_F}FeastModuleImportError": _FIX_YAML,
    f"{_F}FeastClassImportError": _FIX_YAML,
    f"{_F}FeastInvalidBaseClass": _FIX_YAML,
    f"{_F}FeastOnlineStoreInvalidName": _FIX_YAML,
    f"{_F}FeastOfflineStoreInvalidName": _FIX_YAML,
    f"{_F}FeastOnlineStoreUnsupportedDataSource": _FIX_YAML,
    f"{_F}FeastOfflineStoreUnsupportedDataSource": _FIX_YAML,
    f"{_F}FeastInvalidAuthConfigClass": _FIX_YAML,
    f"{_F}FeastExtrasDependencyImportError": Rule(
        ConfigError, hint="install the Feast extra the repo's yaml needs"
    ),
    "feast.repo_config.FeastConfigError": _FIX_YAML,
}

#: Library classes deliberately without an entry, and why (see the module docstring).
NOT_LISTED: Final[Mapping[str, str]] = {
    f"{_R}AuthorizationError": "raised only by OCSP stapling checks, which featrec does not "
    "enable; maps as its base ConnectionError",
    f"{_R}AskError": "a Redis Cluster redirection the cluster client follows itself; maps as "
    "ResponseError",
    f"{_R}MovedError": "a Redis Cluster redirection the cluster client follows itself; maps as "
    "ResponseError",
    f"{_R}ClusterCrossSlotError": "featrec sends no command whose keys span slots (a bug if "
    "raised); maps as ResponseError",
    f"{_R}CrossSlotTransactionError": "Redis Cluster only; maps as RedisClusterException",
    f"{_R}InvalidPipelineStack": "Redis Cluster only; maps as RedisClusterException",
    f"{_R}IncorrectPolicyType": "a misuse of redis-py's cluster request policies, a bug: "
    "passes through",
    f"{_R}ChildDeadlockedError": "a client used across fork(), a bug in the caller: passes through",
    f"{_R}PubSubError": "featrec uses no pub/sub; maps as RedisError",
    f"{_R}WatchError": "featrec uses no WATCH; maps as RedisError",
    f"{_R}LockError": "featrec uses no redis-py locks; maps as RedisError",
    f"{_R}LockNotOwnedError": "featrec uses no redis-py locks; maps as RedisError",
    "sqlite3.Warning": "not raised since Python 3.11 (several statements in one execute is a "
    "ProgrammingError): passes through",
    **dict.fromkeys(
        (
            f"{_F}{name}"
            for name in (
                "BigQueryJobCancelled",
                "BigQueryJobStillRunning",
                "RedshiftCredentialsError",
                "RedshiftQueryError",
                "RedshiftTableNameTooLong",
                "SnowflakeCredentialsError",
                "SnowflakeIncompleteConfig",
                "SnowflakeQueryError",
                "SnowflakeQueryUnknownError",
                "S3RegistryBucketForbiddenAccess",
                "S3RegistryBucketNotExist",
                "DockerDaemonNotRunning",
                "FeastProviderLoginError",
                "EntitySQLEmptyResults",
                "ZeroRowsQueryResult",
                "ZeroColumnQueryResult",
            )
        ),
        "a cloud or SQL store featrec does not configure (local provider, file/duckdb offline, "
        "SQLite/Redis online); maps as its base",
    ),
    **dict.fromkeys(
        (
            f"{_F}{name}"
            for name in (
                "FeastPermissionError",
                "PermissionNotFoundException",
                "PermissionObjectNotFoundException",
                "ReadOnlyRegistryException",
                "FeastInvalidInfraObjectType",
            )
        ),
        "Feast's auth, remote registry or infra objects, which featrec does not use; maps as "
        "its base",
    ),
    **dict.fromkeys(
        (
            f"{_F}{name}"
            for name in (
                "FeatureViewVersionNotFound",
                "FeatureViewPinConflict",
                "ConcurrentVersionConflict",
                "VersionedOnlineReadNotSupported",
            )
        ),
        "feature view versioning, which featrec does not enable (its bulk writers refuse it); "
        "maps as its base",
    ),
    **dict.fromkeys(
        (f"{_F}SavedDatasetNotFound", f"{_F}SavedDatasetLocationAlreadyExists"),
        "saved datasets, which featrec does not use; maps as its base",
    ),
    f"{_F}ValidationReferenceNotFound": "data-quality validation references, which featrec "
    "does not use; maps as its base",
}

#: sqlite3 errors by primary result code; wins over the class entry.
SQLITE_CODES: Final[Mapping[int, Rule]] = {
    sqlite3.SQLITE_BUSY: Rule(StoreUnavailable, "the SQLite file is locked by another writer"),
    sqlite3.SQLITE_LOCKED: Rule(StoreUnavailable, "the SQLite file is locked by another writer"),
    sqlite3.SQLITE_READONLY: Rule(
        StoreError, hint="the SQLite file or its directory is not writable by this process"
    ),
    sqlite3.SQLITE_CANTOPEN: Rule(
        StoreError, hint="the SQLite path must be a file in an existing, writable directory"
    ),
    sqlite3.SQLITE_FULL: Rule(StoreError, hint="the disk holding the SQLite file is full"),
    sqlite3.SQLITE_CORRUPT: Rule(StoreError, hint="the SQLite file is damaged"),
    sqlite3.SQLITE_NOTADB: Rule(StoreError, hint="the file is not a SQLite database"),
}


def class_name(cls: type[BaseException]) -> str:
    """The dotted name a class has in :data:`TABLE` (``module.QualifiedName``)."""
    return f"{cls.__module__}.{cls.__qualname__}"


def rule_for(error: BaseException) -> Rule | None:
    """The rule for ``error``: its SQLite result code's, else its nearest listed class's."""
    if isinstance(error, sqlite3.Error):
        code = getattr(error, "sqlite_errorcode", None)  # extended code: primary in low byte
        if isinstance(code, int) and (code & 0xFF) in SQLITE_CODES:
            return SQLITE_CODES[code & 0xFF]
    for cls in type(error).__mro__:
        rule = TABLE.get(class_name(cls))
        if rule is not None:
            return rule
    return None


def translate(error: BaseException, action: str) -> FeatrecError | None:
    """The featrec error for ``error`` (raised while doing ``action``), or None if the table
    does not list it. A featrec error is returned as it is."""
    if isinstance(error, FeatrecError):
        return error
    rule = rule_for(error)
    if rule is None:
        return None
    parts = [action, rule.summary, f"{type(error).__name__}: {_first_line(error)}"]
    message = ": ".join(part for part in parts if part)
    if rule.hint:
        message = f"{message} ({rule.hint})"
    return rule.becomes(redact(message))


class translated(ContextDecorator):  # lower case, like contextlib.suppress
    """Re-raise the library exceptions of :data:`TABLE` as featrec errors (``action`` says what
    was being done), chained to the original. A context manager, or a decorator."""

    def __init__(self, action: str) -> None:
        self.action = action

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None or isinstance(exc, FeatrecError) or not isinstance(exc, Exception):
            return
        featrec_error = translate(exc, self.action)
        if featrec_error is not None:
            raise featrec_error from exc


_URL: Final = re.compile(r"\b(?:rediss?|unix)://[^\s'\",]+")
_SECRET: Final = re.compile(r"\b(password|passwd|pwd)=(\"[^\"]*\"|[^\s,&'\")]+)", re.IGNORECASE)


def redact(text: str) -> str:
    """``text`` without secrets: passwords in Redis URLs (:func:`~featrec.settings.redact_url`)
    and ``password=...`` pairs (Feast connection strings, URL queries) become ``***``."""
    text = _URL.sub(lambda m: redact_url(m.group()), text)
    return _SECRET.sub(r"\1=***", text)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
