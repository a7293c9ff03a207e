"""The Feast repo as featrec uses it: config from ``feature_repo/``, the store, ``apply``.

``feature_repo/`` stays a stock Feast repo (``feast -c feature_repo apply`` works on it); this
module reads it the way Feast does, with two additions: the Redis connection string is derived
from :class:`~featrec.settings.Settings` (so the secret never touches disk), and Feast, Redis and
SQLite errors are translated into :mod:`featrec.errors` by :mod:`featrec.adapters.errors`.

``import feast`` costs seconds, so Feast is imported inside the functions that need it.
"""

from __future__ import annotations

import json
import os
import re
import sys
import traceback
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, unquote, urlsplit

from featrec.adapters.errors import translated
from featrec.adapters.files.snapshots import EMPTY_SNAPSHOT
from featrec.core.features import catalog
from featrec.errors import ConfigError, FeatrecError
from featrec.settings import redact_url

if TYPE_CHECKING:
    from feast import FeatureStore, RepoConfig

    from featrec.settings import Settings

#: Environment variable that ``feature_store.redis.yaml`` reads its connection string from.
REDIS_ENV = "FEATREC_FEAST_REDIS"
SQLITE_YAML = "feature_store.yaml"
REDIS_YAML = "feature_store.redis.yaml"

_VAR = re.compile(r"\$\{(\w+)\}|\$(\w+)")


def feast_redis_connection(url: str) -> str:
    """Feast's Redis connection string for a redis-py URL.

    ``redis://[[user]:password@]host[:port][/db][?opt=v]`` becomes
    ``host:port,db=N[,username=..][,password=..][,opt=v]``; ``rediss://`` adds ``ssl=true``;
    ``unix:///path.sock?db=N`` becomes ``localhost:6379,unix_socket_path=/path.sock,db=N``.
    Credentials are JSON-quoted, because Feast JSON-decodes every parameter value.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise ConfigError(
            f"Redis URL must start with redis://, rediss:// or unix://, got {redact_url(url)!r}"
        )
    options = dict(parse_qsl(parts.query))
    params: list[tuple[str, str]] = []
    if parts.scheme == "unix":
        if not parts.path:
            raise ConfigError(f"unix Redis URL has no socket path: {redact_url(url)!r}")
        node = "localhost:6379"
        params.append(("unix_socket_path", parts.path))
        db = options.pop("db", "0")
    else:
        host = parts.hostname or "localhost"
        if ":" in host:
            raise ConfigError(
                f"Feast's Redis connection string cannot hold an IPv6 address ({host}): "
                "use a host name in FEATREC_REDIS_URL"
            )
        try:
            port = parts.port or 6379
        except ValueError:
            raise ConfigError(f"Redis URL has an invalid port: {redact_url(url)!r}") from None
        node = f"{host}:{port}"
        db = parts.path.lstrip("/") or options.pop("db", "0")
        options.pop("db", None)
    if not db.isdigit():
        raise ConfigError(f"Redis database must be a number, got {db!r} in the Redis URL")
    params.append(("db", db))
    if parts.username:
        params.append(("username", json.dumps(unquote(parts.username))))
    if parts.password:
        params.append(("password", json.dumps(unquote(parts.password))))
    if parts.scheme == "rediss":
        params.append(("ssl", "true"))
    params.extend(options.items())
    for key, value in params:
        if "," in value or "," in key:
            raise ConfigError(
                f"Feast's Redis connection string cannot carry a comma (in {key!r}): "
                "change that part of FEATREC_REDIS_URL"
            )
    return ",".join([node, *(f"{key}={value}" for key, value in params)])


def feast_cluster_connection(nodes: str, url: str) -> str:
    """Feast's connection string for a Redis Cluster: the seed ``nodes``, then the options of
    the redis-py ``url`` (password, TLS) as :func:`feast_redis_connection` spells them, without
    ``db`` (a cluster has only database 0)."""
    options = feast_redis_connection(url).split(",")[1:]
    return ",".join(
        [*(n.strip() for n in nodes.split(",")), *(o for o in options if not o.startswith("db="))]
    )


def yaml_path(settings: Settings) -> Path:
    """The repo's config file for the configured online store."""
    name = REDIS_YAML if settings.online_store == "redis" else SQLITE_YAML
    return settings.repo.resolve() / name


