"""Bytewax wiring: the only package that imports bytewax.

- :mod:`dataflows.sessions`  the sessions dataflow (decode -> fold per session -> write) and the
  ``flow()`` factory for ``python -m bytewax.run "dataflows.sessions:flow()"``.
- :mod:`dataflows.sources`   file replay and Redis Streams sources (resumable, never blocking).
- :mod:`dataflows.sinks`     feature writer, dead-letter and event-log sinks.
- :mod:`dataflows.batching`  a micro-batcher whose deadline is armed by a batch's first item.
- :mod:`dataflows.metrics`   Prometheus metrics (served by bytewax's API server when enabled).

The logic lives in :mod:`featrec.core`; these modules only call it.
"""
