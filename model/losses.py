r"""Ranking losses over (user, positive item, negative items) representations, and a registry.

Every loss is `fn(u, pos, neg, ego=None, **params)`: u, pos [B, d]; neg [B, d], [B, n_neg, d], or None
for in-batch negatives (every other positive of the batch); ego an optional tuple of the batch's input
(layer-0) embeddings to regularize (e.g. (h0[users], h0[pos_items], h0[neg_items])).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor


def pair_scores(u: Tensor, pos: Tensor, neg: Optional[Tensor]):
    """(positive scores [B, 1], negative scores [B, n_neg]) for the three negative layouts."""
    pos_s = (u * pos).sum(-1, keepdim=True)
    if neg is None:
        all_s = u @ pos.T
        off = ~torch.eye(u.shape[0], dtype=torch.bool, device=u.device)
        return pos_s, all_s[off].view(u.shape[0], -1)
    if neg.dim() == 2:
        return pos_s, (u * neg).sum(-1, keepdim=True)
    return pos_s, (u.unsqueeze(1) * neg).sum(-1)


def l2_reg(ego, batch_size: int) -> Tensor:
    """(1/2B) sum of squared L2 norms of the given embedding rows; the rows of a [B, n, d] tensor (n
    negatives per pair) count 1/n each, so every (u, i, j) triple is regularized as with one negative."""
    return sum(t.pow(2).sum() / (t.shape[1] if t.dim() == 3 else 1) for t in ego) / (2 * batch_size)


def bpr_loss(u: Tensor, pos: Tensor, neg: Optional[Tensor], ego=None, l2: float = 1e-4) -> Tensor:
    r"""BPR with L2 on the batch's ego embeddings (LightGCN paper form):

    .. math:: L = -\frac{1}{|P|} \sum_{(u,i,j) \in P} \ln \sigma(\hat y_{ui} - \hat y_{uj})
              + \frac{\lambda}{2B} \big(\|e_u^{(0)}\|^2 + \|e_i^{(0)}\|^2 + \|e_j^{(0)}\|^2\big)
    """
    pos_s, neg_s = pair_scores(u, pos, neg)
    loss = -F.logsigmoid(pos_s - neg_s).mean()
    return loss + l2 * l2_reg(ego, u.shape[0]) if ego and l2 else loss


def max_margin_loss(u: Tensor, pos: Tensor, neg: Optional[Tensor], ego=None, margin: float = 0.1,
                    l2: float = 0.0) -> Tensor:
    r"""PinSage's max-margin ranking loss:

    .. math:: J = \mathbb{E}_{j \sim P_n(u)} \max\big(0,\; z_u \cdot z_j - z_u \cdot z_i + \Delta\big)
    """
    pos_s, neg_s = pair_scores(u, pos, neg)
    loss = F.relu(neg_s - pos_s + margin).mean()
    return loss + l2 * l2_reg(ego, u.shape[0]) if ego and l2 else loss


LOSSES = {"bpr": bpr_loss, "max_margin": max_margin_loss}
