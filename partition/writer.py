"""One writer: any node->part assignment + the CSR -> DGL's partition format, one partition at a time.

Layout (what dgl.distributed.partition_graph writes, and load_partition / DistGraph read):

    gnnrec.json        num_parts, node_map / edge_map (homogeneous id ranges per part and type), ntypes,
                       etypes, part-{i} file names, halo_hops, part_method
    part{i}/graph.dgl  homogeneous DGLGraph: ndata _ID (global homogeneous id), _TYPE, inner_node, part_id;
                       edata _ID, _TYPE, inner_edge. Inner nodes come first in global-id order, then halo
                       nodes; inner edges first in global-id order, then halo edges.
    part{i}/node_feat.dgl   "<ntype>/feat" rows of the inner nodes (from features/<ntype>.npy)
    part{i}/edge_feat.dgl   "<src>:<etype>:<dst>/<count|weight|timestamp>" of the inner edges
    part{i}/edges/{val,test}.parquet   held-out edges owned by the part (user, item in new ids, + columns)
    ids/{user,item}.parquet  id (new, DistGraph's per-type id), dataset_id, raw_id: raw IDs still resolve
    orig_nids/<ntype>.npy, orig_eids/<etype>.npy   new per-type id -> dataset id (partition_graph's
                       return_mapping=True results)

Renumbering (DGL's reshuffle): global homogeneous node ids run part by part and, within a part, type by
type (DGL's type ids: item 0, user 1), nodes of one type keeping their dataset order. A node's per-type
id is its rank in that order. An edge belongs to the part of its destination (DGL's rule), so training
edge (u, i) is inner in part(i) as user-interacts-item and in part(u) as item-interacted_by-user; edge
ids are laid out the same way (part, edge type, dataset edge id). Training seeds of a part are its inner
interacted_by edges (user-owned, so one part holds each user's whole training set); validation and test
edges go to the user's part too.

Halo (halo_hops = H): every part holds every in-edge of its inner nodes, so each edge is inner in
exactly one part, and the sources from other parts as halo nodes (an edge needs both endpoints, so
H = 0 and H = 1 write the same partitions; DGL's 1-hop partitions also copy the edges inner -> halo,
which here are the reverse-type twins of inner edges, and we leave them out). Each hop beyond the
first adds the in-edges of the outermost halo nodes as halo (non-inner) edges and their sources as
halo nodes.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from gnnrec import NODE_TYPES, dgl_adapter
from gnnrec.data.formats import Dataset
from gnnrec.dgl_adapter import EDGE_TYPES
from gnnrec.partition import csr

GRAPH_NAME = "gnnrec"
SPLITS_HELD_OUT = ("val", "test")


def etype_str(et: tuple) -> str:
    return ":".join(et)


def _write_npy_slice(path: Path, start: int, values: np.ndarray) -> None:
    arr = np.load(path, mmap_mode="r")
    offset, itemsize = arr.offset, arr.dtype.itemsize
    del arr
    with open(path, "r+b") as f:
        f.seek(offset + start * itemsize)
        f.write(np.ascontiguousarray(values, np.int64).tobytes())


class Layout:
    """Global ids: per-type new ids and homogeneous ids of nodes and edges, from the assignment."""

    def __init__(self, g, user_part, item_part, parts: int, etypes: list[tuple]):
        self.parts = parts
        self.ntype_ids, self.etype_ids = dgl_adapter.type_ids(etypes)
        self.ntypes = sorted(self.ntype_ids, key=self.ntype_ids.get)
        self.etypes = sorted(self.etype_ids, key=self.etype_ids.get)
        self.node_part = {"user": user_part, "item": item_part}
        self.node_count = {t: np.bincount(p, minlength=parts) for t, p in self.node_part.items()}
        self.edge_count = {EDGE_TYPES["interacts"]: np.bincount(item_part, csr.item_degree(g), parts),
                           EDGE_TYPES["interacted_by"]: np.bincount(user_part, csr.user_degree(g), parts),
                           EDGE_TYPES["follows"]: np.bincount(user_part, np.diff(g.follow_in_ptr), parts),
                           EDGE_TYPES["followed_by"]: np.bincount(user_part, np.diff(g.follow_out_ptr), parts)}
        self.edge_count = {et: np.rint(c).astype(np.int64) for et, c in self.edge_count.items() if et in self.etype_ids}
        self.node_typed_start, self.node_homo_start = self._ranges(self.node_count, self.ntypes)
        self.edge_typed_start, self.edge_homo_start = self._ranges(self.edge_count, self.etypes)
        # per-type new id of every node: rank within (part, dataset id)
        self.new_id = {}
        for t, p in self.node_part.items():
            order = np.argsort(p, kind="stable")
            new = np.empty(len(p), np.int64)
            new[order] = np.arange(len(p))
            self.new_id[t] = new

    def _ranges(self, counts: dict, types: list):
        typed = {t: np.r_[0, np.cumsum(counts[t])[:-1]] for t in types}
        homo, pos = {t: np.zeros(self.parts, np.int64) for t in types}, 0
        for p in range(self.parts):
            for t in types:
                homo[t][p] = pos
                pos += counts[t][p]
        return typed, homo

    def node_homo(self, ntype: str, ids: np.ndarray) -> np.ndarray:
        p = self.node_part[ntype][ids]
        return self.node_homo_start[ntype][p] + self.new_id[ntype][ids] - self.node_typed_start[ntype][p]

    def map_json(self, counts: dict, homo_start: dict, names: dict) -> dict:
        return {names[t]: [[int(homo_start[t][p]), int(homo_start[t][p] + counts[t][p])] for p in range(self.parts)]
                for t in counts}


def in_edge_csrs(g, etypes) -> dict:
    """{etype: (ptr, sources, dataset edge ids or None for 'the position')}: in-edges grouped by destination."""
    out = {EDGE_TYPES["interacted_by"]: (g.user_ptr, g.user_items, None),
           EDGE_TYPES["interacts"]: (g.item_ptr, g.item_users, g.item_eids)}
    if EDGE_TYPES["follows"] in etypes:
        out[EDGE_TYPES["follows"]] = (g.follow_in_ptr, g.follow_in, g.follow_in_eids)
        out[EDGE_TYPES["followed_by"]] = (g.follow_out_ptr, g.follow_out, None)
    return out


def row_chunks(ptr: np.ndarray, rows: np.ndarray):
    """Consecutive pieces of `rows` holding about csr.BATCH entries each."""
    if len(rows) == 0:
        return
    cum = np.cumsum(np.asarray(ptr[rows + 1]) - np.asarray(ptr[rows]))
    start = 0
    while start < len(rows):
        base = cum[start - 1] if start else 0
        stop = max(int(np.searchsorted(cum, base + csr.BATCH, side="right")), start + 1)
        yield rows[start:stop]
        start = stop


def position_new_ids(layout: Layout, csrs: dict) -> dict:
    """CSR position -> per-type new edge id, per edge type (E-sized; built only for halo_hops >= 2).

    Within a (part, edge type) edges are numbered in in-CSR order (destination, then position), which
    is what the writer does for inner edges."""
    result = {}
    for et, (ptr, _, _) in csrs.items():
        owner = np.repeat(layout.node_part[et[2]], np.diff(ptr))
        order = np.argsort(owner, kind="stable")
        new = np.empty(len(order), np.int64)
        new[order] = np.arange(len(order))
        result[et] = (new, owner)
    return result


def write_partitions(g, user_part: np.ndarray, item_part: np.ndarray, parts: int, halo_hops: int,
                     dataset: Path, meta: dict, out: Path, method: str) -> list[dict]:
    """Write every partition and the config JSON into `out`; per-partition stats."""
    relations = ("interacts", "interacted_by") + (("follows", "followed_by") if g.num_social else ())
    etypes = [EDGE_TYPES[r] for r in relations]
    layout = Layout(g, user_part, item_part, parts, etypes)
    names = {et: etype_str(et) for et in layout.etypes}
    csrs = in_edge_csrs(g, layout.etypes)
    features = {t: np.load(dataset / "features" / f"{t}.npy", mmap_mode="r")
                for t in NODE_TYPES if (dataset / "features" / f"{t}.npy").exists()}
    _write_id_maps(layout, dataset, out)
    for et in layout.etypes:
        np.lib.format.open_memmap(out / "orig_eids" / f"{names[et]}.npy", "w+", np.int64, (int(layout.edge_count[et].sum()),))
    new_ids = position_new_ids(layout, csrs) if halo_hops >= 2 else None
    stats = []
    for p in range(parts):
        part_dir = out / f"part{p}"
        part_dir.mkdir()
        stats.append(_write_one(g, layout, csrs, p, halo_hops, new_ids, part_dir, features, names, out))
        csr.trim()
    _split_edges(dataset, layout, out, stats)
    config = {"graph_name": GRAPH_NAME, "num_nodes": int(g.num_users + g.num_items),
              "num_edges": int(sum(c.sum() for c in layout.edge_count.values())), "part_method": method,
              "num_parts": parts, "halo_hops": halo_hops,
              "node_map": layout.map_json(layout.node_count, layout.node_homo_start, {t: t for t in layout.ntypes}),
              "edge_map": layout.map_json(layout.edge_count, layout.edge_homo_start, names),
              "ntypes": layout.ntype_ids, "etypes": {names[et]: i for et, i in layout.etype_ids.items()}}
    for p in range(parts):
        config[f"part-{p}"] = {"node_feats": f"part{p}/node_feat.dgl", "edge_feats": f"part{p}/edge_feat.dgl",
                               "part_graph": f"part{p}/graph.dgl"}
    (out / f"{GRAPH_NAME}.json").write_text(json.dumps(config, indent=4))
    return stats


def _halo(layout: Layout, csrs: dict, p: int, inner: dict, halo_hops: int):
    """Halo nodes per type (sorted dataset ids) and, for halo_hops >= 2, the halo edges
    [(etype, src, dst, position)] (in-edges of halo nodes up to halo_hops - 1 hops out)."""
    found = {"user": [], "item": []}
    for et, (ptr, sources, _) in csrs.items():
        for rows in row_chunks(ptr, inner[et[2]]):
            src = np.asarray(sources[csr.gather_rows(ptr, rows)], np.int64)
            found[et[0]].append(np.unique(src[layout.node_part[et[0]][src] != p]))
    halo = {t: np.unique(np.concatenate(v)) if v else np.zeros(0, np.int64) for t, v in found.items()}
    frontier, halo_edges = dict(halo), []
    for _ in range(max(halo_hops - 1, 0)):
        found = {"user": [], "item": []}
        for et, (ptr, sources, _) in csrs.items():
            pos = csr.gather_rows(ptr, frontier[et[2]])
            src = np.asarray(sources[pos], np.int64)
            halo_edges.append((et, src, csr.row_ids(ptr, frontier[et[2]]), pos))
            found[et[0]].append(src)
        for t in NODE_TYPES:
            new = np.unique(np.concatenate(found[t])) if found[t] else np.zeros(0, np.int64)
            new = new[layout.node_part[t][new] != p]
            frontier[t] = np.setdiff1d(new, halo[t], assume_unique=True)
            halo[t] = np.union1d(halo[t], frontier[t])
    return halo, halo_edges


class PartNodes(NamedTuple):
    """Partition p's nodes: inner nodes (dataset ids per type) from global id `start` on, then the halo
    nodes in global-id order (`halo_homo`, with their type and part)."""
    p: int
    inner: dict[str, np.ndarray]
    halo: dict[str, np.ndarray]
    start: int
    n_inner: int
    halo_homo: np.ndarray
    halo_type: np.ndarray
    halo_part: np.ndarray

    def local(self, layout: Layout, ntype: str, ids: np.ndarray) -> np.ndarray:
        """Local node ids in the partition of nodes of `ntype` (dataset ids, inner or halo)."""
        h = layout.node_homo(ntype, ids)
        is_inner = layout.node_part[ntype][ids] == self.p
        h[is_inner] -= self.start
        h[~is_inner] = self.n_inner + np.searchsorted(self.halo_homo, h[~is_inner])
        return h


class PartEdges(NamedTuple):
    """Partition p's edges in local order: endpoints (local node ids), global id, edge type id."""
    src: np.ndarray
    dst: np.ndarray
    eid: np.ndarray
    etype: np.ndarray

    @classmethod
    def empty(cls, n: int) -> PartEdges:
        return cls(np.empty(n, np.int64), np.empty(n, np.int64), np.empty(n, np.int64), np.empty(n, np.int32))


