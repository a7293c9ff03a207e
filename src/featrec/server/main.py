"""The factory uvicorn imports: ``uvicorn --factory featrec.server.main:app_from_env``.

Settings come from ``FEATREC_*``, serving options and limits from ``FEATREC_SERVE_*`` (written
by ``featrec serve``; both read once here, see :mod:`featrec.settings`), so any uvicorn or
gunicorn setup can start the same app. The admin endpoints are enabled by
``FEATREC_ADMIN_TOKEN`` (a secret: only ever from the environment). ``POST /events`` and the
``/shop`` page are always on; the collector appends to the bus ``FEATREC_SERVE_COLLECT_BUS``
names (:func:`open_bus`) and requires ``FEATREC_INGEST_TOKEN`` when it is set.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from functools import partial
from typing import Final

from fastapi import FastAPI

from featrec.adapters.files.deny_list import DenyWatcher
from featrec.adapters.redis.deny_list import stores_for
from featrec.app.collector import Collector, EventBus
from featrec.app.serving.http_limits import HttpLimits
from featrec.app.serving.privacy_gate import DenySource
from featrec.errors import ConfigError
from featrec.jobs.serving import open_recommender, options_from_settings, settle_heap
from featrec.server.collector import Storefront
from featrec.server.http_api import MIN_ADMIN_TOKEN_LENGTH, create_app
from featrec.settings import ServeSettings, Settings

ENV_ADMIN_TOKEN: Final = ServeSettings.variable("admin_token")


def app_from_env() -> FastAPI:
    settings = Settings.from_env(os.environ)
    serve = ServeSettings.from_env(os.environ)
    token = serve.admin_token.get_secret_value() if serve.admin_token is not None else None
    # The deny-list, re-checked at most every second (and at once after a forget here).
    deny = DenyWatcher(stores_for(settings))
    app = create_app(
        open_recommender(settings, options_from_settings(serve)),
        limits=HttpLimits.from_settings(serve),
        forget=partial(forget_user, settings, deny) if token else None,
        admin_token=token,
        deny=deny.current,
        storefront=storefront_from_settings(settings, serve, deny.current),
    )
    settle_heap()
    return app


def open_bus(settings: Settings, serve: ServeSettings) -> EventBus:
    """The collector's bus: the first stream of ``FEATREC_STREAM`` on the bus Redis, the
    Kafka topic ``FEATREC_KAFKA_TOPIC``, or the collector log under ``FEATREC_HOME`` (tailed by
    ``FEATREC_SOURCE=collector`` flows)."""
    bus = settings.collector_bus(serve.collect_bus)
    if bus == "kafka":
        from featrec.adapters.kafka.collector_bus import KafkaBus
        from featrec.adapters.kafka.config import producer_config
        from featrec.settings import KafkaSettings

        kafka = KafkaSettings.from_env(os.environ)
        return KafkaBus(producer_config(kafka), kafka.topic)
    if bus == "redis":
        from featrec.adapters.redis.collector_bus import RedisBus

        stream = settings.stream.split(",")[0].strip()
        return RedisBus(settings.stream_url, stream)
    from featrec.adapters.files.collector_log import CollectorLog

    return CollectorLog(settings.collector_log)


def storefront_from_settings(
    settings: Settings, serve: ServeSettings, deny: DenySource | None = None
) -> Storefront:
    """The collector, its limits and CORS from ``FEATREC_SERVE_COLLECT_*`` and friends."""
    token = serve.ingest_token.get_secret_value() if serve.ingest_token is not None else None
    if token is not None and len(token) < MIN_ADMIN_TOKEN_LENGTH:
        raise ConfigError(
            f"FEATREC_INGEST_TOKEN must have at least {MIN_ADMIN_TOKEN_LENGTH} characters "
            f"(got {len(token)}): generate one, e.g. `openssl rand -hex 32`"
        )
    mapping = None
    if serve.collect_mapping is not None:
        from featrec.core.events.mapping import parse_mapping

        mapping = parse_mapping(serve.collect_mapping, "FEATREC_SERVE_COLLECT_MAPPING")
    return Storefront(
        collector=Collector(open_bus(settings, serve), deny, mapping),
        rate_per_s=serve.collect_rate,
        burst=serve.collect_burst,
        max_events=serve.collect_max_events,
        token=token,
        cors_origins=tuple(serve.cors_origin_list),
    )


def forget_user(settings: Settings, deny: DenyWatcher, user_id: str) -> Mapping[str, object]:
    """:func:`featrec.jobs.forget.forget_user`, imported on first use (it opens Feast)."""
    from featrec.jobs.forget import forget_user as forget

    report: Mapping[str, object] = forget(settings, user_id).to_dict()
    deny.refresh()
    return report
