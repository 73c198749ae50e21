"""Parquet edge lists -> a validated dataset directory.

Two streaming passes over record batches keep memory to the edge arrays themselves: the first
validates every file and collects the distinct raw IDs, the second maps raw IDs to contiguous int64
(sorted raw order) into preallocated arrays. Duplicate edges are then collapsed by sorting the key
user·num_items + item, so no duplicate can reach METIS (DGL aborts the process on one). Rows weighing
less than `ingest.interactions.min_weight` are dropped in both passes, as rows with nulls are; the k-core
filter (`ingest.min_user_degree`, `min_item_degree`) runs on the deduplicated log before the split and
renumbers the nodes it keeps. After the split, `ingest.social.min_overlap` drops the social ties whose
users' training items overlap less (Jaccard or count).

Dataset directory (written to a temporary directory, renamed when complete):

    meta.json              format, version, node counts, edge counts per split, columns, feature dims
    stats.json             rows read, every dropped row by reason, degrees, time, peak RSS
    config.yaml            the resolved config
    graph.dgl              training graph: user-interacts->item, item-interacted_by->user, user-follows->user
    edges/{train,val,test}.parquet   user, item, count[, weight][, timestamp] (new ids, sorted by user)
    edges/social.parquet   src, dst (when social edges are given)
    ids/{user,item}.parquet          id (new, int64), raw_id (the input's type)
    features/{user,item}.npy         float32 [num_nodes, dim] (when feature tables are given)
"""
from __future__ import annotations

import json
import resource
import time
from collections import Counter
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from gnnrec import UserError, atomic_dir, dgl_adapter
from gnnrec.data.formats import FORMAT, SPLITS, VERSION, Dataset
from gnnrec.data.sources import EdgeSource, IdCollector, IdMap, read_features


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---------------------------------------------------------------- edges: map, deduplicate, split

def read_edges(source: EdgeSource, src_map: IdMap, dst_map: IdMap, batch_rows: int) -> dict[str, np.ndarray]:
    """Second pass: the whole input as new int64 ids (+ float64 weight, int64 timestamp)."""
    n = source.num_rows
    out = {"src": np.empty(n, np.int64), "dst": np.empty(n, np.int64)}
    if "weight" in source.columns:
        out["weight"] = np.empty(n, np.float64)
    if "timestamp" in source.columns:
        out["timestamp"] = np.empty(n, np.int64)
    pos = 0
    with tqdm(total=n, desc=f"ingest {source.name}", unit="edge", unit_scale=True, disable=None, leave=False) as bar:
        for arrays in source.batches(batch_rows):
            k = len(arrays["src"])
            out["src"][pos:pos + k] = src_map.lookup(arrays["src"])
            out["dst"][pos:pos + k] = dst_map.lookup(arrays["dst"])
            for role in ("weight", "timestamp"):
                if role in out:
                    out[role][pos:pos + k] = arrays[role].to_numpy()
            pos += k
            bar.update(k)
    assert pos == n and (n == 0 or (out["src"].min() >= 0 and out["dst"].min() >= 0))
    return out


def deduplicate(edges: dict[str, np.ndarray], num_dst: int, weight_rule: str, time_rule: str) -> dict:
    """Collapse repeated (src, dst) into one edge sorted by (src, dst), with `count`, weight by
    `weight_rule` (max|sum) and timestamp by `time_rule` (latest|earliest). Consumes `edges`."""
    key = edges.pop("src")
    key *= num_dst
    key += edges.pop("dst")
    n = len(key)
    if edges:
        order = np.argsort(key, kind="stable")
        key = key[order]
        edges = {name: values[order] for name, values in edges.items()}
        del order
    else:
        key.sort()
    first = np.ones(n, dtype=bool)
    np.not_equal(key[1:], key[:-1], out=first[1:])
    starts = np.flatnonzero(first)
    count = np.empty(len(starts), np.int32)
    np.subtract(starts[1:], starts[:-1], out=count[:-1])
    count[-1:] = n - starts[-1:]
    out = {"count": count}
    if "weight" in edges:
        out["weight"] = (np.maximum if weight_rule == "max" else np.add).reduceat(edges.pop("weight"), starts)
    if "timestamp" in edges:
        out["timestamp"] = (np.maximum if time_rule == "latest" else np.minimum).reduceat(edges.pop("timestamp"), starts)
    del starts
    key = key[first]
    del first
    out["src"], out["dst"] = np.divmod(key, num_dst)
    return out


