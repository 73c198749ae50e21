r"""Approximate top-K over a large catalog: a FAISS index of the items beside ranking/topk.py's exact scoring.

Exact top-K for every user costs users x items dot products (4.9M x 2.0M of width 64 for a 100M-row log:
hours on two cores). An index answers a user from a small part of the catalog, by the same score
:math:`U_u \cdot I_i` (inner product), and returns the exact score of every item it returns:

- ``ivf``, an inverted file (Jégou et al., "Product quantization for nearest neighbor search", 2011):
  k-means cuts the items into `lists` cells; a user is scored against the items of the `probes` cells
  of nearest centroids (a `probes / lists` share of the catalog).
- ``hnsw``, a hierarchical navigable small-world graph (Malkov and Yashunin, 2018): each item linked to
  `m` near ones; a search walks the graph greedily, `ef_search` candidates at a time.

The IVF searches by Euclidean distance after the reduction of maximum inner product search to nearest
neighbours (Bachrach et al., "Speeding up the Xbox recommender system using a Euclidean transformation
for inner-product spaces", RecSys 2014): item i becomes [I_i, sqrt(M^2 - |I_i|^2)] (M the largest item
norm), user u becomes [U_u, 0], so |u' - i'|^2 = |U_u|^2 + M^2 - 2 U_u . I_i and the nearest items are
those of highest score. Measured on the 10M log's LightGCN (bench/topk_index.py's model, 200k items,
1,788 cells, 32 probed): recall@20 against exact 0.994 at 67k users/s, where an IVF by inner product
directly gives 0.807 at 16k users/s (its cells, cut by k-means on the raw vectors, do not hold a
user's best items). HNSW is the other way round: by inner product 0.860 at ef_search 128 (17k users/s),
after the reduction 0.562 (every query lies far from the items, where its greedy walk goes astray), so
it searches by inner product. Either way the first k candidates left after masking are then
scored exactly (U_u . I_i) and sorted by that score, so the scores and their order are the model's.

An index cannot mask a user's training items, so each chunk of users asks for k + (the chunk's 99th
percentile of known items) and drops the known ones; the few users left with fewer than k whose known
items could be why ask again for k + their own count. A user still short of k is one for whom the index
found fewer items than it was asked for (the probed cells hold fewer): `ItemIndex.short` counts them.
Runs on the CPU; `faiss` is imported by `build` and `read`, not with this module.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator, Optional

import numpy as np
import torch
from torch import Tensor

from gnnrec.ranking.topk import csr_rows, k_columns, to_csr, user_chunks

KINDS = ("ivf", "hnsw")


@dataclass(frozen=True)
class IndexSpec:
    """Which index and its knobs (config: infer.index, infer.ivf.*, infer.hnsw.*)."""
    kind: str
    lists: Optional[int] = None  # ivf cells; None: 4 sqrt(items), at least 39 items a cell (k-means' floor)
    probes: int = 32
    m: int = 32
    ef_search: int = 256
    ef_construction: int = 40

    def ivf_lists(self, num_items: int) -> int:
        return max(1, min(self.lists or round(4 * math.sqrt(num_items)), num_items // 39))


def _faiss(threads: int):
    import faiss
    faiss.omp_set_num_threads(max(1, threads))
    return faiss


def _euclidean(items: np.ndarray) -> np.ndarray:
    """[I_i, sqrt(M^2 - |I_i|^2)]: every row of norm M, the largest item norm."""
    squared = np.einsum("ij,ij->i", items, items)
    extra = np.sqrt(np.maximum(squared.max(initial=0) - squared, 0))
    return np.ascontiguousarray(np.hstack([items, extra[:, None]]), dtype=np.float32)


class ItemIndex:
    """A FAISS index of the items `items` [num_items, d] (row i is item i), searched by inner product.
    `short`: the users `search` has given fewer than k items so far."""

    def __init__(self, index, items: Tensor, spec: IndexSpec):
        self.index, self.items, self.spec, self.short = index, items.detach().cpu().float(), spec, 0
        if spec.kind == "ivf":
            index.nprobe = min(spec.probes, index.nlist)
        else:
            index.hnsw.efSearch = spec.ef_search

    @classmethod
    def build(cls, items: Tensor, spec: IndexSpec, threads: int = 1, seed: int = 0) -> "ItemIndex":
        faiss = _faiss(threads)
        vectors = np.ascontiguousarray(items.detach().cpu().float().numpy())
        if spec.kind == "ivf":
            vectors = _euclidean(vectors)
            n, d = vectors.shape
            index = faiss.IndexIVFFlat(faiss.IndexFlatL2(d), d, spec.ivf_lists(n))
            index.cp.seed = seed
            index.cp.max_points_per_centroid = 64  # k-means on 64 items a cell, not 256: built 1.6x faster
            #                                        at the same recall (0.9943 against 0.9942, the 10M log)
            index.train(vectors)
        elif spec.kind == "hnsw":
            index = faiss.IndexHNSWFlat(vectors.shape[1], spec.m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = spec.ef_construction
        else:
            raise ValueError(f"index kind {spec.kind!r}: one of {', '.join(KINDS)}")
        index.add(vectors)
        return cls(index, items, spec)

    def write(self, path) -> None:
        _faiss(1).write_index(self.index, str(path))

    @classmethod
    def read(cls, path, items: Tensor, spec: IndexSpec, threads: int = 1) -> "ItemIndex":
        return cls(_faiss(threads).read_index(str(path)), items, spec)

    @property
    def knobs(self) -> dict:
        if self.spec.kind == "ivf":
            return {"ivf_lists": self.index.nlist, "ivf_probes": self.index.nprobe}
        return {"hnsw_m": self.spec.m, "hnsw_ef_search": self.spec.ef_search,
                "hnsw_ef_construction": self.spec.ef_construction}

    @torch.no_grad()
    def search(self, U: Tensor, k: int, exclude=None, users: Optional[Tensor] = None,
               user_chunk: int = 4096) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        """Yield, per chunk of `users` (default: every row of U), `(user_ids [n], item_ids [n, k] int64,
        scores [n, k] float32)`, as ranking/topk.top_k does (the same arguments; -1 / -inf padding),
        never one of the user's `exclude` items."""
        excl = None if exclude is None else to_csr(exclude, U.shape[0])
        for uc, Uc in user_chunks(U.detach().cpu().float(), users, user_chunk):
            rows, items = (torch.zeros(0, dtype=torch.long),) * 2 if excl is None else csr_rows(*excl, uc)
            top, val = self._search_chunk(Uc, k, rows.numpy(), items.numpy())
            self.short += int((top[:, -1] < 0).sum()) if k else 0
            yield uc, top, val

    def _search_chunk(self, Uc: Tensor, k: int, rows: np.ndarray, items: np.ndarray) -> tuple[Tensor, Tensor]:
        """(item ids [n, k], scores [n, k]) of the users of rows Uc, their known (row, item) pairs dropped:
        the first ask for k + the chunk's 99th percentile of known items, again for the users it left
        short whose known items could be why."""
        n, num_items = Uc.shape[0], self.index.ntotal
        counts = np.bincount(rows, minlength=n)
        fetch = min(k + (int(np.percentile(counts, 99)) if n else 0), num_items)
        top, val, found = self._best(Uc, self._candidates(Uc, fetch), k, rows, items)
        again = np.flatnonzero((found < k) & (counts > fetch - k))
        if again.size:
            position = np.full(n, -1, np.int64)
            position[again] = np.arange(again.size)
            theirs = position[rows] >= 0
            Ua = Uc[torch.from_numpy(again)]
            more = self._candidates(Ua, min(k + int(counts[again].max()), num_items))
            top[again], val[again], _ = self._best(Ua, more, k, position[rows[theirs]], items[theirs])
        return top, val

    def _candidates(self, Uc: Tensor, fetch: int) -> np.ndarray:
        """[n, fetch] item ids the index finds for the users (IVF: nearest to [U_u, 0]; -1 where fewer)."""
        queries = Uc.numpy()
        if self.spec.kind == "ivf":
            queries = np.hstack([queries, np.zeros((queries.shape[0], 1), np.float32)])
        return self.index.search(np.ascontiguousarray(queries), fetch)[1]

    def _best(self, Uc: Tensor, ids: np.ndarray, k: int, rows: np.ndarray, items: np.ndarray):
        """(item ids [n, k], exact scores [n, k], candidates left per user) of the candidates `ids` (best
        first, as the index ranks them) after the known (row, item) pairs are dropped: the first k left,
        scored exactly and sorted by that score."""
        n, fetch = ids.shape
        keys = np.arange(n, dtype=np.int64)[:, None] * self.index.ntotal + ids
        valid = torch.from_numpy((ids >= 0) & ~np.isin(keys, rows * self.index.ntotal + items))
        order = torch.where(valid, torch.arange(fetch), fetch)  # the index's rank of each candidate left
        pos = torch.topk(order, min(k, fetch), dim=1, largest=False).indices
        top = torch.from_numpy(ids.astype(np.int64)).gather(1, pos).masked_fill_(~valid.gather(1, pos), -1)
        scores = torch.einsum("nd,nkd->nk", Uc, self.items[top.clamp(min=0)]).masked_fill_(top < 0, float("-inf"))
        val, by_score = torch.sort(scores, dim=1, descending=True)
        top, val = k_columns(top.gather(1, by_score), val, k)
        return top, val, valid.sum(1).numpy()


def overlap(approx: Tensor, exact: Tensor) -> float:
    """Mean over rows of |approx ∩ exact| / |exact| (item ids, -1 padding ignored): the index's recall@k."""
    hits, total = 0, 0
    for a, e in zip(approx.tolist(), exact.tolist()):
        e = {i for i in e if i >= 0}
        hits, total = hits + len(e & set(a)), total + len(e)
    return hits / total if total else 1.0
