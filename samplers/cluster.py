r"""Cluster-GCN's subgraph batches (Chiang et al., 2019) for edge mini-batches.

The partition stage splits the graph into `partition.clusters` clusters (the partition method's own
assignment at that granularity, `clusters/` of the partitions). An epoch visits a trainer's training
pairs cluster by cluster, the clusters in a random order and the pairs of a cluster shuffled
(`epoch_order`), so that consecutive batches of `train.batch_size` pairs hold the users of a few
clusters, q ≈ batch_size / (pairs per cluster), each pair still once an epoch. A batch's blocks are the
subgraph induced by

.. math:: S = \{v : c(v) \in C_B\} \cup \text{seeds}, \qquad C_B = \{c(u) : u \text{ a user of the batch}\}

with whole neighbourhoods inside it: every layer's dst node hears each of its neighbours in S (and no
other), the batch's own pairs dropped as in every sampler. Seeds outside the clusters (items, negatives)
are in S, so every score has its node's embedding; what the clusters save is the rest of the graph.
Validation, inference and evaluation use whole neighbourhoods: the layers these batches approximate.
"""
from __future__ import annotations

import numpy as np

from gnnrec.arrays import KeySet
from gnnrec.samplers.neighbor import NeighborSampler
from gnnrec.samplers.neighborhoods import RELATIONS


def epoch_order(user_clusters: np.ndarray, num_clusters: int, rng: np.random.Generator) -> np.ndarray:
    """Positions of an epoch's pairs (user_clusters: each pair's user's cluster), cluster by cluster, the
    clusters in a random order and the pairs within each shuffled."""
    order = rng.permutation(len(user_clusters))
    visit = rng.permutation(num_clusters)  # the epoch's position of each cluster
    return order[np.argsort(visit[user_clusters[order]], kind="stable")]


class ClusterSampler(NeighborSampler):
    """Blocks of the subgraph induced by the batch's users' clusters and the seeds (module docstring),
    one per layer; clusters: each homogeneous node's cluster (users, then items)."""

    whole_graph_shortcut = False  # a batch's blocks are its clusters' subgraph, however large it is

    def __init__(self, graph, layers: int, num_users: int, num_items: int, clusters: np.ndarray, **options):
        super().__init__(graph, [-1] * layers, num_users, num_items, **options)
        self.clusters = np.asarray(clusters)
        self.inside = np.zeros(int(self.clusters.max(initial=-1)) + 1, bool)  # the batch's clusters C_B

    def sample(self, users, items):
        batch_clusters = self.clusters[np.asarray(users, np.int64)]
        self.inside[batch_clusters] = True
        try:
            return super().sample(users, items)
        finally:
            self.inside[batch_clusters] = False

    def _draw(self, users, items, fanout, unbatched):
        offset = {"user": 0, "item": self.num_users}
        seeds = KeySet(np.concatenate([users, items + self.num_users]))  # this layer's dst nodes
        for relation, src, dst_index, weight in super()._draw(users, items, fanout, unbatched):
            node = src + offset[RELATIONS[relation][0]]
            keep = self.inside[self.clusters[node]] | seeds.contains(node)
            yield relation, src[keep], dst_index[keep], None if weight is None else weight[keep]