def kcore(src: np.ndarray, dst: np.ndarray, num_users: int, num_items: int, min_user: int, min_item: int):
    """RecBole's iterated filter: drop the edges of every user with fewer than `min_user` items and of
    every item with fewer than `min_item` users until no node falls short, which leaves the largest
    subgraph where none does. Returns its users and items (masks of the nodes it has edges of) and the
    rounds that dropped edges."""
    rounds = 0
    while True:
        deg_u, deg_i = np.bincount(src, minlength=num_users), np.bincount(dst, minlength=num_items)
        ok = (deg_u >= min_user)[src] & (deg_i >= min_item)[dst]
        if ok.all():
            return deg_u > 0, deg_i > 0, rounds
        src, dst, rounds = src[ok], dst[ok], rounds + 1


def keep_core(edges: dict, user_map: IdMap, item_map: IdMap, ic, stats: Counter) -> tuple[IdMap, IdMap]:
    """Only the k-core of the (deduplicated) interactions: a node without an edge in it leaves its ID map,
    the others are renumbered in order (edges stay sorted), and the test and social edges of the nodes
    that left are dropped."""
    log = edges["interactions"]
    users, items, stats["kcore_rounds"] = kcore(log["src"], log["dst"], user_map.size, item_map.size,
                                                ic.min_user_degree, ic.min_item_degree)
    if not users.any():
        raise UserError(f"ingest.min_user_degree={ic.min_user_degree}, ingest.min_item_degree={ic.min_item_degree}: "
                        "no interaction is left")
    (core_users, new_user), (core_items, new_item) = user_map.subset(users), item_map.subset(items)
    stats["kcore_users_dropped"] = user_map.size - core_users.size
    stats["kcore_items_dropped"] = item_map.size - core_items.size
    for name, e in edges.items():
        e["src"], e["dst"] = new_user[e["src"]], (new_user if name == "social" else new_item)[e["dst"]]
        kept = (e["src"] >= 0) & (e["dst"] >= 0)
        stats["kcore_edges_dropped" if name == "interactions" else f"kcore_{name}_edges_dropped"] = \
            len(kept) - int(kept.sum())
        _select(e, kept, in_place=True)
    return core_users, core_items


def _sort_within_user(user: np.ndarray, order_key: np.ndarray, num_users: int):
    """Edges (sorted by user) reordered by (user, order_key): the order, each edge's position in its
    user's list in that order, and each user's degree. `order_key` holds non-negative ints."""
    deg = np.bincount(user, minlength=num_users)
    key_bits = int(order_key.max(initial=0)).bit_length()
    if int(num_users).bit_length() + key_bits <= 63:  # one int64 sort key: much faster than lexsort
        key = user << key_bits
        key |= order_key
        order = np.argsort(key, kind="stable")
        del key
    else:
        order = np.lexsort((order_key, user))
    position = np.arange(len(user))
    position -= (np.cumsum(deg) - deg)[user]  # user[order] == user: the order stays user-major
    return order, position, deg


def split_codes(edges: dict, num_users: int, cfg) -> np.ndarray:
    """0 = train, 1 = validation, 2 = test for each (deduplicated, user-sorted) edge, per cfg.split."""
    s, user = cfg.split, edges["src"]
    if s.method == "temporal":
        if "timestamp" not in edges:
            raise UserError("split.method=temporal needs ingest.interactions.timestamp_column")
        ts = edges["timestamp"]
        order, position, deg = _sort_within_user(user, ts.max() - ts, num_users)  # latest first
        n_test = np.minimum(s.leave_last, np.maximum(deg - 1, 0))
        n_val = np.minimum(s.val_last, np.maximum(deg - 1 - n_test, 0))
    else:
        ratios = s.ratios if s.method == "ratio" else (1 - s.val_ratio, s.val_ratio, 0.0)
        random_bits = min(32, 62 - int(num_users).bit_length())
        tiebreak = np.random.default_rng(s.seed).integers(0, 1 << random_bits, len(user))
        order, position, deg = _sort_within_user(user, tiebreak, num_users)
        del tiebreak
        if s.rounding == "random":  # up with probability the fraction; a user keeps one training edge
            up = np.random.default_rng([s.seed, 1]).random((2, len(deg)))
            n_test = np.minimum(np.floor(deg * ratios[2] + up[0]).astype(np.int64), np.maximum(deg - 1, 0))
            n_val = np.minimum(np.floor(deg * ratios[1] + up[1]).astype(np.int64), np.maximum(deg - 1 - n_test, 0))
        else:  # RecBole's: floor shares, but a user with spare training edges gives at least one to each
            n_test = np.floor(deg * ratios[2]).astype(np.int64)
            n_val = np.floor(deg * ratios[1]).astype(np.int64)
            for n_held, share in ((n_test, ratios[2]), (n_val, ratios[1])):
                bump = (n_held == 0) & (share > 0) & (deg - n_test - n_val > 1)
                n_held[bump] = 1
    in_order = np.zeros(len(user), np.int8)
    in_order[position < (n_test + n_val)[user]] = 1
    in_order[position < n_test[user]] = 2
    del position
    codes = np.empty_like(in_order)
    codes[order] = in_order
    return codes


