"""The evaluate stage: full-ranking metrics of a trained model on the dataset's held-out edges.

The model's ID embeddings (rows in the partitions' per-type ids, mapped back to dataset ids through
`orig_nids`) are propagated by its GNN over the whole training graph in one pass, then every item is
ranked for every user with the user's known items masked (training items; validation items too when
testing) — trainer/metrics.py. Popularity (training degree) is evaluated beside it, the baseline any
model must beat.
"""
from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import torch

from gnnrec import UserError, atomic_dir
from gnnrec.trainer.blocks import full_graph_blocks, graph_edges
from gnnrec.trainer.metrics import evaluate, evaluate_topk
from gnnrec.trainer.models import Popularity, uses_social
from gnnrec.trainer.train import Recommender


def _edges(dataset, split: str) -> torch.Tensor:
    table = pq.read_table(dataset / "edges" / f"{split}.parquet", columns=["user", "item"])
    return torch.from_numpy(np.stack([table["user"].to_numpy(), table["item"].to_numpy()]))


def input_embeddings(tables: dict, orig_user: np.ndarray, orig_item: np.ndarray) -> torch.Tensor:
    """h0 of every node in dataset ids (users, then items): the ID tables re-ordered from partition ids."""
    nu, ni = len(orig_user), len(orig_item)
    h0 = torch.empty(nu + ni, tables["user"].shape[1])
    h0[torch.from_numpy(orig_user)] = tables["user"]
    h0[nu + torch.from_numpy(orig_item)] = tables["item"]
    return h0


def social_edges(dataset, model: Recommender):
    """The dataset's (follower, followee) pairs when the model propagates over them, else None."""
    path = dataset / "edges" / "social.parquet"
    if not uses_social(model.gnn) or not path.exists():
        return None
    table = pq.read_table(path, columns=["src", "dst"])
    return torch.tensor(table["src"].to_numpy()), torch.tensor(table["dst"].to_numpy())


def propagate_all(model: Recommender, h0: torch.Tensor, users: torch.Tensor, items: torch.Tensor, num_users: int,
                  num_layers: int, social=None) -> torch.Tensor:
    """Final representations of all nodes: the model's GNN over the whole graph of (user, item) pairs
    and, given, (follower, followee) pairs, every pair both ways."""
    src, dst, etype = graph_edges(users, items, num_users, *(social or ()))
    model.eval()
    with torch.no_grad():
        return model.gnn(h0, full_graph_blocks(src, dst, h0.shape[0], num_layers, etype=etype) if num_layers else [])


