"""A trainer's batches: training pairs -> `Batch` (negatives, the blocks of `train.sampler`).
Neighbourhoods, random walks and the users' positives come from the trainer's own machine's partition
in local memory where it holds them (`LocalFirstNeighborhoods`)."""
from __future__ import annotations

import numpy as np
import torch

from gnnrec import UserError, dgl_adapter
from gnnrec.model.blocks import Batch
from gnnrec.samplers.full_graph import FullGraphSampler
from gnnrec.samplers.importance import NodeSampler
from gnnrec.samplers.negatives import NEGATIVES, HardNegatives, Positives, WithHard
from gnnrec.samplers.neighbor import NeighborSampler, TimeDecay
from gnnrec.samplers.neighborhoods import LocalFirstNeighborhoods, served
from gnnrec.samplers.prefetch import Prefetcher
from gnnrec.samplers.random_walk import RandomWalkSampler
from gnnrec.samplers.subgraph import ClusterSampler, SaintSampler, epoch_order
from gnnrec.trainer.phases import Phases


SECONDS = {"second": 1, "hour": 3600, "day": 86400, "week": 7 * 86400}


def node_inputs(model, graph):
    """`model.inputs` over the servers' node features: (node type, per-type ids, their ID rows) -> their
    h0 (RowAdam.rows, LayerwiseInference); None when the model reads ID rows only (train.inputs=id)."""
    if model.inputs is None:
        return None

    def inputs(node_type: str, ids: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        features = None
        if node_type in model.inputs.proj:
            features = torch.from_numpy(dgl_adapter.dist_values(graph, node_type, "feat", ids.cpu().numpy()))
        return model.inputs(node_type, rows, None if features is None else features.to(rows.device))
    return inputs


def time_decay(train_cfg, partitions) -> TimeDecay | None:
    """`train.time_decay` per timestamp second (timestamps are seconds), from the partitions' newest
    training timestamp; None when off. A UserError when the training edges have no timestamps."""
    if not train_cfg.time_decay.rate:
        return None
    if train_cfg.sampler in ("random_walk", "full_graph", "none"):
        raise UserError(f"train.time_decay.rate={train_cfg.time_decay.rate}: weighs the edges of sampled blocks, not "
                        f"train.sampler={train_cfg.sampler}")
    if "newest_timestamp" not in partitions.stats:
        raise UserError(f"train.time_decay.rate={train_cfg.time_decay.rate}: the training edges of {partitions.path} "
                        "have no timestamps (ingest.interactions.timestamp_column, then partition again)")
    decay = train_cfg.time_decay
    return TimeDecay(decay.rate / SECONDS[decay.unit], partitions.stats["newest_timestamp"])


def block_sampler(train_cfg, graph, num_users: int, num_items: int, inference: bool = False, clusters=None, **options):
    """The block sampler `train.sampler` names, over a `Neighborhoods` graph: `train.fanouts` uniform
    neighbours per layer, random-walk blocks (`train.random_walk`; with `inference`, the sampler of
    layer-wise inference and evaluation: `inference_walks` walks per node), FastGCN's importance-sampled
    layers (`train.node_sampling`), the subgraph of the batch's `clusters` (Partitions.clusters) or
    GraphSAINT's node-sampled subgraph (`train.saint`); with `inference`, the last three draw whole
    neighbourhoods. options: the sampler's negatives, num_negatives, exclude_batch_edges, time_decay
    (not random walks)."""
    if train_cfg.sampler == "random_walk":
        w = train_cfg.random_walk
        walks = w.inference_walks if inference else w.walks
        return RandomWalkSampler(graph, train_cfg.layers, num_users, num_items, walks=walks, length=w.length,
                                 restart_prob=w.restart_prob, neighbors=w.neighbors, seed=train_cfg.seed, **options)
    if train_cfg.sampler in ("node", "cluster", "saint", "full_graph") and inference:  # the layers they estimate
        return NeighborSampler(graph, [-1] * train_cfg.layers, num_users, num_items, seed=train_cfg.seed, **options)
    if train_cfg.sampler == "node":
        return NodeSampler(graph, [train_cfg.node_sampling.nodes] * train_cfg.layers, num_users, num_items,
                           seed=train_cfg.seed, **options)
    if train_cfg.sampler == "cluster":
        return ClusterSampler(graph, train_cfg.layers, num_users, num_items, clusters, seed=train_cfg.seed, **options)
    if train_cfg.sampler == "saint":
        return SaintSampler(graph, train_cfg.layers, num_users, num_items, train_cfg.saint.nodes, seed=train_cfg.seed,
                            **options)
    return NeighborSampler(graph, train_cfg.fanouts, num_users, num_items, seed=train_cfg.seed, **options)


class BatchMaker:
    """Training-edge ids -> Batch: endpoints, negatives (never the user's positives when asked), blocks.

    partitions: data/formats.Partitions (mined negatives are in dataset ids, the graph in partition ids)."""

    def __init__(self, graph, train_cfg, partitions, hard_negatives=None, social: bool = False):
        self.graph, self.train_cfg, self.phases = graph, train_cfg, Phases()
        self.num_users, self.num_items = graph.num_nodes("user"), graph.num_nodes("item")
        if train_cfg.negatives == "popularity":
            degree = dgl_adapter.dist_node_in_degrees(graph, "item", np.arange(self.num_items))
            self.negatives = NEGATIVES["popularity"](degree)
        else:
            self.negatives = NEGATIVES[train_cfg.negatives](self.num_items)
        if hard_negatives is not None:
            id_maps = (partitions.partition_ids("user"), partitions.partition_ids("item"))
            self.negatives = WithHard(self.negatives, HardNegatives(hard_negatives, self.num_users, self.num_items,
                                                                    id_maps=id_maps))
        self.sampler = self.neighborhoods = None
        self.clusters = partitions.clusters() if train_cfg.sampler == "cluster" else None
        self.num_clusters = partitions.stats.get("clusters", 0)
        blocks = train_cfg.sampler != "none" and train_cfg.layers
        self.time_decay = time_decay(train_cfg, partitions) if blocks else None
        if train_cfg.sampler == "full_graph":  # its own graph and positives, once
            csr, own = dgl_adapter.local_in_csr(graph)
            self.sampler = FullGraphSampler(csr, own, self.num_users, self.num_items, self.negatives,
                                            train_cfg.num_negatives, train_cfg.layers, train_cfg.exclude_positives)
        elif blocks or train_cfg.exclude_positives:
            self.neighborhoods = served(graph, social, times=self.time_decay is not None)
        self.positives_per_batch = train_cfg.exclude_positives and not self._positives_once()
        if blocks and self.sampler is None:
            self.sampler = block_sampler(train_cfg, self.neighborhoods, self.num_users, self.num_items,
                                         clusters=self.clusters,
                                         time_decay=self.time_decay, negatives=self.negatives,
                                         num_negatives=train_cfg.num_negatives)

    def _positives_once(self) -> bool:
        """Every user's training items as the negatives' positives, once, where this machine's partition holds
        them all (or the full-graph sampler gave its own); False: each batch fetches its users' items."""
        if isinstance(self.sampler, FullGraphSampler):
            return True
        local = isinstance(self.neighborhoods, LocalFirstNeighborhoods)
        user_items = self.neighborhoods.user_items() if local else None
        if user_items is None:
            return False
        self.negatives.positives = Positives.of_users(*user_items, self.num_items)
        return True

    def start_epoch(self, round_epoch: int) -> None:
        """PinSage's curriculum: epoch n of a hard-negative round (0-based) adds n mined negatives."""
        if isinstance(self.negatives, WithHard):
            self.negatives.num_hard = round_epoch

    @property
    def num_hard(self) -> int:
        """Mined negatives per positive in the current epoch (0 without train.hard_negatives)."""
        return self.negatives.num_hard if isinstance(self.negatives, WithHard) else 0

    def epoch_order(self, users: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The positions of a trainer's pairs (users: their users) in the order an epoch visits them:
        shuffled; with train.sampler=cluster, cluster by cluster (samplers/subgraph.epoch_order)."""
        if self.clusters is None:
            return rng.permutation(len(users))
        return epoch_order(self.clusters[users], self.num_clusters, rng)

    def make(self, users: np.ndarray, items: np.ndarray, rng: np.random.Generator) -> Batch:
        """The batch of positive pairs (users[j], items[j])."""
        if self.positives_per_batch:
            with self.phases("positives"):
                their_users, their_items = self.neighborhoods.items_of(np.unique(users))
                self.negatives.positives = Positives(their_users, their_items, self.num_items)
        if self.sampler is not None:
            self.sampler.rng = rng  # negatives reproducible per step (the servers draw the neighbours)
            with self.phases("negatives and blocks"):
                return self.sampler.sample(users, items)
        with self.phases("negatives"):
            neg = self.negatives.sample(users, items, self.train_cfg.num_negatives, rng)
        nodes, inverse = np.unique(np.concatenate([users, self.num_users + items, self.num_users + neg.ravel()]),
                                   return_inverse=True)
        b = len(users)
        local = torch.from_numpy(inverse)
        return Batch(torch.from_numpy(nodes), [], local[:b], local[b:2 * b], local[2 * b:].view(b, -1))

    def ahead(self, users: np.ndarray, items: np.ndarray, chunks, rngs):
        """Batches of the pairs at each chunk's positions in (users, items), one random generator each,
        sampled `prefetch` ahead of the consumer in a background thread."""
        made = (self.make(users[c], items[c], rng) for c, rng in zip(chunks, rngs))
        return Prefetcher(made, depth=self.train_cfg.prefetch) if self.train_cfg.prefetch else made
