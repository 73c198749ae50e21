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
from gnnrec.model.blocks import full_graph_blocks, graph_edges
from gnnrec.model.models import Popularity, Recommender, uses_social
from gnnrec.ranking.metrics import evaluate, evaluate_topk, sample_truth
from gnnrec.samplers.neighborhoods import CSRNeighborhoods
from gnnrec.trainer.batches import block_sampler, time_decay
from gnnrec.trainer.checkpoint import TrainOutput


def input_embeddings(tables: dict, orig_user: np.ndarray, orig_item: np.ndarray) -> torch.Tensor:
    """h0 of every node in dataset ids (users, then items): the ID tables re-ordered from partition ids
    (orig_*: the dataset id of each partition id, Partitions.orig_nids)."""
    h0 = torch.empty(len(orig_user) + len(orig_item), tables["user"].shape[1])
    h0[torch.from_numpy(orig_user)] = tables["user"]
    h0[len(orig_user) + torch.from_numpy(orig_item)] = tables["item"]
    return h0


def social_edges(dataset: Dataset, model: Recommender):
    """The dataset's (follower, followee) pairs when the model propagates over them, else None."""
    return dataset.social() if uses_social(model.gnn) else None


def propagate_all(model: Recommender, h0: torch.Tensor, users: torch.Tensor, items: torch.Tensor, num_users: int,
                  num_layers: int, social=None, t=None, timestamp=None, time_decay=None) -> torch.Tensor:
    """Final representations of all nodes: the model's GNN over the whole graph of (user, item) pairs
    and, given, (follower, followee) pairs, every pair both ways; for a model trained on random-walk
    blocks (`t`, the training config: train.sampler), over random-walk blocks of that graph, and with
    `time_decay` (trainer/batches.time_decay), the pairs weighted by the age of their `timestamp`."""
    num_nodes = h0.shape[0]
    if t is not None and (t.sampler == "random_walk" or time_decay is not None) and num_layers:
        num_items = num_nodes - num_users
        graph = CSRNeighborhoods.from_edges(users.numpy(), items.numpy(), num_users, num_items,
                                            None if social is None else tuple(x.numpy() for x in social), timestamp)
        sampler = block_sampler(t, graph, num_users, num_items, inference=True, time_decay=time_decay)
        blocks = [sampler.graph_block(num_nodes) for _ in range(num_layers)]
    else:
        src, dst, etype = graph_edges(users, items, num_users, *(social or ()))
        blocks = full_graph_blocks(src, dst, num_nodes, num_layers, etype=etype) if num_layers else []
    model.eval()
    with torch.no_grad():
        return model.gnn(h0, blocks)


class TrainedModel:
    """A `gnnrec train` output loaded in this process: the model with its dense weights, h0 of every node
    in dataset ids, the training edges (and social ones, for a social model) of its dataset."""

    def __init__(self, train_dir, key: str = "evaluate.checkpoint"):
        output = TrainOutput(train_dir, key)
        self.config, self.dataset, self.model = output.config, output.dataset, output.model()
        partitions = output.partitions
        if tuple(len(partitions.orig_nids(n)) for n in NODE_TYPES) != (self.dataset.num_users, self.dataset.num_items):
            raise UserError(f"{key}={train_dir}: trained on another dataset than {self.dataset.path}")
        self.h0 = input_embeddings(output.tables(), *(partitions.orig_nids(n) for n in NODE_TYPES))
        if self.model.inputs is not None:  # h0 from ID rows and features (train.inputs), in dataset ids
            with torch.no_grad():
                nu = self.dataset.num_users
                for node_type, rows in (("user", slice(0, nu)), ("item", slice(nu, None))):
                    features = torch.from_numpy(self.dataset.features(node_type)) \
                        if node_type in self.model.inputs.proj else None
                    self.h0[rows] = self.model.inputs(node_type, self.h0[rows], features)
        self.train = self.dataset.edges("train")
        self.social = social_edges(self.dataset, self.model)
        self.time_decay = time_decay(self.config.train, partitions)  # the edge weights it trained with
        self.timestamp = self.dataset.timestamps("train") if self.time_decay else None

    def embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(U, I) in dataset ids: h0 propagated over the training graph."""
        nu = self.dataset.num_users
        t = self.config.train
        h = propagate_all(self.model, self.h0, self.train[0], self.train[1], nu, t.layers, self.social, t,
                          self.timestamp, self.time_decay)
        return h[:nu], h[nu:]


def evaluate_stage(cfg) -> dict:
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
