"""GraphSAGE neighbour sampling for edge mini-batches, built straight into `model.blocks.Batch`.

For a batch of positive pairs (user u_b, item i_b), ids 0-based per type:

1. Negatives: `num_negatives` items per pair from the negative sampler (`negatives=None`: in-batch
   negatives, Batch.neg_items is None).
2. Seeds: the unique nodes among the users, positive and negative items, in the homogeneous node space
   of model/blocks.py (users [0, U), items [U, U + I)). The roles (users, pos_items, neg_items) are
   the seeds' local indices.
3. Layers from the last (the seeds) outwards, `fanouts[l]` for block l (DGL's NeighborSampler order):
   for each dst node, up to `fanout` in-neighbours per relation, uniformly without replacement
   (-1 = all of them):
       interacted_by  item -> user   a user hears the items it interacted with
       interacts      user -> item   an item hears its users
       follows        user -> user   a user hears its followers               } with social edges:
       followed_by    user -> user   a user hears those it follows (reverse)  } ties count both ways
   With `exclude_batch_edges`, sampled edges that are a positive pair of the batch (either direction)
   are dropped, so no seed hears its own label. They are dropped after sampling: a node whose sample
   drew a batch edge gets one message fewer.
4. The block's src nodes are its dst nodes followed by the new neighbours (ascending ids), edges
   are sorted by dst (the CSR order of the forward's sparse product) and relabelled to local
   indices (numpy; no dgl.to_block, which returns garbage on inconsistent input), `deg` is each src
   node's whole-graph in-degree over the relations used (the degrees of the symmetric graph that
   `model.blocks.graph_edges` builds), `etype` INTERACTION or SOCIAL. The src nodes become the next
   (outer) layer's dst nodes.

Graph back-ends (`Neighborhoods`: a local CSR, or the graph servers) are in samplers/neighborhoods.py.
Step 3's draw is `_draw`; samplers/random_walk.py draws the layers by random walks instead (and sets
`Block.weight`), the rest is this module's.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import numpy as np
import torch

from gnnrec.arrays import KeySet, ranges
from gnnrec.model.blocks import INTERACTION, SOCIAL, Batch, Block, time_decay
from gnnrec.relations import RELATIONS
from gnnrec.samplers.neighborhoods import Neighborhoods

# A batch whose whole neighbourhoods (fanouts all -1) hold this share of the graph's nodes makes every later
# batch train on the whole graph: one block built once (WholeGraph), not the same neighbourhoods drawn again.
# Gowalla, batches of 65,536 x 16 negatives: 70,839 of 70,839 nodes; a batch alone 0.36 -> 0.20 s (the rest: negatives).
WHOLE_GRAPH_SHARE = 0.9

# ---------------------------------------------------------------- the sampler

class Relabeler:
    """Global -> local ids for a block: the unique `dst_nodes` first, then the new ids among `src`
    (ascending). A scratch array over all nodes (-1 = not in the block) makes it O(edges); only the
    touched entries are reset, so its cost per block does not grow with the graph."""

    def __init__(self, num_nodes: int):
        self.local = np.full(num_nodes, -1, np.int64)

    def __call__(self, dst_nodes: np.ndarray, src: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        local = self.local
        local[dst_nodes] = np.arange(len(dst_nodes))
        new, _ = self.unique(src[local[src] < 0], start=len(dst_nodes), keep=True)
        src_local = local[src]
        local[dst_nodes] = local[new] = -1
        return np.concatenate([dst_nodes, new]), src_local

    def unique(self, ids: np.ndarray, start: int = 0, keep: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """np.unique(ids, return_inverse=True) (inverse offset by `start`), numbering the distinct ids
        in the scratch array (left there with `keep`, for the caller to reset): a sort of the m
        distinct ids only, not of all n (a batch's 1.1M seeds are 70k nodes on Gowalla: 13 ms, not 150)."""
        local, positions = self.local, np.arange(len(ids))
        local[ids] = positions  # the last occurrence of each id wins
        distinct = np.sort(ids[local[ids] == positions])
        local[distinct] = np.arange(start, start + len(distinct))
        inverse = local[ids]
        if not keep:
            local[distinct] = -1
        return distinct, inverse


class NeighborSampler:
    """Edge mini-batches -> `Batch` with one block per fanout (algorithm in the module docstring).

    fanouts[l] is block l's fanout (first layer first, as DGL's NeighborSampler). negatives: a sampler
    of samplers/negatives.py (None: in-batch negatives). One instance per thread (it keeps a scratch
    array and a random generator); `Prefetcher` gives each batch to one thread anyway. time_decay: weighs
    each drawn edge that comes with a timestamp (a `graph` built with times) by its age (Block.weight).
    """

    whole_graph_shortcut = True  # whole neighbourhoods that are most of the graph: WholeGraph from then on

    def __init__(self, graph: Neighborhoods, fanouts: list[int], num_users: int, num_items: int,
                 negatives=None, num_negatives: int = 1, exclude_batch_edges: bool = True, seed: int = 0,
                 time_decay: Optional["TimeDecay"] = None):
        self.graph, self.fanouts, self.time_decay = graph, [int(f) for f in fanouts], time_decay
        self.num_users, self.num_items = num_users, num_items
        self.negatives, self.num_negatives = negatives, num_negatives
        self.exclude_batch_edges = exclude_batch_edges
        self.rng = np.random.default_rng(seed)
        self.relabel = Relabeler(num_users + num_items)
        self.whole = None  # WholeGraph, once a batch's whole neighbourhoods were most of the graph

    def sample(self, users: np.ndarray, items: np.ndarray) -> Batch:
        users, items = np.asarray(users, np.int64), np.asarray(items, np.int64)
        neg = None
        if self.negatives is not None:
            neg = np.asarray(self.negatives.sample(users, items, self.num_negatives, self.rng), np.int64)
        if self.whole is not None:
            return self.whole.batch(users, items, neg, len(self.fanouts), self.exclude_batch_edges)
        seeds = [users, items + self.num_users] + ([] if neg is None else [neg.ravel() + self.num_users])
        nodes, role = self.relabel.unique(np.concatenate(seeds))
        excluded = None
        if self.exclude_batch_edges:
            excluded = KeySet(users * self.num_items + items), {"user": KeySet(users), "item": KeySet(items)}
        blocks = []
        for fanout in reversed(self.fanouts):
            block, nodes = self._block(nodes, fanout, excluded)
            block.by_src()  # the backward pass's order, sorted here rather than in the trainer's step
            blocks.insert(0, block)
        num_nodes = self.num_users + self.num_items
        whole = all(f < 0 for f in self.fanouts) and len(nodes) >= WHOLE_GRAPH_SHARE * num_nodes
        if whole and self.whole_graph_shortcut:
            self.whole = WholeGraph(self.graph_block(num_nodes), self.num_users, self.num_items)
        b = len(users)
        t = torch.from_numpy
        return Batch(t(nodes), blocks, t(role[:b]), t(role[b:2 * b]),
                     None if neg is None else t(role[2 * b:].reshape(neg.shape)))

    def node_block(self, nodes: np.ndarray, fanout: int = -1) -> tuple[Block, np.ndarray]:
        """One block into `nodes` (unique homogeneous ids; -1: whole neighbourhoods), and its src nodes
        (layer-wise inference)."""
        return self._block(np.asarray(nodes, np.int64), fanout, None)

    def graph_block(self, num_nodes: int, batch: int = 65536) -> Block:
        """One block over all `num_nodes` nodes (src = dst = every node), drawn `batch` dst nodes at a
        time: a whole-graph layer of a model trained on this sampler's blocks (full-graph evaluation)."""
        src, dst, weight, etype, deg = [], [], [], [], torch.zeros(num_nodes)
        for start in range(0, num_nodes, batch):
            block, src_nodes = self.node_block(np.arange(start, min(start + batch, num_nodes)))
            ids = torch.from_numpy(src_nodes)
            src.append(ids[block.src])
            dst.append(ids[block.dst])
            weight.append(block.weight)
            etype.append(block.etype)
            deg[ids] = block.deg
        block = Block(torch.cat(src), torch.cat(dst), num_nodes, num_nodes, etype=torch.cat(etype), deg=deg,
                      weight=None if weight[0] is None else torch.cat(weight))
        block.by_dst()
        return block

    def _block(self, dst_nodes: np.ndarray, fanout: int, excluded) -> tuple[Block, np.ndarray]:
        """The block whose dst nodes are `dst_nodes` (global ids), and its src nodes."""
        src, dst, etype, weight = self._sample_layer(dst_nodes, fanout, excluded)
        if not (dst[1:] >= dst[:-1]).all():  # edges by dst, sorted here rather than in the trainer's step
            order = np.argsort(dst, kind="stable")  # (whole neighbourhoods come sorted: no copies)
            src, dst, etype, weight = src[order], dst[order], etype[order], None if weight is None else weight[order]
        src_nodes, src_local = self.relabel(dst_nodes, src)
        block = Block(torch.from_numpy(src_local), torch.from_numpy(dst), len(src_nodes), len(dst_nodes),
                      weight=None if weight is None else torch.from_numpy(weight),
                      etype=torch.from_numpy(etype), deg=torch.from_numpy(self._degree(src_nodes)))
        block.by_dst()
        return block, src_nodes

    def _split(self, nodes: np.ndarray):
        """(positions of users, their user ids, positions of items, their item ids)."""
        user_at, item_at = np.flatnonzero(nodes < self.num_users), np.flatnonzero(nodes >= self.num_users)
        return user_at, nodes[user_at], item_at, nodes[item_at] - self.num_users

    def _sample_layer(self, dst_nodes, fanout, excluded):
        """Sampled edges into dst_nodes: (global src id, local dst index, etype, weight or None), batch
        edges dropped."""
        user_at, users, item_at, items = self._split(dst_nodes)
        at = {"user": (user_at, users), "item": (item_at, items)}

        def unbatched(relation, src, dst_index, *more):
            """(src, dst_index, *more) without the batch's positive pairs."""
            src_type, dst_type = RELATIONS[relation].ends
            if excluded is None or src_type == dst_type:
                return src, dst_index, *more
            keep = ~self._batch_edges(excluded, src_type, src, at[dst_type][1], dst_index)
            return tuple(a[keep] for a in (src, dst_index, *more))

        srcs, dsts, etypes, weights = [], [], [], []
        for relation, src, dst_index, weight in self._draw(users, items, fanout, unbatched):
            src_type, dst_type = RELATIONS[relation].ends
            srcs.append(src + (self.num_users if src_type == "item" else 0))
            dsts.append(at[dst_type][0][dst_index])
            etypes.append(np.full(len(src), INTERACTION if src_type != dst_type else SOCIAL, np.int64))
            weights.append(weight)
        empty = np.zeros(0, np.int64)
        weight = None if all(w is None for w in weights) else np.concatenate(
            [np.ones(len(s), np.float32) if w is None else w.astype(np.float32) for s, w in zip(srcs, weights)])
        return (np.concatenate(srcs or [empty]), np.concatenate(dsts or [empty]),
                np.concatenate(etypes or [empty]), weight)

    def _draw(self, users, items, fanout, unbatched):
        """In-edges of the (unique) users and items: (relation, src ids, position of the dst node in
        users or items, weight or None) per relation, through `unbatched` (the batch's pairs dropped).
        Up to `fanout` uniform in-neighbours per relation (-1: all), weighted by their age with a time decay."""
        for relation, src, dst_index, time in self.graph.sample(users, items, fanout, self.rng):
            if self.time_decay is None or time is None:
                yield relation, *unbatched(relation, src, dst_index), None
            else:
                yield relation, *unbatched(relation, src, dst_index, self.time_decay(time))

    def _batch_edges(self, excluded, src_type, src, dst_ids, dst_index) -> np.ndarray:
        """Which interaction edges (src -> dst_ids[dst_index]) are positive pairs of the batch: only
        edges into a batch user or item can be, so the pair lookup runs on those alone."""
        keys, endpoints = excluded
        dst_type = "item" if src_type == "user" else "user"
        drop = np.zeros(len(src), bool)
        maybe = np.flatnonzero(endpoints[dst_type].contains(dst_ids)[dst_index])
        user, item = src[maybe], dst_ids[dst_index[maybe]]
        if src_type == "item":
            user, item = item, user
        drop[maybe] = keys.contains(user * self.num_items + item)
        return drop

    def _degree(self, nodes: np.ndarray) -> np.ndarray:
        user_at, users, item_at, items = self._split(nodes)
        user_degree, item_degree = self.graph.degree(users, items)
        deg = np.empty(len(nodes), np.float32)
        deg[user_at], deg[item_at] = user_degree, item_degree
        return deg


class TimeDecay(NamedTuple):
    """Edge weight exp(-rate (newest - t)) of an edge with timestamp t (model.blocks.time_decay): rate per
    timestamp unit, newest the newest training timestamp (no edge is younger; 1 for it)."""
    rate: float
    newest: int

    def __call__(self, t: np.ndarray) -> np.ndarray:
        return time_decay(torch.from_numpy(self.newest - np.asarray(t, np.int64)), self.rate).numpy()


class WholeGraph:
    """The blocks of a batch whose whole neighbourhoods are (nearly) the graph: one block over every
    node (NeighborSampler.graph_block, sorted both ways once), less the batch's positive pairs in both
    directions, for every layer. The seeds' roles are their homogeneous ids. A seed's output is the same
    as from its sampled neighbourhoods: nodes beyond L hops send nothing that reaches it in L layers."""

    def __init__(self, block, num_users: int, num_items: int):
        self.block, self.num_users, self.num_items = block, num_users, num_items
        block.by_src()
        src, dst = block.src.numpy(), block.dst.numpy()
        user, item = np.minimum(src, dst), np.maximum(src, dst) - num_users  # an interaction's two ends
        key = np.where(block.etype.numpy() == INTERACTION, user * num_items + item, -1)
        self.by_key = np.argsort(key, kind="stable")  # edge positions by pair key
        self.keys = key[self.by_key]

    def batch(self, users: np.ndarray, items: np.ndarray, neg, num_layers: int, exclude: bool) -> Batch:
        block = self.block
        if exclude:
            pairs = users * self.num_items + items
            first = np.searchsorted(self.keys, pairs, "left")
            drop = self.by_key[ranges(first, np.searchsorted(self.keys, pairs, "right") - first)]
            keep = torch.ones(block.num_edges, dtype=torch.bool)
            keep[torch.from_numpy(drop)] = False
            block = block.edge_subset(keep)
        t = torch.from_numpy
        return Batch(torch.arange(block.num_src), [block] * num_layers, t(users), t(items + self.num_users),
                     None if neg is None else t(neg + self.num_users))