def _part_nodes(layout: Layout, inner: dict, halo: dict, p: int) -> PartNodes:
    """The nodes of partition p, halo nodes sorted by global id."""
    n_inner = sum(len(v) for v in inner.values())
    start = min(layout.node_homo_start[t][p] for t in layout.ntypes)
    halo_homo = np.concatenate([layout.node_homo(t, halo[t]) for t in layout.ntypes])
    halo_type = np.concatenate([np.full(len(halo[t]), layout.ntype_ids[t], np.int32) for t in layout.ntypes])
    halo_part = np.concatenate([layout.node_part[t][halo[t]] for t in layout.ntypes]).astype(np.int64)
    order = np.argsort(halo_homo)
    return PartNodes(p, inner, halo, start, n_inner, halo_homo[order], halo_type[order], halo_part[order])


def _fill_inner_edges(g, layout: Layout, et: tuple, csr_in: tuple, nodes: PartNodes, edges: PartEdges, o: int,
                      orig_eids: Path) -> tuple[int, dict]:
    """The inner edges of type `et` into `edges` from position `o` on, in in-CSR order, and their dataset
    ids into `orig_eids`; the position after them and their data columns."""
    ptr, sources, eids = csr_in
    p, begin = nodes.p, o
    typed_start = int(layout.edge_typed_start[et][p])
    columns = [] if et[0] == et[2] else g.edge_columns  # user-user edges carry no data
    feats = {c: [] for c in columns}
    for rows in row_chunks(ptr, nodes.inner[et[2]]):
        pos = csr.gather_rows(ptr, rows)
        n = len(pos)
        edges.src[o:o + n] = nodes.local(layout, et[0], np.asarray(sources[pos], np.int64))
        edges.dst[o:o + n] = nodes.local(layout, et[2], csr.row_ids(ptr, rows))
        orig = pos if eids is None else np.asarray(eids[pos], np.int64)
        _write_npy_slice(orig_eids, typed_start + o - begin, orig)
        for c in columns:
            path = g.directory / f"edge_{c}.npy"
            feats[c].append(csr.read_sorted(path, orig) if eids is None else np.load(path, mmap_mode="r")[orig])
        o += n
    edges.eid[begin:o] = layout.edge_homo_start[et][p] + np.arange(o - begin)
    edges.etype[begin:o] = layout.etype_ids[et]
    return o, {c: np.concatenate(feats[c]) if feats[c] else np.zeros(0) for c in columns}


