"""Layer-wise inference over a DistGraph, and validation metrics computed in user shards.

Every node's representation, exactly as a full-graph forward computes it, without any machine holding
the graph or a whole layer: for l = 1..L, each trainer takes its share of the users and items (its own
partition's nodes first), builds in node batches the block of their whole in-neighbourhood (fanout -1),
reads layer l-1 of those neighbours from the servers' distributed tensors and writes layer l of its
nodes back. Then each node's final representation is the model's `output` of its layers 0..L.
Layer 0 is the ID tables themselves. A model trained on random-walk blocks (train.sampler=random_walk)
sees the neighbourhoods it was trained on instead: each node's T most visited nodes, drawn by
`train.random_walk.inference_walks` walks per node (many, so that they vary little).

Validation ranks every item for each trainer's share of the users (items fetched in full: one
[num_items, d] matrix per trainer), with the users' training items masked, and sums the metrics across
trainers (`RankingStats.all_reduce`).
"""
from __future__ import annotations

import time

import numpy as np
import torch

from gnnrec import NODE_TYPES, dgl_adapter
from gnnrec.model.models import uses_social
from gnnrec.ranking.metrics import RankingStats, evaluate
from gnnrec.samplers.neighborhoods import served
from gnnrec.trainer.batches import block_sampler


