"""Adapters: the concrete stores and transports behind featrec's ports.

Feast (feature repo, online writers and reader), Redis, SQLite, files. They translate the
errors of the libraries they wrap into :mod:`featrec.errors` at their boundary, through the one
table of :mod:`featrec.adapters.errors`. ``import feast`` costs seconds, so modules import it
lazily where a caller may not need it.
"""
