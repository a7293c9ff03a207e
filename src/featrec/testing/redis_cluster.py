"""A real, private Redis Cluster for tests: N redis-servers on free loopback ports, joined.

Three masters (or three masters and three replicas) run in the foreground under ``Popen``
(``--daemonize`` leaves zombies on this machine), are joined with ``redis-cli --cluster create``,
and are ready when every node reports ``cluster_state:ok`` (~2 s; ~3.5 s with replicas). Tests
never touch a cluster they did not start. A missing ``redis-server`` or ``redis-cli`` is an
error, not a skip: CI installs them (see ``.ci/run``).

``kill_master_with_replica()`` sends SIGKILL to a master that has a replica, so a test can watch
the cluster fail over (``--cluster-node-timeout`` is short, 2 s, to keep that quick).
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import redis
from redis.cluster import ClusterNode, RedisCluster
from redis.crc import key_slot

NODE_TIMEOUT_MS = 2000
BUS_OFFSET = 10000  # a node's cluster bus listens on its port + 10000


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_cluster_port(taken: set[int]) -> int:
    """A loopback port P with P and its bus port P + 10000 both free (so P <= 55535)."""
    rng = random.SystemRandom()
    for _ in range(1000):
        port = rng.randrange(20000, 55535)
        if {port, port + BUS_OFFSET} & taken:
            continue
        if _port_free(port) and _port_free(port + BUS_OFFSET):
            return port
    raise RuntimeError("no free loopback port pair (P, P + 10000) for a Redis Cluster node")


def _binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(
            f"{name} is not installed: `apt-get install -y redis-server redis-tools` "
            "(tests start their own Redis Cluster and never use a shared one)"
        )
    return path


@dataclass
class ClusterNodeProcess:
    """One ``redis-server --cluster-enabled yes`` process and its private directory."""

    port: int
    workdir: Path
    proc: subprocess.Popen[bytes] | None = None

    def client(self) -> redis.Redis[bytes]:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class RedisClusterServers:
    """A private Redis Cluster: ``masters`` masters, each with ``replicas`` replicas."""

    workdir: Path
    masters: int = 3
    replicas: int = 0
    nodes: list[ClusterNodeProcess] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.masters < 3:
            raise ValueError("a Redis Cluster needs at least 3 masters")
        self.server_binary = _binary("redis-server")
        self.cli_binary = _binary("redis-cli")

    @property
    def ports(self) -> list[int]:
        return [n.port for n in self.nodes]

    @property
    def connection_string(self) -> str:
        """The node list as Feast's ``connection_string`` and featrec's settings spell it."""
        return ",".join(f"127.0.0.1:{p}" for p in self.ports)

    @property
    def url(self) -> str:
        """A ``redis://`` URL of one node (redis-py's ``RedisCluster.from_url`` discovers the
        rest); featrec's cluster settings take :attr:`connection_string`."""
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    def client(self) -> RedisCluster[bytes]:
        return RedisCluster(
            startup_nodes=[ClusterNode("127.0.0.1", p) for p in self.ports if self._alive(p)]
        )

    def _alive(self, port: int) -> bool:
        return any(n.port == port and n.alive for n in self.nodes)

    def start(self) -> None:
        count = self.masters * (1 + self.replicas)
        taken: set[int] = set()
        for _ in range(count):
            port = free_cluster_port(taken)
            taken |= {port, port + BUS_OFFSET}
            node_dir = self.workdir / f"node-{port}"
            node_dir.mkdir(parents=True, exist_ok=True)
            node = ClusterNodeProcess(port=port, workdir=node_dir)
            self.nodes.append(node)
            self._spawn(node)
        try:
            for node in self.nodes:
                self._wait_ping(node)
            self._create()
            self.wait_ok(timeout_s=30)
            if self.replicas:
                self._wait_replicas_online(timeout_s=30)
        except BaseException:
            self.stop()
            raise

    def _spawn(self, node: ClusterNodeProcess) -> None:
        args = [
            self.server_binary,
            "--port",
            str(node.port),
            "--bind",
            "127.0.0.1",
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            str(node.workdir / "nodes.conf"),
            "--cluster-node-timeout",
            str(NODE_TIMEOUT_MS),
            "--save",
            "",
            "--appendonly",
            "no",
            # A replica syncs at once (the default waits 5 s to batch diskless syncs).
            "--repl-diskless-sync-delay",
            "0",
            "--dir",
            str(node.workdir),
            "--logfile",
            str(node.workdir / "redis.log"),
        ]
        node.proc = subprocess.Popen(args)  # stopped with SIGTERM (SIGINT may be ignored)

    def _wait_ping(self, node: ClusterNodeProcess, timeout_s: float = 10) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if node.proc is not None and node.proc.poll() is not None:
                break
            try:
                if node.client().ping():
                    return
            except redis.exceptions.ConnectionError:
                time.sleep(0.02)
        raise RuntimeError(
            f"redis-server (cluster node) did not start on port {node.port}; "
            f"see {node.workdir / 'redis.log'}"
        )

    def _create(self) -> None:
        args = [self.cli_binary, "--cluster", "create"]
        args += [f"127.0.0.1:{n.port}" for n in self.nodes]
        args += ["--cluster-replicas", str(self.replicas), "--cluster-yes"]
        done = subprocess.run(args, capture_output=True, timeout=60, check=False)
        if done.returncode != 0:
            raise RuntimeError(
                "redis-cli --cluster create failed: "
                + (done.stdout + done.stderr).decode(errors="replace")[-2000:]
            )

    def wait_ok(self, timeout_s: float = 30) -> None:
        """Wait until every live node reports ``cluster_state:ok`` and sees every slot."""
        deadline = time.monotonic() + timeout_s
        last = ""
        while time.monotonic() < deadline:
            states = []
            for node in self.nodes:
                if not node.alive:
                    continue
                try:
                    info = node.client().cluster("info")  # parsed into a dict by redis-py
                except redis.exceptions.RedisError as e:
                    states.append(f"{node.port}: {e}")
                    continue
                state, slots_ok = info.get("cluster_state"), info.get("cluster_slots_ok")
                if state == "ok" and str(slots_ok) == "16384":
                    states.append("ok")
                else:
                    states.append(f"{node.port}: state {state}, slots ok {slots_ok}")
            if states and all(s == "ok" for s in states):
                return
            last = "; ".join(s for s in states if s != "ok")
            time.sleep(0.1)
        raise RuntimeError(f"Redis Cluster not ready after {timeout_s} s: {last}")

    def wait_replicas_online(self, timeout_s: float = 30) -> None:
        """Wait until every master has its replicas attached and in sync (``state=online``)."""
        self._wait_replicas_online(timeout_s)

    def _wait_replicas_online(self, timeout_s: float) -> None:
        """Wait until every master has its replicas attached and in sync (``state=online``)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            online = 0
            for node in self.nodes:
                info = node.client().info("replication")
                if info.get("role") != "master":
                    continue
                links = [info.get(f"slave{i}", {}) for i in range(self.replicas)]
                online += sum(1 for link in links if link.get("state") == "online")
            if online == self.masters * self.replicas:
                return
            time.sleep(0.1)
        raise RuntimeError(f"Redis Cluster replicas not in sync after {timeout_s} s")

    def masters_now(self) -> list[ClusterNodeProcess]:
        """The live nodes that are masters at this moment."""
        return [
            n for n in self.nodes if n.alive and n.client().info("replication")["role"] == "master"
        ]

    def owner_of(self, key: bytes) -> ClusterNodeProcess:
        """The master that serves ``key``'s slot now."""
        slot = key_slot(key)
        live = next(n for n in self.nodes if n.alive)
        for start, end, master, *_ in live.client().cluster("slots"):
            if start <= slot <= end:
                return next(n for n in self.nodes if n.port == int(master[1]))
        raise RuntimeError(f"slot {slot} has no master")

    def move_slot_of(self, key: bytes, target: ClusterNodeProcess) -> None:
        """Migrate ``key``'s slot, with its keys, to the master ``target`` (as a resharding
        does), so clients with the old slot map get ``MOVED``."""
        slot = key_slot(key)
        source = self.owner_of(key)
        if source.port == target.port:
            raise ValueError("the slot is already on that node")
        src, dst = source.client(), target.client()
        src_id, dst_id = src.execute_command("CLUSTER MYID"), dst.execute_command("CLUSTER MYID")
        dst.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", src_id)
        src.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", dst_id)
        while keys := src.execute_command("CLUSTER GETKEYSINSLOT", slot, 100):
            src.execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *keys)
        for node in self.masters_now():
            node.client().execute_command("CLUSTER SETSLOT", slot, "NODE", dst_id)

    def master_with_replica(self) -> ClusterNodeProcess:
        """A live master that has at least one live replica (needs ``replicas >= 1``)."""
        for node in self.nodes:
            if not node.alive:
                continue
            info = node.client().info("replication")
            if info.get("role") == "master" and int(info.get("connected_slaves", 0)) > 0:
                return node
        raise RuntimeError("no master with a connected replica (start with replicas=1)")

    def kill_master_with_replica(self) -> ClusterNodeProcess:
        """SIGKILL a master that has a replica; its replica takes over after the node timeout."""
        node = self.master_with_replica()
        assert node.proc is not None
        os.kill(node.proc.pid, signal.SIGKILL)
        node.proc.wait(timeout=10)
        return node

    def restart(self, node: ClusterNodeProcess) -> None:
        """Start a stopped node again on its port with its ``nodes.conf``: a killed master
        rejoins as a replica of the node that took its slots."""
        if node.alive:
            raise ValueError(f"node {node.port} is running")
        self._spawn(node)
        self._wait_ping(node)

    def wait_failover(self, killed: ClusterNodeProcess, timeout_s: float = 30) -> None:
        """Wait until the killed master's slots are served again (its replica promoted)."""
        self.wait_ok(timeout_s=timeout_s)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            live = next(n for n in self.nodes if n.alive)
            slots = live.client().execute_command("CLUSTER SLOTS")
            owners = {int(s[2][1]) for s in slots}
            if killed.port not in owners and sum(s[1] - s[0] + 1 for s in slots) == 16384:
                return
            time.sleep(0.1)
        raise RuntimeError(f"slots of killed master {killed.port} were not taken over")

    def stop(self) -> None:
        for node in self.nodes:
            if node.proc is not None and node.proc.poll() is None:
                node.proc.terminate()
        for node in self.nodes:
            if node.proc is not None:
                try:
                    node.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    node.proc.kill()
                    node.proc.wait(timeout=10)
            node.proc = None

    def flushall(self) -> None:
        """Empty every live master (the cluster is ours alone)."""
        for node in self.nodes:
            if not node.alive:
                continue
            client = node.client()
            if client.info("replication").get("role") == "master":
                client.flushall()


@contextmanager
def running_redis_cluster(
    workdir: Path, masters: int = 3, replicas: int = 0
) -> Iterator[RedisClusterServers]:
    """A private Redis Cluster in ``workdir`` for a ``with`` block; stopped afterwards."""
    cluster = RedisClusterServers(workdir, masters=masters, replicas=replicas)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()
