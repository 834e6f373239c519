"""A real local Redis Cluster: redis-server nodes joined with `redis-cli --cluster create`.

Three masters, one replica each (so a master can fail over), on random free ports, without
persistence. `failover(port)` promotes a master's replica with CLUSTER FAILOVER, as an operator
(or a rolling upgrade) would.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import redis

from tests.support.procs import RedisServer, free_port, wait_for


class ClusterNode(RedisServer):
    def _argv(self) -> list[str]:
        # The bus port is port + 10000 unless named: name a free one (random ports run high).
        self.bus_port = getattr(self, "bus_port", None) or free_port()
        return [
            *super()._argv(),
            "--cluster-enabled",
            "yes",
            "--cluster-port",
            str(self.bus_port),
            "--cluster-config-file",
            f"nodes-{self.port}.conf",
            # Fail-over decisions in seconds, not the default 15 s.
            "--cluster-node-timeout",
            "2000",
        ]


class RedisClusterNodes:
    def __init__(self, work_dir: Path, masters: int = 3, replicas: int = 1) -> None:
        self.work_dir = Path(work_dir)
        self.replicas = replicas
        count = masters * (1 + replicas)
        self.nodes = [ClusterNode(work_dir=self.work_dir / f"node{i}") for i in range(count)]

    @property
    def url(self) -> str:
        """A seed node; the client learns the rest (and follows fail-overs) from it."""
        return self.nodes[0].url

    def client(self, port: int) -> redis.Redis:
        return redis.Redis(port=port, socket_timeout=5)

    def start(self, timeout: float = 60.0) -> RedisClusterNodes:
        for node in self.nodes:
            node.start()
        addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
        created = subprocess.run(
            [
                *("redis-cli", "--cluster", "create", *addresses),
                *("--cluster-replicas", str(self.replicas), "--cluster-yes"),
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if created.returncode != 0:
            self.stop()
            raise RuntimeError(f"redis-cli --cluster create failed:\n{created.stdout[-2000:]}")
        wait_for(self.healthy, timeout, "the Redis Cluster to be ok on every node", 0.2)
        return self

    def healthy(self) -> bool:
        for node in self.nodes:
            info = self.client(node.port).cluster("info")
            if info.get("cluster_state") != "ok" or int(info.get("cluster_slots_ok", 0)) != 16384:
                return False
        if len(self.masters()) != len(self.nodes) // (1 + self.replicas):
            return False
        # Replicas that finished their first sync: only they can take over.
        for node in self.nodes:
            role = self.client(node.port).execute_command("ROLE")
            if role[0] in (b"slave", "slave") and role[3] not in (b"connected", "connected"):
                return False
        return True

    def topology(self) -> dict[int, dict[str, str]]:
        """port → {id, role (master/slave), master_id} as the first live node sees it."""
        for node in self.nodes:
            try:
                parsed = self.client(node.port).cluster("nodes")
                break
            except redis.RedisError:
                continue
        out: dict[int, dict[str, str]] = {}
        for address, node_info in parsed.items():
            port = int(address.split("@")[0].rsplit(":", 1)[1])
            role = "master" if "master" in node_info["flags"] else "slave"
            out[port] = {
                "id": node_info["node_id"],
                "role": role,
                "master_id": node_info["master_id"],
            }
        return out

    def masters(self) -> list[int]:
        return sorted(p for p, n in self.topology().items() if n["role"] == "master")

    def replica_of(self, master_port: int) -> int:
        nodes = self.topology()
        master_id = nodes[master_port]["id"]
        return next(p for p, n in nodes.items() if n["master_id"] == master_id)

    def failover(self, master_port: int, timeout: float = 20.0) -> int:
        """Promote `master_port`'s replica (CLUSTER FAILOVER on it); returns the new master."""
        replica = self.replica_of(master_port)
        self.client(replica).execute_command("CLUSTER FAILOVER")

        def promoted() -> bool:
            role = self.client(replica).execute_command("ROLE")
            # Done when the whole topology agrees: the old master may still call itself one
            # for a moment after its replica took over.
            return (
                bool(role[0] in (b"master", "master"))
                and self.healthy()
                and master_port not in self.masters()
            )

        wait_for(promoted, timeout, f"replica {replica} to take over from {master_port}", 0.05)
        return replica

    def keys_per_master(self, pattern: str) -> dict[int, int]:
        return {p: sum(1 for _ in self.client(p).scan_iter(pattern)) for p in self.masters()}

    def flush(self) -> None:
        for port in self.masters():
            self.client(port).flushall()

    def stop(self) -> None:
        for node in self.nodes:
            node.kill()

    def wait_replicated(self, timeout: float = 5.0) -> None:
        """Every master's replica has acknowledged all writes so far (WAIT)."""
        deadline = time.monotonic() + timeout
        for port in self.masters():
            left = max(0.0, deadline - time.monotonic())
            self.client(port).execute_command("WAIT", self.replicas, int(left * 1000))
