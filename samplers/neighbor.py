"""GraphSAGE neighbour sampling for edge mini-batches, built straight into `trainer.blocks.Batch`.

For a batch of positive pairs (user u_b, item i_b), ids 0-based per type:

1. Negatives: `num_negatives` items per pair from the negative sampler (`negatives=None`: in-batch
   negatives, Batch.neg_items is None).
2. Seeds: the unique nodes among the users, positive and negative items, in the homogeneous node space
   of trainer/blocks.py (users [0, U), items [U, U + I)). The roles (users, pos_items, neg_items) are
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
   are relabelled to local indices (numpy; no dgl.to_block, DESIGN.md §3.2), `deg` is each src node's
   whole-graph in-degree over the relations used (the degrees of the symmetric graph that
   `trainer.blocks.graph_edges` builds), `etype` INTERACTION or SOCIAL. The src nodes become the next
   (outer) layer's dst nodes.

Graph back-ends (`Neighborhoods`): `CSRNeighborhoods` over in-memory or memory-mapped CSR arrays
(exact and vectorized: a row with at most `fanout` edges gives them all, a longer row a uniform
`fanout`-subset by Floyd's algorithm), and `DistNeighborhoods` over a DistDGL DistGraph (one server
round per layer). `Prefetcher` runs any batch iterator ahead in a thread.
"""
from __future__ import annotations

import queue
import threading
from typing import Iterable, Iterator, Protocol

import numpy as np
import torch

from gnnrec.trainer.blocks import INTERACTION, SOCIAL, Batch, Block

# relation name -> (src node type, dst node type); named after the DGL edge type that carries it
RELATIONS = {
    "interacted_by": ("item", "user"),
    "interacts": ("user", "item"),
    "follows": ("user", "user"),
    "followed_by": ("user", "user"),
}


