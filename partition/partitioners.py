"""Partitioner registry: name -> function(g, parts, cfg) -> (user_part, item_part).

`g` is the CSR namespace of partition.csr (users 0..U-1 and items 0..I-1); the result gives each user
and each item a partition in 0..parts-1 (int32). The writer turns any such assignment into DGL's format;
partition/balance.py defines what "balanced" means.
"""
from __future__ import annotations

import numpy as np

from gnnrec.arrays import splitmix64
from gnnrec.partition import csr, random_walk
from gnnrec.partition.balance import node_weights

PARTITIONERS = {}
def register(name: str):
    def wrap(fn):
        PARTITIONERS[name] = fn
        return fn
    return wrap


@register("random")
def random_partition(g, parts: int, cfg) -> tuple[np.ndarray, np.ndarray]:
    """part = hash(node id) mod K, users and items hashed with different salts."""
    seed = cfg.partition.seed
    user = (splitmix64(np.arange(g.num_users), 2 * seed + 1) % np.uint64(parts)).astype(np.int32)
    item = (splitmix64(np.arange(g.num_items), 2 * seed + 2) % np.uint64(parts)).astype(np.int32)
    return user, item


@register("metis")
def metis_partition(g, parts: int, cfg) -> tuple[np.ndarray, np.ndarray]:
    """DGL's METIS on the homogeneous training graph (users, then items offset by U; both interaction
    directions and the follows edges, as partition_graph builds it), balancing node count and in-degree
    per node type. Ingest deduplicated the edges and build_csr checked it: no duplicate reaches METIS.
    METIS's own tolerance can leave a weight more than 10% off its mean (Gowalla, K=8: 13.5% on
    training edges) and it does not see validation/test edges, so its assignment goes through
    random_walk.rebalance, which moves the nodes that lose fewest neighbours until every weight is
    within 8% (nothing moves when METIS is already that close)."""
    from gnnrec import dgl_adapter
    nu, ni = g.num_users, g.num_items
    if parts == 1:
        return np.zeros(nu, np.int32), np.zeros(ni, np.int32)
    user = np.repeat(np.arange(nu, dtype=np.int64), csr.user_degree(g))
    item = np.asarray(g.user_items, np.int64) + nu
    fsrc = np.repeat(np.arange(nu, dtype=np.int64), np.diff(g.follow_out_ptr))
    src = np.concatenate([user, item, fsrc])
    dst = np.concatenate([item, user, np.asarray(g.follow_out, np.int64)])
    del user, item, fsrc
    node_type = np.r_[np.zeros(nu, np.int64), np.ones(ni, np.int64)]
    part = dgl_adapter.metis_assignment(nu + ni, src, dst, node_type, parts).astype(np.int64)
    del src, dst
    part = random_walk.rebalance(g, part, node_weights(g), parts, random_walk.degrees(g), eps=0.08).astype(np.int32)
    return part[:nu], part[nu:]


register("random-walk")(random_walk.random_walk_partition)
