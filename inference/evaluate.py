"""The evaluate stage: full-ranking metrics of a trained model on the dataset's held-out edges.

The model's ID embeddings (rows in the partitions' per-type ids, mapped back to dataset ids through
`orig_nids`) are propagated by its GNN over the whole training graph in one pass (over random-walk
blocks of it for a model trained on them, as layer-wise inference draws them), then every item is
ranked for every user with the user's known items masked (training items; validation items too when
testing) — ranking/metrics.py. Popularity (training degree) is evaluated beside it, the baseline any
model must beat.

With `evaluate.sharded` the same runs as a job over the graph servers, as `infer` does: layer-wise
inference, then each worker ranks every item for its share of the users (the metrics summed across
workers), so no process holds the graph, every training pair or every user's scores. The numbers are
the one-process ones (partition ids: a sample of `evaluate.users` is drawn over them, and popularity's
ties between equal degrees fall by them).
"""
from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import torch

from pathlib import Path

from gnnrec import NODE_TYPES, UserError, atomic_dir, dgl_adapter
from gnnrec.data.formats import Dataset
from gnnrec.inference.layerwise import sharded_metrics
from gnnrec.inference.model_job import model_job, model_session
from gnnrec.inference.trained import TrainedModel, TrainOutput
from gnnrec.model.models import Popularity
from gnnrec.ranking.metrics import evaluate, evaluate_topk, sample_truth


def run(cfg) -> dict:
    e = cfg.evaluate
    trained = TrainOutput(cfg.path(e.checkpoint), "evaluate.checkpoint")
    model_name = trained.config.train.model
    if not trained.partitions.split_edges(e.split):
        raise UserError(f"evaluate.split={e.split}: the dataset has no {e.split} edges")
    if e.sharded:
        trained.model()  # weights that do not fit the config: refused here, before any worker starts
        with model_job("evaluate", cfg, trained, cfg.path(e.out), evaluate_loop) as tmp:
            results = json.loads((tmp / "metrics.json").read_text())["results"]
            _write(tmp, cfg, results, trained.dataset)
    else:
        results = _one_process(TrainedModel(trained.path), e)
        with atomic_dir(cfg.path(e.out)) as tmp:
            _write(tmp, cfg, results, trained.dataset)
            cfg.save(tmp)
    print(format_results(results))
    k = max(e.ks)
    return {"out": str(cfg.path(e.out)), "split": e.split, "model": model_name, "users": e.users or "all",
            f"recall@{k}": round(results[model_name][f"recall@{k}"], 4),
            f"ndcg@{k}": round(results[model_name][f"ndcg@{k}"], 4),
            f"popularity_recall@{k}": round(results["popularity"][f"recall@{k}"], 4)}


def _truth(dataset: Dataset, e) -> torch.Tensor:
    """[2, E] held-out pairs of `evaluate.split` (dataset ids), of a seeded sample of `evaluate.users`."""
    truth = dataset.edges(e.split)
    if e.users is None:
        return truth
    return torch.from_numpy(np.stack(sample_truth(*truth.numpy(), e.users, seed=0)))


def _one_process(trained: TrainedModel, e) -> dict:
    """The model's and popularity's metrics in this process (dataset ids)."""
    dataset, train, truth = trained.dataset, trained.train, _truth(trained.dataset, e)
    known = train if e.split == "val" else torch.cat([train, dataset.edges("val")], dim=1)
    results = {trained.config.train.model: evaluate(*trained.embeddings(), truth, known, ks=e.ks)}
    popularity = Popularity.from_interactions(train[0], train[1], dataset.num_users, dataset.num_items)
    results["popularity"] = evaluate(*popularity.embeddings(), truth, known, ks=e.ks)
    return results


def evaluate_loop(config: dict) -> None:
    """A worker of `evaluate.sharded`: layer-wise inference, then the model and popularity rank every item
    for the worker's share of the users (partition ids; a sample of `evaluate.users` drawn over them), the
    metrics summed across workers; rank 0 writes them (metrics.json)."""
    context = config["context"]
    with model_session(context) as (w, inference):
        e, graph = w.cfg.evaluate, w.graph
        final = inference.run(w.progress)
        torch.set_num_threads(w.cfg.train.torch_threads or w.cores)  # no sampler thread from here on
        truth = sample_truth(*w.partitions.held_out(e.split), e.users, seed=0)
        also = w.partitions.held_out("val") if e.split == "test" else None
        users, num_items = inference.shares["user"], graph.num_nodes("item")
        degree = dgl_adapter.dist_node_in_degrees(graph, "item", np.arange(num_items))
        popularity = {"user": torch.ones(graph.num_nodes("user"), 1), "item": torch.from_numpy(degree)[:, None].float()}
        model_name = TrainOutput(context.job.trained).config.train.model
        results = {name: sharded_metrics(graph, embeddings, users, truth, e.ks, also)
                   for name, embeddings in ((model_name, final), ("popularity", popularity))}
        if w.rank == 0:
            (Path(context.out) / "metrics.json").write_text(json.dumps({"results": results}))


def _write(tmp: Path, cfg, results: dict, dataset: Dataset) -> None:
    """metrics.json of the results, with the exported lists' (evaluate.recommendations) beside them."""
    e = cfg.evaluate
    if e.recommendations:
        results["exported_top_k"] = evaluate_exported(cfg.path(e.recommendations), dataset, _truth(dataset, e), e.ks)
    (tmp / "metrics.json").write_text(json.dumps({"split": e.split, "sharded": e.sharded, "results": results},
                                                 indent=2))


def evaluate_exported(infer_dir, dataset: Dataset, truth: torch.Tensor, ks) -> dict:
    """The metrics of the top-K lists `gnnrec infer` exported (raw IDs mapped back to dataset ids):
    the same numbers as the model's own ranking when both mask the same items."""
    import pyarrow as pa
    import pyarrow.compute as pc

    files = sorted((infer_dir / "topk").glob("part-*.parquet")) if infer_dir.is_dir() else []
    if not files:
        raise UserError(f"evaluate.recommendations={infer_dir}: no topk/part-*.parquet (run `gnnrec infer`)")
    table = pa.concat_tables([pq.read_table(f) for f in files]).sort_by([("user_id", "ascending"), ("rank", "ascending")])
    raw = {n: dataset.raw_ids(n) for n in NODE_TYPES}
    user = pc.index_in(table["user_id"], value_set=raw["user"]).to_numpy(zero_copy_only=False)
    item = pc.index_in(table["item_id"], value_set=raw["item"]).to_numpy(zero_copy_only=False)
    k = int(pc.max(table["rank"]).as_py())
    if k < max(ks):
        raise UserError(f"evaluate.ks: {max(ks)} is more than the {k} recommendations exported per user")
    users = np.unique(user)
    top = np.full((len(users), k), -1, np.int64)
    top[np.searchsorted(users, user), table["rank"].to_numpy() - 1] = item
    return evaluate_topk(torch.from_numpy(top), truth, dataset.num_items, ks=ks, users=torch.from_numpy(users),
                         num_users=dataset.num_users)


def format_results(results: dict) -> str:
    """Metrics as rows, models as columns."""
    models = list(results)
    width = {m: max(12, len(m) + 2) for m in models}
    lines = [f"{'metric':<14}" + "".join(f"{m:>{width[m]}}" for m in models)]
    for name in results[models[0]]:
        lines.append(f"{name:<14}" + "".join(
            f"{results[m][name]:>{width[m]},}" if name == "num_users" else f"{results[m][name]:>{width[m]}.4f}"
            for m in models))
    return "\n".join(lines)
