"""Sampling benchmark on the Gowalla train graph, ours vs raw DGL side by side in one run, as JSON.

    python bench/sampling.py [--batches 40] [--threads 2]

neighbor: edge batches of 1024 training pairs, 1 uniform negative each, 2 layers with fanouts [10, 5],
    the batch's own edges excluded from message passing. Ours: samplers/neighbor.py on the local CSR,
    up to a finished `Batch`. DGL: dgl.dataloading.NeighborSampler.sample_blocks (sample_neighbors +
    to_block per layer) over the same seeds, negatives and exclusions. Figure: training edges per second.
pinsage: 3 traversals, 100 walks, top-10, batches of 1024 seed items. Ours: samplers/pinsage.py on the
    local CSR; DGL: dgl.sampling.PinSAGESampler. Figure: seeds per second.
random_walk: the trainer's train.sampler=random_walk path (samplers/random_walk.py's RandomWalkSampler on
    the local CSR) for the same edge batches as `neighbor`: 2 random-walk blocks of 20 walks, 3 traversals,
    top-10, up to a finished `Batch` (negatives, batch-edge exclusion, relabelling, weights, degrees).
    DGL: dgl.sampling.PinSAGESampler with the same walks over the same dst nodes of both blocks (item ->
    user -> item for the items, user -> item -> user for the users; neighbourhoods only, no batch).
    Figure: dst nodes (walk neighbourhoods) per second.
Ours and DGL alternate batch by batch so that load from other processes hits both alike.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from dgl_anchors import heterograph, neighbor_blocks, pinsage_sampler
from gnnrec.samplers.negatives import Positives, UniformNegatives
from gnnrec.samplers.neighbor import NeighborSampler
from gnnrec.samplers.neighborhoods import CSRNeighborhoods
from gnnrec.samplers.pinsage import PinSageSampler
from gnnrec.samplers.random_walk import RandomWalkSampler

GOWALLA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "gowalla" / "train.parquet"


def load(path: Path):
    t = pq.read_table(path, columns=["user_id", "item_id"])
    users, user = np.unique(t["user_id"].to_numpy(), return_inverse=True)
    items, item = np.unique(t["item_id"].to_numpy(), return_inverse=True)
    return user.astype(np.int64), item.astype(np.int64), len(users), len(items)


def timed(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def bench_neighbor(user, item, nu, ni, graph, args) -> dict:
    negatives = UniformNegatives(ni, Positives(user, item, ni))
    ours = NeighborSampler(CSRNeighborhoods.from_edges(user, item, nu, ni), args.fanouts, nu, ni,
                           negatives=negatives, num_negatives=1)
    rng = np.random.default_rng(1)
    order = rng.permutation(len(user))
    edges = {"ours": [0, 0], "dgl": [0, 0]}  # sampled message edges, batches

    def run_ours(eids):
        batch = ours.sample(user[eids], item[eids])
        edges["ours"][0] += sum(b.num_edges for b in batch.blocks)
        edges["ours"][1] += 1

    def run_dgl(eids):
        neg = negatives.sample(user[eids], item[eids], 1, rng)
        seeds = {"user": np.unique(user[eids]), "item": np.unique(np.concatenate([item[eids], neg.ravel()]))}
        _, blocks = neighbor_blocks(graph, seeds, args.fanouts, {"interacts": eids, "interacted_by": eids})
        edges["dgl"][0] += sum(b.num_edges() for b in blocks)
        edges["dgl"][1] += 1

    seconds = {"ours": 0.0, "dgl": 0.0}
    for k in range(args.batches + 2):
        eids = np.sort(order[k * args.batch_size:(k + 1) * args.batch_size])
        t_ours, t_dgl = timed(run_ours, eids), timed(run_dgl, eids)
        if k >= 2:  # warm-up
            seconds["ours"] += t_ours
            seconds["dgl"] += t_dgl
    rate = {k: args.batches * args.batch_size / s for k, s in seconds.items()}
    return {"batch_size": args.batch_size, "fanouts": args.fanouts, "negatives": 1, "batches": args.batches,
            "ours_edges_per_s": round(rate["ours"]), "dgl_edges_per_s": round(rate["dgl"]),
            "ratio": round(rate["ours"] / rate["dgl"], 3),
            "ours_message_edges_per_batch": round(edges["ours"][0] / edges["ours"][1]),
            "dgl_message_edges_per_batch": round(edges["dgl"][0] / edges["dgl"][1])}


def bench_pinsage(user, item, nu, ni, graph, args) -> dict:
    params = dict(num_traversals=3, termination_prob=0.5, num_walks=100, num_neighbors=10)
    ours = PinSageSampler(CSRNeighborhoods.from_edges(user, item, nu, ni), ni, **params)
    dgl_sampler = pinsage_sampler(graph, params["num_traversals"], params["termination_prob"], params["num_walks"],
                                  params["num_neighbors"])
    rng = np.random.default_rng(2)
    seconds = {"ours": 0.0, "dgl": 0.0}
    for k in range(args.pinsage_batches + 1):
        seeds = rng.choice(ni, args.batch_size, replace=False)
        t_ours, t_dgl = timed(ours.sample, seeds), timed(dgl_sampler, seeds)
        if k >= 1:
            seconds["ours"] += t_ours
            seconds["dgl"] += t_dgl
    rate = {k: args.pinsage_batches * args.batch_size / s for k, s in seconds.items()}
    return {**params, "batch_size": args.batch_size, "batches": args.pinsage_batches,
            "ours_seeds_per_s": round(rate["ours"]), "dgl_seeds_per_s": round(rate["dgl"]),
            "ratio": round(rate["ours"] / rate["dgl"], 3)}


def bench_random_walk(user, item, nu, ni, graph, args) -> dict:
    params = dict(walks=20, length=3, restart_prob=0.5, neighbors=10)
    negatives = UniformNegatives(ni, Positives(user, item, ni))
    ours = RandomWalkSampler(CSRNeighborhoods.from_edges(user, item, nu, ni), 2, nu, ni, negatives=negatives,
                             num_negatives=1, **params)
    dgl_samplers = {t: pinsage_sampler(graph, params["length"], params["restart_prob"], params["walks"],
                                       params["neighbors"], node_type=t) for t in ("user", "item")}
    order = np.random.default_rng(3).permutation(len(user))
    seconds, dst_nodes = {"ours": 0.0, "dgl": 0.0}, 0
    for k in range(args.walk_batches + 1):
        eids = order[k * args.batch_size:(k + 1) * args.batch_size]
        start = time.perf_counter()
        batch = ours.sample(user[eids], item[eids])
        t_ours = time.perf_counter() - start
        layers = [batch.input_nodes[:b.num_dst].numpy() for b in batch.blocks]  # each block's dst nodes
        start = time.perf_counter()
        for nodes in layers:
            dgl_samplers["user"](nodes[nodes < nu])
            dgl_samplers["item"](nodes[nodes >= nu] - nu)
        t_dgl = time.perf_counter() - start
        if k >= 1:
            seconds["ours"] += t_ours
            seconds["dgl"] += t_dgl
            dst_nodes += sum(len(nodes) for nodes in layers)
    rate = {k: dst_nodes / s for k, s in seconds.items()}
    return {**params, "layers": 2, "batch_size": args.batch_size, "negatives": 1, "batches": args.walk_batches,
            "dst_nodes_per_batch": round(dst_nodes / args.walk_batches),
            "ours_edges_per_s": round(args.walk_batches * args.batch_size / seconds["ours"]),
            "ours_dst_nodes_per_s": round(rate["ours"]), "dgl_dst_nodes_per_s": round(rate["dgl"]),
            "ratio": round(rate["ours"] / rate["dgl"], 3)}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=GOWALLA)
    p.add_argument("--batches", type=int, default=40)
    p.add_argument("--pinsage-batches", type=int, default=10)
    p.add_argument("--walk-batches", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--fanouts", type=int, nargs="+", default=[10, 5])
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    if not args.data.exists():
        print(json.dumps({"skipped": f"{args.data} not found"}))
        return 0
    torch.set_num_threads(args.threads)
    user, item, nu, ni = load(args.data)
    graph = heterograph(nu, ni, user, item)
    result = {"dataset": str(args.data), "users": nu, "items": ni, "edges": len(user), "threads": args.threads,
              "neighbor": bench_neighbor(user, item, nu, ni, graph, args),
              "pinsage": bench_pinsage(user, item, nu, ni, graph, args),
              "random_walk": bench_random_walk(user, item, nu, ni, graph, args)}
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
