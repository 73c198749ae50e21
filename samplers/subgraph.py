r"""Subgraph batches for edge mini-batches: every layer of a batch is the subgraph induced by one node
set S of that batch and its seeds (users, positive and negative items), whole neighbourhoods inside it:
a dst node hears each of its neighbours in S ∪ seeds and no other, the batch's own pairs dropped as in
every sampler. Seeds outside S keep their place, so every score has its node's embedding; what the
subgraph saves is the rest of the graph. Validation, inference and evaluation use whole neighbourhoods:
the layers these batches approximate.

**Cluster-GCN** (Chiang et al., 2019; `ClusterSampler`). The partition stage splits the graph into
`partition.clusters` clusters (the partition method's own assignment at that granularity). An epoch
visits a trainer's pairs cluster by cluster, the clusters in a random order and the pairs of a cluster
shuffled (`epoch_order`), so consecutive batches of `train.batch_size` pairs hold the users of a few
clusters, q ≈ batch_size / (pairs per cluster), each pair still once an epoch; S is their clusters:

.. math:: S = \{v : c(v) \in C_B\}, \qquad C_B = \{c(u) : u \text{ a user of the batch}\}

**GraphSAINT's node sampler** (Zeng et al., 2020; `SaintSampler`). S is n nodes drawn with replacement
with probability q(v) ∝ ||Â(:,v)||² (samplers/importance.py, FastGCN's), fresh for every batch, and each
message u -> v is divided by the probability that u is in the subgraph given that v is:

.. math:: w_{uv} = 1 \ (u \text{ a seed}), \quad \frac{1}{p_u} \ (v \text{ a seed}), \quad
          \frac{p_v}{p_{uv}} \ \text{(else)}, \qquad p_v = 1 - (1 - q_v)^n,
          \quad p_{uv} = p_u + p_v - \big(1 - (1 - q_u - q_v)^n\big)

so that each layer's aggregation into a node of the subgraph is unbiased (GraphSAINT's aggregator
normalization, its probabilities exact here rather than counted from pre-sampled subgraphs; the loss
needs none: the trainer's batches are uniform chunks of its pairs).
"""
from __future__ import annotations

import numpy as np

from gnnrec.arrays import KeySet
from gnnrec.samplers.importance import importance
from gnnrec.samplers.neighbor import NeighborSampler
from gnnrec.relations import RELATIONS


def epoch_order(user_clusters: np.ndarray, num_clusters: int, rng: np.random.Generator) -> np.ndarray:
    """Positions of an epoch's pairs (user_clusters: each pair's user's cluster), cluster by cluster, the
    clusters in a random order and the pairs within each shuffled."""
    order = rng.permutation(len(user_clusters))
    visit = rng.permutation(num_clusters)  # the epoch's position of each cluster
    return order[np.argsort(visit[user_clusters[order]], kind="stable")]


class SubgraphSampler(NeighborSampler):
    """Blocks of the subgraph a batch's node set S and its seeds induce (module docstring), one per layer.
    A subclass says which nodes are in S (`_choose`, before each batch) and may weigh the messages."""

    whole_graph_shortcut = False  # a batch's blocks are its subgraph, however large it is

    def __init__(self, graph, layers: int, num_users: int, num_items: int, **options):
        super().__init__(graph, [-1] * layers, num_users, num_items, **options)
        self.seeds = None  # the batch's seeds, known when its first (innermost) layer is drawn

    def sample(self, users, items):
        users, items = np.asarray(users, np.int64), np.asarray(items, np.int64)
        self._choose(users)
        try:
            return super().sample(users, items)
        finally:
            self.seeds = None

    def _choose(self, users: np.ndarray) -> None:
        raise NotImplementedError

    def _inside(self, nodes: np.ndarray) -> np.ndarray:
        """Which homogeneous `nodes` are in S."""
        raise NotImplementedError

    def _weight(self, src: np.ndarray, dst: np.ndarray, src_seed: np.ndarray) -> np.ndarray | None:
        """The weights of messages src -> dst (homogeneous ids, src in S or a seed), or None for 1."""
        return None

    def _draw(self, users, items, fanout, unbatched):
        dst_nodes = {"user": users, "item": items + self.num_users}
        if self.seeds is None:  # NeighborSampler draws the seeds' layer first
            self.seeds = KeySet(np.concatenate(list(dst_nodes.values())))
        offset = {"user": 0, "item": self.num_users}
        for relation, src, dst_index, weight in super()._draw(users, items, fanout, unbatched):
            src_type, dst_type = RELATIONS[relation].ends
            node = src + offset[src_type]
            seed = self.seeds.contains(node)
            keep = self._inside(node) | seed
            node, seed, src, dst_index = node[keep], seed[keep], src[keep], dst_index[keep]
            weight = None if weight is None else weight[keep]
            more = self._weight(node, dst_nodes[dst_type][dst_index], seed)
            if more is not None:
                weight = more if weight is None else weight * more
            yield relation, src, dst_index, weight


class ClusterSampler(SubgraphSampler):
    """Cluster-GCN: S = the nodes of the batch's users' clusters; clusters: each homogeneous node's
    cluster (users, then items: Partitions.clusters)."""

    def __init__(self, graph, layers: int, num_users: int, num_items: int, clusters: np.ndarray, **options):
        super().__init__(graph, layers, num_users, num_items, **options)
        self.clusters = np.asarray(clusters)
        self.batch_clusters = np.zeros(int(self.clusters.max(initial=-1)) + 1, bool)
        self.chosen = np.zeros(0, np.int64)

    def _choose(self, users):
        self.batch_clusters[self.chosen] = False
        self.chosen = self.clusters[users]
        self.batch_clusters[self.chosen] = True

    def _inside(self, nodes):
        return self.batch_clusters[self.clusters[nodes]]


class SaintSampler(SubgraphSampler):
    """GraphSAINT's node sampler: S = `nodes` draws from q (`importance`), messages weighted by the
    inverse inclusion probabilities of the module docstring. q: `importance(graph, ...)` when precomputed."""

    def __init__(self, graph, layers: int, num_users: int, num_items: int, nodes: int, q=None, **options):
        super().__init__(graph, layers, num_users, num_items, **options)
        self.q = importance(graph, num_users, num_items) if q is None else q
        self.nodes = nodes
        self.drawn = np.zeros(len(self.q), bool)
        self.chosen = np.zeros(0, np.int64)

    def inclusion(self, q: np.ndarray) -> np.ndarray:
        """P(v in S) = 1 - (1 - q)^n for one node's or a pair's (summed) probability q."""
        return -np.expm1(self.nodes * np.log1p(-np.minimum(q, 1.0 - 1e-12)))

    def _choose(self, users):
        self.drawn[self.chosen] = False
        self.chosen = self.rng.choice(len(self.q), size=self.nodes, p=self.q)
        self.drawn[self.chosen] = True

    def _inside(self, nodes):
        return self.drawn[nodes]

    def _weight(self, src, dst, src_seed):
        p_src, p_dst = self.inclusion(self.q[src]), self.inclusion(self.q[dst])
        both = p_src + p_dst - self.inclusion(self.q[src] + self.q[dst])
        weight = np.where(self.seeds.contains(dst), 1.0 / p_src, p_dst / np.maximum(both, 1e-300))
        return np.where(src_seed, 1.0, weight).astype(np.float32)
