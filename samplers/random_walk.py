"""Random-walk (PinSage) blocks for edge mini-batches: NeighborSampler's batches, with each layer's
in-neighbours chosen by random walks and weighted by how often the walks reached them.

For every dst node v of a block (layers from the seeds outwards, as in samplers/neighbor.py), `walks`
walks start at v and alternate between users and items: from an item, item → user, → item → user, ...;
from a user, user → item, → user → item, ... . A walk makes up to `length` traversals and stops before
each one after the first with probability `restart_prob` (samplers/pinsage.py's walker, one hop shifted
from PinSage's item → user → item). The nodes of the other type the walks reach, users for an item and
items for a user, are counted. The `neighbors` (T) most visited become v's in-neighbours, and
`Block.weight` holds their visit counts over the mean count of v's in-edges (mean 1 per dst node). These
are PinSage's importance weights (Ying et al., 2018), relative to v's neighbours: PinSageConv's weighted
mean is the same under any scale, and a degree-normalized model (LightGCN, GCN) sees uniform neighbours
as neighbour sampling gives them (weights summing to 1 instead shrank each LightGCN layer by the number
of neighbours: quickstart validation Recall@20 0.027, against 0.203 with mean 1). The user <-> item
message passing every model uses (etype INTERACTION; social edges are not walked).

With exclude_batch_edges, a dst node's visits that form a positive pair of the batch (either
direction) are dropped before the top T are taken (NeighborSampler's exclusion), so no seed hears its
own label. The walks themselves may still pass through those edges, as in DGL's PinSage example, which
removes only the block's edges.

Seeds, negatives, relabelling and `deg` (whole-graph degrees) come from NeighborSampler. The graph is
any `Neighborhoods` (samplers/neighborhoods.py), and the walks step through its `sample_one`: a local
CSR, the graph servers, or the trainer's own partition first with the servers for the rest.
"""
from __future__ import annotations

import numpy as np

from gnnrec.samplers.neighbor import NeighborSampler
from gnnrec.relations import RELATIONS
from gnnrec.samplers.neighborhoods import Neighborhoods
from gnnrec.samplers.pinsage import random_walk_visits, top_visited


class RandomWalkSampler(NeighborSampler):
    """Edge mini-batches -> `Batch` of `num_layers` random-walk blocks (see the module docstring).

    `node_block(nodes)` gives each node its T most visited neighbours (fanout: another count; -1: every
    visited node). The other options are NeighborSampler's (negatives, num_negatives,
    exclude_batch_edges, seed).
    """

    def __init__(self, graph: Neighborhoods, num_layers: int, num_users: int, num_items: int, walks: int = 20,
                 length: int = 3, restart_prob: float = 0.5, neighbors: int = 10, **options):
        super().__init__(graph, [neighbors] * num_layers, num_users, num_items, **options)
        self.walks, self.length, self.restart_prob, self.neighbors = walks, length, restart_prob, neighbors

    def node_block(self, nodes, fanout=None):
        return super().node_block(nodes, self.neighbors if fanout is None else fanout)

    def _draw(self, users, items, fanout, unbatched):
        """The `fanout` nodes of the other type that the walks from each user and item reach most often,
        with weights of mean 1 per dst node."""
        for relation, seeds in (("interacted_by", users), ("interacts", items)):
            src_type, dst_type = RELATIONS[relation].ends
            origin, visited = random_walk_visits(self.graph, seeds, self.walks, self.length, self.restart_prob,
                                                 self.rng, start=dst_type, visit="other")
            visited, origin = unbatched(relation, visited, origin)
            num_src = self.num_users if src_type == "user" else self.num_items
            at, src, count = top_visited(origin, visited, len(seeds), num_src, fanout, self.rng)
            edges = np.maximum(np.bincount(at, minlength=len(seeds)), 1)
            mean = np.bincount(at, weights=count, minlength=len(seeds)) / edges
            yield relation, src, at, (count / mean[at]).astype(np.float32)
