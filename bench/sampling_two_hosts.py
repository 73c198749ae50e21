"""PinSage seeds/s through DistDGL graph servers: 1 partition on one host vs 2 partitions on two hosts.

    python bench/sampling_two_hosts.py [--batches 5] [--batch-size 1024] [--data .../gowalla/train.parquet]

Needs root: the two hosts are simulated as in tests/hosts.py (root network namespace + a network
namespace joined by a veth, 10.77.0.1 / 10.77.0.2, one Ray node and one /dev/shm each). The graph is
ingested (split: test_file, the Gowalla test set held out, no validation) and partitioned with METIS
into 1 and 2 parts under a temporary directory. Sampler: samplers/pinsage.py, PinSageSampler over
DistNeighborhoods (every hop of all walkers is one batched sample_etype_neighbors call answered by the
servers of the partitions the nodes live in), 3 traversals, 100 walks, top-10, batches of seed items.
Cases, each after one warm-up batch:
  one_partition:      1 server, 1 client on the server's host
  two_partitions:     2 servers (one per host), 1 client on partition 0's host (the other half is remote)
  two_partitions_x2:  2 servers, 2 clients (one per host) sampling at once; figure = both together
Prints JSON. The machine's cores are shared by both "hosts", so this measures the cost of the
partition split and the RPC path, not a speed-up from more hardware.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import ray

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from hosts import TwoHosts, unavailable  # noqa: E402

GOWALLA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "gowalla"
PARAMS = dict(num_traversals=3, termination_prob=0.5, num_walks=100, num_neighbors=10)


@ray.remote(num_cpus=1)
class Client:
    def connect(self, info, num_items):
        from gnnrec.launch.graph_servers import connect_client
        from gnnrec.samplers.neighborhoods import DistNeighborhoods
        from gnnrec.samplers.pinsage import PinSageSampler
        self.graph = connect_client(info)
        self.sampler = PinSageSampler(DistNeighborhoods(self.graph), num_items, **PARAMS)
        return self.graph.num_nodes("item")

    def run(self, batches: list[np.ndarray]) -> tuple[float, int]:
        start = time.perf_counter()
        pairs = sum(len(self.sampler.sample(seeds)[0]) for seeds in batches)
        return time.perf_counter() - start, pairs

    def leave(self):
        from gnnrec.dgl_adapter import disconnect
        disconnect()


def prepare(work: Path, data: Path) -> dict[int, Path]:
    from gnnrec.launch.config import load_config
    from gnnrec.launch.stages import run
    bare = ["ingest.social=null", "ingest.item_features=null", "ingest.user_features=null",
            "ingest.interactions.timestamp_column=null"]
    configs = {}
    for parts in (1, 2):
        cfg = load_config(None, [f"workdir={work}", *bare, f"ingest.interactions.path={data / 'train.parquet'}",
                                 "split.method=test_file", f"split.test_path={data / 'test.parquet'}",
                                 "partition.method=metis", f"partition.parts={parts}",
                                 f"partition.out={{workdir}}/partitions{parts}",
                                 f"run.stages={'[ingest, partition]' if parts == 1 else '[partition]'}"])
        run(cfg)
        configs[parts] = work / f"partitions{parts}" / "gnnrec.json"
    return configs


def measure(config: Path, clients_per_server: int, node_ids: dict, num_items: int, args) -> dict:
    """`clients_per_server` = 0: one client, on the first server's host. A DistDGL client must run on a host
    with a server (it maps that server's partition book from shared memory)."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
    from gnnrec.launch.graph_servers import GraphServers
    rng = np.random.default_rng(2)
    meta = json.loads(config.read_text())
    with GraphServers(config, num_clients=max(clients_per_server * meta["num_parts"], 1),
                      start_timeout_s=120) as servers:
        servers_at = [ip for ip, _ in servers.addresses]
        client_nodes = servers_at * clients_per_server or servers_at[:1]
        clients = [Client.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node_ids[ip], soft=False)).remote()
                   for ip in client_nodes]
        ray.get([c.connect.remote(servers.client_info, num_items) for c in clients], timeout=300)
        warm = [[rng.choice(num_items, args.batch_size, replace=False)] for _ in clients]
        ray.get([c.run.remote(w) for c, w in zip(clients, warm)], timeout=600)
        work = [[rng.choice(num_items, args.batch_size, replace=False) for _ in range(args.batches)]
                for _ in clients]
        start = time.perf_counter()
        results = ray.get([c.run.remote(w) for c, w in zip(clients, work)], timeout=1200)
        wall = time.perf_counter() - start
        servers.check()
        ray.get([c.leave.remote() for c in clients], timeout=60)
    seeds = args.batches * args.batch_size * len(clients)
    return {"servers_on": servers_at, "clients_on": client_nodes, "seeds": seeds,
            "seeds_per_s": round(seeds / wall, 1),
            "per_client_seeds_per_s": [round(args.batches * args.batch_size / s, 1) for s, _ in results],
            "neighbours_per_seed": round(sum(p for _, p in results) / seeds, 2)}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=GOWALLA)
    p.add_argument("--batches", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=1024)
    args = p.parse_args()
    why = unavailable() or (None if (args.data / "train.parquet").exists() else f"{args.data} not found")
    if why:
        print(json.dumps({"skipped": why}))
        return 0
    with tempfile.TemporaryDirectory(prefix="gnnrec-bench-") as tmp:
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(sys.stderr):  # the partitioner's progress lines: keep stdout JSON
            configs = prepare(Path(tmp), args.data)
        meta = json.loads(configs[2].read_text())
        stats = json.loads((configs[2].parent / "partition_stats.json").read_text())
        num_items = int(sum(e - s for s, e in meta["node_map"]["item"]))
        result = {"dataset": str(args.data / "train.parquet"), "graph_edges": meta["num_edges"] // 2,
                  "items": num_items, "prepare_s": round(time.perf_counter() - t0, 1), **PARAMS,
                  "batch_size": args.batch_size, "batches": args.batches,
                  "partition_edges": [q["edges"] for q in stats["per_part"]]}
        with TwoHosts() as hosts:
            try:
                ray.init(address=hosts.address, log_to_driver=False)
                nodes = {n["NodeManagerAddress"]: n["NodeID"] for n in hosts.wait_for_nodes(ray)}
                one = result["one_partition"] = measure(configs[1], 0, nodes, num_items, args)
                result["two_partitions"] = measure(configs[2], 0, nodes, num_items, args)
                result["two_partitions_x2"] = measure(configs[2], 1, nodes, num_items, args)
                result["ratio_two_vs_one"] = round(result["two_partitions"]["seeds_per_s"] / one["seeds_per_s"], 3)
            finally:
                ray.shutdown()
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