def _fill_halo_edges(layout: Layout, nodes: PartNodes, edges: PartEdges, halo_edges: list, new_ids,
                     n_inner_edges: int) -> None:
    """The halo edges into `edges` after the inner ones, by global id."""
    o = n_inner_edges
    for et, s, d, pos in sorted(halo_edges, key=lambda e: layout.etype_ids[e[0]]):
        n = len(pos)
        new, owner = new_ids[et][0][pos], new_ids[et][1][pos]
        edges.src[o:o + n], edges.dst[o:o + n] = nodes.local(layout, et[0], s), nodes.local(layout, et[2], d)
        edges.eid[o:o + n] = layout.edge_homo_start[et][owner] + new - layout.edge_typed_start[et][owner]
        edges.etype[o:o + n] = layout.etype_ids[et]
        o += n
    if o > n_inner_edges:
        order = n_inner_edges + np.argsort(edges.eid[n_inner_edges:], kind="stable")
        for a in edges:
            a[n_inner_edges:] = a[order]


def _node_data(layout: Layout, nodes: PartNodes) -> dict[str, np.ndarray]:
    """The partition graph's _ID, _TYPE, inner_node and part_id of its nodes in local order."""
    n_inner, n_halo = nodes.n_inner, len(nodes.halo_homo)
    inner_type = np.concatenate([np.full(len(nodes.inner[t]), layout.ntype_ids[t], np.int32) for t in layout.ntypes])
    return {"_ID": np.r_[np.arange(nodes.start, nodes.start + n_inner, dtype=np.int64), nodes.halo_homo],
            "_TYPE": np.r_[inner_type, nodes.halo_type],
            "inner_node": np.r_[np.ones(n_inner, np.uint8), np.zeros(n_halo, np.uint8)],
            "part_id": np.r_[np.full(n_inner, nodes.p, np.int64), nodes.halo_part]}


