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

A server keeps its files (pid, ip_config, feature copies) in `$TMPDIR/gnnrec-graph-servers/<graph>-<id>/`
and removes them when it ends, with its job's shared memory; what a killed server left behind is
reclaimed by the next server to start or end on that node (`reclaim`).
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import psutil
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

    def address(self, loopback: bool) -> tuple[str, int, int]:
        """(the address to serve on: the node's, or 127.0.0.1 with `loopback`; a free port there; this
        process's pid)."""
        ip = "127.0.0.1" if loopback else ray.util.get_node_ip_address()
        with socket.socket() as s:
            s.bind((ip, 0))
            return ip, s.getsockname()[1], os.getpid()

    def alive(self) -> bool:
        return True

    def serve(self, env: dict[str, str], ip_config_text: str, graph_name: str) -> str:
        reclaim(RUNS)
        run = RUNS / f"{graph_name}-{env['DGL_SERVER_ID']}"  # this server's files, removed when it ends
        tmp = RUNS / f"{run.name}.tmp"
        (tmp / "features").mkdir(parents=True)
        (tmp / "pid").write_text(str(os.getpid()))
        os.rename(tmp, run)
        try:
            (run / "ip_config.txt").write_text(ip_config_text)
            part_config = dgl_adapter.job_features(env["DGL_CONF_PATH"], int(env["DGL_SERVER_ID"]),
                                                   str(run / "features"))
            dgl_adapter.serve(dict(env, DGL_IP_CONFIG=str(run / "ip_config.txt"), DGL_CONF_PATH=part_config))
        finally:
            reclaim(RUNS, ended=run)
        return "exited"


# Each server's files on its node: <graph name>-<server id>/ with its pid, ip_config and feature copies
RUNS = Path(tempfile.gettempdir()) / "gnnrec-graph-servers"


def reclaim(runs: Path, ended: Path | None = None, shared_memory: Path = Path("/dev/shm")) -> None:
    """Remove the run directory of the server that `ended` and what servers killed before their end
    left on this node: their run directories, and the shared memory of every job (named after its
    graph) that has no server left here."""
    gone = set()
    for run in runs.glob("*"):
        with contextlib.suppress(OSError, ValueError):  # another server may reclaim it meanwhile
            if run == ended or not psutil.pid_exists(int((run / "pid").read_text())):
                shutil.rmtree(run)
                gone.add(run.name.rsplit("-", 1)[0])
    left = {run.name.rsplit("-", 1)[0] for run in runs.glob("*")}
    for graph in gone - left:
        for segment in shared_memory.glob(f"*{graph}*"):
            segment.unlink(missing_ok=True)


class GraphServers:
    def __init__(self, part_config, num_clients: int, start_timeout_s: float = 60, stop_timeout_s: float = 60,
                 answer_timeout_s: float = 60):
        self.part_config, self.graph_name, self.num_parts = _job_part_config(Path(part_config).resolve())
        self.num_clients, self.start_timeout_s, self.stop_timeout_s = num_clients, start_timeout_s, stop_timeout_s
        self.answer_timeout_s, self.pings = answer_timeout_s, {}
        self.actors, self.serving, self.addresses, self.pids, self.group = [], [], [], [], None

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
        # One partition is one machine (its trainers run beside it): DistDGL's port, which unpickles what
        # it is sent, is then reachable from this machine only.
        answers = ray.get([a.address.remote(k == 1) for a in self.actors], timeout=self.start_timeout_s)
        self.addresses, self.pids = [(ip, port) for ip, port, _ in answers], [pid for _, _, pid in answers]
        text = self.ip_config_text
        self.serving = [actor.serve.remote(self._env("server", server_id=i), text, self.graph_name)
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
    def processes(self) -> list[dict]:
        return [{"partition": i, "pid": pid, "ip": ip} for i, ((ip, _), pid) in enumerate(zip(self.addresses, self.pids))]

    @property
    def client_info(self) -> ClientInfo:
        return ClientInfo(self._env("client"), self.ip_config_text, self.graph_name)

    def check(self) -> None:
        """Raise GraphServerDied if a server process died, or has not answered a ping for
        `answer_timeout_s` (frozen, or its node unreachable: its clients would wait forever). A server
        that returned has ended normally: DistDGL stops a server once every client has disconnected."""
        done, _ = ray.wait(self.serving, num_returns=len(self.serving), timeout=0)
        for ref in done:
            try:
                ray.get(ref)
            except ray.exceptions.RayError as e:
                i = self.serving.index(ref)
                raise GraphServerDied(f"graph server of partition {i} on {self.addresses[i][0]} died "
                                      f"({type(e).__name__})") from None
        now = time.time()
        for i, actor in enumerate(self.actors):
            ping, sent = self.pings.get(i, (None, now))
            if ping is None or ray.wait([ping], timeout=0)[0]:
                self.pings[i] = (actor.alive.remote(), now)
            elif now - sent > self.answer_timeout_s and self.serving[i] not in done:
                raise GraphServerDied(f"graph server of partition {i} on {self.addresses[i][0]} stopped answering "
                                      f"({now - sent:.0f} s without a reply: frozen, or its node unreachable)")

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


@dataclass(frozen=True)
class ClientInfo:
    """What a DistDGL client needs to connect to a job's graph servers (picklable: Ray workers get it)."""
    env: dict[str, str]  # DistDGL's environment (dgl_adapter.dist_env)
    ip_config_text: str  # the servers' addresses, in partition order
    graph_name: str  # the job's own (its shared memory is named after it)


def connect_client(info: ClientInfo):
    """Connect the calling process to the graph servers; return the DistGraph."""
    with tempfile.TemporaryDirectory(prefix="gnnrec-client-") as tmp:  # read once, at connect
        ip_config = Path(tmp) / "ip_config.txt"
        ip_config.write_text(info.ip_config_text)
        return dgl_adapter.connect(dict(info.env, DGL_IP_CONFIG=str(ip_config)), info.graph_name)
