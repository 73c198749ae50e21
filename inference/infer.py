"""The infer stage: every user's and item's final representation, and every user's top-K items, in raw IDs.

From a `gnnrec train` output and the partitions it was trained on: graph servers serve the partitions,
one worker per trainer of the training job restores the ID tables into them, runs layer-wise inference
(inference/layerwise.py: layer by layer over whole neighbourhoods, intermediate layers in distributed
tensors) and writes its share of the nodes — its own partition's first:

    {infer.out}/users/part-{r}.parquet    id (raw), embedding (fixed-size list of float32)
    {infer.out}/items/part-{r}.parquet    id (raw), embedding
    {infer.out}/topk/part-{r}.parquet     user_id, rank (1 = best), item_id, score; training items masked
    {infer.out}/related/part-{r}.parquet  item_id, rank, related_id, score (infer.related_items)
    {infer.out}/manifest.json             model, dim, k, rows and files of each table, seconds per layer, the
                                          index and its recall against exact top-K on a sample of users

Each rank ranks its share of the users against the whole catalog (inference/ranked.py): by exact scoring,
chunked matrix products with top-K per chunk (ranking/topk.py, merged across item shards when
`infer.item_chunk` splits the catalog), or from a FAISS index of the items (`infer.index`: ivf, hnsw;
ranking/index.py) that rank 0 builds once and every rank reads.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from gnnrec import NODE_TYPES
from gnnrec.data.formats import Dataset
from gnnrec.ranking.metrics import sample_users
from gnnrec.inference.trained import TrainOutput
from gnnrec.inference.layerwise import known_items
from gnnrec.inference import ranked
from gnnrec.inference.model_job import model_job, model_session

TABLES = ("users", "items", "topk")


def run(cfg) -> dict:
    i = cfg.infer
    trained, out = TrainOutput(cfg.path(i.checkpoint), "infer.checkpoint"), cfg.path(i.out)
    trained.model()  # weights that do not fit the config: refused here, before any worker starts
    with model_job("infer", cfg, trained, out, infer_loop) as tmp:
        manifest = {"checkpoint": str(trained.path), "model": trained.config.train.model, "k": i.k,
                    "topk_users": i.users}
        for table in TABLES + (("related",) if i.related_items else ()):
            files = sorted((tmp / table).glob("part-*.parquet"))
            manifest[table] = {"files": [f"{table}/{f.name}" for f in files],
                               "rows": sum(pq.read_metadata(f).num_rows for f in files)}
        manifest["dim"] = pq.read_schema(tmp / manifest["users"]["files"][0]).field("embedding").type.list_size
        manifest["k"] = min(i.k, manifest["items"]["rows"])  # a catalog smaller than infer.k gives every item
        manifest.update(_worker_reports(tmp))
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
    summary = {"out": str(out), "model": manifest["model"], "users": manifest["users"]["rows"],
               "items": manifest["items"]["rows"], "recommendations": manifest["topk"]["rows"], "k": manifest["k"]}
    summary.update({key: manifest[key] for key in ("index", "index_recall", "short_users") if key in manifest})
    return summary


def _worker_reports(tmp: Path) -> dict:
    """What the workers left in `tmp/report-{rank}.json` (removed): rank 0's layer seconds and ranking
    figures, every rank's count of users given fewer than k items summed."""
    reports = [json.loads(f.read_text()) for f in sorted(tmp.glob("report-*.json"))]
    for f in tmp.glob("report-*.json"):
        f.unlink()
    first = reports[0]
    first["layer_seconds"] = [round(x, 3) for x in first["layer_seconds"]]
    return {**first, "short_users": sum(r["short_users"] for r in reports),
            "topk_seconds": max(r["topk_seconds"] for r in reports)}


def infer_loop(config: dict) -> None:
    context = config["context"]
    with model_session(context) as (w, inference):
        i, out = w.cfg.infer, Path(context.out)
        final = inference.run(w.progress)
        dataset = Dataset(context.job.dataset)
        raw = {n: w.partitions.raw_ids(dataset, n) for n in NODE_TYPES}
        for node_type in NODE_TYPES:
            ids = inference.shares[node_type]
            vectors = final[node_type][torch.from_numpy(ids)].numpy()
            write(out / f"{node_type}s" / f"part-{w.rank:05d}.parquet",
                  {"id": raw[node_type].take(ids), "embedding": _vectors(vectors)})
        inference.release()
        started = time.perf_counter()
        torch.set_num_threads(w.cfg.train.torch_threads or w.cores)  # no sampler thread from here on
        users = inference.shares["user"]
        if i.users is not None:  # the same seeded sample on every rank, each scoring its share of it
            users = users[np.isin(users, sample_users(w.graph.num_nodes("user"), i.users, i.seed))]
        I = final["item"][torch.arange(w.graph.num_nodes("item"))]
        catalog = ranked.Catalog.open(i, I, w.graph.num_nodes("user"), out, w)
        user_rows = lambda ids: final["user"][torch.from_numpy(ids)]  # noqa: E731
        known = lambda ids: known_items(w.graph, ids)  # noqa: E731
        part = f"part-{w.rank:05d}.parquet"
        ranked.write(out / "topk" / part, catalog.rank(users, user_rows, known), users, raw["user"], raw["item"],
                     ("user_id", "item_id"), lambda done, total: w.progress("top-k", done, total))
        short_users = catalog.short
        if i.related_items:  # each rank its share of the items, each item's own id excluded
            items = inference.shares["item"]
            item_rows = lambda ids: I[torch.from_numpy(ids)]  # noqa: E731
            itself = lambda ids: torch.from_numpy(np.stack([np.arange(len(ids)), ids]))  # noqa: E731
            ranked.write(out / "related" / part, catalog.rank(items, item_rows, itself), items,
                         raw["item"], raw["item"], ("item_id", "related_id"),
                         lambda done, total: w.progress("related items", done, total))
        if w.rank == 0:
            catalog.check(users, user_rows, known, i.seed)
        report = {"short_users": short_users, "topk_seconds": round(time.perf_counter() - started, 1)}
        if w.rank == 0:
            report.update(layer_seconds=inference.layer_seconds, **catalog.stats)
        (out / f"report-{w.rank}.json").write_text(json.dumps(report))
        catalog.close(out)


def _vectors(values: np.ndarray) -> pa.Array:
    return pa.FixedSizeListArray.from_arrays(pa.array(values.astype(np.float32).ravel()), values.shape[1])


def write(path: Path, columns) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(columns if isinstance(columns, pa.Table) else pa.table(columns), path)
