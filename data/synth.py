"""Synthetic interaction logs with power-law degrees and planted communities, written in Parquet chunks.

The model of the log:
- Entities have Zipf popularity: rank r in [0, n) is drawn with P(r) ∝ (r + 1)^(-s) (inverse CDF of the
  continuous power law, O(1) memory), and a rank is turned into an id by the bijection
  id = r · P mod n (P a large prime), so popular ids are scattered over the id space.
- User u belongs to community u mod C; item j (in rank space) to community j mod C.
- Each interaction picks a user by activity; with probability `in_community` the item is drawn by
  popularity among the items of the user's community, otherwise by global popularity. A model that finds
  the communities beats popularity by a wide margin on held-out edges. With `drift` d > 0, tastes move:
  in the last d of the year (timestamps span one) a user's community is the next one, (u + 1) mod C.
- Social edges (optional) pick a source by activity and, with probability `homophily`, a friend of the
  same community, else any user. Item and user features (optional) are the node's community's centroid
  (one set of centroids per node type) plus noise.

Memory is bounded by `chunk_edges`, whatever the number of edges; output is deterministic for a seed.
"""
from __future__ import annotations

import json
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from gnnrec import atomic_dir

PRIME = 2_654_435_761  # prime and > any n used here, so r -> r·P mod n is a bijection of [0, n)
START_TIME = 1_500_000_000  # 2017-07-14, timestamps span one year from here
YEAR = 365 * 24 * 3600


def zipf_ranks(rng: np.random.Generator, n, s: float, size: int) -> np.ndarray:
    """Ranks in [0, n) with P(r) ∝ (r+1)^-s; `n` may be an array (one bound per draw)."""
    u = rng.random(size)
    n = np.asarray(n, dtype=np.float64)
    if s == 0:
        x = u * n
    elif abs(s - 1) < 1e-9:
        x = np.power(n + 1, u) - 1
    else:
        a = 1 - s
        x = np.power(1 + u * (np.power(n + 1, a) - 1), 1 / a) - 1
    return np.minimum(x.astype(np.int64), np.asarray(n, dtype=np.int64) - 1)


def scramble(ranks: np.ndarray, n: int) -> np.ndarray:
    """The bijection rank -> id of [0, n)."""
    return (ranks * PRIME) % n


def unscramble(ids: np.ndarray, n: int) -> np.ndarray:
    """The inverse bijection id -> rank."""
    inverse = pow(PRIME, -1, n)
    if n < 2**31:  # the product stays below 2^62
        return np.asarray(ids, dtype=np.int64) * inverse % n
    return (np.asarray(ids, dtype=object) * inverse % n).astype(np.int64)


def user_community(user_ids, cfg) -> np.ndarray:
    return np.asarray(user_ids) % cfg.communities


def item_community(item_ids, cfg) -> np.ndarray:
    return unscramble(item_ids, cfg.items) % cfg.communities


def _community_members(rng, community: np.ndarray, n: int, C: int, s: float) -> np.ndarray:
    """Members j = c + C·k of community c, k drawn by Zipf(s) among the community's members."""
    size_c = (n - community + C - 1) // C
    return community + C * zipf_ranks(rng, size_c, s, len(community))


