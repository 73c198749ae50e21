"""The partition stage: dataset directory -> K partitions in DGL's format, with stats.

    CSR on disk (partition.csr) -> assignment (partition.partitioners registry) -> writer (one part at a time)

Everything is validated before anything is written; the output directory appears under its final name
only when complete (atomic_dir). Figures computed here, not taken from DGL (whose partition_graph log
reports 0 edge cuts):

    edge_cut       = #{(a, b) in interactions + follows : part(a) != part(b)} / #edges
    halo_fraction  = sum_k halo nodes of part k / #nodes
    imbalance_X    = max_k |X_k - mean_k X| / mean_k X   for users, items, inner edges, train/val/test edges
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from gnnrec import UserError, atomic_dir
from gnnrec.arrays import splitmix64
from gnnrec.partition import csr, random_walk
from gnnrec.data.formats import Dataset, Partitions
from gnnrec.data.ingest import peak_rss_mb
from gnnrec.partition.balance import imbalance
from gnnrec.partition.partitioners import PARTITIONERS
from gnnrec.partition.writer import GRAPH_NAME, write_partitions


def check_inputs(cfg) -> tuple[Path, dict]:
    """The dataset directory and its meta, or UserError for anything that would make a bad partition."""
    p = cfg.partition
    if p.method not in PARTITIONERS:
        raise UserError(f"partition.method={p.method}: unknown (known: {', '.join(sorted(PARTITIONERS))})")
    if p.parts < 1:
        raise UserError(f"partition.parts={p.parts}: must be at least 1")
    dataset = cfg.path(p.dataset)
    for key, path in (("partition.dataset", dataset), ("partition.out", cfg.path(p.out))):
        if not isinstance(path, Path):
            raise UserError(f"{key}={path}: partitioning needs a local directory (it memory-maps the graph)")
    meta = Dataset(dataset).meta
    needed = ["edges/train.parquet", "edges/val.parquet", "edges/test.parquet", "ids/user.parquet", "ids/item.parquet"]
    needed += [f"features/{t}.npy" for t in meta.get("feature_dims", {})]
    if meta.get("social_edges"):
        needed.append("edges/social.parquet")
    missing = [name for name in needed if not (dataset / name).is_file()]
    if missing:
        raise UserError(f"{dataset}: incomplete dataset (missing {', '.join(missing)}): ingest it again")
    smallest = min(meta["num_users"], meta["num_items"])
    for key, count in (("partition.parts", p.parts), ("partition.clusters", p.clusters)):
        if count > smallest:
            raise UserError(f"{key}={count}: more than the nodes of a type ({meta['num_users']} users, "
                            f"{meta['num_items']} items)")
    return dataset, meta


def edge_cut(g, user_part: np.ndarray, item_part: np.ndarray) -> float:
    """Share of interaction and follows edges whose endpoints lie in different parts."""
    cut = 0
    for a in range(0, g.num_edges, csr.BATCH):
        b = min(a + csr.BATCH, g.num_edges)
        users = np.searchsorted(g.user_ptr, np.arange(a, b), side="right") - 1
        cut += int(np.count_nonzero(user_part[users] != item_part[np.asarray(g.user_items[a:b])]))
    if g.num_social:
        src = np.repeat(np.arange(g.num_users), np.diff(g.follow_out_ptr))
        cut += int(np.count_nonzero(user_part[src] != user_part[np.asarray(g.follow_out)]))
    total = g.num_edges + g.num_social
    return cut / total if total else 0.0


def grown_assignment(g, base: Partitions, parts: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """partition.base: the users and items of the base partitions keep their part (by dataset id: the
    dataset grew from theirs, ingest.base); each new one joins the part most of its placed neighbours are
    in, repeated until none changes; one with no placed neighbour is hashed. Nothing is rebalanced."""
    if base.stats["parts"] != parts:
        raise UserError(f"partition.base={base.path}: {base.stats['parts']} parts, partition.parts={parts}")
    label = []
    for node_type, n in (("user", g.num_users), ("item", g.num_items)):
        ids = base.orig_nids(node_type)  # dataset id by the base's partition id
        if len(ids) > n:
            raise UserError(f"partition.base={base.path}: {len(ids)} {node_type}s, more than this dataset's {n}")
        part = np.full(n, -1, np.int64)
        part[ids] = base.parts(node_type)
        label.append(part)
    label = random_walk.fill_unreached(g, np.concatenate(label), parts, random_walk.degrees(g))
    alone = np.flatnonzero(label < 0)
    label[alone] = (splitmix64(alone, seed) % np.uint64(parts)).astype(np.int64)
    return label[:g.num_users].astype(np.int32), label[g.num_users:].astype(np.int32)


def write_clusters(out: Path, assignment: tuple[np.ndarray, np.ndarray]) -> None:
    """clusters/{user,item}.npy: each node's cluster (Cluster-GCN), indexed by partition id."""
    (out / "clusters").mkdir()
    for node_type, cluster in zip(("user", "item"), assignment):
        np.save(out / "clusters" / f"{node_type}.npy", cluster[np.load(out / "orig_nids" / f"{node_type}.npy")])


