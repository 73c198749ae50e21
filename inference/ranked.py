"""The infer stage's rankings: top-K items of users (or of items) by exact scoring or a FAISS index of the
items, written as Parquet in raw IDs, streamed chunk by chunk.

    catalog = Catalog.open(infer_cfg, I, num_users, tmp, w)  # an index: built by rank 0, read by every rank
    write(path, catalog.rank(users, user_rows, known), users, raw_users, raw_items, names, progress)
    catalog.check(users, user_rows, known, seed)              # rank 0: the index's recall against exact
    catalog.close(tmp)                                        # every rank: the index file removed

`infer.index=auto` picks the IVF index where the users ranked x items exceed AUTO_INDEX_SCORES: exact
top-K scores ~3e8 (user, item) pairs a second with the 2 cores of this project's machine (1,546 users/s
against the 10M log's 200k items), so 2e10 is about a minute of exact scoring; on that log the IVF index
ranked every user in 47 s against exact's 321 s, at recall@20 0.995 against exact (bench/topk_index.py).
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from gnnrec.inference.layerwise import barrier
from gnnrec.ranking import index as ann
from gnnrec.ranking.metrics import sample_users
from gnnrec.ranking.topk import top_k

AUTO_INDEX_SCORES = 2e10
BLOCK = 1 << 18  # queries whose rows and masked items are fetched at once
INDEX_FILE = "items.faiss"


def kind(infer_cfg, num_users: int, num_items: int) -> str:
    """exact, ivf or hnsw: infer.index, `auto` resolved by the size of the ranking."""
    if infer_cfg.index != "auto":
        return infer_cfg.index
    users = min(num_users, infer_cfg.users or num_users)
    return "ivf" if users * num_items > AUTO_INDEX_SCORES else "exact"


class Catalog:
    """The items `I` [num_items, d] and how queries are ranked against them (`rank`): exact top-K, or an
    index that rank 0 builds into `workdir` and every rank reads. `stats`: what the manifest reports."""

    def __init__(self, infer_cfg, I: torch.Tensor, index=None, stats=None):
        self.cfg, self.I, self.index, self.stats = infer_cfg, I, index, stats or {}

    @classmethod
    def open(cls, infer_cfg, I: torch.Tensor, num_users: int, workdir: Path, w) -> "Catalog":
        chosen = kind(infer_cfg, num_users, I.shape[0])
        if chosen == "exact":
            return cls(infer_cfg, I, stats={"index": "exact"})
        ivf, hnsw = infer_cfg.ivf, infer_cfg.hnsw
        spec = ann.IndexSpec(chosen, lists=ivf.lists, probes=ivf.probes, m=hnsw.m, ef_search=hnsw.ef_search,
                             ef_construction=hnsw.ef_construction)
        threads, path, started = torch.get_num_threads(), workdir / INDEX_FILE, time.perf_counter()
        w.progress(f"building the {chosen} index", 0, 0)
        if w.rank == 0:
            ann.ItemIndex.build(I, spec, threads).write(path)
        barrier()
        index = ann.ItemIndex.read(path, I, spec, threads)
        stats = {"index": chosen, "index_seconds": round(time.perf_counter() - started, 1), **index.knobs}
        return cls(infer_cfg, I, index, stats)

    @property
    def short(self) -> int:
        """Users the index has given fewer than k items so far."""
        return 0 if self.index is None else self.index.short

    def close(self, workdir: Path) -> None:
        barrier()  # every rank has read the index
        (workdir / INDEX_FILE).unlink(missing_ok=True)

    def rank(self, ids: np.ndarray, vectors, known):
        """(rows: positions in `ids`, item ids [n, k], scores [n, k]) per chunk of the queries `ids`
        (ranking/topk.top_k's contract), taken BLOCK at a time so that memory stays bounded:
        `vectors(block)` their rows [n, d], `known(block)` the [2, E] (position in block, item) to mask."""
        c = self.cfg
        for start in range(0, len(ids), BLOCK):
            block = ids[start:start + BLOCK]
            Q, exclude = vectors(block), known(block)
            if self.index is None:
                chunks = top_k(Q, self.I, c.k, exclude, user_chunk=c.user_chunk, item_chunk=c.item_chunk)
            else:
                chunks = self.index.search(Q, c.k, exclude, user_chunk=c.user_chunk)
            for rows, items, scores in chunks:
                yield rows + start, items, scores

    def check(self, ids: np.ndarray, vectors, known, seed: int) -> None:
        """index_recall: the index's top-K against exact top-K for a seeded sample of the queries `ids`."""
        if self.index is None or not self.cfg.check_users or not len(ids):
            return
        sample = ids[np.sort(sample_users(len(ids), self.cfg.check_users, seed))]
        Q, exclude, k = vectors(sample), known(sample), self.cfg.k
        approx = torch.cat([t for _, t, _ in self.index.search(Q, k, exclude)])
        exact = torch.cat([t for _, t, _ in top_k(Q, self.I, k, exclude)])
        self.stats.update(index_recall=round(ann.overlap(approx, exact), 4), index_recall_users=len(sample))


def write(path: Path, chunks, queries: np.ndarray, raw_queries: pa.Array, raw_items: pa.Array,
          names: tuple[str, str], progress) -> None:
    """Stream `chunks` of (rows: positions in `queries`, item ids, scores) into Parquet rows (query, rank,
    item, score) in raw IDs, empty slots dropped; `progress(done, total)` after each."""
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = None
    try:
        for rows, items, scores in chunks:
            table = _table(queries[rows.numpy()], items.numpy(), scores.numpy(), raw_queries, raw_items, names)
            writer = writer or pq.ParquetWriter(path, table.schema)
            writer.write_table(table)
            progress(int(rows[-1]) + 1, len(queries))
        if writer is None:  # no queries: an empty table of the same columns
            pq.write_table(_table(np.zeros(0, np.int64), np.zeros((0, 0), np.int64), np.zeros((0, 0), np.float32),
                                  raw_queries, raw_items, names), path)
    finally:
        if writer is not None:
            writer.close()


def _table(queries: np.ndarray, items: np.ndarray, scores: np.ndarray, raw_queries, raw_items, names) -> pa.Table:
    """Rows (query, rank, item, score) of [n, k] top lists, empty slots (item -1) dropped, raw IDs."""
    n, k = items.shape
    keep = (items >= 0).ravel()
    return pa.table({names[0]: raw_queries.take(np.repeat(queries, k)[keep]),
                     "rank": pa.array(np.tile(np.arange(1, k + 1, dtype=np.int32), n)[keep]),
                     names[1]: raw_items.take(items.ravel()[keep]),
                     "score": pa.array(scores.ravel()[keep].astype(np.float32))})
