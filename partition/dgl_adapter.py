"""The one place that imports dgl (DGL is frozen at 2.1.0; keep the rest of gnnrec engine-agnostic).

Node types are `user` and `item`; edge types are named by EDGE_TYPES.
"""
from __future__ import annotations

import numpy as np
import torch

EDGE_TYPES = {
    "interacts": ("user", "interacts", "item"),
    "interacted_by": ("item", "interacted_by", "user"),
    "follows": ("user", "follows", "user"),
}


def _dgl():
    import os
    os.environ.setdefault("DGLBACKEND", "pytorch")
    import dgl
    return dgl


def save_graph(path, num_users: int, num_items: int, user: np.ndarray, item: np.ndarray,
               edge_data: dict[str, np.ndarray], social: tuple[np.ndarray, np.ndarray] | None = None) -> None:
    """Save the user–item graph (both directions, plus user→user when `social` is given) as a DGL file.

    `edge_data` (e.g. weight, timestamp, count) is attached to both interaction directions.
    """
    dgl = _dgl()
    u, i = torch.from_numpy(user), torch.from_numpy(item)
    data = {EDGE_TYPES["interacts"]: (u, i), EDGE_TYPES["interacted_by"]: (i, u)}
    if social is not None:
        data[EDGE_TYPES["follows"]] = (torch.from_numpy(social[0]), torch.from_numpy(social[1]))
    g = dgl.heterograph(data, num_nodes_dict={"user": num_users, "item": num_items})
    for name, values in edge_data.items():
        t = torch.from_numpy(values)
        g.edges["interacts"].data[name] = t
        g.edges["interacted_by"].data[name] = t
    dgl.save_graphs(str(path), [g])


def load_graph(path):
    """Load a graph written by save_graph."""
    graphs, _ = _dgl().load_graphs(str(path))
    return graphs[0]
