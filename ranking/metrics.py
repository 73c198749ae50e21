r"""Full-ranking evaluation: score every item for every user, mask known items, take the top K.

Per user u with held-out items T_u (|T_u| >= 1; users without any are not evaluated) and top-K list R_u:

    Recall@K    = |R_u ∩ T_u| / |T_u|
    Precision@K = |R_u ∩ T_u| / K
    HitRate@K   = 1 if R_u ∩ T_u is non-empty else 0
    NDCG@K      = DCG / IDCG, DCG = sum_{r=1..K} [R_u[r] in T_u] / log2(r + 1),
                  IDCG = sum_{r=1..min(|T_u|, K)} 1 / log2(r + 1)            (binary relevance)
    MRR@K       = 1 / (rank of the first hit in R_u), 0 if none in the top K

each averaged over evaluated users; Coverage@K = |union of all R_u| / num_items.
Per-user item sets (held-out truth, items to mask) are given as CSR `(indptr, indices)` over all users,
or as an edge index `[2, E]` tensor of (user, item) rows (`topk.to_csr`); item ids are local, 0-based.
The top-K lists are ranking/topk.py's, the same function infer and mine use.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from torch import Tensor

from gnnrec.ranking.topk import csr_rows, to_csr, top_k

METRICS = ("recall", "ndcg", "precision", "hit_rate", "mrr")


class RankingStats:
    """Running sums of the metrics over users, mergeable across chunks or workers (sum the `sums`
    and `count`, OR the `covered` masks), then `result()`."""

    def __init__(self, ks, num_items: int, device=None):
        self.ks = sorted(set(int(k) for k in ks))
        self.num_items = num_items
        self.count = 0
        self.sums = {f"{m}@{k}": 0.0 for k in self.ks for m in METRICS}
        self.covered = {k: torch.zeros(num_items, dtype=torch.bool, device=device) for k in self.ks}

    def update(self, top: Tensor, hits: Tensor, n_truth: Tensor) -> None:
        """top [n, K] item ids (-1 = empty slot), hits [n, K] bool, n_truth [n] (all >= 1)."""
        device, kmax = top.device, top.shape[1]
        ranks = torch.arange(1, kmax + 1, device=device, dtype=torch.float64)
        disc = 1.0 / torch.log2(ranks + 1)
        ideal = torch.cat([disc.new_zeros(1), disc.cumsum(0)])
        first = hits & (hits.cumsum(1) == 1)
        n_truth = n_truth.to(device)
        for k in self.ks:
            if k > kmax:
                raise ValueError(f"K={k} is larger than the top lists ({kmax})")
            h = hits[:, :k].double()
            n_hit = h.sum(1)
            self.sums[f"recall@{k}"] += (n_hit / n_truth).sum().item()
            self.sums[f"precision@{k}"] += (n_hit / k).sum().item()
            self.sums[f"hit_rate@{k}"] += (n_hit > 0).sum().item()
            self.sums[f"ndcg@{k}"] += ((h * disc[:k]).sum(1) / ideal[n_truth.clamp(max=k)]).sum().item()
            self.sums[f"mrr@{k}"] += (first[:, :k].double() / ranks[:k]).sum().item()
            items = top[:, :k]
            self.covered[k][items[items >= 0]] = True
        self.count += top.shape[0]

    def all_reduce(self) -> "RankingStats":
        """Sum the counts and OR the coverage across torch.distributed ranks (every rank calls it)."""
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            names = list(self.sums)
            totals = torch.tensor([self.sums[n] for n in names] + [self.count], dtype=torch.float64)
            dist.all_reduce(totals)
            self.sums = dict(zip(names, totals[:-1].tolist()))
            self.count = int(totals[-1].item())
            for k, covered in self.covered.items():
                flags = covered.to(torch.uint8)
                dist.all_reduce(flags, op=dist.ReduceOp.MAX)
                self.covered[k] = flags.bool()
        return self

    def result(self) -> dict:
        out = {name: total / max(self.count, 1) for name, total in self.sums.items()}
        out.update({f"coverage@{k}": self.covered[k].sum().item() / self.num_items for k in self.ks})
        out["num_users"] = self.count
        return out


def _hits(top: Tensor, truth_csr, users: Tensor, num_items: int) -> Tensor:
    """hits[r, j] = top[r, j] is one of users[r]'s held-out items (via flattened (row, item) keys)."""
    r, c = csr_rows(*truth_csr, users)
    rows = torch.arange(top.shape[0], device=top.device).unsqueeze(1)
    return torch.isin(rows * num_items + top, r * num_items + c) & (top >= 0)


def sample_truth(users: np.ndarray, items: np.ndarray, n: Optional[int], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The held-out (user, item) pairs of `n` users drawn uniformly (seeded) from those that have any, so
    that metrics over them estimate the full ones at a fraction of the ranking; all with `n` None or
    at least the number of such users."""
    distinct = np.unique(users)
    if n is None or n >= len(distinct):
        return users, items
    keep = np.isin(users, distinct[sample_users(len(distinct), n, seed)])
    return users[keep], items[keep]


def sample_users(num_users: int, n: Optional[int], seed: int) -> np.ndarray:
    """`n` of the positions 0..num_users-1, drawn uniformly without replacement (seeded); all of them
    with `n` None or at least `num_users`."""
    if n is None or n >= num_users:
        return np.arange(num_users)
    return np.random.default_rng(seed).choice(num_users, n, replace=False)


def evaluate(U: Tensor, I: Tensor, truth, exclude=None, ks=(20,), chunk_size: int = 4096,
             stats: Optional[RankingStats] = None) -> dict:
    """Full-ranking metrics of the embeddings U [num_users, d], I [num_items, d] against the held-out
    `truth` sets, with the `exclude` sets (train, and validation when testing) masked from the ranking.
    Pass `stats` to accumulate into it (a worker's shard), and read `stats.result()` when merged."""
    num_users, num_items = U.shape[0], I.shape[0]
    truth_csr = tuple(t.to(U.device) for t in to_csr(truth, num_users))
    n_truth = truth_csr[0][1:] - truth_csr[0][:-1]
    users = torch.nonzero(n_truth).squeeze(1)
    stats = stats or RankingStats(ks, num_items, U.device)
    for uc, top, _ in top_k(U, I, max(stats.ks), exclude, users, user_chunk=chunk_size):
        stats.update(top, _hits(top, truth_csr, uc, num_items), n_truth[uc])
    return stats.result()


def evaluate_topk(top: Tensor, truth, num_items: int, ks=(20,), users: Optional[Tensor] = None,
                  num_users: Optional[int] = None) -> dict:
    """The same metrics for precomputed top-K lists (e.g. exported recommendations): row r of `top`
    [n, K] (item ids, -1 for empty slots) is the list of user `users[r]` (default r). Users with no
    held-out item are skipped; users with held-out items but no list are not counted either."""
    top = torch.as_tensor(top).long()
    users = torch.arange(top.shape[0]) if users is None else torch.as_tensor(users).long()
    num_users = num_users if num_users is not None else int(users.max()) + 1 if users.numel() else 0
    truth_csr = to_csr(truth, num_users)
    n_truth = truth_csr[0][1:] - truth_csr[0][:-1]
    keep = n_truth[users] > 0
    top, users = top[keep], users[keep]
    stats = RankingStats(ks, num_items)
    stats.update(top, _hits(top, truth_csr, users, num_items), n_truth[users])
    return stats.result()