def embeddings(model: Recommender, tables: dict, orig_user: np.ndarray, orig_item: np.ndarray,
               train: torch.Tensor, num_layers: int, social=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(U, I) in dataset ids: the ID tables re-ordered from partition ids, propagated over `train` (and
    `social`)."""
    nu = len(orig_user)
    h = propagate_all(model, input_embeddings(tables, orig_user, orig_item), train[0], train[1], nu, num_layers,
                      social)
    return h[:nu], h[nu:]


def trained_model(train_dir) -> tuple:
    """(training config, Recommender with its dense weights) of a `gnnrec train` output directory;
    UserError if it is not one, or if its dense weights do not fit the model that config describes."""
    from gnnrec.launch.config import load_config

    if not (train_dir / "model" / "state.json").exists() or not (train_dir / "config.yaml").exists():
        raise UserError(f"{train_dir}: not a training output (no model/ and config.yaml; run `gnnrec train`)")
    trained = load_config(train_dir / "config.yaml")
    model = Recommender(trained.train)
    try:
        model.load_state_dict(torch.load(train_dir / "model" / "dense.pt")["model"])
    except RuntimeError:
        raise UserError(f"{train_dir}: its weights do not fit train.model={trained.train.model} with the saved "
                        f"config (a checkpoint of another model?)") from None
    return trained, model


def load_model(train_dir) -> tuple:
    """(training config, Recommender with its dense weights, {node type: ID table in partition ids})
    of a `gnnrec train` output directory, in this process."""
    from gnnrec.trainer.checkpoint import load_tables

    trained, model = trained_model(train_dir)
    tables = load_tables(train_dir / "model")
    if tables["user"].shape[1] != trained.train.dim:
        raise UserError(f"{train_dir}: ID tables of dim {tables['user'].shape[1]}, config says {trained.train.dim}")
    return trained, model, tables


def evaluate_stage(cfg) -> dict:
    from gnnrec.partition.ingest import load_meta

    e = cfg.evaluate
    train_dir = cfg.path(e.checkpoint)
    trained, model, tables = load_model(train_dir)
    t, dataset = trained.train, trained.path(trained.partition.dataset)
    meta = load_meta(dataset)
    parts = trained.path(t.partitions)
    orig_user, orig_item = (np.load(parts / "orig_nids" / f"{n}.npy") for n in ("user", "item"))
    if (len(orig_user), len(orig_item)) != (meta["num_users"], meta["num_items"]):
        raise UserError(f"evaluate.checkpoint={train_dir}: trained on another dataset than {dataset}")
    train = _edges(dataset, "train")
    truth = _edges(dataset, e.split)
    known = train if e.split == "val" else torch.cat([train, _edges(dataset, "val")], dim=1)
    if truth.shape[1] == 0:
        raise UserError(f"evaluate.split={e.split}: the dataset has no {e.split} edges")
    U, I = embeddings(model, tables, orig_user, orig_item, train, t.layers, social_edges(dataset, model))
    results = {t.model: evaluate(U, I, truth, known, ks=e.ks)}
    pop_u, pop_i = Popularity.from_interactions(train[0], train[1], meta["num_users"], meta["num_items"]).embeddings()
    results["popularity"] = evaluate(pop_u, pop_i, truth, known, ks=e.ks)
    if e.recommendations:
        results["exported_top_k"] = evaluate_exported(cfg.path(e.recommendations), dataset, truth, meta, e.ks)
    with atomic_dir(cfg.path(e.out)) as tmp:
        (tmp / "metrics.json").write_text(json.dumps({"split": e.split, "results": results}, indent=2))
        cfg.save(tmp)
    print(format_results(results))
    k = max(e.ks)
    return {"out": str(cfg.path(e.out)), "split": e.split, "model": t.model,
            f"recall@{k}": round(results[t.model][f"recall@{k}"], 4),
            f"ndcg@{k}": round(results[t.model][f"ndcg@{k}"], 4),
            f"popularity_recall@{k}": round(results["popularity"][f"recall@{k}"], 4)}


def evaluate_exported(infer_dir, dataset, truth: torch.Tensor, meta: dict, ks) -> dict:
    """The metrics of the top-K lists `gnnrec infer` exported (raw IDs mapped back to dataset ids):
    the same numbers as the model's own ranking when both mask the same items."""
    import pyarrow as pa
    import pyarrow.compute as pc

    files = sorted((infer_dir / "topk").glob("part-*.parquet")) if infer_dir.is_dir() else []
    if not files:
        raise UserError(f"evaluate.recommendations={infer_dir}: no topk/part-*.parquet (run `gnnrec infer`)")
    table = pa.concat_tables([pq.read_table(f) for f in files]).sort_by([("user_id", "ascending"), ("rank", "ascending")])
    raw = {n: pq.read_table(dataset / "ids" / f"{n}.parquet", columns=["raw_id"])["raw_id"] for n in ("user", "item")}
    user = pc.index_in(table["user_id"], value_set=raw["user"]).to_numpy(zero_copy_only=False)
    item = pc.index_in(table["item_id"], value_set=raw["item"]).to_numpy(zero_copy_only=False)
    k = int(pc.max(table["rank"]).as_py())
    if k < max(ks):
        raise UserError(f"evaluate.ks: {max(ks)} is more than the {k} recommendations exported per user")
    users = np.unique(user)
    top = np.full((len(users), k), -1, np.int64)
    top[np.searchsorted(users, user), table["rank"].to_numpy() - 1] = item
    return evaluate_topk(torch.from_numpy(top), truth, meta["num_items"], ks=ks, users=torch.from_numpy(users),
                         num_users=meta["num_users"])


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
