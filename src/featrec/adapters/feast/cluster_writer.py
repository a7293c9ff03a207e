"""The dataflows' Redis writer on a Redis Cluster: :class:`FlushWriter`'s commands, per node.

Each flush builds exactly the commands :class:`~featrec.adapters.feast.flush_writer.FlushWriter`
builds (Feast's layout, the compare-and-set script for a row not known, plain ``HSET`` for a
remembered one); :class:`~featrec.adapters.redis.cluster.NodeChannels` sends every master its
share in one write and reads all replies, so a flush costs one round trip whatever the number of
nodes. Every command names one key (one Feast hash per entity), so none spans slots.

- **Redirections.** A ``MOVED``/``ASK``/``TRYAGAIN``/``CLUSTERDOWN`` reply (a slot moved, a
  resharding, a failover) is sent again through redis-py, which follows redirections with
  back-off, and the slot map is rebuilt before the next flush.
- **Failover.** A connection error drops every channel and everything remembered, and raises
  ``StoreUnavailable``: the flow's sink retries the flush with back-off, on the new slot map.
  Every row is guarded by its version, so a flush sent twice changes nothing.
- **Nothing lost.** Redis replicates asynchronously: a row a master acknowledged can vanish if
  the master dies before its replica has it. With ``wait_replicas=N`` (setting
  ``FEATREC_REDIS_CLUSTER_WAIT_REPLICAS``) each node's share ends with ``WAIT N timeout`` in the
  same write, and a flush that fewer replicas acknowledged is retried: an acknowledged row is
  then on a replica that a failover promotes.
- **Scripts.** The script cache is per node (and empty on a promoted replica): the script is
  loaded on every new channel, and a ``NOSCRIPT`` reply loads it there and resends.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import hiredis
import redis
from redis.cluster import RedisCluster

from featrec.adapters.feast.flush_writer import MAX_KNOWN, FlushWriter, _is_noscript, _pack
from featrec.adapters.feast.writers import _CAS_SCRIPT, Views
from featrec.adapters.redis.cluster import NodeChannels, is_redirect
from featrec.core.features import catalog

__all__ = ["ClusterFlushWriter"]

#: How long one node waits for its replicas' acknowledgement (``WAIT``), in ms.
WAIT_TIMEOUT_MS = 2000


class ClusterFlushWriter(FlushWriter):
    """:class:`FlushWriter` on a Redis Cluster (see the module docstring)."""

    def __init__(
        self,
        client: RedisCluster[bytes],
        project: str,
        *,
        key_ttl_seconds: int | None = None,
        views: Views = catalog.VIEWS,
        remember: bool = False,
        max_known: int = MAX_KNOWN,
        owns_client: bool = False,
        wait_replicas: int = 0,
        wait_timeout_ms: int = WAIT_TIMEOUT_MS,
    ) -> None:
        super().__init__(
            client,  # type: ignore[arg-type]  # the base only keeps it and closes it
            project,
            key_ttl_seconds=key_ttl_seconds,
            views=views,
            remember=remember,
            max_known=max_known,
            owns_client=owns_client,
        )
        self._channels = NodeChannels(client, on_connect=self._load_script_on)
        self._wait = wait_replicas
        self._wait_ms = wait_timeout_ms
        self._wait_command = (
            _pack(("WAIT", wait_replicas, wait_timeout_ms)) if wait_replicas else b""
        )

    def _load_script_on(self, node: str, call: Callable[[bytes, int], list[Any]]) -> None:
        [sha] = call(_pack(("SCRIPT", "LOAD", _CAS_SCRIPT)), 1)
        if isinstance(sha, hiredis.ReplyError):
            raise redis.exceptions.ResponseError(f"{node}: {sha}")

    def _send(self, parts: list[bytes], keys: list[bytes]) -> list[Any]:
        try:
            return self._send_per_node(parts, keys)
        except BaseException:
            # What the nodes hold is unknown (a node may have failed over): guard every row.
            self._forget_known()
            raise

    def _send_per_node(self, parts: list[bytes], keys: list[bytes]) -> list[Any]:
        channels = self._channels
        by_node = channels.split(keys)
        wait = self._wait_command
        payloads = {
            node: (b"".join([parts[i] for i in idx]) + wait, len(idx) + (1 if wait else 0))
            for node, idx in by_node.items()
        }
        got = channels.exchange(payloads)
        replies: list[Any] = [None] * len(parts)
        for node, idx in by_node.items():
            node_replies = got[node]
            if wait:
                self._check_acknowledged(node, node_replies.pop())
            no_script = []
            for i, reply in zip(idx, node_replies, strict=True):
                replies[i] = reply
                if _is_noscript(reply):
                    no_script.append(i)
            if no_script:
                # A promoted replica or a restarted node has no script cache: load it there
                # and send those calls again (guarded: repeating them is safe).
                load = _pack(("SCRIPT", "LOAD", _CAS_SCRIPT))
                again = channels.call(
                    node, load + b"".join([parts[i] for i in no_script]) + wait,
                    1 + len(no_script) + (1 if wait else 0),
                )  # fmt: skip
                if wait:
                    self._check_acknowledged(node, again.pop())
                for i, reply in zip(no_script, again[1:], strict=True):
                    replies[i] = reply
        redirected = [i for i, reply in enumerate(replies) if is_redirect(reply)]
        for i in redirected:
            replies[i] = channels.slow(parts[i], _eval_instead)
        if redirected and self._wait:
            for key in {keys[i] for i in redirected}:
                node = self._client.get_node_from_key(key)
                acked = self._client.execute_command(
                    "WAIT", self._wait, self._wait_ms, target_nodes=node
                )
                self._check_acknowledged(node.name, acked)
        return replies

    def _check_acknowledged(self, node: str, acked: object) -> None:
        if isinstance(acked, hiredis.ReplyError):
            raise redis.exceptions.ResponseError(f"WAIT on {node}: {acked}")
        if int(acked) < self._wait:  # type: ignore[call-overload]
            raise redis.exceptions.TimeoutError(
                f"{acked} of {self._wait} replicas of {node} acknowledged the flush within "
                f"{self._wait_ms} ms (FEATREC_REDIS_CLUSTER_WAIT_REPLICAS)"
            )

    def close(self) -> None:
        self._channels.close()
        super().close()


def _eval_instead(args: list[bytes]) -> list[bytes]:
    """``EVALSHA sha ...`` as ``EVAL script ...``: the node a redirection names may not have
    the script loaded."""
    if args and args[0].upper() == b"EVALSHA":
        return [b"EVAL", _CAS_SCRIPT.encode(), *args[2:]]
    return args