# ---------------------------------------------------------------- social ties: the overlap filter

def shared_items(key: np.ndarray, deg: np.ndarray, num_items: int, a: np.ndarray, b: np.ndarray,
                 chunk: int = 1 << 22) -> np.ndarray:
    """|A∩B| for each pair of users (a[k], b[k]), A and B their items among the edges whose sorted unique
    keys user·num_items + item are `key` (`deg`: each user's edges). Each item of the pair's user with
    fewer is looked up among the other's keys, `chunk` look-ups at a time."""
    first = np.cumsum(deg) - deg
    small = np.where(deg[a] <= deg[b], a, b)
    shift = (a + b - 2 * small) * num_items  # from a key of `small` to the same item's key of the other
    n = deg[small]
    ends = np.cumsum(n)
    bounds = np.unique(np.r_[0, np.searchsorted(ends, np.arange(chunk, ends[-1:].sum(), chunk)), len(a)])
    shared = np.zeros(len(a), np.int64)
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        m = n[lo:hi]
        pair = np.repeat(np.arange(hi - lo), m)
        query = key[np.arange(len(pair)) + np.repeat(first[small[lo:hi]] - (np.cumsum(m) - m), m)]
        query += shift[lo:hi][pair]
        found = key[np.minimum(np.searchsorted(key, query), len(key) - 1)] == query
        shared[lo:hi] = np.bincount(pair[found], minlength=hi - lo)
    return shared


def keep_overlapping(social: dict, train: dict, deg: np.ndarray, num_items: int, spec, stats: Counter) -> dict:
    """The ties whose users' training items overlap by `spec.min_overlap` at least (Jaccard or count):
    held-out edges cannot reach the filter."""
    a, b = social["src"], social["dst"]
    shared = shared_items(train["src"] * num_items + train["dst"], deg, num_items, a, b)
    if spec.overlap == "jaccard":
        union = deg[a] + deg[b] - shared
        shared = np.divide(shared, union, out=np.zeros(len(a)), where=union > 0)
    kept = shared >= spec.min_overlap
    stats["social_low_overlap_dropped"] = len(kept) - int(kept.sum())
    stats["social_overlap_kept_share"] = round(float(kept.mean()), 4) if len(kept) else 1.0
    return _select(social, kept)


# ---------------------------------------------------------------- the stage

def _edge_columns(spec, prefix: str) -> dict[str, tuple[str, str]]:
    cols = {"src": (spec.src_column, f"{prefix}.src_column"), "dst": (spec.dst_column, f"{prefix}.dst_column")}
    if spec.weight_column:
        cols["weight"] = (spec.weight_column, f"{prefix}.weight_column")
    if spec.timestamp_column:
        cols["timestamp"] = (spec.timestamp_column, f"{prefix}.timestamp_column")
    return cols


def _select(edges: dict[str, np.ndarray], mask: np.ndarray, in_place: bool = False) -> dict[str, np.ndarray]:
    """The edges where `mask` holds; `in_place` compacts the given arrays instead of copying them."""
    if mask.all():
        return edges
    if not in_place:
        return {k: v[mask] for k, v in edges.items()}
    kept = int(mask.sum())
    for k, v in edges.items():
        v[:kept] = v[mask]
        edges[k] = v[:kept]
    return edges


class Splits(NamedTuple):
    """The deduplicated edges by role (new ids) and the training graph's degrees."""
    train: dict[str, np.ndarray]
    val: dict[str, np.ndarray]
    test: dict[str, np.ndarray]
    social: dict[str, np.ndarray] | None
    user_degree: np.ndarray
    item_degree: np.ndarray


