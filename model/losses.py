r"""Ranking losses over (user, positive item, negative items) representations, and a registry.

Every loss is `fn(u, pos, neg, ego=None, **params)`: u, pos [B, d]; neg [B, d], [B, n_neg, d], `Rows`
(the same rows by index, not materialized), or None for in-batch negatives (every other positive of the
batch); ego an optional tuple of the batch's input (layer-0) embeddings to regularize (e.g.
(h0[users], h0[pos_items], Rows(h0, neg_items))).
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .blocks import row_pointer, stable_order
from .layers import spmm


class Rows(NamedTuple):
    """The rows h[index] ([B, n_neg, d] for an index [B, n_neg]) as a loss's `neg` or `ego` term, never
    materialized: scores are gathered in chunks with a backward of two sparse products, and the L2
    term weighs each row of h by how often the index names it. On a Gowalla batch (65,536 pairs x 16
    negatives, dim 64, 1 thread) the scores take 18 ms instead of autograd's 0.96 s, and the L2 term
    no gather at all (0.9 s with its backward)."""
    h: Tensor
    index: Tensor


class _GatheredScores(torch.autograd.Function):
    """scores[b, k] = <u[b], h[index[b, k]]>: the entries of u @ h^T at (b, index[b, k]), a sampled
    product; the gradients are S @ h and S^T @ u for the sparse S[b, index[b, k]] = grad[b, k]."""

    @staticmethod
    def forward(ctx, u: Tensor, h: Tensor, index: Tensor) -> Tensor:
        # torch.sparse.sampled_addmm: no row gathered (Gowalla batch, 1 thread: 18 ms; index_select + bmm
        # in cache-sized chunks took 90-100 ms, autograd's u.unsqueeze(1) * h[index] 0.96 s)
        ctx.save_for_backward(u, h, index)
        (b, k), flat = index.shape, index.reshape(-1)
        pattern = torch.sparse_csr_tensor(torch.arange(0, b * k + 1, k, device=u.device), flat,
                                          u.new_zeros(b * k), (b, len(h)))
        return torch.sparse.sampled_addmm(pattern, u, h.T, beta=0).values().view(b, k)

    @staticmethod
    def backward(ctx, grad: Tensor):
        u, h, index = ctx.saved_tensors
        (b, k), flat, values = index.shape, index.reshape(-1), grad.reshape(-1).contiguous()
        rows = torch.arange(0, b * k + 1, k, device=u.device)
        s = torch.sparse_csr_tensor(rows, flat, values, (b, len(h)))
        order = stable_order(flat, len(h))  # ties in a fixed order: the same sums with any thread count
        s_t = torch.sparse_csr_tensor(row_pointer(flat, len(h)), order // k, values.index_select(0, order), (len(h), b))
        return (spmm(s, h) if ctx.needs_input_grad[0] else None,
                spmm(s_t, u) if ctx.needs_input_grad[1] else None, None)


def pair_scores(u: Tensor, pos: Tensor, neg):
    """(positive scores [B, 1], negative scores [B, n_neg]) for the negative layouts: None (in-batch),
    [B, d], [B, n_neg, d], or Rows."""
    pos_s = (u * pos).sum(-1, keepdim=True)
    if neg is None:
        all_s = u @ pos.T
        off = ~torch.eye(u.shape[0], dtype=torch.bool, device=u.device)
        return pos_s, all_s[off].view(u.shape[0], -1)
    if isinstance(neg, Rows):
        return pos_s, _GatheredScores.apply(u, neg.h, neg.index)
    if neg.dim() == 2:
        return pos_s, (u * neg).sum(-1, keepdim=True)
    return pos_s, (u.unsqueeze(1) * neg).sum(-1)


def l2_reg(ego, batch_size: int) -> Tensor:
    """(1/2B) sum of squared L2 norms of the given embedding rows; the rows of a [B, n, d] tensor (n
    negatives per pair) count 1/n each, so every (u, i, j) triple is regularized as with one negative."""
    return sum(_squared(t) for t in ego) / (2 * batch_size)


def _with_l2(loss: Tensor, ego, l2: float, batch_size: int) -> Tensor:
    """`loss` plus `l2` times `l2_reg` of the ego rows, when there are rows and a weight."""
    return loss + l2 * l2_reg(ego, batch_size) if ego and l2 else loss


def _squared(t) -> Tensor:
    if isinstance(t, Rows):
        times = torch.bincount(t.index.reshape(-1), minlength=len(t.h)).to(t.h.dtype)
        return (times * t.h.pow(2).sum(-1)).sum() / t.index.shape[1]
    return t.pow(2).sum() / (t.shape[1] if t.dim() == 3 else 1)


def bpr_loss(u: Tensor, pos: Tensor, neg: Optional[Tensor], ego=None, l2: float = 1e-4) -> Tensor:
    r"""BPR with L2 on the batch's ego embeddings (LightGCN paper form):

    .. math:: L = -\frac{1}{|P|} \sum_{(u,i,j) \in P} \ln \sigma(\hat y_{ui} - \hat y_{uj})
              + \frac{\lambda}{2B} \big(\|e_u^{(0)}\|^2 + \|e_i^{(0)}\|^2 + \|e_j^{(0)}\|^2\big)
    """
    pos_s, neg_s = pair_scores(u, pos, neg)
    loss = -F.logsigmoid(pos_s - neg_s).mean()
    return _with_l2(loss, ego, l2, u.shape[0])


def max_margin_loss(u: Tensor, pos: Tensor, neg: Optional[Tensor], ego=None, margin: float = 0.1,
                    l2: float = 0.0) -> Tensor:
    r"""PinSage's max-margin ranking loss:

    .. math:: J = \mathbb{E}_{j \sim P_n(u)} \max\big(0,\; z_u \cdot z_j - z_u \cdot z_i + \Delta\big)
    """
    pos_s, neg_s = pair_scores(u, pos, neg)
    loss = F.relu(neg_s - pos_s + margin).mean()
    return _with_l2(loss, ego, l2, u.shape[0])


def cosine_contrastive_loss(u: Tensor, pos: Tensor, neg, ego=None, margin: float = 0.8,
                            negative_weight: float = 1.0, l2: float = 0.0) -> Tensor:
    r"""SimpleX's cosine contrastive loss (Mao et al., 2021): pull positives to cosine 1, push each
    negative below the margin m, the negatives' mean weighted by w:

    .. math:: L = \frac{1}{|P|} \sum_{(u,i) \in P} \Big(1 - \cos(e_u, e_i)
              + \frac{w}{|N_u|} \sum_{j \in N_u} \max\big(0, \cos(e_u, e_j) - m\big)\Big)
    """
    pos_s, neg_s = cosine_scores(u, pos, neg)
    loss = (1 - pos_s).mean() + negative_weight * F.relu(neg_s - margin).mean()
    return _with_l2(loss, ego, l2, u.shape[0])


def softmax_loss(u: Tensor, pos: Tensor, neg, ego=None, temperature: float = 0.1, l2: float = 0.0) -> Tensor:
    r"""Sampled softmax over cosines (SSM; Wu et al., 2023, "On the Effectiveness of Sampled Softmax Loss
    for Item Recommendation"): the positive's share of a softmax over itself and the sampled negatives,
    at temperature :math:`\tau`:

    .. math:: L = -\frac{1}{|P|} \sum_{(u,i) \in P} \log \frac{\exp(\cos(e_u, e_i) / \tau)}
              {\exp(\cos(e_u, e_i) / \tau) + \sum_{j \in N_u} \exp(\cos(e_u, e_j) / \tau)}
    """
    pos_s, neg_s = cosine_scores(u, pos, neg)
    logits = torch.cat([pos_s, neg_s], dim=1) / temperature  # the positive is class 0
    loss = F.cross_entropy(logits, logits.new_zeros(len(logits), dtype=torch.long))
    return _with_l2(loss, ego, l2, u.shape[0])


def cosine_scores(u: Tensor, pos: Tensor, neg):
    """`pair_scores` of the unit-length rows: cosines."""
    if isinstance(neg, Rows):
        neg = Rows(F.normalize(neg.h, dim=-1), neg.index)
    elif neg is not None:
        neg = F.normalize(neg, dim=-1)
    return pair_scores(F.normalize(u, dim=-1), F.normalize(pos, dim=-1), neg)


def alignment_uniformity_loss(u: Tensor, pos: Tensor, neg=None, ego=None, gamma: float = 1.0,
                              sample: int = 4096, l2: float = 0.0) -> Tensor:
    r"""DirectAU (Wang et al., 2022): align each positive pair, spread users and items on the sphere.
    Negatives are not used; uniformity is taken over `sample` random rows of the batch (all pairs of
    a 65,536-row batch would be 4 G distances).

    .. math:: L = \frac{1}{|P|} \sum_{(u,i) \in P} \|\tilde e_u - \tilde e_i\|^2
              + \frac{\gamma}{2} \big(\log \mathbb{E}_{u,u'} e^{-2\|\tilde e_u - \tilde e_{u'}\|^2}
              + \log \mathbb{E}_{i,i'} e^{-2\|\tilde e_i - \tilde e_{i'}\|^2}\big),
              \quad \tilde e = e / \|e\|
    """
    u, pos = F.normalize(u, dim=-1), F.normalize(pos, dim=-1)
    align = (u - pos).pow(2).sum(-1).mean()
    some = torch.randperm(len(u), device=u.device)[:sample]
    loss = align + gamma / 2 * (_uniformity(u[some]) + _uniformity(pos[some]))
    return _with_l2(loss, ego, l2, u.shape[0])


def _uniformity(x: Tensor) -> Tensor:
    return torch.pdist(x).pow(2).mul(-2).exp().mean().log()


def view_contrast_loss(a: Tensor, b: Tensor, temperature: float = 0.2) -> Tensor:
    r"""InfoNCE between two views of the same nodes (row r of `a` and of `b`); the other rows of `b`
    are the negatives (SimGCL / XSimGCL, Yu et al., 2022):

    .. math:: L = \frac{1}{|B|} \sum_{r \in B} -\log \frac{\exp(\tilde a_r \cdot \tilde b_r / \tau)}
              {\sum_{s \in B} \exp(\tilde a_r \cdot \tilde b_s / \tau)}
    """
    logits = F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T / temperature
    return F.cross_entropy(logits, torch.arange(len(a), device=a.device))


LOSSES = {"bpr": bpr_loss, "max_margin": max_margin_loss, "cosine_contrastive": cosine_contrastive_loss,
          "softmax": softmax_loss, "alignment_uniformity": alignment_uniformity_loss}