def config_environment(settings: Settings) -> dict[str, str]:
    """Variables the repo's yaml may reference: the environment plus the derived Redis string."""
    env = dict(os.environ)
    if settings.online_store == "redis":
        if settings.redis_cluster_nodes:
            env[REDIS_ENV] = feast_cluster_connection(
                settings.redis_cluster_nodes, settings.redis_url
            )
        else:
            env[REDIS_ENV] = feast_redis_connection(settings.redis_url)
    return env


def expand_variables(text: str, env: Mapping[str, str], source: Path) -> str:
    """``${VAR}``/``$VAR`` substitution like Feast's ``os.path.expandvars``, but from ``env``.

    A reference to an unset variable is an error rather than a literal ``${VAR}``.
    """

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in env:
            raise ConfigError(f"{source} uses ${{{name}}}, which is not set in the environment")
        return env[name]

    return _VAR.sub(substitute, text)


def read_repo_yaml(settings: Settings) -> dict[str, Any]:
    """The repo's yaml for ``settings.online_store``, variables substituted (no Feast import)."""
    import yaml

    path = yaml_path(settings)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"no {path.name} in {path.parent}: set FEATREC_REPO to the Feast feature repo"
        ) from None
    try:
        raw = yaml.safe_load(expand_variables(text, config_environment(settings), path))
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {_first_line(e)}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} is not a YAML mapping")
    online = raw.get("online_store")
    if settings.online_store == "redis" and isinstance(online, dict):
        _set_redis_type(online, settings, path)
    return raw


def _set_redis_type(online: dict[str, Any], settings: Settings, path: Path) -> None:
    """``redis_type`` from the settings when the yaml leaves it out (the shipped yaml does);
    one the yaml states must agree with ``FEATREC_REDIS_CLUSTER_NODES``."""
    wanted = "redis_cluster" if settings.redis_cluster_nodes else "redis"
    stated = online.get("redis_type")
    if stated is None:
        online["redis_type"] = wanted
    elif stated != wanted and "redis_sentinel" not in (stated, wanted):
        hint = (
            "set FEATREC_REDIS_CLUSTER_NODES to the cluster's nodes"
            if stated == "redis_cluster"
            else "remove redis_type from the yaml (featrec derives it) or unset "
            "FEATREC_REDIS_CLUSTER_NODES"
        )
        raise ConfigError(f"{path} says redis_type: {stated}, the settings {wanted}: {hint}")


def redis_layout_options(settings: Settings) -> tuple[str, int | None]:
    """``(project, key_ttl_seconds)`` for writing Feast's Redis layout directly.

    Read from ``feature_store.redis.yaml`` without importing Feast. Refuses configurations the
    direct layout cannot serve: another entity key serialization, Redis Cluster or Sentinel,
    or a connection string that points elsewhere than ``settings.redis_url``.
    """
    raw = read_repo_yaml(settings)
    path = yaml_path(settings)
    project = raw.get("project")
    if not isinstance(project, str) or not project:
        raise ConfigError(f"{path} has no project name")
    if raw.get("entity_key_serialization_version") != 3:
        raise ConfigError(f"{path}: the fast writer needs entity_key_serialization_version: 3")
    online = raw.get("online_store")
    if not isinstance(online, dict) or online.get("type") != "redis":
        raise ConfigError(f"{path}: online_store.type must be redis")
    if online.get("redis_type", "redis") not in ("redis", "redis_cluster"):
        raise ConfigError(
            f"{path}: the fast writer supports a single Redis server or a Redis Cluster, not "
            f"{online['redis_type']}: set FEATREC_WRITER=feast"
        )
    configured = str(online.get("connection_string", "localhost:6379"))
    if settings.redis_cluster_nodes:
        expected = feast_cluster_connection(settings.redis_cluster_nodes, settings.redis_url)
        if _cluster_nodes(configured) != _cluster_nodes(expected):
            raise ConfigError(
                f"{path} connects to the cluster nodes {sorted(_cluster_nodes(configured))} "
                f"but FEATREC_REDIS_CLUSTER_NODES is {sorted(_cluster_nodes(expected))}: the "
                "fast writer and Feast must use the same cluster"
            )
    elif _node_and_db(configured) != _node_and_db(
        expected := feast_redis_connection(settings.redis_url)
    ):
        raise ConfigError(
            f"{path} connects to {_node_and_db(configured)} but FEATREC_REDIS_URL is "
            f"{_node_and_db(expected)}: the fast writer and Feast must use the same server"
        )
    ttl = online.get("key_ttl_seconds")
    if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, int) or ttl < 0):
        raise ConfigError(f"{path}: key_ttl_seconds must be a non-negative int, got {ttl!r}")
    return project, ttl or None


