"""Whole-graph training (`train.sampler=full_graph`): every step runs the model's layers over the whole
training graph, one block built once, and the loss covers a batch of `train.batch_size` training pairs
and their negatives — the full-graph training of LightGCN's and NGCF's papers.

Why: a sampled block's input grows with the graph until a batch's L-hop neighbourhoods stop overlapping
(8,192 pairs at fanouts [10, 5]: 692k input rows on the 10M log, 797k on the 100M one), so the cost of a
training edge rose 15-20x from 1M to 100M edges. A whole-graph step costs O(edges x layers x dim)
whatever the batch: with a batch that is a fixed share of the epoch (steps per epoch fixed) a training
edge costs the same at any size, and the sparse products run near memory speed, not row by row.

The block holds every interaction both ways (user -> item and item -> user), so its normalized adjacency
is its own transpose: one CSR matrix serves the forward and the backward (`layers.share_transpose`).
The batch's own pairs stay in the graph, as in the papers' full-graph training. Negatives are never a
user's training item: one key set of every training pair, built once (no per-step lookup of the batch
users' items, which grows with their degrees). One partition only: each trainer reads the whole graph
from its machine's shared memory (several trainers on that machine each propagate it).
"""
from __future__ import annotations

import numpy as np
import torch

from gnnrec import UserError
from gnnrec.model.blocks import Batch, Block
from gnnrec.model.layers import share_transpose
from gnnrec.samplers.negatives import Positives


def whole_graph(user_items: tuple[np.ndarray, np.ndarray], item_users: tuple[np.ndarray, np.ndarray],
                num_users: int) -> Block:
    """The block of every node (users, then items from `num_users`) and every interaction both ways, from
    the two in-CSRs (indptr over users, their items) and (indptr over items, their users)."""
    (user_ptr, items), (item_ptr, users) = user_items, item_users
    crow = torch.from_numpy(np.concatenate([user_ptr, item_ptr[1:] + user_ptr[-1]]).astype(np.int64))
    src = torch.from_numpy(np.concatenate([np.asarray(items, np.int64) + num_users, np.asarray(users, np.int64)]))
    degree = crow.diff()
    num_nodes = len(degree)
    dst = torch.repeat_interleave(torch.arange(num_nodes), degree)
    block = Block(src, dst, num_nodes, num_nodes, deg=degree.float())  # its edges come by dst
    share_transpose(block)
    return block


class FullGraphSampler:
    """Training pairs -> `Batch` over the whole graph (see the module docstring).

    csr, own: this machine's partition (dgl_adapter.local_in_csr), which must hold every node;
    negatives: a sampler of samplers/negatives.py, given every training pair as its positives unless
    `exclude_positives` is off."""

    def __init__(self, csr: dict, own: dict, num_users: int, num_items: int, negatives, num_negatives: int,
                 layers: int, exclude_positives: bool = True):
        if own["user"] != (0, num_users) or own["item"] != (0, num_items):
            raise UserError("train.sampler=full_graph: the partitions split the graph; it needs partition.parts=1 "
                            "(each trainer propagates the whole graph from its machine)")
        self.num_users, self.num_items, self.layers = num_users, num_items, layers
        self.block = whole_graph(csr["interacted_by"][:2], csr["interacts"][:2], num_users)
        if exclude_positives:
            negatives.positives = Positives.of_users(*csr["interacted_by"][:2], num_items)
        self.negatives, self.num_negatives = negatives, num_negatives
        self.rng = np.random.default_rng(0)
        self.nodes = torch.arange(num_users + num_items)

    def sample(self, users: np.ndarray, items: np.ndarray) -> Batch:
        neg = self.negatives.sample(users, items, self.num_negatives, self.rng)
        t = torch.from_numpy
        return Batch(self.nodes, [self.block] * self.layers, t(users), t(items + self.num_users),
                     t(neg + self.num_users))

    @torch.no_grad()
    def final(self, gnn, rows) -> dict:
        """{node type: every node's final representation}: one pass of `gnn` (in eval mode) over the whole
        graph, its h0 from `rows(node type)` (every node's of that type)."""
        was_training = gnn.training
        gnn.eval()
        out = gnn(torch.cat([rows("user"), rows("item")]), [self.block] * self.layers)
        gnn.train(was_training)
        return {"user": out[:self.num_users], "item": out[self.num_users:]}
