"""The factory uvicorn imports: ``uvicorn --factory featrec.server.main:app_from_env``.

Settings come from ``FEATREC_*``, serving options and limits from ``FEATREC_SERVE_*`` (written
by ``featrec serve``; both read once here, see :mod:`featrec.settings`), so any uvicorn or
gunicorn setup can start the same app. The admin endpoints are enabled by
``FEATREC_ADMIN_TOKEN`` (a secret: only ever from the environment).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from functools import partial
from typing import Final

from fastapi import FastAPI

from featrec.adapters.files.deny_list import DenyWatcher
from featrec.adapters.redis.deny_list import stores_for
from featrec.app.serving.http_limits import HttpLimits
from featrec.jobs.serving import open_recommender, options_from_settings, settle_heap
from featrec.server.http_api import create_app
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
    )
    settle_heap()
    return app


def forget_user(settings: Settings, deny: DenyWatcher, user_id: str) -> Mapping[str, object]:
    """:func:`featrec.jobs.forget.forget_user`, imported on first use (it opens Feast)."""
    from featrec.jobs.forget import forget_user as forget

    report: Mapping[str, object] = forget(settings, user_id).to_dict()
    deny.refresh()
    return report
