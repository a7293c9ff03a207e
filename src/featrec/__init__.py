"""featrec: real-time recommendations from streaming session features and batch features.

Layers (dependencies point one way, enforced by import-linter):

- ``featrec.core``      pure logic: events, session features, item signals, ranking, metrics.
- ``featrec.app``       use cases that talk to ports (Protocols) defined in ``featrec.core.ports``.
- ``featrec.adapters``  Feast, Redis and file implementations of those ports.
- ``featrec.cli``       the click entry point; builds settings once and passes them down.

Bytewax wiring lives outside this package, in the top-level ``dataflows`` package.
"""

__version__ = "0.1.0"
