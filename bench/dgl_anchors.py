"""Plain DGL, the anchors the benchmarks measure gnnrec against (bench/sampling.py, bench/partition.py).

    from dgl_anchors import heterograph, neighbor_blocks, pinsage_sampler   # beside it in bench/

Only the benchmarks use these, so they live here rather than in gnnrec's one DGL adapter; importing this
module imports dgl.
"""
from __future__ import annotations

import os

import numpy as np
import torch

from gnnrec.dgl_adapter import EDGE_TYPES, load_graph

os.environ.setdefault("DGLBACKEND", "pytorch")  # as gnnrec.dgl_adapter imports it
import dgl  # noqa: E402


def heterograph(num_users: int, num_items: int, user: np.ndarray, item: np.ndarray):
    """The user-item graph (both directions) in memory, edge ids = pair order (as save_graph writes)."""
    u, i = torch.from_numpy(user), torch.from_numpy(item)
    return dgl.heterograph({EDGE_TYPES["interacts"]: (u, i), EDGE_TYPES["interacted_by"]: (i, u)},
                           num_nodes_dict={"user": num_users, "item": num_items})


def neighbor_blocks(graph, seeds: dict[str, np.ndarray], fanouts: list[int], exclude_eids: dict | None = None):
    """Raw DGL edge-batch neighbour sampling (dgl.dataloading.NeighborSampler.sample_blocks: per layer
    sample_neighbors + to_block), the anchor of bench/sampling.py: (input_nodes, blocks)."""
    sampler = dgl.dataloading.NeighborSampler(fanouts)
    exclude = None if exclude_eids is None else {EDGE_TYPES[k]: torch.from_numpy(v) for k, v in exclude_eids.items()}
    input_nodes, _, blocks = sampler.sample_blocks(graph, {t: torch.from_numpy(v) for t, v in seeds.items()},
                                                   exclude_eids=exclude)
    return input_nodes, blocks


def pinsage_sampler(graph, num_traversals: int, termination_prob: float, num_walks: int, num_neighbors: int,
                    node_type: str = "item"):
    """dgl.sampling.PinSAGESampler over items (item -> user -> item), or over users (user -> item -> user);
    call it with ids of that type (numpy)."""
    sampler = dgl.sampling.PinSAGESampler(graph, node_type, "user" if node_type == "item" else "item", num_traversals,
                                          termination_prob, num_walks, num_neighbors)
    return lambda seeds: sampler(torch.from_numpy(np.asarray(seeds, np.int64)))


def partition_graph_metis(graph_path, out, parts: int) -> None:
    """DGL's own whole-graph path (the memory baseline for bench/partition.py)."""
    dgl.distributed.partition_graph(load_graph(graph_path), "gnnrec", parts, str(out), num_hops=1,
                                    part_method="metis", balance_edges=True)