def _write_one(g, layout: Layout, csrs: dict, p: int, halo_hops: int, new_ids, part_dir: Path, features,
               names, out) -> dict:
    """Build partition p into preallocated arrays, a chunk of destination rows at a time, and save it.

    Local node order: inner nodes in global-id order, then halo nodes in global-id order. Local edge
    order: inner edges by global id (edge type, then in-CSR order), then halo edges by global id."""
    inner = {t: np.flatnonzero(layout.node_part[t] == p) for t in NODE_TYPES}
    halo, halo_edges = _halo(layout, csrs, p, inner, halo_hops)
    nodes = _part_nodes(layout, inner, halo, p)
    n_inner_edges = int(sum(layout.edge_count[et][p] for et in layout.etypes))
    n_edges = n_inner_edges + sum(len(e[1]) for e in halo_edges)
    edges = PartEdges.empty(n_edges)
    edge_feats, edge_stats, o = {}, {}, 0
    for et in layout.etypes:  # etype-id order == global edge id order within the part
        begin = o
        o, columns = _fill_inner_edges(g, layout, et, csrs[et], nodes, edges, o, out / "orig_eids" / f"{names[et]}.npy")
        edge_feats.update({f"{names[et]}/{c}": values for c, values in columns.items()})
        edge_stats[f"inner_edges_{et[1]}"] = o - begin
    assert o == n_inner_edges
    _fill_halo_edges(layout, nodes, edges, halo_edges, new_ids, n_inner_edges)
    inner_edge = np.zeros(n_edges, np.uint8)
    inner_edge[:n_inner_edges] = 1
    num_nodes = nodes.n_inner + len(nodes.halo_homo)
    node_feats = {f"{t}/feat": np.asarray(features[t][inner[t]]) for t in features}
    dgl_adapter.save_partition(part_dir, num_nodes, edges.src, edges.dst, _node_data(layout, nodes),
                               {"_ID": edges.eid, "_TYPE": edges.etype, "inner_edge": inner_edge},
                               node_feats, edge_feats)
    return {"part": p, "inner_users": len(inner["user"]), "inner_items": len(inner["item"]),
            "halo_users": len(halo["user"]), "halo_items": len(halo["item"]),
            "nodes": num_nodes, "edges": n_edges, "inner_edges": n_inner_edges, **edge_stats,
            "train_edges": edge_stats["inner_edges_interacted_by"]}