def import_feast_unchecked() -> None:
    """Import Feast (and its SQLite online store) without typeguard's run-time type checks.

    Feast decorates its classes with ``typeguard.typechecked``, which re-parses and recompiles
    each decorated function at import: about 2 of the ~3 s ``import feast`` takes. The checks
    only raise on arguments of the wrong type; featrec's tests run with them on. A process that
    pays that import on its critical path (the replay of ``featrec evaluate``, whose start-up
    is part of its events/s) calls this first: while Feast is imported, ``typechecked`` returns
    what it decorates; it is restored afterwards, so nothing imported later is affected. A
    no-op when Feast is already imported.
    """
    if "feast" in sys.modules:
        return
    import typeguard

    checked = typeguard.typechecked
    typeguard.typechecked = _unchecked
    try:
        import feast
        import feast.infra.online_stores.sqlite  # noqa: F401
    finally:
        typeguard.typechecked = checked


def _unchecked(target: Any = None, **_: Any) -> Any:
    """``typechecked`` that checks nothing (see :func:`import_feast_unchecked`)."""
    return (lambda t: t) if target is None else target


def load_repo_config(settings: Settings) -> RepoConfig:
    """The Feast ``RepoConfig`` of ``settings.repo`` for ``settings.online_store``.

    Relative paths in the yaml resolve against the repo directory, as in stock Feast.
    """
    from feast import RepoConfig
    from pydantic import ValidationError

    path = yaml_path(settings)
    raw = read_repo_yaml(settings)
    try:
        with translated(f"{path} is invalid"):
            config = RepoConfig(**raw)
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors()
        )
        raise ConfigError(f"{path} is invalid: {problems}") from None
    except ValueError as e:
        raise ConfigError(f"{path} is invalid: {_first_line(e)}") from None
    config.repo_path = path.parent
    return config


def open_store(settings: Settings) -> FeatureStore:
    """A Feast ``FeatureStore`` on ``settings.repo`` (not applied: see :func:`apply_repo`)."""
    from feast import FeatureStore

    config = load_repo_config(settings)
    with translated("opening the Feast store"):
        return FeatureStore(repo_path=str(config.repo_path), config=config)


