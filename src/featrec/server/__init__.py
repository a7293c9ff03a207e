"""The HTTP entry point: ``featrec serve`` (FastAPI on uvicorn).

:func:`featrec.server.http_api.create_app` builds the app around a recommender (tests pass one
in); :func:`featrec.server.main.app_from_env` is the factory uvicorn imports, building the
recommender from ``FEATREC_*`` variables.
"""
