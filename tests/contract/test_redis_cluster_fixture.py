"""The Redis Cluster fixture forms a real cluster: every slot is served, keys spread over nodes."""

from __future__ import annotations

from featrec.testing.redis_cluster import RedisClusterServers


def test_cluster_serves_every_slot_over_three_masters(redis_cluster: RedisClusterServers) -> None:
    client = redis_cluster.client()
    for i in range(300):
        client.set(f"fixture:{i}", i)
    assert [client.get(f"fixture:{i}") for i in range(300)] == [str(i).encode() for i in range(300)]
    per_node = [n.client().dbsize() for n in redis_cluster.nodes]
    assert len(per_node) == 3 and sum(per_node) == 300
    assert all(count > 0 for count in per_node), per_node
    assert len(redis_cluster.connection_string.split(",")) == 3