def _write_id_maps(layout: Layout, dataset: Path, out: Path) -> None:
    """ids/<ntype>.parquet (new id, dataset id, raw id) and orig_nids/<ntype>.npy (new -> dataset id)."""
    for d in ("ids", "orig_nids", "orig_eids"):
        (out / d).mkdir()
    for t in NODE_TYPES:
        orig = np.empty(len(layout.new_id[t]), np.int64)
        orig[layout.new_id[t]] = np.arange(len(orig))
        np.save(out / "orig_nids" / f"{t}.npy", orig)
        raw = Dataset(dataset).raw_ids(t)
        pq.write_table(pa.table({"id": np.arange(len(orig)), "dataset_id": orig, "raw_id": raw.take(orig)}),
                       out / "ids" / f"{t}.parquet")


def _split_edges(dataset: Path, layout: Layout, out: Path, stats: list[dict]) -> None:
    """part{i}/edges/{val,test}.parquet: held-out edges of the users a part owns, in new ids."""
    for split in SPLITS_HELD_OUT:
        path = dataset / "edges" / f"{split}.parquet"
        pf = pq.ParquetFile(path)
        writers = [None] * layout.parts
        counts = np.zeros(layout.parts, np.int64)
        for batch in pf.iter_batches(batch_size=csr.BATCH):
            user = batch.column("user").to_numpy()
            owner = layout.node_part["user"][user]
            columns = {name: batch.column(name).to_numpy() for name in batch.schema.names}
            columns["user"] = layout.new_id["user"][user]
            columns["item"] = layout.new_id["item"][columns["item"]]
            for p in range(layout.parts):
                mask = owner == p
                table = pa.table({k: v[mask] for k, v in columns.items()})
                if writers[p] is None:
                    (out / f"part{p}" / "edges").mkdir(exist_ok=True)
                    writers[p] = pq.ParquetWriter(out / f"part{p}" / "edges" / f"{split}.parquet", table.schema)
                writers[p].write_table(table)
                counts[p] += int(mask.sum())
        for p, w in enumerate(writers):
            if w is None:  # an empty split file: write an empty table with the same columns
                (out / f"part{p}" / "edges").mkdir(exist_ok=True)
                pq.write_table(pf.schema_arrow.empty_table(), out / f"part{p}" / "edges" / f"{split}.parquet")
            else:
                w.close()
        for p in range(layout.parts):
            stats[p][f"{split}_edges"] = int(counts[p])
