r"""FastGCN's layer-wise importance sampling (Chen et al., 2018) for edge mini-batches.

Each layer draws `nodes` nodes i.i.d. (with replacement) from the whole graph with probability

.. math:: q(v) \propto \|\hat A_{:, v}\|^2 = \frac{1}{d_v} \sum_{u \in N(v)} \frac{1}{d_u},
          \qquad \hat A = D^{-1/2} A D^{-1/2}

(the sum runs over v's edges: a pair joined by two parallel edges, a mutual follow, counts twice),

and each dst node u of the layer hears the drawn nodes among its neighbours, each edge weighted by the
importance ratio

.. math:: w_{uv} = \frac{c_v}{n\, q(v)} \quad (c_v: \text{times } v \text{ was drawn}, n = \text{nodes}),
          \qquad \mathbb{E}\Big[\sum_v w_{uv} \hat A_{uv} h_v\Big] = \sum_v \hat A_{uv} h_v,

as `Block.weight`, which every model multiplies into its coefficients (the degree-normalized models get
an unbiased estimate of their full layer; mean and attention aggregators a self-normalized one). Layers
are drawn from the seeds outwards, as the neighbour sampler's: a layer's src nodes are its dst nodes and
the drawn nodes with an edge into them. A dst node none of whose neighbours was drawn hears nothing in
that layer (FastGCN's known cost on sparse graphs: more `nodes`, fewer such). The rest — negatives, the
batch's own pairs dropped, relabelling, degrees, time decay — is `NeighborSampler`'s. Inference and
evaluation use whole neighbourhoods (weights 1): the exact layer the estimate is of.
"""
from __future__ import annotations

import numpy as np

from gnnrec.relations import RELATIONS
from gnnrec.samplers.neighbor import NeighborSampler


def importance(graph, num_users: int, num_items: int, chunk: int = 65536) -> np.ndarray:
    """q(v) over homogeneous ids (users, then items): the squared column norms of D^-1/2 A D^-1/2, summed
    to 1, from one pass over every node's in-edges (`graph`: a Neighborhoods back-end)."""
    user_degree, item_degree = graph.degree(np.arange(num_users), np.arange(num_items))
    degree = np.concatenate([user_degree, item_degree]).astype(np.float64)
    inverse = np.divide(1.0, degree, out=np.zeros_like(degree), where=degree > 0)
    heard = np.zeros_like(degree)  # sum of 1/d_u over each node's neighbours u
    offset = {"user": 0, "item": num_users}
    for start in range(0, max(num_users, num_items), chunk):
        users = np.arange(start, min(start + chunk, num_users))
        items = np.arange(start, min(start + chunk, num_items))
        for relation, src, at, _ in graph.sample(users, items, -1, np.random.default_rng(0)):
            src_type, dst_type = RELATIONS[relation].ends
            dst = (users if dst_type == "user" else items)[at] + offset[dst_type]
            heard += np.bincount(dst, weights=inverse[src + offset[src_type]], minlength=len(heard))
    q = inverse * heard
    if q.sum() <= 0:
        raise ValueError("node sampling: the graph has no edges")
    return q / q.sum()


class NodeSampler(NeighborSampler):
    """FastGCN's blocks (module docstring): `nodes[l]` nodes drawn for block l (first layer first, as
    fanouts); a negative entry: whole neighbourhoods. q: `importance(graph, ...)` when precomputed."""

    def __init__(self, graph, nodes: list[int], num_users: int, num_items: int, q=None, **options):
        super().__init__(graph, nodes, num_users, num_items, **options)
        self.q = importance(graph, num_users, num_items) if q is None else q

    def _draw(self, users, items, nodes, unbatched):
        if nodes < 0:
            yield from super()._draw(users, items, nodes, unbatched)
            return
        drawn, count = np.unique(self.rng.choice(len(self.q), size=nodes, p=self.q), return_counts=True)
        ratio = count / (nodes * self.q[drawn])
        is_user = drawn < self.num_users
        ids = {"user": drawn[is_user], "item": drawn[~is_user] - self.num_users}
        ratios = {"user": ratio[is_user], "item": ratio[~is_user]}
        order = {"user": np.argsort(users, kind="stable"), "item": np.argsort(items, kind="stable")}
        sorted_targets = {"user": users[order["user"]], "item": items[order["item"]]}
        # the drawn nodes' in-edges, reversed: drawn -> neighbour, kept where the neighbour is a dst node
        for relation, neighbour, at, time in self.graph.sample(ids["user"], ids["item"], -1, self.rng):
            back = RELATIONS[relation].reverse
            drawn_type, dst_type = RELATIONS[back].ends
            targets = sorted_targets[dst_type]
            slot = np.minimum(np.searchsorted(targets, neighbour), max(len(targets) - 1, 0))
            hit = np.flatnonzero(targets[slot] == neighbour) if len(targets) else slot[:0]
            weight = ratios[drawn_type][at[hit]]
            if self.time_decay is not None and time is not None:
                weight = weight * self.time_decay(time[hit])
            yield back, *unbatched(back, ids[drawn_type][at[hit]], order[dst_type][slot[hit]], weight)
