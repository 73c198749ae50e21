"""Partitioner registry: name -> function(g, parts, cfg) -> (user_part, item_part).

`g` is the CSR namespace of partition.csr (users 0..U-1 and items 0..I-1); the result gives each user
and each item a partition in 0..parts-1 (int32). The writer turns any such assignment into DGL's format.

Balance is measured on five node weights: the four DGL's partition_graph hands METIS with
balance_ntypes + balance_edges (user count, item count, user in-degree = training edges + followers,
so the training edges a part owns, and item in-degree) plus each user's validation and test edges,
which go to the user's part (low-degree users hold relatively more of them, so balancing degree alone
leaves them 13% off at K=8). imbalance = max_k |load_k - mean| / mean.
"""
from __future__ import annotations

import numpy as np

from gnnrec.partition import csr

PARTITIONERS = {}
CONSTRAINTS = ("users", "items", "user_edges", "item_edges", "held_out_edges")
COUNT_COLUMN = (0, 1, 0, 1, 0)  # the node-type count column of each weight
DEGREE_COLUMN = {0: 2, 1: 3}  # the in-degree column of each node-type count column


def register(name: str):
    def wrap(fn):
        PARTITIONERS[name] = fn
        return fn
    return wrap


def node_weights(g) -> np.ndarray:
    """float32 [U+I, 4]: the balance weights of every node (users first, then items)."""
    nu, ni = g.num_users, g.num_items
    w = np.zeros((nu + ni, len(CONSTRAINTS)), np.float32)
    w[:nu, 0] = 1
    w[nu:, 1] = 1
    w[:nu, 2] = csr.user_degree(g) + np.diff(g.follow_in_ptr)
    w[nu:, 3] = csr.item_degree(g)
    w[:nu, 4] = g.user_val_count + g.user_test_count
    return w


def part_loads(part: np.ndarray, weights: np.ndarray, parts: int) -> np.ndarray:
    """[parts, 4] sums of node weights per partition."""
    return np.stack([np.bincount(part, weights[:, c].astype(np.float64), minlength=parts)
                     for c in range(weights.shape[1])], 1)


def imbalance(loads: np.ndarray) -> np.ndarray:
    """Per column: max_k |load_k - mean| / mean (0 where the column is empty)."""
    loads = np.asarray(loads, np.float64)
    mean = loads.mean(0)
    return np.where(mean > 0, np.abs(loads - mean).max(0) / np.where(mean > 0, mean, 1), 0.0)


def _hash(ids: np.ndarray, salt: int) -> np.ndarray:
    """splitmix64 of (id + salt): uniform 64-bit hashes."""
    with np.errstate(over="ignore"):
        z = ids.astype(np.uint64) + np.uint64(salt) * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


@register("random")
def random_partition(g, parts: int, cfg) -> tuple[np.ndarray, np.ndarray]:
    """part = hash(node id) mod K, users and items hashed with different salts."""
    seed = cfg.partition.seed
    user = (_hash(np.arange(g.num_users), 2 * seed + 1) % np.uint64(parts)).astype(np.int32)
    item = (_hash(np.arange(g.num_items), 2 * seed + 2) % np.uint64(parts)).astype(np.int32)
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
    from gnnrec.partition import dgl_adapter
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
    from gnnrec.partition.random_walk import degrees, rebalance
    part = rebalance(g, part, node_weights(g), parts, degrees(g), eps=0.08).astype(np.int32)
    return part[:nu], part[nu:]


@register("random-walk")
def random_walk_partition(g, parts: int, cfg) -> tuple[np.ndarray, np.ndarray]:
    from gnnrec.partition.random_walk import random_walk_partition as run
    return run(g, parts, cfg)