def interaction_chunk(cfg, index: int, size: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng([cfg.seed, 1, index])
    C = min(cfg.communities, cfg.items)
    users = scramble(zipf_ranks(rng, cfg.users, cfg.user_exponent, size), cfg.users)
    community = users % C
    when = rng.integers(0, YEAR, size) if cfg.drift else None  # drawn here only with drift: same logs without
    if cfg.drift:
        community = (community + (when >= (1 - cfg.drift) * YEAR)) % C
    item_rank = zipf_ranks(rng, cfg.items, cfg.item_exponent, size)
    inside = rng.random(size) < cfg.in_community
    item_rank[inside] = _community_members(rng, community[inside], cfg.items, C, cfg.item_exponent)
    cols = {"user_id": users, "item_id": scramble(item_rank, cfg.items)}
    if cfg.timestamps:
        cols["timestamp"] = START_TIME + (rng.integers(0, YEAR, size) if when is None else when)
    if cfg.weights:
        cols["weight"] = rng.geometric(0.3, size).astype(np.float32)
    return cols


def social_chunk(cfg, index: int, size: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng([cfg.seed, 2, index])
    C = min(cfg.communities, cfg.users)
    src = scramble(zipf_ranks(rng, cfg.users, cfg.user_exponent, size), cfg.users)
    dst = rng.integers(0, cfg.users, size)
    same = rng.random(size) < cfg.homophily
    dst[same] = _community_members(rng, src[same] % C, cfg.users, C, 0.0)
    return {"user_id": src, "friend_id": dst}


def feature_chunk(cfg, node_type: str, start: int, stop: int) -> dict[str, np.ndarray]:
    """Features of nodes [start, stop) of a type: their community's centroid plus noise."""
    dim, salt = (cfg.item_feature_dim, 3) if node_type == "item" else (cfg.user_feature_dim, 5)
    community = (item_community if node_type == "item" else user_community)(np.arange(start, stop), cfg)
    centroids = np.random.default_rng([cfg.seed, salt + 1]).normal(size=(cfg.communities, dim))
    feats = centroids[community] + 0.5 * np.random.default_rng([cfg.seed, salt, start]).normal(size=(stop - start, dim))
    return {f"{node_type}_id": np.arange(start, stop), **{f"f{k}": feats[:, k].astype(np.float32) for k in range(dim)}}


def _table(cols: dict[str, np.ndarray], cfg) -> pa.Table:
    if cfg.string_ids:
        prefix = {"user_id": "u", "friend_id": "u", "item_id": "i"}
        cols = {k: (np.char.add(prefix[k], v.astype(str)) if k in prefix else v) for k, v in cols.items()}
    return pa.table(cols)


def _write_chunks(out_dir, total: int, chunk: int, per_file: int, make, cfg, desc: str) -> None:
    """Write `total` rows made by make(index, size) as Parquet files of about `per_file` rows."""
    out_dir.mkdir()
    writer, file_rows, file_no = None, 0, 0
    with tqdm(total=total, desc=desc, unit="edge", unit_scale=True, disable=None, leave=False) as bar:
        for index, start in enumerate(range(0, total, chunk)):
            table = _table(make(index, min(chunk, total - start)), cfg)
            if writer is None:
                writer = pq.ParquetWriter(out_dir / f"part-{file_no:05d}.parquet", table.schema)
            writer.write_table(table)
            file_rows += table.num_rows
            bar.update(table.num_rows)
            if file_rows >= per_file:
                writer.close()
                writer, file_rows, file_no = None, 0, file_no + 1
    if writer is not None:
        writer.close()


def _write_features(path, cfg, node_type: str, n: int) -> None:
    chunks = (_table(feature_chunk(cfg, node_type, start, min(start + cfg.chunk_edges, n)), cfg)
              for start in range(0, n, cfg.chunk_edges))
    first = next(chunks)
    with pq.ParquetWriter(path, first.schema) as writer:
        writer.write_table(first)
        for table in chunks:
            writer.write_table(table)


def run(cfg) -> dict:
    """Generate the synthetic log of `cfg.synth` into its `out` directory; return its manifest."""
    s = cfg.synth
    out = cfg.path(s.out)
    t0 = time.perf_counter()
    with atomic_dir(out) as tmp:
        _write_chunks(tmp / "interactions", s.edges, s.chunk_edges, s.file_edges,
                      lambda i, n: interaction_chunk(s, i, n), s, "synth interactions")
        if s.social_edges:
            _write_chunks(tmp / "social", s.social_edges, s.chunk_edges, s.file_edges,
                          lambda i, n: social_chunk(s, i, n), s, "synth social")
        for node_type, n in (("user", s.users), ("item", s.items)):
            if getattr(s, f"{node_type}_feature_dim"):
                _write_features(tmp / f"{node_type}_features.parquet", s, node_type, n)
        manifest = {"users": s.users, "items": s.items, "edges": s.edges, "social_edges": s.social_edges,
                    "item_feature_dim": s.item_feature_dim,
                    "user_feature_dim": s.user_feature_dim, "seconds": round(time.perf_counter() - t0, 2)}
        (tmp / "synth.json").write_text(json.dumps(manifest, indent=2))
        cfg.save(tmp)
    return {"out": str(out), **manifest}