def edge_sources(cfg, stats: Counter) -> dict[str, EdgeSource]:
    """The Parquet edge inputs by role: interactions, test (split.method=test_file), social."""
    ic, inter = cfg.ingest, cfg.ingest.interactions
    min_weight = None if inter.min_weight is None else (inter.min_weight, "ingest.interactions.min_weight")
    sources = {"interactions": EdgeSource("interactions", str(cfg.path(inter.path)),
                                          _edge_columns(inter, "ingest.interactions"), ic.nulls, stats, min_weight)}
    if cfg.split.method == "test_file":
        sources["test"] = EdgeSource("test", str(cfg.path(cfg.split.test_path)),
                                     {"src": (inter.src_column, "ingest.interactions.src_column"),
                                      "dst": (inter.dst_column, "ingest.interactions.dst_column")}, ic.nulls, stats)
    if ic.social:
        sources["social"] = EdgeSource("social", str(cfg.path(ic.social.path)),
                                       _edge_columns(ic.social, "ingest.social"), ic.nulls, stats)
    return sources


def id_maps(cfg, sources: dict[str, EdgeSource], stats: Counter) -> tuple[IdMap, IdMap]:
    """Pass 1: validate every input and collect the distinct raw IDs of each node type (after the base's)."""
    ic, users, items = cfg.ingest, IdCollector("user"), IdCollector("item")
    for name, source in sources.items():
        for arrays in source.batches(ic.batch_rows, first_pass=True):
            users.add(arrays["src"], source.path)
            (users if name == "social" else items).add(arrays["dst"], source.path)
    user_map, item_map = users.finish(), items.finish()
    if ic.base and (ic.min_user_degree or ic.min_item_degree):
        raise UserError(f"ingest.base={ic.base}: k-core filtering (ingest.min_*_degree) renumbers the ids it keeps")
    if ic.base:  # incremental: the base dataset's IDs keep their ids, new ones follow
        base = Dataset(cfg.path(ic.base))
        user_map = user_map.extended(base.raw_ids("user").combine_chunks(), f"ingest.base={ic.base} (users)")
        item_map = item_map.extended(base.raw_ids("item").combine_chunks(), f"ingest.base={ic.base} (items)")
        stats["new_users"] = user_map.size - base.num_users
        stats["new_items"] = item_map.size - base.num_items
    return user_map, item_map


def mapped_edges(sources: dict[str, EdgeSource], user_map: IdMap, item_map: IdMap, ic, stats: Counter) -> dict:
    """Pass 2: each input's edges in new ids, social self-loops dropped, duplicates collapsed."""
    edges = {}
    for name, source in sources.items():
        dst_map = user_map if name == "social" else item_map
        raw = read_edges(source, user_map, dst_map, ic.batch_rows)
        if name == "social":
            loops = raw["src"] == raw["dst"]
            stats["social_self_loops_dropped"] = int(loops.sum())
            raw = {k: v[~loops] for k, v in raw.items()}
        before = len(raw["src"])
        edges[name] = deduplicate(raw, dst_map.size, ic.duplicate_weight, ic.duplicate_timestamp)
        stats[f"{name}_duplicates_collapsed"] = before - len(edges[name]["src"])
    return edges


def split_edges(edges: dict, nu: int, ni: int, cfg, stats: Counter) -> Splits:
    """Held-out edges leave the training graph; the social ties pass the overlap filter. Consumes `edges`."""
    train = edges.pop("interactions")
    codes = split_codes(train, nu, cfg)
    test = edges.pop("test", None)
    if test is not None:  # a test edge that is also a training edge would leak the answer
        in_train = np.isin(test["src"] * ni + test["dst"], train["src"] * ni + train["dst"], assume_unique=True)
        stats["test_edges_also_in_train_dropped"] = int(in_train.sum())
        test = _select(test, ~in_train)
    else:
        test = _select(train, codes == 2)
    if cfg.split.refit:  # validation edges train too
        codes[codes == 1] = 0
    val = _select(train, codes == 1)
    train = _select(train, codes == 0, in_place=True)
    del codes
    deg_u, deg_i = np.bincount(train["src"], minlength=nu), np.bincount(train["dst"], minlength=ni)
    if cfg.split.method == "test_file":
        stats["test_only_users"] = int(np.count_nonzero(deg_u[np.unique(test["src"])] == 0))
        stats["test_only_items"] = int(np.count_nonzero(deg_i[np.unique(test["dst"])] == 0))
    social = edges.get("social")
    if social is not None and cfg.ingest.social.min_overlap:
        social = keep_overlapping(social, train, deg_u, ni, cfg.ingest.social, stats)
    return Splits(train, val, test, social, deg_u, deg_i)


