"""The evaluate stage: full-ranking metrics of a trained model on the dataset's held-out edges.

The model's ID embeddings (rows in the partitions' per-type ids, mapped back to dataset ids through
`orig_nids`) are propagated by its GNN over the whole training graph in one pass (over random-walk
blocks of it for a model trained on them, as layer-wise inference draws them), then every item is
ranked for every user with the user's known items masked (training items; validation items too when
testing) — ranking/metrics.py. Popularity (training degree) is evaluated beside it, the baseline any
model must beat.
"""
from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import torch

from gnnrec import NODE_TYPES, UserError, atomic_dir
from gnnrec.data.formats import Dataset
from gnnrec.inference.trained import TrainedModel
from gnnrec.model.models import Popularity
from gnnrec.ranking.metrics import evaluate, evaluate_topk, sample_truth


def run(cfg) -> dict:
    e = cfg.evaluate
    trained = TrainedModel(cfg.path(e.checkpoint))
    dataset, model_name = trained.dataset, trained.config.train.model
    train = trained.train
    truth = dataset.edges(e.split)
    if e.users is not None:
        truth = torch.from_numpy(np.stack(sample_truth(*truth.numpy(), e.users, seed=0)))
    known = train if e.split == "val" else torch.cat([train, dataset.edges("val")], dim=1)
    if truth.shape[1] == 0:
        raise UserError(f"evaluate.split={e.split}: the dataset has no {e.split} edges")
    U, I = trained.embeddings()
    results = {model_name: evaluate(U, I, truth, known, ks=e.ks)}
    popularity = Popularity.from_interactions(train[0], train[1], dataset.num_users, dataset.num_items)
    results["popularity"] = evaluate(*popularity.embeddings(), truth, known, ks=e.ks)
    if e.recommendations:
        results["exported_top_k"] = evaluate_exported(cfg.path(e.recommendations), dataset, truth, e.ks)
    with atomic_dir(cfg.path(e.out)) as tmp:
        (tmp / "metrics.json").write_text(json.dumps({"split": e.split, "results": results}, indent=2))
        cfg.save(tmp)
    print(format_results(results))
    k = max(e.ks)
    return {"out": str(cfg.path(e.out)), "split": e.split, "model": model_name, "users": e.users or "all",
            f"recall@{k}": round(results[model_name][f"recall@{k}"], 4),
            f"ndcg@{k}": round(results[model_name][f"ndcg@{k}"], 4),
            f"popularity_recall@{k}": round(results["popularity"][f"recall@{k}"], 4)}


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
