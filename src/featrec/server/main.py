"""The factory uvicorn imports: ``uvicorn --factory featrec.server.main:app_from_env``.

Settings come from ``FEATREC_*`` and serving options from ``FEATREC_SERVE_*`` (written by
``featrec serve``, see :mod:`featrec.adapters.serving`), so any uvicorn or gunicorn setup can
start the same app.
"""

from __future__ import annotations

import os

from fastapi import FastAPI

from featrec.adapters.serving import open_recommender, options_from_env
from featrec.server.http_api import create_app
from featrec.settings import Settings


def app_from_env() -> FastAPI:
    settings = Settings.from_env(os.environ)
    return create_app(open_recommender(settings, options_from_env(os.environ)))
