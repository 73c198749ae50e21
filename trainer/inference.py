"""Layer-wise inference over a DistGraph, and validation metrics computed in user shards.

Every node's representation, exactly as a full-graph forward computes it, without any machine holding
the graph or a whole layer: for l = 1..L, each trainer takes its share of the users and items (its own
partition's nodes first), builds in node batches the block of their whole in-neighbourhood (fanout -1),
reads layer l-1 of those neighbours from the servers' distributed tensors and writes layer l of its
nodes back. Then each node's final representation is the model's `output` of its layers 0..L.
Layer 0 is the ID tables themselves.

Validation ranks every item for each trainer's share of the users (items fetched in full: one
[num_items, d] matrix per trainer), with the users' training items masked, and sums the metrics across
trainers (`RankingStats.all_reduce`).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from gnnrec.trainer.metrics import RankingStats, evaluate

NODE_TYPES = ("user", "item")


class LayerwiseInference:
    """Final representations of all nodes in distributed tensors `self.final[node type]`.

    graph: a DistGraph; gnn: a model of trainer/models.py; tables: {node type: DistEmbedding}.
    The distributed tensors are created once (collectively, by every trainer) and reused per call.
    """

    def __init__(self, graph, gnn, tables: dict, rank: int, world: int, batch_size: int = 4096):
        from gnnrec.partition import dgl_adapter
        from gnnrec.samplers.neighbor import DistNeighborhoods, NeighborSampler

        self.graph, self.gnn, self.batch_size = graph, gnn, batch_size
        self.num_users, self.num_items = graph.num_nodes("user"), graph.num_nodes("item")
        self.sampler = NeighborSampler(DistNeighborhoods(graph), [], self.num_users, self.num_items)
        self.shares = {t: dgl_adapter.dist_node_split(graph, t, rank, world) for t in NODE_TYPES}
        dim = tables["user"].embedding_dim
        num_layers = len(gnn.convs)
        with torch.no_grad():
            out_dim = gnn.output([torch.zeros(1, dim)] * (num_layers + 1)).shape[1]
        self.layers = [{t: tables[t].weight for t in NODE_TYPES}] + [
            {t: dgl_adapter.dist_tensor(graph, t, dim, f"layer{l}_{t}") for t in NODE_TYPES}
            for l in range(1, num_layers + 1)]
        self.final = {t: dgl_adapter.dist_tensor(graph, t, out_dim, f"final_{t}") for t in NODE_TYPES}

    def _rows(self, layer: dict, nodes: np.ndarray) -> torch.Tensor:
        """Rows of homogeneous node ids (users, then items offset by num_users) from a layer's tensors."""
        users = nodes < self.num_users
        first = layer["user"][torch.from_numpy(nodes[users])]
        out = first.new_empty((len(nodes), first.shape[1]))
        out[torch.from_numpy(users)] = first
        out[torch.from_numpy(~users)] = layer["item"][torch.from_numpy(nodes[~users] - self.num_users)]
        return out

    def _batches(self):
        for node_type in NODE_TYPES:
            offset = 0 if node_type == "user" else self.num_users
            share = self.shares[node_type]
            for start in range(0, len(share), self.batch_size):
                ids = share[start:start + self.batch_size]
                yield node_type, ids, ids + offset

    @torch.no_grad()
    def run(self) -> dict:
        was_training = self.gnn.training
        self.gnn.eval()
        for index in range(len(self.gnn.convs)):
            for node_type, ids, nodes in self._batches():
                block, src_nodes = self.sampler.node_block(nodes, fanout=-1)
                h = self.gnn.layer(index, block, self._rows(self.layers[index], src_nodes))
                self.layers[index + 1][node_type][torch.from_numpy(ids)] = h
            _barrier()
        for node_type, ids, nodes in self._batches():
            layers = [self._rows(layer, nodes) for layer in self.layers]
            self.final[node_type][torch.from_numpy(ids)] = self.gnn.output(layers)
        _barrier()
        self.gnn.train(was_training)
        return self.final


def _barrier() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.barrier()


def held_out_edges(partitions: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(user, item) held-out pairs of a split in partition ids, from every part's edges/{split}.parquet."""
    users, items = [], []
    paths = sorted(Path(partitions).glob(f"part*/edges/{split}.parquet"))
    if not paths:
        raise FileNotFoundError(f"no part*/edges/{split}.parquet under {partitions}")
    for path in paths:
        table = pq.read_table(path, columns=["user", "item"])
        users.append(table["user"].to_numpy())
        items.append(table["item"].to_numpy())
    empty = np.zeros(0, np.int64)
    return np.concatenate(users or [empty]), np.concatenate(items or [empty])


def sharded_metrics(graph, final: dict, my_users: np.ndarray, held_out: tuple, ks) -> dict:
    """Full-ranking metrics of `my_users` against every item, summed across trainers."""
    from gnnrec.partition import dgl_adapter

    num_users, num_items = graph.num_nodes("user"), graph.num_nodes("item")
    position = np.full(num_users, -1, np.int64)
    position[my_users] = np.arange(len(my_users))

    def local(users, items):
        keep = position[users] >= 0
        return torch.from_numpy(np.stack([position[users[keep]], items[keep]]))

    known = local(*dgl_adapter.dist_out_neighbors(graph, my_users))
    U = final["user"][torch.from_numpy(my_users)]
    I = final["item"][torch.arange(num_items)]
    stats = RankingStats(ks, num_items)
    evaluate(U, I, local(*held_out), known, stats=stats)
    return stats.all_reduce().result()
