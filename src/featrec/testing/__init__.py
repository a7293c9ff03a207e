"""Test support that featrec's tests, its benchmarks and its users share (as ``bytewax.testing``).

- :mod:`featrec.testing.redis_server`: a private ``redis-server`` on a free loopback port
  (never a shared one; a missing binary is an error, not a skip).
- :mod:`featrec.testing.redis_cluster`: a private Redis Cluster (3 masters, optionally a
  replica each) on free loopback ports, with a helper that SIGKILLs a master to test failover.
- :mod:`featrec.testing.crash`: the sessions dataflow as a real process, fed over a Redis
  stream, killed with SIGKILL and compared with a clean run.
- :mod:`featrec.testing.shop`: a small known-answer shop (rows whose right recommendations are
  obvious).
- :mod:`featrec.testing.hostile`: hypothesis strategies of hostile input records (needs the
  ``test`` extra).
- :mod:`featrec.testing.feast_repo`: a private copy of the Feast repo.
- :mod:`featrec.testing.wait`: polling with a deadline.
"""