def apply_repo(settings: Settings) -> list[str]:
    """``feast apply`` for ``settings.repo``; returns one line per object applied or deleted.

    Also creates ``<repo>/data/`` and, for catalog views whose Parquet batch source is missing,
    an empty file with the view's schema (Feast warns at apply and fails historical retrieval
    without it).
    """
    from feast import Project
    from feast.infra.offline_stores.file_source import FileSource
    from feast.repo_operations import extract_objects_for_apply_delete, parse_repo

    store = open_store(settings)
    repo = Path(store.repo_path)
    (repo / "data").mkdir(parents=True, exist_ok=True)
    contents = _parse_repo(repo, parse_repo)
    _prepare_declared(repo, contents.stream_feature_views)
    for view in contents.feature_views:
        source = view.batch_source
        if isinstance(source, FileSource) and view.name in catalog.VIEWS:
            path = Path(FileSource.get_uri_for_file_path(repo, source.path))
            if view.name in catalog.BATCH_VIEWS:  # a directory of daily snapshots
                path = path / EMPTY_SNAPSHOT
            if not path.exists():
                _write_empty_parquet(path, catalog.VIEWS[view.name])
    project = store.config.project
    if not contents.projects:
        # As `feast apply` does: a repo without a Project object uses the yaml's project.
        contents.projects.append(Project(name=project))
    with translated("applying the feature repo"):
        to_apply, to_delete, _, _ = extract_objects_for_apply_delete(
            project, store.registry, contents
        )
        store.apply(to_apply, objects_to_delete=to_delete, partial=False)
    # Feast adds a dummy entity for entity-less views to every parsed repo.
    to_apply = [o for o in to_apply if not o.name.startswith("__")]
    applied = sorted(f"applied {_kind(o)} {o.name}" for o in to_apply)
    deleted = sorted(f"deleted {_kind(o)} {o.name}" for o in to_delete)
    return applied + deleted


def _prepare_declared(repo: Path, views: list[Any]) -> None:
    """Validate the declared views (a bad one fails the apply, naming it) and give each an
    empty offline history file if it has none (historical retrieval fails without one)."""
    from feast.infra.offline_stores.file_source import FileSource

    from featrec.adapters.feast.declared import declarations_in

    by_name = {v.name: v for v in views}
    for decl in declarations_in(views):
        source = by_name[decl.name].batch_source
        if isinstance(source, FileSource):
            path = Path(FileSource.get_uri_for_file_path(repo, source.path))
            if not path.exists():
                _write_empty_parquet(path, decl.view())


def _parse_repo(repo: Path, parse_repo: Any) -> Any:
    """Feast's ``parse_repo`` needs the repo as cwd and on ``sys.path``; undo both afterwards
    and forget the repo's modules, so another repo with the same file names parses afresh."""
    cwd = Path.cwd()
    before = set(sys.modules)
    sys.path.insert(0, str(repo))
    os.chdir(repo)
    try:
        return parse_repo(repo)
    except FeatrecError:
        raise
    except Exception as e:
        raise ConfigError(
            f"feature repo {_where(e, repo)} failed to load: {type(e).__name__}: {e}"
        ) from e
    finally:
        os.chdir(cwd)
        sys.path.remove(str(repo))
        for name in set(sys.modules) - before:
            module_file = getattr(sys.modules[name], "__file__", None) or ""
            if module_file.startswith(str(repo)):
                del sys.modules[name]


def _where(error: Exception, repo: Path) -> str:
    """The repo file and line an import error comes from (the repo itself if unknown)."""
    if isinstance(error, SyntaxError) and error.filename:
        return f"{error.filename}:{error.lineno}"
    frames = [
        f for f in traceback.extract_tb(error.__traceback__) if f.filename.startswith(str(repo))
    ]
    return f"{frames[-1].filename}:{frames[-1].lineno}" if frames else str(repo)


def _write_empty_parquet(path: Path, view: catalog.View) -> None:
    import pyarrow.parquet as pq

    from featrec.adapters.feast.types import arrow_schema

    schema = arrow_schema(view)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(schema.empty_table(), path)


def _kind(obj: object) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", " ", type(obj).__name__).lower()


def _cluster_nodes(connection_string: str) -> set[str]:
    return {p.strip() for p in connection_string.split(",") if "=" not in p}


def _node_and_db(connection_string: str) -> str:
    parts = connection_string.split(",")
    db = next((p.split("=", 1)[1] for p in parts if p.startswith("db=")), "0")
    socket = next((p.split("=", 1)[1] for p in parts if p.startswith("unix_socket_path=")), None)
    return f"{socket or parts[0]}/{db}"


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
