"""The factory uvicorn imports: ``uvicorn --factory featrec.server.main:app_from_env``.

Settings come from ``FEATREC_*``, serving options from ``FEATREC_SERVE_*`` (written by
``featrec serve``, see :mod:`featrec.jobs.serving` and :mod:`featrec.server.limits`), so
any uvicorn or gunicorn setup can start the same app. The admin endpoints are enabled by
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
from featrec.jobs.serving import open_recommender, options_from_env, settle_heap
from featrec.server.http_api import create_app
from featrec.settings import Settings

ENV_ADMIN_TOKEN: Final = "FEATREC_ADMIN_TOKEN"


def app_from_env() -> FastAPI:
    settings = Settings.from_env(os.environ)
    token = os.environ.get(ENV_ADMIN_TOKEN, "").strip() or None
    # The deny-list, re-checked at most every second (and at once after a forget here).
    deny = DenyWatcher(stores_for(settings))
    app = create_app(
        open_recommender(settings, options_from_env(os.environ)),
        limits=HttpLimits.from_env(os.environ),
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
