"""PinSage random-walk neighbourhoods, with walks batched over all walkers one hop at a time.

For a seed item i, `num_walks` walks start at i. A walk is up to `num_traversals` traversals
item → user → item; before every traversal but the first it stops with probability
`termination_prob`, and it stops when a node has no neighbour. The items reached after each traversal
are counted, and the `num_neighbors` most visited items become i's neighbours, their visit counts
the importance weights (Ying et al., 2018). This is the distribution of
`dgl.sampling.PinSAGESampler`, but the walk only asks a graph for one random neighbour of many nodes
at once (`sample_one` of samplers/neighborhoods.py's `Neighborhoods`), so the same code runs on a local CSR
or across the partitions of a distributed graph (DistDGL has no random walks: DGL issues #2693, #7881).

The walker starts at users as well as items, and counts either the nodes of the seed's type (the
above) or, one hop shifted, those of the other type: the users an item's walks reach (item → user,
→ item → user, ...), the items a user's walks reach; samplers/random_walk.py builds blocks of those.
"""
from __future__ import annotations

import numpy as np

from gnnrec.samplers.neighborhoods import Neighborhoods


OTHER = {"user": "item", "item": "user"}


def random_walk_visits(neighbors: Neighborhoods, seeds: np.ndarray, num_walks: int, num_traversals: int,
                       termination_prob: float, rng: np.random.Generator, start: str = "item",
                       visit: str = "same"):
    """(seed position, visited node) for every node a walk from `seeds` (nodes of type `start`) reached.

    visit="same": a traversal is start → other → start, the nodes reached after each are counted
    (PinSage's item → item). visit="other": the walk one hop shifted, counting the other type: the
    first traversal is start → other, each later one other → start → other. Before every traversal
    but the first, a walk stops with probability `termination_prob`."""
    shift = int(visit == "other")
    types = (start, OTHER[start])
    origin = np.repeat(np.arange(len(seeds)), num_walks)
    at = np.repeat(np.asarray(seeds, np.int64), num_walks)
    visit_origin, visit_node = [], []
    for hop in range(2 * num_traversals - shift):
        if hop and (hop + shift) % 2 == 0:  # a traversal begins
            keep = rng.random(len(at)) >= termination_prob
            origin, at = origin[keep], at[keep]
        at = neighbors.sample_one(at, f"{types[hop % 2]}->{types[1 - hop % 2]}", rng)
        ok = at >= 0
        origin, at = origin[ok], at[ok]
        if (hop + shift) % 2:  # a traversal ends
            visit_origin.append(origin)
            visit_node.append(at)
    return np.concatenate(visit_origin), np.concatenate(visit_node)


def top_visited(origin: np.ndarray, node: np.ndarray, num_seeds: int, num_nodes: int, k: int,
                rng: np.random.Generator):
    """Per seed, the k most visited nodes (ties broken at random; k = -1: all): (seed position, node,
    count), most visited first."""
    pairs, counts = np.unique(origin * num_nodes + node, return_counts=True)
    seed = pairs // num_nodes
    # one integer sort: by seed, then count descending, then random low bits (ties in random order)
    most = counts.max(initial=0) + 1
    rank = seed * most + (most - 1 - counts)
    bits = max(0, min(20, 62 - int(rank.max(initial=0)).bit_length()))
    order = np.argsort((rank << bits) | rng.integers(0, 1 << bits, len(rank)))
    seed, pairs, counts = seed[order], pairs[order], counts[order]
    if k >= 0:
        first = np.searchsorted(seed, np.arange(num_seeds))
        top = np.arange(len(seed)) - first[seed] < k
        seed, pairs, counts = seed[top], pairs[top], counts[top]
    return seed, pairs % num_nodes, counts


class PinSageSampler:
    """Importance-based neighbourhoods of seed items: `sample(seeds)` → (seed position, neighbour, weight)."""

    def __init__(self, neighbors: Neighborhoods, num_items: int, num_traversals: int = 3,
                 termination_prob: float = 0.5, num_walks: int = 100, num_neighbors: int = 10, seed: int = 0):
        self.neighbors, self.num_items = neighbors, num_items
        self.num_traversals, self.termination_prob = num_traversals, termination_prob
        self.num_walks, self.num_neighbors = num_walks, num_neighbors
        self.rng = np.random.default_rng(seed)

    def sample(self, seeds: np.ndarray):
        seeds = np.asarray(seeds, dtype=np.int64)
        origin, item = random_walk_visits(self.neighbors, seeds, self.num_walks, self.num_traversals,
                                          self.termination_prob, self.rng)
        return top_visited(origin, item, len(seeds), self.num_items, self.num_neighbors, self.rng)