class LayerwiseInference:
    """Final representations of all nodes in distributed tensors `self.final[node type]`.

    w: the worker (launch/job.WorkerSession: its DistGraph, ID tables, rank and world); gnn: a model of
    model/models.py; train_cfg: the training config (the blocks it trained on: train.sampler);
    neighborhoods: the graph back-end (default: this machine's partition from local memory, the rest
    through the servers); time_decay:
    the edge weights it trained with (trainer/batches.time_decay); inputs: the model's h0 from ID rows and
    features (trainer/batches.node_inputs; None: layer 0 is the ID tables themselves).
    `run(progress)` reports (desc, batch, batches) of each layer to `progress` (WorkerSession.progress).
    The distributed tensors are created once (collectively, by every trainer) and reused per call.
    """

    def __init__(self, w, gnn, train_cfg, batch_size: int = 4096, neighborhoods=None, time_decay=None, inputs=None):
        graph, tables, rank, world = w.graph, w.tables, w.rank, w.world
        self.graph, self.gnn, self.batch_size, self.tables, self.inputs = graph, gnn, batch_size, tables, inputs
        self.num_users, self.num_items = graph.num_nodes("user"), graph.num_nodes("item")
        neighborhoods = neighborhoods or served(graph, uses_social(gnn), times=time_decay is not None)
        self.sampler = block_sampler(train_cfg, neighborhoods, self.num_users, self.num_items, inference=True,
                                     time_decay=time_decay)
        self.shares = {n: dgl_adapter.dist_node_split(graph, n, rank, world) for n in NODE_TYPES}
        dim = tables["user"].shape[1]
        num_layers = len(gnn.convs)
        with torch.no_grad():
            out_dim = gnn.output([torch.zeros(1, dim)] * (num_layers + 1)).shape[1]
        self.layers = [{n: tables[n] if inputs is None else dgl_adapter.dist_tensor(graph, n, dim, f"layer0_{n}")
                        for n in NODE_TYPES}] + [
            {n: dgl_adapter.dist_tensor(graph, n, dim, f"layer{l}_{n}") for n in NODE_TYPES}
            for l in range(1, num_layers + 1)]
        self.final = {n: dgl_adapter.dist_tensor(graph, n, out_dim, f"final_{n}") for n in NODE_TYPES}

    def _rows(self, layer: dict, nodes: np.ndarray) -> torch.Tensor:
        """Rows of homogeneous node ids (users, then items offset by num_users) from a layer's tensors."""
        users = nodes < self.num_users
        first = layer["user"][torch.from_numpy(nodes[users])]
        out = first.new_empty((len(nodes), first.shape[1]))
        out[torch.from_numpy(users)] = first
        out[torch.from_numpy(~users)] = layer["item"][torch.from_numpy(nodes[~users] - self.num_users)]
        return out

    def _batches(self):
        """(node type, ids, homogeneous ids) of this worker's node batches."""
        for node_type in NODE_TYPES:
            offset = 0 if node_type == "user" else self.num_users
            share = self.shares[node_type]
            for start in range(0, len(share), self.batch_size):
                ids = share[start:start + self.batch_size]
                yield node_type, ids, ids + offset

    @torch.no_grad()
    def run(self, progress=None) -> dict:
        was_training = self.gnn.training
        self.gnn.eval()
        self.layer_seconds = []
        num_layers = len(self.gnn.convs)
        batches = sum(-(-len(share) // self.batch_size) for share in self.shares.values())
        if self.inputs is not None:  # layer 0: every node's h0 from its ID row and features
            for node_type, ids, _ in self._batches():
                index = torch.from_numpy(ids)
                self.layers[0][node_type][index] = self.inputs(node_type, index, self.tables[node_type][index])
            barrier()
        for index in range(num_layers):
            started = time.perf_counter()
            for step, (node_type, ids, nodes) in enumerate(self._batches()):
                if progress is not None:
                    progress(f"inference layer {index + 1}/{num_layers}", step, batches)
                block, src_nodes = self.sampler.node_block(nodes)
                h = self.gnn.layer(index, block, self._rows(self.layers[index], src_nodes))
                self.layers[index + 1][node_type][torch.from_numpy(ids)] = h
            if progress is not None:  # done: the wait for the other workers below is not a stuck step
                progress(f"inference layer {index + 1}/{num_layers}", batches, batches)
            barrier()
            self.layer_seconds.append(time.perf_counter() - started)
        for node_type, ids, nodes in self._batches():
            layers = [self._rows(layer, nodes) for layer in self.layers]
            self.final[node_type][torch.from_numpy(ids)] = self.gnn.output(layers)
        barrier()
        self.gnn.train(was_training)
        return self.final

    def release(self) -> None:
        """Free the servers' memory of the layers before the final one (a 100M-row log's two layers hold
        3.5 GB); `run` cannot be called again. Every trainer calls it: deleting a distributed tensor is
        collective (DGL deletes a tensor its owners no longer reference)."""
        self.layers = self.layers[:1] if self.inputs is None else []  # layer 0 is then the ID tables


def barrier() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.barrier()


def sharded_metrics(graph, final: dict, my_users: np.ndarray, held_out: tuple, ks,
                    also_known: tuple | None = None) -> dict:
    """Full-ranking metrics of `my_users` against every item, summed across trainers; their training items
    are masked, and the (user, item) pairs `also_known` (validation's, when testing). Only those with
    held-out items are ranked and read (a sample of 10,000 users at 100M rows: not 4.9M users' rows and
    training items, which took the trainer past the machine's memory)."""
    my_users = my_users[np.isin(my_users, held_out[0])]
    num_users, num_items = graph.num_nodes("user"), graph.num_nodes("item")
    position = np.full(num_users, -1, np.int64)
    position[my_users] = np.arange(len(my_users))

    def mine(pairs: tuple) -> torch.Tensor:
        users, items = pairs
        keep = position[users] >= 0
        return torch.from_numpy(np.stack([position[users[keep]], items[keep]]))
    truth, known = mine(held_out), known_items(graph, my_users)
    if also_known is not None:
        known = torch.cat([known, mine(also_known)], 1)
    U = final["user"][torch.from_numpy(my_users)]
    I = final["item"][torch.arange(num_items)]
    stats = RankingStats(ks, num_items)
    evaluate(U, I, truth, known, stats=stats)
    return stats.all_reduce().result()


def known_items(graph, users: np.ndarray) -> torch.Tensor:
    """[2, E] (position in `users`, item) of the users' training items (to mask from rankings)."""
    if not len(users):
        return torch.zeros(2, 0, dtype=torch.int64)
    position = np.full(graph.num_nodes("user"), -1, np.int64)
    position[users] = np.arange(len(users))
    src, dst = dgl_adapter.dist_out_neighbors(graph, users)
    return torch.from_numpy(np.stack([position[src], dst]))
