"""Adapters: the concrete stores and transports behind featrec's ports.

Feast (feature repo, online writers and reader), Redis, files. They translate the errors of the
libraries they wrap into :mod:`featrec.errors` at their boundary. ``import feast`` costs seconds,
so modules import it lazily where a caller may not need it.
"""
