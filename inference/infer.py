"""The infer stage: every user's and item's final representation, and every user's top-K items, in raw IDs.

From a `gnnrec train` output and the partitions it was trained on: graph servers serve the partitions,
one worker per trainer of the training job restores the ID tables into them, runs layer-wise inference
(inference/layerwise.py: layer by layer over whole neighbourhoods, intermediate layers in distributed
tensors) and writes its share of the nodes — its own partition's first:

    {infer.out}/users/part-{r}.parquet   id (raw), embedding (fixed-size list of float32)
    {infer.out}/items/part-{r}.parquet   id (raw), embedding
    {infer.out}/topk/part-{r}.parquet    user_id, rank (1 = best), item_id, score; training items masked
    {infer.out}/manifest.json            model, dim, k, rows and files of each table, seconds per layer

Scoring is chunked matrix products with top-K per chunk (ranking/topk.py), merged across item shards when
`infer.item_chunk` splits the catalog.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from gnnrec import NODE_TYPES
from gnnrec.data.formats import Dataset
from gnnrec.ranking.metrics import sample_users
from gnnrec.ranking.topk import top_k
from gnnrec.inference.trained import TrainOutput
from gnnrec.inference.layerwise import known_items
from gnnrec.inference.model_job import model_job, model_session

TABLES = ("users", "items", "topk")


def run(cfg) -> dict:
    i = cfg.infer
    trained, out = TrainOutput(cfg.path(i.checkpoint), "infer.checkpoint"), cfg.path(i.out)
    trained.model()  # weights that do not fit the config: refused here, before any worker starts
    with model_job("infer", cfg, trained, out, infer_loop) as tmp:
        manifest = {"checkpoint": str(trained.path), "model": trained.config.train.model, "k": i.k,
                    "topk_users": i.users}
        for table in TABLES:
            files = sorted((tmp / table).glob("part-*.parquet"))
            manifest[table] = {"files": [f"{table}/{f.name}" for f in files],
                               "rows": sum(pq.read_metadata(f).num_rows for f in files)}
        manifest["dim"] = pq.read_schema(tmp / manifest["users"]["files"][0]).field("embedding").type.list_size
        manifest["k"] = min(i.k, manifest["items"]["rows"])  # a catalog smaller than infer.k gives every item
        timing = tmp / "layer_seconds.json"
        manifest["layer_seconds"] = [round(x, 3) for x in json.loads(timing.read_text())]
        timing.unlink()
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return {"out": str(out), "model": manifest["model"], "users": manifest["users"]["rows"],
            "items": manifest["items"]["rows"], "recommendations": manifest["topk"]["rows"], "k": manifest["k"]}


def infer_loop(config: dict) -> None:
    context = config["context"]
    with model_session(context) as (w, inference):
        i, out = w.cfg.infer, Path(context.out)
        final = inference.run(w.progress)
        if w.rank == 0:
            (out / "layer_seconds.json").write_text(json.dumps(inference.layer_seconds))
        dataset = Dataset(context.job.dataset)
        raw = {n: w.partitions.raw_ids(dataset, n) for n in NODE_TYPES}
        for node_type in NODE_TYPES:
            ids = inference.shares[node_type]
            vectors = final[node_type][torch.from_numpy(ids)].numpy()
            write(out / f"{node_type}s" / f"part-{w.rank:05d}.parquet",
                  {"id": raw[node_type].take(ids), "embedding": _vectors(vectors)})
        users = inference.shares["user"]
        if i.users is not None:  # the same seeded sample on every rank, each scoring its share of it
            users = users[np.isin(users, sample_users(w.graph.num_nodes("user"), i.users, i.seed))]
        U = final["user"][torch.from_numpy(users)]
        I = final["item"][torch.arange(w.graph.num_nodes("item"))]
        parts = []
        chunks = top_k(U, I, i.k, known_items(w.graph, users), user_chunk=i.user_chunk, item_chunk=i.item_chunk)
        for rows, items, scores in chunks:  # rows: positions in `users`, in order
            w.progress("top-k", int(rows[-1]) + 1, len(users))
            parts.append(_topk_table(users[rows.numpy()], items.numpy(), scores.numpy(), raw))
        write(out / "topk" / f"part-{w.rank:05d}.parquet", pa.concat_tables(parts) if parts else _topk_table(
            np.zeros(0, np.int64), np.zeros((0, i.k), np.int64), np.zeros((0, i.k), np.float32), raw))


def _vectors(values: np.ndarray) -> pa.Array:
    return pa.FixedSizeListArray.from_arrays(pa.array(values.astype(np.float32).ravel()), values.shape[1])


def _topk_table(users: np.ndarray, items: np.ndarray, scores: np.ndarray, raw: dict) -> pa.Table:
    """Rows (user, rank, item, score) of [n, k] top lists, empty slots (item -1) dropped, raw IDs."""
    n, k = items.shape
    keep = (items >= 0).ravel()
    return pa.table({"user_id": raw["user"].take(np.repeat(users, k)[keep]),
                     "rank": pa.array(np.tile(np.arange(1, k + 1, dtype=np.int32), n)[keep]),
                     "item_id": raw["item"].take(items.ravel()[keep]),
                     "score": pa.array(scores.ravel()[keep].astype(np.float32))})


def write(path: Path, columns) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(columns if isinstance(columns, pa.Table) else pa.table(columns), path)
