r"""Top-K recommendation scoring: the K best items of each user by dot product, known items masked.

    score(u, i) = U[u] · I[i],   top_k(u) = the k items i ∉ exclude(u) of highest score(u, i), best first

Scored in chunks of `user_chunk` users (one [chunk, num_items] score matrix at a time, reused across
chunks), and optionally in shards of `item_chunk` items: each shard gives its own top k, and one more
topk over the shards' candidates gives the same lists as the unsplit computation (a user's top k lie
among the union of the shards' top k), scores equal up to float rounding (BLAS may sum a dot product in
another order for another matrix shape). Runs on the device of U and I.
"""
from __future__ import annotations

from typing import Iterator, Optional

import torch
from torch import Tensor

MAX_SCORES = 1 << 27  # scores held at once: 512 MiB of float32, 4,096 users of a 32k-item catalog, 64 of 2M


def to_csr(sets, num_users: int):
    """(indptr [num_users + 1], indices) from a CSR pair or a [2, E] (user, item) edge index."""
    if isinstance(sets, (tuple, list)):
        indptr, indices = (torch.as_tensor(t).long() for t in sets)
        if indptr.numel() != num_users + 1:
            raise ValueError(f"CSR indptr has {indptr.numel()} entries, expected num_users + 1 = {num_users + 1}")
        return indptr, indices
    edges = torch.as_tensor(sets).long()
    users, order = torch.sort(edges[0], stable=True)
    counts = torch.bincount(users, minlength=num_users)
    return torch.cat([counts.new_zeros(1), counts.cumsum(0)]), edges[1][order]


def csr_rows(indptr: Tensor, indices: Tensor, rows: Tensor):
    """(position in `rows`, column) for every entry of the given CSR rows."""
    starts = indptr[rows]
    lens = indptr[rows + 1] - starts
    pos = torch.repeat_interleave(torch.arange(rows.numel(), device=rows.device), lens)
    offsets = torch.arange(pos.numel(), device=rows.device) - torch.repeat_interleave(lens.cumsum(0) - lens, lens)
    return pos, indices[starts[pos] + offsets]


@torch.no_grad()
def top_k(U: Tensor, I: Tensor, k: int, exclude=None, users: Optional[Tensor] = None,
          user_chunk: int = 4096, item_chunk: Optional[int] = None,
          max_scores: int = MAX_SCORES) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """Yield, per chunk of `users` (default: every row of U), `(user_ids [n], item_ids [n, k] int64,
    scores [n, k] float32)`: the k items of highest U[u] · I[i] for each user, best first (ties in any
    order), never one of the user's `exclude` items (a [2, E] (user, item) edge index or a CSR
    (indptr, indices) pair over all rows of U, as `to_csr` takes). Where fewer than k items
    remain, the rest of the row is item -1 with score -inf. `item_chunk`: score the catalog in shards of
    that many items and merge the shards' top k (the same lists, a [user_chunk, item_chunk] score buffer).
    Chunks hold fewer users where `user_chunk` x the shard's items would exceed `max_scores`.
    """
    device, num_items = U.device, I.shape[0]
    shard = max(1, num_items if not item_chunk or item_chunk >= num_items else int(item_chunk))
    kk = min(k, shard)  # per-shard candidates
    user_chunk = max(1, min(user_chunk, max_scores // shard))
    excl = None if exclude is None else tuple(t.to(device) for t in to_csr(exclude, U.shape[0]))
    n_users = U.shape[0] if users is None else users.numel()
    users = None if users is None else users.to(device)
    buf = None
    for start in range(0, n_users, user_chunk):
        if users is None:  # contiguous rows: a view, no gather
            end = min(start + user_chunk, n_users)
            uc, Uc = torch.arange(start, end, device=device), U[start:end]
        else:
            uc = users[start:start + user_chunk]
            Uc = U[uc]
        n = uc.numel()
        if buf is None:
            buf = torch.empty(min(user_chunk, n_users), shard, dtype=torch.result_type(U, I), device=device)
        if excl is not None:
            rows, cols = csr_rows(*excl, uc)
        vals, ids = [], []
        for s in range(0, num_items, shard):
            Is = I[s:s + shard]
            m = Is.shape[0]
            scores = buf.view(-1)[:n * m].view(n, m)  # a contiguous [n, m] prefix of the buffer
            torch.mm(Uc, Is.T, out=scores)
            if excl is not None:  # -inf into the excluded (row, item) cells, in place
                r, c = rows, cols
                if shard < num_items:
                    keep = (cols >= s) & (cols < s + m)
                    r, c = rows[keep], cols[keep] - s
                scores.view(-1).index_fill_(0, r * m + c, float("-inf"))
            v, i = torch.topk(scores, min(kk, m), dim=1, sorted=shard == num_items)
            vals.append(v)
            ids.append(i + s if s else i)
        if not vals:  # empty catalog
            val, top = U.new_empty(n, 0), uc.new_empty(n, 0)
        elif len(vals) == 1:
            val, top = vals[0], ids[0]
        else:  # merge the shards' candidates
            cand_val, cand_ids = torch.cat(vals, 1), torch.cat(ids, 1)
            val, pos = torch.topk(cand_val, min(k, cand_val.shape[1]), dim=1)
            top = cand_ids.gather(1, pos)
        top = top.masked_fill(torch.isneginf(val), -1)  # masked items: fewer than k candidates left
        val = val.float()
        if top.shape[1] < k:
            pad = k - top.shape[1]
            top = torch.cat([top, top.new_full((n, pad), -1)], 1)
            val = torch.cat([val, val.new_full((n, pad), float("-inf"))], 1)
        yield uc, top, val
