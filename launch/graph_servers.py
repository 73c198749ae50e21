"""DistDGL graph servers as Ray actors: one per partition, one partition per node.

    with GraphServers(part_config, num_clients=2) as servers:
        graph = connect_client(servers.client_info)      # in each trainer (a Ray worker)
        ...
        servers.check()                                  # raises GraphServerDied naming the partition

A client's machine id is the first ip_config line that matches one of its interfaces (DistDGL's rule,
one partition per host), so servers sit in a placement group (STRICT_SPREAD when K > 1) and ip_config lists their
node addresses in partition order. DistDGL admits exactly `num_clients` clients (trainers × (1 +
sampler processes)); the servers exit once every client has disconnected. The partition directory
must be readable at the same path on every node (shared filesystem, or copied beforehand).
"""
from __future__ import annotations

import json
import os
import socket
import tempfile
import time
import uuid
from pathlib import Path

import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from gnnrec import JobFailed
from gnnrec import dgl_adapter


class GraphServerDied(JobFailed):
    pass


@ray.remote(num_cpus=1, max_concurrency=2)
class GraphServer:
    """One DistDGL server; `serve` blocks until all clients leave, other methods still answer."""

    def address(self) -> tuple[str, int]:
        with socket.socket() as s:
            s.bind(("", 0))
            return ray.util.get_node_ip_address(), s.getsockname()[1]

    def serve(self, env: dict[str, str], ip_config_text: str) -> str:
        with tempfile.TemporaryDirectory(prefix="gnnrec-server-") as features:
            part_config = dgl_adapter.job_features(env["DGL_CONF_PATH"], int(env["DGL_SERVER_ID"]), features)
            dgl_adapter.serve(dict(env, DGL_IP_CONFIG=_write_ip_config(ip_config_text), DGL_CONF_PATH=part_config))
        return "exited"


def _write_ip_config(text: str) -> str:
    fd, path = tempfile.mkstemp(prefix="gnnrec-ip-config-", suffix=".txt")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    return path


class GraphServers:
    def __init__(self, part_config, num_clients: int, start_timeout_s: float = 60, stop_timeout_s: float = 60):
        self.part_config, self.graph_name, self.num_parts = _job_part_config(Path(part_config).resolve())
        self.num_clients, self.start_timeout_s, self.stop_timeout_s = num_clients, start_timeout_s, stop_timeout_s
        self.actors, self.serving, self.addresses, self.group = [], [], [], None

    def __enter__(self) -> "GraphServers":
        try:
            self._start()
        except BaseException:
            self._kill()
            raise
        return self

    def _start(self) -> None:
        k = self.num_parts
        self.group = placement_group([{"CPU": 1}] * k, strategy="STRICT_SPREAD" if k > 1 else "PACK")
        ready, _ = ray.wait([self.group.ready()], timeout=self.start_timeout_s)
        if not ready:
            raise GraphServerDied(f"cannot place {k} graph servers on {k} distinct nodes within "
                                  f"{self.start_timeout_s:.0f} s (one partition per node): add nodes or partition for fewer")
        self.actors = [GraphServer.options(scheduling_strategy=PlacementGroupSchedulingStrategy(
            self.group, placement_group_bundle_index=i)).remote() for i in range(k)]
        self.addresses = ray.get([a.address.remote() for a in self.actors], timeout=self.start_timeout_s)
        text = self.ip_config_text
        self.serving = [actor.serve.remote(self._env("server", server_id=i), text)
                        for i, actor in enumerate(self.actors)]
        time.sleep(0.5)
        self.check()

    @property
    def ip_config_text(self) -> str:
        return "".join(f"{ip} {port}\n" for ip, port in self.addresses)

    def _env(self, role: str, server_id: int = 0) -> dict[str, str]:
        return dgl_adapter.dist_env(role, "", self.part_config, num_servers=1, num_clients=self.num_clients,
                                    server_id=server_id)

    @property
    def client_info(self) -> dict:
        """What a client needs to connect (picklable: pass it to Ray workers)."""
        return {"env": self._env("client"), "ip_config_text": self.ip_config_text, "graph_name": self.graph_name}

    def check(self) -> None:
        """Raise GraphServerDied if a server process died. A server that returned has ended normally:
        DistDGL stops a server once every client has disconnected."""
        done, _ = ray.wait(self.serving, num_returns=len(self.serving), timeout=0)
        for ref in done:
            try:
                ray.get(ref)
            except ray.exceptions.RayError as e:
                i = self.serving.index(ref)
                raise GraphServerDied(f"graph server of partition {i} on {self.addresses[i][0]} died "
                                      f"({type(e).__name__})") from None

    def __exit__(self, *exc) -> None:
        if self.serving and exc[0] is None:  # clients have disconnected: servers end by themselves
            ray.wait(self.serving, num_returns=len(self.serving), timeout=self.stop_timeout_s)
        self._kill()

    def _kill(self) -> None:
        Path(self.part_config).unlink(missing_ok=True)
        for actor in self.actors:
            ray.kill(actor)
        if self.group is not None:
            remove_placement_group(self.group)
        self.actors, self.group = [], None


def _job_part_config(part_config: Path) -> tuple[str, str, int]:
    """A copy of the partition config for one job: a graph name of its own (DistDGL names its shared
    memory after the graph and its tensors, so two jobs on one machine would clobber each other's; the
    servers name the features after it too, `dgl_adapter.job_features`) and absolute paths to the parts.
    Returns (its path, the graph name, the number of partitions)."""
    meta = json.loads(part_config.read_text())
    name = f"{meta['graph_name']}_{uuid.uuid4().hex[:8]}"
    for i in range(meta["num_parts"]):
        meta[f"part-{i}"] = {k: os.path.join(part_config.parent, v) for k, v in meta[f"part-{i}"].items()}
    path = part_config.parent / "jobs" / f"{name}.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps({**meta, "graph_name": name}))
    return str(path), name, meta["num_parts"]


def connect_client(info: dict):
    """Connect the calling process to the graph servers; return the DistGraph."""
    env = dict(info["env"], DGL_IP_CONFIG=_write_ip_config(info["ip_config_text"]))
    return dgl_adapter.connect(env, info["graph_name"])
