"""2 partitions × 2 trainers on two hosts: the real runtime across a network, simulated honestly.

Host 0 is the root network namespace (10.77.0.1 on a veth), host 1 a network namespace (10.77.0.2 on
the peer veth); each runs one Ray node (head on host 0) in its own mount namespace with its own
/dev/shm (see tests/hosts.py). The pytest process is the driver: it attaches with
`launch.address=10.77.0.1:<port>` and calls `train(cfg)` unchanged. So the graph servers (one per
partition, STRICT_SPREAD) land on different node addresses, the ip_config lists both, each trainer's
DistDGL machine id comes from matching its own interfaces, every client on a host attaches to *that*
host's server's shared-memory partition, and DDP (gloo) and DistDGL RPC traffic cross the veth.

What is simulated and what is not: both hosts share the kernel, the CPUs and the filesystem (the
partition directory and `train.out` are on the same disk, as with a shared filesystem); the
network, the Ray nodes, the shared memory and the process trees are separate.

Locality as DGL defines it: a trainer maps the partition book of its own host's server from shared
memory (its `partid`, checked against the server addresses), and `edge_split(force_even=True)` gives
that host the partid-th of K equal slices of the edge ids, which differs from the partition's own
edge range by the partitions' edge imbalance — so "mostly local" is asserted, not "all local".
"""
import json
import time

import numpy as np
import pyarrow.parquet as pq
import pytest
import ray

from gnnrec.launch.config import load_config
from conftest import partitioned_dataset
from hosts import IPS, TwoHosts, unavailable

EPOCHS = 2


@pytest.fixture(scope="module")
def two_hosts():
    why = unavailable()
    if why:
        pytest.skip(f"two simulated hosts: {why}")
    if ray.is_initialized():
        ray.shutdown()
    with TwoHosts() as hosts:
        try:
            yield hosts
        finally:
            ray.shutdown()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return partitioned_dataset(tmp_path_factory.mktemp("two_hosts"), parts=2)


@pytest.fixture
def server_addresses(monkeypatch):
    """The (ip, port) of each graph server, in partition order, as the run wrote them to ip_config."""
    from gnnrec.launch.graph_servers import GraphServers
    seen = []
    start = GraphServers._start

    def recording_start(self):
        start(self)
        seen.append(list(self.addresses))
    monkeypatch.setattr(GraphServers, "_start", recording_start)
    return seen


def _partition_edge_ranges(workdir) -> list[tuple[int, int]]:
    """Per partition, the [start, end) of its user→item edge ids (DistGraph per-type ids)."""
    config = json.loads((workdir / "partitions" / "gnnrec.json").read_text())
    ranges = config["edge_map"]["user:interacts:item"]
    bounds = np.cumsum([0] + [end - start for start, end in ranges])
    return [(int(bounds[p]), int(bounds[p + 1])) for p in range(len(ranges))]


def test_two_partitions_two_trainers_each_on_two_hosts(two_hosts, workdir, server_addresses):
    from gnnrec.launch.cluster import start_ray
    from gnnrec.trainer.train import run as train

    cfg = load_config(None, [f"workdir={workdir}", f"launch.address={two_hosts.address}",
                             "train.trainers_per_partition=2", "train.record_visits=true",
                             "train.model=lightgcn", "train.sampler=neighbor", "train.layers=2",
                             "train.fanouts=[5, 5]", "train.batch_size=256", "train.lr=0.05",
                             f"train.epochs={EPOCHS}"])
    start_ray(cfg.launch)  # what train() does first: attach to the cluster at launch.address
    nodes = two_hosts.wait_for_nodes(ray)
    assert sorted(n["NodeManagerAddress"] for n in nodes) == sorted(IPS)
    started = time.time()
    summary = train(cfg)
    print(f"two-host training: {time.time() - started:.1f} s, {summary}")

    assert summary["machines"] == 2 and summary["partitions"] == 2 and summary["trainers"] == 4
    # one graph server per host, ip_config in partition order
    (addresses,) = server_addresses
    assert sorted(ip for ip, _ in addresses) == sorted(IPS)

    out = workdir / "train"
    num_train = pq.read_metadata(workdir / "dataset" / "edges" / "train.parquet").num_rows
    assert summary["edges_per_epoch"] == num_train
    ranks = [json.loads((out / "ranks" / f"rank{r}.json").read_text()) for r in range(4)]
    visits = {(r, e): np.load(out / "visits" / f"rank{r}_epoch{e}.npy") for r in range(4) for e in range(EPOCHS)}
    for epoch in range(EPOCHS):  # every training edge exactly once per epoch across the 4 trainers
        visited = np.concatenate([visits[r, epoch] for r in range(4)])
        assert len(visited) == num_train and np.array_equal(np.sort(visited), np.arange(num_train))
    assert len({r["param_checksum"] for r in ranks}) == 1  # DDP keeps all 4 replicas identical across hosts
    assert all(r["losses"][-1] < r["losses"][0] for r in ranks)  # it learns

    # each trainer is a DistDGL client of its own host's server: it attached to that host's shared-memory
    # partition (its partition book's partid), and the edges it trains on are mostly of that partition
    assert sorted(r["node_ip"] for r in ranks) == sorted(IPS * 2)  # 2 trainers per host
    ranges = _partition_edge_ranges(workdir)
    for r, rank in enumerate(ranks):
        part = rank["local_partition"]
        assert addresses[part][0] == rank["node_ip"], f"rank {r} on {rank['node_ip']} attached to a remote partition"
        lo, hi = ranges[part]
        mine = visits[r, 0]
        local = float(np.mean((mine >= lo) & (mine < hi)))
        print(f"rank {r} on {rank['node_ip']}: partition {part}, {local:.1%} of its {len(mine)} edges local")
        # DGL's edge_split(force_even) gives partition p the p-th of K equal slices of the edge ids, so the
        # slice and the partition differ by the partitions' edge imbalance
        assert local >= 0.5, f"rank {r} trains mostly on edges of the other partition"
