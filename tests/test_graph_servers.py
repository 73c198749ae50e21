"""DistDGL graph servers as Ray actors: clients connect, sample across the server, and a dead server
is reported by name instead of hanging the job."""
import time
from pathlib import Path

import numpy as np
import psutil
import pyarrow.parquet as pq
import pytest
import ray
import torch

from gnnrec.launch.graph_servers import RUNS, GraphServerDied, GraphServers


@pytest.fixture(scope="module")
def partitions(tmp_path_factory):
    import dgl
    rng = np.random.default_rng(0)
    key = np.unique(rng.integers(0, 60, 400) * 30 + rng.integers(0, 30, 400))
    user, item = torch.from_numpy(key // 30), torch.from_numpy(key % 30)
    g = dgl.heterograph({("user", "interacts", "item"): (user, item), ("item", "interacted_by", "user"): (item, user)},
                        num_nodes_dict={"user": 61, "item": 30})  # user 60 has no edge
    out = tmp_path_factory.mktemp("parts")
    dgl.distributed.partition_graph(g, "toy", 1, str(out), part_method="random")
    return out / "toy.json", set(zip(user.tolist(), item.tolist()))


def _client_class():
    @ray.remote(num_cpus=0)
    class Client:
        def sample(self, info, users):
            from gnnrec.launch.graph_servers import connect_client
            from gnnrec.dgl_adapter import dist_sample_one
            self.graph = connect_client(info)
            return dist_sample_one(self.graph, users, "user", "interacts")

        def pinsage(self, info, seeds):
            from gnnrec.launch.graph_servers import connect_client
            from gnnrec.samplers.neighborhoods import DistNeighborhoods
            from gnnrec.samplers.pinsage import PinSageSampler
            self.graph = connect_client(info)
            return PinSageSampler(DistNeighborhoods(self.graph), 30, num_walks=400, num_neighbors=5).sample(seeds)

        def in_edges(self, nodes, fanouts):  # after sample: connected
            from gnnrec.dgl_adapter import dist_sample_in_edges
            return dist_sample_in_edges(self.graph, nodes, fanouts)

        def leave(self):
            from gnnrec.dgl_adapter import disconnect
            disconnect()
    return Client


def test_clients_sample_through_the_server(local_ray, partitions):
    config, edges = partitions
    Client = _client_class()
    users = np.array([0, 0, 0, 5, 5, 60, 17] * 20)  # repeated walkers draw independently; 60 is isolated
    with GraphServers(config, num_clients=2) as servers:
        clients = [Client.remote() for _ in range(2)]
        results = ray.get([c.sample.remote(servers.client_info, users) for c in clients], timeout=120)
        # the servers' frontier leaves out an edge type it drew nothing of (SocialGCN's validation of a
        # node batch of users who follow nobody, issue #15): that type's edges are empty, not an error
        in_edges = ray.get(clients[0].in_edges.remote({"user": np.array([60]), "item": np.arange(30)},
                                                      {"interacted_by": -1, "interacts": -1}), timeout=120)
        servers.check()
        # one partition, one machine: DistDGL's port (it unpickles requests) is on loopback only
        (ip, port), = servers.addresses
        bound = {c.laddr.ip for c in psutil.Process(servers.pids[0]).connections("inet")
                 if c.status == psutil.CONN_LISTEN and c.laddr.port == port}
        assert ip == "127.0.0.1" and bound == {"127.0.0.1"}
        ray.get([c.leave.remote() for c in clients], timeout=60)
    for got in results:
        assert np.all(got[users == 60] == -1)
        assert all((u, i) in edges for u, i in zip(users[users != 60].tolist(), got[users != 60].tolist()))
        assert len(set(got[users == 0].tolist())) > 1  # independent draws, not one per node
    assert [len(a) for a in in_edges["interacted_by"]] == [0, 0, 0]  # user 60 has no edge (src, dst, edge id)
    assert set(zip(*(a.tolist() for a in in_edges["interacts"][:2]))) == edges


def test_dead_server_is_reported_by_partition(local_ray, partitions):
    config, _ = partitions
    with pytest.raises(GraphServerDied, match="partition 0"):
        with GraphServers(config, num_clients=1) as servers:
            ray.kill(servers.actors[0])
            deadline = time.time() + 60
            while time.time() < deadline:
                servers.check()
                time.sleep(0.2)


def test_pinsage_walks_through_graph_servers_match_local_walks(local_ray, partitions):
    from gnnrec.samplers.neighborhoods import CSRNeighborhoods
    from gnnrec.samplers.pinsage import PinSageSampler
    config, edges = partitions
    user, item = (np.array(x) for x in zip(*sorted(edges)))
    seeds = np.arange(30)
    local = PinSageSampler(CSRNeighborhoods.from_edges(user, item, 61, 30), 30, num_walks=400, num_neighbors=5,
                           seed=1).sample(seeds)
    Client = _client_class()
    with GraphServers(config, num_clients=1) as servers:
        client = Client.remote()
        dist = ray.get(client.pinsage.remote(servers.client_info, seeds), timeout=120)
        ray.get(client.leave.remote(), timeout=60)

    def top(result):
        return {s: set(result[1][result[0] == s].tolist()) for s in range(30)}
    a, b = top(local), top(dist)
    assert all(len(b[s]) == 5 for s in range(30))
    assert np.mean([len(a[s] & b[s]) / 5 for s in range(30)]) >= 0.5  # same distribution, both noisy
    assert abs(local[2].sum() - dist[2].sum()) <= 0.05 * local[2].sum()  # same visit mass


def test_servers_load_gnnrec_partitions(local_ray, tmp_path):
    """The partition stage's output is served as is: node counts and one-hop steps through DistDGL."""
    from gnnrec.launch.config import load_config
    from gnnrec.launch.stages import run

    cfg = load_config(None, [f"workdir={tmp_path}", "synth.users=300", "synth.items=200", "synth.edges=3000",
                             "partition.parts=1", "partition.method=random", "run.stages=[synth, ingest, partition]"])
    summaries = run(cfg)
    users = np.arange(summaries["ingest"]["users"])

    @ray.remote(num_cpus=0)
    def client(info):
        from gnnrec.launch.graph_servers import connect_client
        from gnnrec.dgl_adapter import disconnect, dist_sample_one
        graph = connect_client(info)
        counts = graph.num_nodes("user"), graph.num_nodes("item")
        steps = dist_sample_one(graph, users, "user", "interacts")
        served = list(Path("/dev/shm").glob(f"*{info.graph_name}*"))  # DistDGL shares the graph there
        disconnect()
        return counts, steps, served

    with GraphServers(summaries["partition"]["config"], num_clients=1) as servers:
        (num_users, num_items), steps, served = ray.get(client.remote(servers.client_info), timeout=120)
    # a server that ends (once its clients have left) leaves nothing: neither its files nor its graph
    # in shared memory
    assert served
    assert not list(RUNS.glob(f"{servers.graph_name}-*")) and not list(Path("/dev/shm").glob(f"*{servers.graph_name}*"))
    assert (num_users, num_items) == (summaries["ingest"]["users"], summaries["ingest"]["items"])
    train_users = pq.read_table(tmp_path / "dataset" / "edges" / "train.parquet")["user"].to_numpy()
    has_edges = np.bincount(train_users, minlength=num_users) > 0
    assert np.all((steps >= 0) == has_edges)  # one step from every user with a training edge, none otherwise
    assert steps.max() < num_items


def test_two_jobs_on_one_machine_serve_their_own_features(local_ray, tmp_path_factory):
    """DistDGL names a feature's shared memory after the feature alone: two jobs serving an edge feature
    of the same name and shape must each read their own values."""
    import dgl
    configs = {}
    for job, counts in (("a", torch.arange(1, 41)), ("b", torch.zeros(40, dtype=torch.int64))):
        g = dgl.heterograph({("user", "interacts", "item"): (torch.arange(40) % 8, torch.arange(40) % 5)})
        g.edata["count"] = counts
        out = tmp_path_factory.mktemp(f"job-{job}")
        dgl.distributed.partition_graph(g, "same", 1, str(out), part_method="random")
        configs[job] = out / "same.json"

    @ray.remote(num_cpus=0, max_calls=1)  # a fresh process per client
    def read_counts(info):
        from gnnrec.launch.graph_servers import connect_client
        from gnnrec.dgl_adapter import disconnect, dist_values
        graph = connect_client(info)
        values = dist_values(graph, "interacts", "count", np.arange(40))
        disconnect()
        return sorted(values.tolist())

    with GraphServers(configs["a"], num_clients=1) as a, GraphServers(configs["b"], num_clients=1) as b:
        got = ray.get([read_counts.remote(a.client_info), read_counts.remote(b.client_info)], timeout=120)
    assert got == [list(range(1, 41)), [0] * 40]