def write_dataset(tmp: Path, cfg, splits: Splits, user_map: IdMap, item_map: IdMap, stats: Counter,
                  t0: float) -> None:
    """Every file of the dataset directory into `tmp`, and the summary into `stats`."""
    ic, nu, ni, train, social = cfg.ingest, user_map.size, item_map.size, splits.train, splits.social
    for sub in ("edges", "ids"):
        (tmp / sub).mkdir()
    split_sizes = {}
    for split, part in zip(SPLITS, (train, splits.val, splits.test)):
        split_sizes[split] = len(part["src"])
        pq.write_table(pa.table({{"src": "user", "dst": "item"}.get(k, k): v for k, v in part.items()}),
                       tmp / "edges" / f"{split}.parquet")
    if social is not None:
        pq.write_table(pa.table({"src": social["src"], "dst": social["dst"]}), tmp / "edges" / "social.parquet")
    pq.write_table(user_map.table(), tmp / "ids" / "user.parquet")
    pq.write_table(item_map.table(), tmp / "ids" / "item.parquet")
    feature_dims = {}
    for node_type, spec, id_map in (("user", ic.user_features, user_map), ("item", ic.item_features, item_map)):
        if spec is not None:
            feats = read_features(str(cfg.path(spec.path)), spec, id_map, node_type, ic.batch_rows, stats)
            (tmp / "features").mkdir(exist_ok=True)
            np.save(tmp / "features" / f"{node_type}.npy", feats)
            feature_dims[node_type] = feats.shape[1]
    edge_data = {k: v for k, v in train.items() if k not in ("src", "dst")}
    dgl_adapter.save_graph(tmp / "graph.dgl", nu, ni, train["src"], train["dst"], edge_data,
                           None if social is None else (social["src"], social["dst"]))
    meta = {"format": FORMAT, "version": VERSION, "num_users": nu, "num_items": ni, "edges": split_sizes,
            "social_edges": 0 if social is None else len(social["src"]), "edge_columns": list(edge_data),
            "id_types": {"user": "int" if user_map.is_int else "str", "item": "int" if item_map.is_int else "str"},
            "feature_dims": feature_dims}
    deg_u, deg_i = splits.user_degree, splits.item_degree
    stats.update({"users": nu, "items": ni, **{f"{k}_edges": v for k, v in split_sizes.items()},
                  "social_edges": meta["social_edges"], "users_without_train_edges": int(np.count_nonzero(deg_u == 0)),
                  "items_without_train_edges": int(np.count_nonzero(deg_i == 0)),
                  "max_user_degree": int(deg_u.max(initial=0)), "max_item_degree": int(deg_i.max(initial=0)),
                  "seconds": round(time.perf_counter() - t0, 3), "peak_rss_mb": round(peak_rss_mb(), 1)})
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
    (tmp / "stats.json").write_text(json.dumps(dict(stats), indent=2))
    cfg.save(tmp)


def run(cfg) -> dict:
    """Turn the Parquet inputs of `cfg.ingest` into a dataset directory; return its summary."""
    t0 = time.perf_counter()
    # Arrow's default mimalloc pool keeps freed decode buffers, so RSS would grow with the input size;
    # the system pool, released after every batch, keeps it flat.
    pa.set_memory_pool(pa.system_memory_pool())
    ic, stats, out = cfg.ingest, Counter(), cfg.path(cfg.ingest.out)
    sources = edge_sources(cfg, stats)
    user_map, item_map = id_maps(cfg, sources, stats)
    edges = mapped_edges(sources, user_map, item_map, ic, stats)
    if ic.min_user_degree or ic.min_item_degree:
        user_map, item_map = keep_core(edges, user_map, item_map, ic, stats)
    if "social" in edges:  # users the log never mentions join through the social graph: say how many
        interacting = np.zeros(user_map.size, bool)
        for name in ("interactions", "test"):
            interacting[edges[name]["src"] if name in edges else []] = True
        stats["social_only_users"] = int(user_map.size - interacting.sum())
    splits = split_edges(edges, user_map.size, item_map.size, cfg, stats)
    with atomic_dir(out) as tmp:
        write_dataset(tmp, cfg, splits, user_map, item_map, stats, t0)
    return {"out": str(out), **stats}
