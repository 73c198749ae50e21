"""Graph back-ends of the neighbour sampler: in-neighbours of many nodes at once, per relation.

`CSRNeighborhoods` over in-memory or memory-mapped CSR arrays (exact and vectorized: a row with at most
`fanout` edges gives them all, a longer row a uniform `fanout`-subset by Floyd's algorithm), and
`DistNeighborhoods` over a DistDGL DistGraph (one server round per layer), and `LocalFirstNeighborhoods`:
a trainer's own machine's partition from local memory, the rest from the servers. Node ids are 0-based
per type. Each is also a random walker's graph (`sample_one`: samplers/pinsage.py walks on it).
"""
from __future__ import annotations

from typing import NamedTuple, Protocol

import numpy as np

from gnnrec.arrays import group_by, ranges
from gnnrec.relations import RELATIONS, WALK_STEPS


class Drawn(NamedTuple):
    """In-edges drawn over one relation (gnnrec/relations.py)."""
    relation: str
    src: np.ndarray  # the neighbours' per-type ids
    dst: np.ndarray  # the position of each edge's dst node among the users or items asked for
    times: np.ndarray | None  # the edges' timestamps, for timed relations when the back-end has them


class Neighborhoods(Protocol):
    """A graph the samplers ask for in-neighbours (and a random walker for one neighbour). Node ids are
    0-based per type."""

    def sample(self, users: np.ndarray, items: np.ndarray, fanout: int, rng: np.random.Generator) -> list[Drawn]:
        """Up to `fanout` in-neighbours (-1: all) of each of the (unique) `users` and `items`, per relation."""

    def degree(self, users: np.ndarray, items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Whole-graph in-degrees of users and items over the relations `sample` draws from."""

    def sample_one(self, nodes: np.ndarray, step: str, rng: np.random.Generator) -> np.ndarray:
        """One uniform neighbour of each node (duplicates draw independently) for a random walk's
        `step`, "user->item" or "item->user" (WALK_STEPS); -1 where a node has none."""

    def remote_share(self) -> float | None:
        """The share of sampled nodes whose neighbours came from another machine (None: not tracked)."""


# ---------------------------------------------------------------- local CSR back-end

def one_neighbor(indptr: np.ndarray, indices: np.ndarray, nodes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One uniformly random entry of each CSR row `nodes` (duplicates draw independently), -1 for an
    empty row."""
    start = indptr[nodes]
    deg = indptr[nodes + 1] - start
    pick = start + (rng.random(len(nodes)) * deg).astype(np.int64)
    return np.where(deg > 0, indices[np.minimum(pick, len(indices) - 1)], -1)


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
    positions, row_of = sample_positions(indptr, rows, fanout, rng)
    return np.asarray(indices[positions], np.int64), row_of


def sample_positions(indptr: np.ndarray, rows: np.ndarray, fanout: int,
                     rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """sample_rows' draw: (the entries' positions in the CSR, position of their row in rows)."""
    start = np.asarray(indptr[rows], np.int64)
    deg = np.asarray(indptr[rows + 1], np.int64) - start
    whole = np.flatnonzero(deg <= fanout) if fanout >= 0 else np.arange(len(rows))
    positions, row_of = [ranges(start[whole], deg[whole])], [np.repeat(whole, deg[whole])]
    if fanout >= 0:
        part = np.flatnonzero(deg > fanout)
        positions.append((start[part, None] + _distinct_offsets(deg[part], fanout, rng)).ravel())
        row_of.append(np.repeat(part, fanout))
    return np.concatenate(positions), np.concatenate(row_of)


class CSRNeighborhoods:
    """`Neighborhoods` over in-CSR arrays per relation, {relation: (indptr over dst, src ids)}; numpy or
    memory-mapped. times: {relation: the timestamp of each CSR entry} of the relations that have them."""

    def __init__(self, csr: dict[str, tuple[np.ndarray, np.ndarray]], num_users: int, num_items: int,
                 times: dict[str, np.ndarray] | None = None):
        self.csr, self.times = csr, times or {}
        counts = {"user": np.zeros(num_users, np.int64), "item": np.zeros(num_items, np.int64)}
        for relation, (indptr, _) in csr.items():
            counts[RELATIONS[relation].dst] += np.diff(np.asarray(indptr, np.int64))
        self.user_degree, self.item_degree = counts["user"], counts["item"]

    def remote_share(self) -> None:  # all local: not tracked
        return None

    @classmethod
    def from_edges(cls, user: np.ndarray, item: np.ndarray, num_users: int, num_items: int,
                   social: tuple[np.ndarray, np.ndarray] | None = None,
                   timestamp: np.ndarray | None = None) -> "CSRNeighborhoods":
        """From interaction pairs (and their timestamps) and optional (follower, followee) pairs, ids
        0-based per type."""
        csr, times = {}, {}
        for relation, dst, src, num in (("interacted_by", user, item, num_users), ("interacts", item, user, num_items)):
            csr[relation] = group_by(dst, src, num)
            if timestamp is not None:
                times[relation] = group_by(dst, timestamp, num)[1]
        if social is not None and len(social[0]):
            follower, followee = social
            csr["follows"] = group_by(followee, follower, num_users)
            csr["followed_by"] = group_by(follower, followee, num_users)
        return cls(csr, num_users, num_items, times)

    def sample(self, users, items, fanout, rng):
        dst, out = {"user": users, "item": items}, []
        for relation, (indptr, indices) in self.csr.items():
            positions, row_of = sample_positions(indptr, dst[RELATIONS[relation].dst], fanout, rng)
            time = self.times[relation][positions] if relation in self.times else None
            out.append(Drawn(relation, np.asarray(indices[positions], np.int64), row_of, time))
        return out

    def degree(self, users, items):
        return self.user_degree[users], self.item_degree[items]

    def sample_one(self, nodes, step, rng):
        return one_neighbor(*self.csr[RELATIONS[WALK_STEPS[step]].reverse], nodes, rng)  # in-edges, backwards


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

    def __init__(self, graph, social: bool = True, times: bool = False):
        from gnnrec.dgl_adapter import dist_edge_types
        self.graph, self.times = graph, times
        present = [r for r in RELATIONS if r in dist_edge_types(graph)]
        self.relations = [r for r in present if social or RELATIONS[r].src != RELATIONS[r].dst]
        self.counted = None if self.relations == present else {}

    def remote_share(self) -> None:  # all the servers': not tracked
        return None

    def sample(self, users, items, fanout, rng):  # the servers draw; rng is unused
        from gnnrec.dgl_adapter import dist_values, dist_sample_in_edges
        dst_ids = {"user": users, "item": items}
        edges = dist_sample_in_edges(self.graph, {t: ids for t, ids in dst_ids.items() if len(ids)},
                                     {r: fanout for r in self.relations})
        out = []
        for relation, (src, dst, eid) in edges.items():
            timed = self.times and RELATIONS[relation].timed
            time = dist_values(self.graph, relation, "timestamp", eid) if timed else None
            out.append(Drawn(relation, src, _positions(dst_ids[RELATIONS[relation].dst], dst), time))
        return out

    def sample_one(self, nodes, step, rng):  # the servers draw, over the partitions the nodes live in; rng is unused
        from gnnrec.dgl_adapter import dist_sample_one
        relation = WALK_STEPS[step]
        return dist_sample_one(self.graph, nodes, RELATIONS[relation].src, relation)

    def items_of(self, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Every (user, item) training pair of the (unique) `users`."""
        from gnnrec.dgl_adapter import dist_out_neighbors
        return dist_out_neighbors(self.graph, users)

    def degree(self, users, items):
        from gnnrec.dgl_adapter import dist_node_in_degrees
        if self.counted is None:
            return dist_node_in_degrees(self.graph, "user", users), dist_node_in_degrees(self.graph, "item", items)
        if not self.counted:
            self.counted = {t: self._count(t) for t in ("user", "item")}
        return self.counted["user"][users], self.counted["item"][items]

    def _count(self, node_type: str, batch: int = 65536) -> np.ndarray:
        """In-degrees of every node of a type over self.relations."""
        from gnnrec.dgl_adapter import dist_sample_in_edges
        n = self.graph.num_nodes(node_type)
        degree = np.zeros(n, np.int64)
        for start in range(0, n, batch):
            nodes = np.arange(start, min(start + batch, n))
            for _, dst, _ in dist_sample_in_edges(self.graph, {node_type: nodes}, {r: -1 for r in self.relations}).values():
                degree += np.bincount(dst, minlength=n)
        return degree


# ---------------------------------------------------------------- local first

class LocalFirstNeighborhoods:
    """`Neighborhoods` of a trainer on a machine with a graph server: the nodes its partition owns are
    sampled from that partition's in-CSR in this process (`CSRNeighborhoods`: vectorized, no server
    round and no RPC lock, so sampling overlaps the trainer's own server calls), the others from the
    servers (`remote`). A partition holds every in-edge of its own nodes, so both give the same
    distribution; with one partition nothing goes to the servers.

    csr: {relation: (indptr over the own dst nodes, src per-type ids, per-type edge ids)}; own: {node
    type: (first id, count)} (dgl_adapter.local_in_csr). The local edges' timestamps, when `remote` has
    them, are read once from this machine's shared memory."""

    def __init__(self, remote: DistNeighborhoods, csr: dict, own: dict[str, tuple[int, int]]):
        from gnnrec.dgl_adapter import dist_values
        self.remote, self.own = remote, own
        relations = [r for r in remote.relations if r in csr]
        times = {r: dist_values(remote.graph, r, "timestamp", csr[r][2])
                 for r in relations if remote.times and RELATIONS[r].timed}
        self.local = CSRNeighborhoods({r: csr[r][:2] for r in relations}, own["user"][1], own["item"][1], times)
        self.sampled = np.zeros(2, np.int64)  # nodes whose neighbours were sampled here, by the servers

    def remote_share(self) -> float:
        """The share of sampled nodes whose neighbours came from the servers (another partition's)."""
        return float(self.sampled[1] / max(self.sampled.sum(), 1))

    def _mine(self, ids: np.ndarray, node_type: str) -> np.ndarray:
        first, count = self.own[node_type]
        return (ids >= first) & (ids < first + count)

    def sample(self, users, items, fanout, rng):
        mine_u, mine_i = self._mine(users, "user"), self._mine(items, "item")
        here = int(mine_u.sum() + mine_i.sum())
        self.sampled += (here, len(users) + len(items) - here)
        at = {"user": (np.flatnonzero(mine_u), np.flatnonzero(~mine_u)),
              "item": (np.flatnonzero(mine_i), np.flatnonzero(~mine_i))}
        out = [Drawn(relation, src, at[RELATIONS[relation].dst][0][dst], time) for relation, src, dst, time in
               self.local.sample(users[mine_u] - self.own["user"][0], items[mine_i] - self.own["item"][0], fanout, rng)]
        if not (mine_u.all() and mine_i.all()):
            out += [Drawn(relation, src, at[RELATIONS[relation].dst][1][dst], time) for relation, src, dst, time in
                    self.remote.sample(users[~mine_u], items[~mine_i], fanout, rng)]
        return out

    def degree(self, users, items):
        mine_u, mine_i = self._mine(users, "user"), self._mine(items, "item")
        user_degree, item_degree = np.empty(len(users), np.int64), np.empty(len(items), np.int64)
        user_degree[mine_u], item_degree[mine_i] = self.local.degree(users[mine_u] - self.own["user"][0],
                                                                     items[mine_i] - self.own["item"][0])
        if not (mine_u.all() and mine_i.all()):
            user_degree[~mine_u], item_degree[~mine_i] = self.remote.degree(users[~mine_u], items[~mine_i])
        return user_degree, item_degree

    def sample_one(self, nodes, step, rng):
        node_type = step.split("->")[0]
        mine = self._mine(nodes, node_type)
        self.sampled += (int(mine.sum()), int(len(nodes) - mine.sum()))
        out = np.empty(len(nodes), np.int64)
        out[mine] = self.local.sample_one(nodes[mine] - self.own[node_type][0], step, rng)
        if not mine.all():
            out[~mine] = self.remote.sample_one(nodes[~mine], step, rng)
        return out

    def user_items(self) -> tuple[np.ndarray, np.ndarray] | None:
        """Every user's training items as an in-CSR (indptr over users, items), from local memory, when
        this machine's partition owns every user (one partition); else None."""
        if self.own["user"] != (0, self.remote.graph.num_nodes("user")):
            return None
        return self.local.csr["interacted_by"]

    def items_of(self, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Every (user, item) training pair of the (unique) `users`."""
        mine = self._mine(users, "user")
        items, row_of = sample_rows(*self.local.csr["interacted_by"], users[mine] - self.own["user"][0], -1, None)
        local = users[mine][row_of], items
        if mine.all():
            return local
        remote = self.remote.items_of(users[~mine])
        return np.concatenate([local[0], remote[0]]), np.concatenate([local[1], remote[1]])


def served(graph, social: bool = True, times: bool = False):
    """The back-end of a worker connected to the graph servers: `LocalFirstNeighborhoods` when a server
    of this machine shares its partition, else `DistNeighborhoods`; with `times`, sampled interaction
    edges come with their timestamps."""
    from gnnrec.dgl_adapter import local_in_csr
    remote, local = DistNeighborhoods(graph, social, times), local_in_csr(graph)
    return remote if local is None else LocalFirstNeighborhoods(remote, *local)