def run(cfg) -> dict:
    """Partition cfg.partition.dataset into cfg.partition.out; return the summary (also in partition_stats.json)."""
    t0 = time.perf_counter()
    p = cfg.partition
    dataset, meta = check_inputs(cfg)
    out = cfg.path(p.out)
    csr.return_freed_memory()
    with atomic_dir(out) as tmp:
        csr_dir = tmp / ".csr"
        try:
            csr.build_csr(dataset, meta, csr_dir)
        except pa.ArrowException as e:  # a dataset damaged since ingest
            raise UserError(f"{dataset}: its edges cannot be read ({' '.join(str(e).split())}): ingest it again") from None
        csr.trim()
        g = csr.load_csr(csr_dir, meta, mmap=p.mmap)
        t1 = time.perf_counter()
        if p.base:
            user_part, item_part = grown_assignment(g, Partitions(cfg.path(p.base), "partition.base"), p.parts, p.seed)
        else:
            user_part, item_part = PARTITIONERS[p.method](g, p.parts, cfg)
        assign_seconds = time.perf_counter() - t1
        csr.trim()
        assert len(user_part) == g.num_users and len(item_part) == g.num_items
        assert user_part.min(initial=0) >= 0 and max(user_part.max(initial=0), item_part.max(initial=0)) < p.parts
        cut = edge_cut(g, user_part, item_part)
        t2 = time.perf_counter()
        parts = write_partitions(g, user_part, item_part, p.parts, p.halo_hops, dataset, meta, tmp, p.method)
        write_seconds = time.perf_counter() - t2
        if p.clusters:
            write_clusters(tmp, PARTITIONERS[p.method](g, p.clusters, cfg))
        num_nodes, num_edges = g.num_users + g.num_items, g.num_edges + g.num_social
        newest = {"newest_timestamp": int(np.load(csr_dir / "edge_timestamp.npy", mmap_mode="r").max())} \
            if "timestamp" in g.edge_columns and g.num_edges else {}  # train.time_decay's reference
        del g
        shutil.rmtree(csr_dir)
        column = lambda key: np.array([[s[key]] for s in parts])
        summary = {
            "out": str(out), "config": f"{out}/{GRAPH_NAME}.json", "method": p.method, "parts": p.parts,
            "halo_hops": p.halo_hops, "nodes": num_nodes, "edges": num_edges,
            "edge_cut": round(cut, 4),
            "halo_fraction": round(sum(s["halo_users"] + s["halo_items"] for s in parts) / max(num_nodes, 1), 4),
            **newest, "feature_dims": meta.get("feature_dims", {}),  # the models' feature inputs
            "clusters": p.clusters, **({"base": str(cfg.path(p.base))} if p.base else {}),
            **{f"imbalance_{k}": round(float(imbalance(column(key))[0]), 4) for k, key in (
                ("users", "inner_users"), ("items", "inner_items"), ("edges", "inner_edges"),
                ("train", "train_edges"), ("val", "val_edges"), ("test", "test_edges"))},
            "assign_seconds": round(assign_seconds, 3), "write_seconds": round(write_seconds, 3),
            "seconds": round(time.perf_counter() - t0, 3), "peak_rss_mb": round(peak_rss_mb(), 1),
        }
        summary["imbalance"] = max(summary[f"imbalance_{k}"] for k in ("users", "items", "edges", "train", "val", "test"))
        (tmp / "partition_stats.json").write_text(json.dumps({**summary, "per_part": parts}, indent=2))
        cfg.save(tmp)
    per_part = {f"part{s['part']}_{k}": s[k] for s in parts for k in ("nodes", "edges", "train_edges")}
    return {**summary, **per_part}
