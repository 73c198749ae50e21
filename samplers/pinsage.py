"""PinSage random-walk neighbourhoods, with walks batched over all walkers one hop at a time.

For a seed item i, `num_walks` walks start at i. A walk is up to `num_traversals` traversals
item → user → item; before every traversal but the first it stops with probability
`termination_prob`, and it stops when a node has no neighbour. The items reached after each traversal
are counted, and the `num_neighbors` most visited items become i's neighbours, their visit counts
the importance weights (Ying et al., 2018). This is the distribution of
`dgl.sampling.PinSAGESampler`, but the walk only asks a graph for one random neighbour of many nodes
at once (`Neighbors.sample_one`), so the same code runs on a local CSR or across the partitions of a
distributed graph (DistDGL has no random walks: DGL issues #2693, #7881).
"""
from __future__ import annotations

from typing import Protocol

import numpy as np

from gnnrec.arrays import group_by


class Neighbors(Protocol):
    def sample_one(self, nodes: np.ndarray, relation: str, rng: np.random.Generator) -> np.ndarray:
        """One uniformly random out-neighbour of each node over `relation` ("item->user" or
        "user->item"); -1 where a node has none. Duplicate nodes draw independently."""


class CSRNeighbors:
    """`Neighbors` over local CSR arrays (numpy or memory-mapped): {relation: (indptr, indices)}."""

    def __init__(self, csr: dict[str, tuple[np.ndarray, np.ndarray]]):
        self.csr = csr

    @classmethod
    def from_edges(cls, user: np.ndarray, item: np.ndarray, num_users: int, num_items: int) -> "CSRNeighbors":
        return cls({"user->item": group_by(user, item, num_users), "item->user": group_by(item, user, num_items)})

    def sample_one(self, nodes, relation, rng):
        indptr, indices = self.csr[relation]
        start = indptr[nodes]
        deg = indptr[nodes + 1] - start
        pick = start + (rng.random(len(nodes)) * deg).astype(np.int64)
        return np.where(deg > 0, indices[np.minimum(pick, len(indices) - 1)], -1)


def random_walk_visits(neighbors: Neighbors, seeds: np.ndarray, num_walks: int, num_traversals: int,
                       termination_prob: float, rng: np.random.Generator):
    """(seed position, visited item) for every item a walk reached after a traversal."""
    origin = np.repeat(np.arange(len(seeds)), num_walks)
    at = np.repeat(seeds, num_walks)
    visit_origin, visit_item = [], []
    for traversal in range(num_traversals):
        if traversal:
            keep = rng.random(len(at)) >= termination_prob
            origin, at = origin[keep], at[keep]
        users = neighbors.sample_one(at, "item->user", rng)
        ok = users >= 0
        items = neighbors.sample_one(users[ok], "user->item", rng)
        ok2 = items >= 0
        origin, at = origin[ok][ok2], items[ok2]
        visit_origin.append(origin)
        visit_item.append(at)
    return np.concatenate(visit_origin), np.concatenate(visit_item)


def top_visited(origin: np.ndarray, item: np.ndarray, num_seeds: int, num_items: int, k: int,
                rng: np.random.Generator):
    """Per seed, the k most visited items (ties broken at random): (seed position, item, count)."""
    pairs, counts = np.unique(origin * num_items + item, return_counts=True)
    seed = pairs // num_items
    # sort by seed, then count descending, then a random tiebreak
    order = np.lexsort((rng.random(len(pairs)), -counts, seed))
    seed, pairs, counts = seed[order], pairs[order], counts[order]
    first = np.searchsorted(seed, np.arange(num_seeds))
    rank = np.arange(len(seed)) - first[seed]
    top = rank < k
    return seed[top], pairs[top] % num_items, counts[top]


class PinSageSampler:
    """Importance-based neighbourhoods of seed items: `sample(seeds)` → (seed position, neighbour, weight)."""

    def __init__(self, neighbors: Neighbors, num_items: int, num_traversals: int = 3,
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


class DistNeighbors:
    """`Neighbors` over a DistDGL DistGraph: each hop of all walkers is one batched sample_neighbors
    call, answered by the servers of the partitions the nodes live in, so walks cross partitions."""

    RELATIONS = {"item->user": ("item", "interacted_by"), "user->item": ("user", "interacts")}

    def __init__(self, graph):
        self.graph = graph

    def sample_one(self, nodes, relation, rng):  # the servers draw; rng is unused
        from gnnrec.dgl_adapter import dist_sample_one
        node_type, etype = self.RELATIONS[relation]
        return dist_sample_one(self.graph, nodes, node_type, etype)
