r"""Top-K recommendation scoring: the K best items of each user by dot product, known items masked.

    score(u, i) = U[u] · I[i],   top_k(u) = the k items i ∉ exclude(u) of highest score(u, i), best first

Scored in chunks of `user_chunk` users (one [chunk, num_items] score matrix at a time, reused across
chunks), and optionally in shards of `item_chunk` items: each shard gives its own top k, and one more
topk over the shards' candidates gives the same lists as the unsplit computation (a user's top k lie
among the union of the shards' top k), scores equal up to float rounding (BLAS may sum a dot product in
another order for another matrix shape). Runs on the device of U and I.
"""
from __future__ import annotations

from typing import Iterator, NamedTuple, Optional

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


class Cuts(NamedTuple):
    """How top_k cuts the work: `shard` items a shard, `candidates` kept of each, `users` a chunk."""
    shard: int
    candidates: int
    users: int


def cuts(num_items: int, k: int, user_chunk: int, item_chunk: Optional[int], max_scores: int) -> Cuts:
    """Shards of `item_chunk` items (one for the whole catalog by default), and chunks of fewer users
    where `user_chunk` x a shard's items would exceed `max_scores`."""
    shard = max(1, num_items if not item_chunk or item_chunk >= num_items else int(item_chunk))
    return Cuts(shard, min(k, shard), max(1, min(user_chunk, max_scores // shard)))


def user_chunks(U: Tensor, users: Optional[Tensor], chunk: int) -> Iterator[tuple[Tensor, Tensor]]:
    """(user ids, their rows of U) per chunk of `chunk` users of `users` (default: every row of U)."""
    device = U.device
    n_users = U.shape[0] if users is None else users.numel()
    users = None if users is None else users.to(device)
    for start in range(0, n_users, chunk):
        if users is None:  # contiguous rows: a view, no gather
            end = min(start + chunk, n_users)
            yield torch.arange(start, end, device=device), U[start:end]
        else:
            uc = users[start:start + chunk]
            yield uc, U[uc]


def shard_tops(Uc: Tensor, I: Tensor, buf: Tensor, excluded: Optional[tuple[Tensor, Tensor]],
               cut: Cuts) -> tuple[list[Tensor], list[Tensor]]:
    """(scores, item ids) of each shard's best candidates for the users of the rows Uc, scored in `buf`;
    `excluded`: the (position in Uc, item) cells that score -inf."""
    n, num_items, shard = Uc.shape[0], I.shape[0], cut.shard
    if excluded is not None:
        rows, cols = excluded
    vals, ids = [], []
    for s in range(0, num_items, shard):
        Is = I[s:s + shard]
        m = Is.shape[0]
        scores = buf.view(-1)[:n * m].view(n, m)  # a contiguous [n, m] prefix of the buffer
        torch.mm(Uc, Is.T, out=scores)
        if excluded is not None:  # -inf into the excluded (row, item) cells, in place
            r, c = rows, cols
            if shard < num_items:
                keep = (cols >= s) & (cols < s + m)
                r, c = rows[keep], cols[keep] - s
            scores.view(-1).index_fill_(0, r * m + c, float("-inf"))
        v, i = torch.topk(scores, min(cut.candidates, m), dim=1, sorted=shard == num_items)
        vals.append(v)
        ids.append(i + s if s else i)
    return vals, ids


def merge_shards(vals: list[Tensor], ids: list[Tensor], k: int, U: Tensor, uc: Tensor) -> tuple[Tensor, Tensor]:
    """(item ids, scores) of the best k of the shards' candidates, best first."""
    n = uc.numel()
    if not vals:  # empty catalog
        return uc.new_empty(n, 0), U.new_empty(n, 0)
    if len(vals) == 1:
        return ids[0], vals[0]
    cand_val, cand_ids = torch.cat(vals, 1), torch.cat(ids, 1)
    val, pos = torch.topk(cand_val, min(k, cand_val.shape[1]), dim=1)
    return cand_ids.gather(1, pos), val


def k_columns(top: Tensor, val: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """(item ids, float32 scores), k columns each: item -1 with score -inf where no item is left."""
    n = top.shape[0]
    top = top.masked_fill(torch.isneginf(val), -1)  # masked items: fewer than k candidates left
    val = val.float()
    if top.shape[1] < k:
        pad = k - top.shape[1]
        top = torch.cat([top, top.new_full((n, pad), -1)], 1)
        val = torch.cat([val, val.new_full((n, pad), float("-inf"))], 1)
    return top, val


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
    cut = cuts(I.shape[0], k, user_chunk, item_chunk, max_scores)
    excl = None if exclude is None else tuple(t.to(U.device) for t in to_csr(exclude, U.shape[0]))
    n_users = U.shape[0] if users is None else users.numel()
    buf = None
    for uc, Uc in user_chunks(U, users, cut.users):
        if buf is None:
            buf = torch.empty(min(cut.users, n_users), cut.shard, dtype=torch.result_type(U, I), device=U.device)
        vals, ids = shard_tops(Uc, I, buf, None if excl is None else csr_rows(*excl, uc), cut)
        top, val = k_columns(*merge_shards(vals, ids, k, U, uc), k)
        yield uc, top, val