class Neighborhoods(Protocol):
    """A graph the sampler can ask for in-neighbours. Node ids are 0-based per type."""

    def sample(self, users: np.ndarray, items: np.ndarray, fanout: int, rng: np.random.Generator):
        """Up to `fanout` in-neighbours (-1: all) of each of the (unique) `users` and `items` per
        relation: a list of (relation, src ids, position of the dst node in users or items)."""

    def degree(self, users: np.ndarray, items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Whole-graph in-degrees of users and items over the relations `sample` draws from."""


# ---------------------------------------------------------------- local CSR back-end

def _ranges(start: np.ndarray, length: np.ndarray) -> np.ndarray:
    """start[j] + 0 .. length[j]-1 for every j, concatenated."""
    return np.repeat(start - np.cumsum(length) + length, length) + np.arange(length.sum())


def _distinct_offsets(deg: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """[len(deg), k]: k distinct uniform offsets in [0, d) for each d > k (Floyd's algorithm, vectorized:
    step j draws t in [0, top = d-k+j] and takes top instead when t is already chosen)."""
    chosen = np.empty((len(deg), k), np.int64)
    for j in range(k):
        top = deg - k + j
        t = rng.integers(0, top + 1)
        chosen[:, j] = np.where((chosen[:, :j] == t[:, None]).any(axis=1), top, t)
    return chosen


def sample_rows(indptr: np.ndarray, indices: np.ndarray, rows: np.ndarray, fanout: int,
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Up to `fanout` distinct entries of each CSR row (-1: all): (entry, position of its row in rows)."""
    start = np.asarray(indptr[rows], np.int64)
    deg = np.asarray(indptr[rows + 1], np.int64) - start
    whole = np.flatnonzero(deg <= fanout) if fanout >= 0 else np.arange(len(rows))
    positions, row_of = [_ranges(start[whole], deg[whole])], [np.repeat(whole, deg[whole])]
    if fanout >= 0:
        part = np.flatnonzero(deg > fanout)
        positions.append((start[part, None] + _distinct_offsets(deg[part], fanout, rng)).ravel())
        row_of.append(np.repeat(part, fanout))
    return np.asarray(indices[np.concatenate(positions)], np.int64), np.concatenate(row_of)


def _csr(dst: np.ndarray, src: np.ndarray, num_dst: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(dst, kind="stable")
    indptr = np.zeros(num_dst + 1, np.int64)
    np.cumsum(np.bincount(dst, minlength=num_dst), out=indptr[1:])
    return indptr, np.asarray(src)[order]


class CSRNeighborhoods:
    """`Neighborhoods` over in-CSR arrays per relation, {relation: (indptr over dst, src ids)}; numpy or
    memory-mapped (`from_csr` takes partition/csr.py's arrays as they are)."""

    def __init__(self, csr: dict[str, tuple[np.ndarray, np.ndarray]], num_users: int, num_items: int):
        self.csr = csr
        counts = {"user": np.zeros(num_users, np.int64), "item": np.zeros(num_items, np.int64)}
        for relation, (indptr, _) in csr.items():
            counts[RELATIONS[relation][1]] += np.diff(np.asarray(indptr, np.int64))
        self.user_degree, self.item_degree = counts["user"], counts["item"]

    @classmethod
    def from_edges(cls, user: np.ndarray, item: np.ndarray, num_users: int, num_items: int,
                   social: tuple[np.ndarray, np.ndarray] | None = None) -> "CSRNeighborhoods":
        """From interaction pairs and optional (follower, followee) pairs, ids 0-based per type."""
        csr = {"interacted_by": _csr(user, item, num_users), "interacts": _csr(item, user, num_items)}
        if social is not None and len(social[0]):
            follower, followee = social
            csr["follows"] = _csr(followee, follower, num_users)
            csr["followed_by"] = _csr(follower, followee, num_users)
        return cls(csr, num_users, num_items)

    @classmethod
    def from_csr(cls, g) -> "CSRNeighborhoods":
        """From `partition.csr.load_csr(...)` (memory-mapped arrays stay mapped)."""
        csr = {"interacted_by": (g.user_ptr, g.user_items), "interacts": (g.item_ptr, g.item_users)}
        if g.num_social:
            csr["follows"] = (g.follow_in_ptr, g.follow_in)
            csr["followed_by"] = (g.follow_out_ptr, g.follow_out)
        return cls(csr, g.num_users, g.num_items)

    def sample(self, users, items, fanout, rng):
        dst = {"user": users, "item": items}
        return [(relation, *sample_rows(indptr, indices, dst[RELATIONS[relation][1]], fanout, rng))
                for relation, (indptr, indices) in self.csr.items()]

    def degree(self, users, items):
        return self.user_degree[users], self.item_degree[items]


# ---------------------------------------------------------------- DistGraph back-end

def _positions(ids: np.ndarray, of: np.ndarray) -> np.ndarray:
    """Index in the unique array `ids` of each element of `of` (all present)."""
    order = np.argsort(ids, kind="stable")
    return order[np.searchsorted(ids, of, sorter=order)]


class DistNeighborhoods:
    """`Neighborhoods` over a DistDGL DistGraph: one sample_etype_neighbors call per layer, answered by
    the servers of the partitions the dst nodes live in. Node ids are the DistGraph's per-type ids
    (for gnnrec partitions, the renumbered ids of partition/writer.py, not the dataset's).

    Only in-edges are drawn (a partition holds every in-edge of its nodes, not their out-edges), so
    social ties count both ways because gnnrec partitions carry a `followed_by` edge type (a graph
    without one: a user hears its followers only). `social=False` leaves the user-user relations out
    (models of interactions only).
    Degrees are the servers' in-degrees over the relations used: over all of them, or, when social edges
    are left out of a graph that has them, counted once for every node (a pass over the graph, cached).
    """

    def __init__(self, graph, social: bool = True):
        from gnnrec.partition.dgl_adapter import dist_edge_types
        self.graph = graph
        present = [r for r in RELATIONS if r in dist_edge_types(graph)]
        self.relations = [r for r in present if social or RELATIONS[r][0] != RELATIONS[r][1]]
        self.counted = None if self.relations == present else {}

    def sample(self, users, items, fanout, rng):  # the servers draw; rng is unused
        from gnnrec.partition.dgl_adapter import dist_sample_in_edges
        dst_ids = {"user": users, "item": items}
        edges = dist_sample_in_edges(self.graph, {t: ids for t, ids in dst_ids.items() if len(ids)},
                                     {r: fanout for r in self.relations})
        out = []
        for relation, (src, dst) in edges.items():
            out.append((relation, src, _positions(dst_ids[RELATIONS[relation][1]], dst)))
        return out

    def degree(self, users, items):
        from gnnrec.partition.dgl_adapter import dist_node_in_degrees
        if self.counted is None:
            return dist_node_in_degrees(self.graph, "user", users), dist_node_in_degrees(self.graph, "item", items)
        if not self.counted:
            self.counted = {t: self._count(t) for t in ("user", "item")}
        return self.counted["user"][users], self.counted["item"][items]

    def _count(self, node_type: str, batch: int = 65536) -> np.ndarray:
        """In-degrees of every node of a type over self.relations."""
        from gnnrec.partition.dgl_adapter import dist_sample_in_edges
        n = self.graph.num_nodes(node_type)
        degree = np.zeros(n, np.int64)
        for start in range(0, n, batch):
            nodes = np.arange(start, min(start + batch, n))
            for _, dst in dist_sample_in_edges(self.graph, {node_type: nodes}, {r: -1 for r in self.relations}).values():
                degree += np.bincount(dst, minlength=n)
        return degree


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
        new = np.unique(src[local[src] < 0])
        local[new] = np.arange(len(dst_nodes), len(dst_nodes) + len(new))
        src_local = local[src]
        local[dst_nodes] = local[new] = -1
        return np.concatenate([dst_nodes, new]), src_local


def _member(keys: np.ndarray, sorted_keys: np.ndarray) -> np.ndarray:
    at = np.minimum(np.searchsorted(sorted_keys, keys), len(sorted_keys) - 1)
    return sorted_keys[at] == keys


class NeighborSampler:
    """Edge mini-batches -> `Batch` with one block per fanout (algorithm in the module docstring).

    fanouts[l] is block l's fanout (first layer first, as DGL's NeighborSampler). negatives: a sampler
    of samplers/negatives.py (None: in-batch negatives). One instance per thread (it keeps a scratch
    array and a random generator); `Prefetcher` gives each batch to one thread anyway.
    """

    def __init__(self, graph: Neighborhoods, fanouts: list[int], num_users: int, num_items: int,
                 negatives=None, num_negatives: int = 1, exclude_batch_edges: bool = True, seed: int = 0):
        self.graph, self.fanouts = graph, [int(f) for f in fanouts]
        self.num_users, self.num_items = num_users, num_items
        self.negatives, self.num_negatives = negatives, num_negatives
        self.exclude_batch_edges = exclude_batch_edges
        self.rng = np.random.default_rng(seed)
        self.relabel = Relabeler(num_users + num_items)

    def sample(self, users: np.ndarray, items: np.ndarray) -> Batch:
        users, items = np.asarray(users, np.int64), np.asarray(items, np.int64)
        neg = None
        if self.negatives is not None:
            neg = np.asarray(self.negatives.sample(users, items, self.num_negatives, self.rng), np.int64)
        seeds = [users, items + self.num_users] + ([] if neg is None else [neg.ravel() + self.num_users])
        nodes, role = np.unique(np.concatenate(seeds), return_inverse=True)
        excluded = None
        if self.exclude_batch_edges:
            excluded = np.unique(users * self.num_items + items), {"user": np.unique(users), "item": np.unique(items)}
        blocks = []
        for fanout in reversed(self.fanouts):
            block, nodes = self._block(nodes, fanout, excluded)
            blocks.insert(0, block)
        b = len(users)
        t = torch.from_numpy
        return Batch(t(nodes), blocks, t(role[:b]), t(role[b:2 * b]),
                     None if neg is None else t(role[2 * b:].reshape(neg.shape)))

    def node_block(self, nodes: np.ndarray, fanout: int = -1) -> tuple[Block, np.ndarray]:
        """One block into `nodes` (unique homogeneous ids; -1: whole neighbourhoods), and its src nodes
        (layer-wise inference)."""
        return self._block(np.asarray(nodes, np.int64), fanout, None)

    def _block(self, dst_nodes: np.ndarray, fanout: int, excluded) -> tuple[Block, np.ndarray]:
        """The block whose dst nodes are `dst_nodes` (global ids), and its src nodes."""
        src, dst, etype = self._sample_layer(dst_nodes, fanout, excluded)
        src_nodes, src_local = self.relabel(dst_nodes, src)
        block = Block(torch.from_numpy(src_local), torch.from_numpy(dst), len(src_nodes), len(dst_nodes),
                      etype=torch.from_numpy(etype), deg=torch.from_numpy(self._degree(src_nodes)))
        return block, src_nodes

    def _split(self, nodes: np.ndarray):
        """(positions of users, their user ids, positions of items, their item ids)."""
        user_at, item_at = np.flatnonzero(nodes < self.num_users), np.flatnonzero(nodes >= self.num_users)
        return user_at, nodes[user_at], item_at, nodes[item_at] - self.num_users

    def _sample_layer(self, dst_nodes, fanout, excluded):
        """Sampled edges into dst_nodes: (global src id, local dst index, etype), batch edges dropped."""
        user_at, users, item_at, items = self._split(dst_nodes)
        at = {"user": (user_at, users), "item": (item_at, items)}
        srcs, dsts, etypes = [], [], []
        for relation, src, dst_index in self.graph.sample(users, items, fanout, self.rng):
            src_type, dst_type = RELATIONS[relation]
            positions, ids = at[dst_type]
            src_global = src + (self.num_users if src_type == "item" else 0)
            if excluded is not None and src_type != dst_type:
                drop = self._batch_edges(excluded, src_type, src, ids, dst_index)
                src_global, dst_index = src_global[~drop], dst_index[~drop]
            srcs.append(src_global)
            dsts.append(positions[dst_index])
            etypes.append(np.full(len(src_global), INTERACTION if src_type != dst_type else SOCIAL, np.int64))
        empty = np.zeros(0, np.int64)
        return (np.concatenate(srcs or [empty]), np.concatenate(dsts or [empty]),
                np.concatenate(etypes or [empty]))

    def _batch_edges(self, excluded, src_type, src, dst_ids, dst_index) -> np.ndarray:
        """Which interaction edges (src -> dst_ids[dst_index]) are positive pairs of the batch: only
        edges into a batch user or item can be, so the pair lookup runs on those alone."""
        keys, endpoints = excluded
        dst_type = "item" if src_type == "user" else "user"
        drop = np.zeros(len(src), bool)
        maybe = np.flatnonzero(_member(dst_ids, endpoints[dst_type])[dst_index])
        user, item = src[maybe], dst_ids[dst_index[maybe]]
        if src_type == "item":
            user, item = item, user
        drop[maybe] = _member(user * self.num_items + item, keys)
        return drop

    def _degree(self, nodes: np.ndarray) -> np.ndarray:
        user_at, users, item_at, items = self._split(nodes)
        user_degree, item_degree = self.graph.degree(users, items)
        deg = np.empty(len(nodes), np.float32)
        deg[user_at], deg[item_at] = user_degree, item_degree
        return deg


def edge_batches(sampler: NeighborSampler, users: np.ndarray, items: np.ndarray, batch_size: int,
                 shuffle: bool = True, seed: int = 0) -> Iterator[Batch]:
    """One epoch of sampled batches over the (user, item) training pairs."""
    order = np.random.default_rng(seed).permutation(len(users)) if shuffle else np.arange(len(users))
    for start in range(0, len(order), batch_size):
        pick = order[start:start + batch_size]
        yield sampler.sample(users[pick], items[pick])


# ---------------------------------------------------------------- prefetch

class _Failure:
    def __init__(self, error: BaseException):
        self.error = error


_DONE = object()


class Prefetcher:
    """Iterates `batches` in a background thread, up to `depth` batches ahead, so compute does not wait
    on sampling. Yields in order; an exception raised by the iterator is re-raised by `next` here.
    Use as a context manager (or call `close`) to stop the thread early.

        with Prefetcher(edge_batches(sampler, u, i, 1024)) as batches:
            for batch in batches:
                loss = step(batch.to(device, non_blocking=True))

    Threads: the sampler is numpy, which releases the GIL in its array loops, so a thread is enough.
    torch.set_num_threads is per process, not per thread: leave a core for the sampler (e.g.
    torch.set_num_threads(cores - 1) in the trainer; Ray sets OMP_NUM_THREADS=1, DESIGN.md §3.5).
    With `DistNeighborhoods`, sampling is DistDGL RPC from this thread while the trainer may also
    call the servers (DistEmbedding pulls) from the main thread: DGL does not document its client as
    thread-safe, so check that combination before relying on it (DGL's own answer is sampler processes).
    """

    def __init__(self, batches: Iterable, depth: int = 2):
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._finished = False
        self._thread = threading.Thread(target=self._produce, args=(iter(batches),), daemon=True,
                                        name="gnnrec-prefetch")
        self._thread.start()

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                pass
        return False

    def _produce(self, batches: Iterator) -> None:
        try:
            for batch in batches:
                if not self._put(batch):
                    return
            self._put(_DONE)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            self._put(_Failure(e))

    def __iter__(self):
        return self

    def __next__(self):
        if self._finished:
            raise StopIteration
        item = self._queue.get()
        if item is _DONE or isinstance(item, _Failure):
            self._finished = True
            self._thread.join()
            if isinstance(item, _Failure):
                raise item.error
            raise StopIteration
        return item

    def close(self, timeout: float = 10.0) -> None:
        """Stop the producer and wait for its thread (it stops after the batch it is sampling)."""
        self._stop.set()
        self._finished = True
        while True:  # unblock a producer waiting on a full queue
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._thread.join(timeout)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
