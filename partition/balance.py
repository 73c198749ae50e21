"""Balance of a partition assignment, measured on five node weights.

The four DGL's partition_graph hands METIS with balance_ntypes + balance_edges (user count, item count,
user in-degree = training edges + followers, so the training edges a part owns, and item in-degree)
plus each user's validation and test edges, which go to the user's part (low-degree users hold
relatively more of them, so balancing degree alone leaves them 13% off at K=8).
imbalance = max_k |load_k - mean| / mean.
"""
from __future__ import annotations

import numpy as np

from gnnrec.partition import csr

CONSTRAINTS = ("users", "items", "user_edges", "item_edges", "held_out_edges")
COUNT_COLUMN = (0, 1, 0, 1, 0)  # the node-type count column of each weight
DEGREE_COLUMN = {0: 2, 1: 3}  # the in-degree column of each node-type count column


def node_weights(g) -> np.ndarray:
    """float32 [U+I, len(CONSTRAINTS)]: the balance weights of every node (users first, then items)."""
    nu, ni = g.num_users, g.num_items
    w = np.zeros((nu + ni, len(CONSTRAINTS)), np.float32)
    w[:nu, 0] = 1
    w[nu:, 1] = 1
    w[:nu, 2] = csr.user_degree(g) + np.diff(g.follow_in_ptr)
    w[nu:, 3] = csr.item_degree(g)
    w[:nu, 4] = g.user_val_count + g.user_test_count
    return w


def part_loads(part: np.ndarray, weights: np.ndarray, parts: int) -> np.ndarray:
    """[parts, len(CONSTRAINTS)] sums of node weights per partition."""
    return np.stack([np.bincount(part, weights[:, c].astype(np.float64), minlength=parts)
                     for c in range(weights.shape[1])], 1)


def imbalance(loads: np.ndarray) -> np.ndarray:
    """Per column: max_k |load_k - mean| / mean (0 where the column is empty)."""
    loads = np.asarray(loads, np.float64)
    mean = loads.mean(0)
    return np.where(mean > 0, np.abs(loads - mean).max(0) / np.where(mean > 0, mean, 1), 0.0)
