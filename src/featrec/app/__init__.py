"""Application layer: use cases (recommending, evaluating, forgetting) that talk to ports.

It may import ``featrec.core`` only; stores are reached through the Protocols in
``featrec.core.ports.features`` and wired together by the entry points.
"""
