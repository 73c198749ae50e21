"""Cold start: top-K items for users the model has never seen, from a handful of their items each.

Each new user joins the training graph as a node linked to their items, with an ID embedding equal to
the mean of those items' ID embeddings (the only thing known about them), and the model's own layers
aggregate over the enlarged graph: LightGCN/NGCF fold the user in from the items' layer representations
(e_u^(l+1) = sum over the user's items of e_i^(l) / sqrt(d_u d_i)), GraphSAGE/PinSage apply their
inductive aggregators; MF falls back to the item mean. The given items are never recommended back.

    gnnrec recommend --checkpoint runs/quickstart/train --items 12,845,97 --k 10
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from gnnrec import UserError
from gnnrec.trainer.evaluate import TrainedModel, propagate_all
from gnnrec.ranking.topk import top_k


class ColdStart:
    """A trained model ready to recommend for new users (one full-graph pass per call, in this process)."""

    def __init__(self, train_dir):
        trained = TrainedModel(train_dir, "recommend.checkpoint")
        self.model, self.h0, self.train, self.social = trained.model, trained.h0, trained.train, trained.social
        self.time_decay, self.timestamp = trained.time_decay, trained.timestamp
        self.t = trained.config.train
        self.num_layers = self.t.layers
        self.num_users, self.num_items = trained.dataset.num_users, trained.dataset.num_items
        self.raw_items = trained.dataset.raw_ids("item")

    def item_ids(self, raw: list) -> np.ndarray:
        """Dataset ids of raw item IDs (strings are cast to the dataset's ID type); unknown -> UserError."""
        try:
            values = pa.array(raw).cast(self.raw_items.type)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            raise UserError(f"recommend.items: {raw} are not {self.raw_items.type} item IDs") from None
        found = pc.index_in(values, value_set=self.raw_items)
        if found.null_count:
            missing = raw[found.is_null().to_numpy(zero_copy_only=False).argmax()]
            raise UserError(f"recommend.items: item {missing!r} is not in the model's catalog")
        return found.to_numpy().astype(np.int64)

    def recommend(self, item_lists: list[np.ndarray], k: int) -> tuple[np.ndarray, np.ndarray]:
        """(items [n, k] dataset ids, -1 where fewer remain; scores [n, k]) for n new users given as lists
        of dataset item ids."""
        if k < 1:
            raise UserError(f"recommend.k={k}: must be at least 1")
        n, nu = len(item_lists), self.num_users
        new_users = torch.repeat_interleave(torch.arange(nu, nu + n), torch.tensor([len(s) for s in item_lists]))
        new_items = torch.from_numpy(np.concatenate(item_lists)).long()
        # node order: known users, new users, items
        h0 = torch.cat([self.h0[:nu], torch.stack([self.h0[nu + torch.from_numpy(s)].mean(0) for s in item_lists]),
                        self.h0[nu:]])
        timestamp = None if self.time_decay is None else np.concatenate(  # the new users' items: now
            [self.timestamp, np.full(len(new_items), self.time_decay.newest)])
        h = propagate_all(self.model, h0, torch.cat([self.train[0], new_users]), torch.cat([self.train[1], new_items]),
                          nu + n, self.num_layers, self.social, self.t, timestamp, self.time_decay)
        given = torch.stack([new_users - nu, new_items])
        (_, items, scores), = top_k(h[nu:nu + n], h[nu + n:], k, given, user_chunk=max(n, 1))
        return items.numpy(), scores.numpy()


def held_out_recall(cold: ColdStart, histories, k: int = 20, seed: int = 0) -> dict:
    """Recall@k of cold-start recommendations, and of the most popular items, for users held out of
    training: of each history (raw item IDs), 1-5 random items are given and the rest are to be found.
    Histories with nothing left to find are skipped."""
    rng = np.random.default_rng(seed)
    catalog = cold.raw_items.to_numpy()
    given, rest = [], []
    for history in histories:
        items = rng.permutation(np.unique(history))
        items = items[np.isin(items, catalog)]
        n = int(rng.integers(1, 6))
        if len(items) > n:
            given.append(cold.item_ids(items[:n].tolist()))
            rest.append(set(cold.item_ids(items[n:].tolist()).tolist()))
    top, _ = cold.recommend(given, k)
    popular = np.argsort(-np.bincount(cold.train[1].numpy(), minlength=cold.num_items))[:k + 5]
    by_popularity = [[i for i in popular if i not in set(g.tolist())][:k] for g in given]

    def recall(lists) -> float:
        return float(np.mean([len(set(found) & r) / len(r) for found, r in zip(lists, rest)]))

    return {"users": len(given), "k": k, "recall": recall(top.tolist()), "popularity_recall": recall(by_popularity)}


def recommend_stage(cfg) -> dict:
    r = cfg.recommend
    if not r.items:
        raise UserError("recommend.items: give the new user's items (--items a,b,c)")
    cold = ColdStart(cfg.path(r.checkpoint))
    items, scores = cold.recommend([cold.item_ids(r.items)], r.k)
    keep = items[0] >= 0
    raw = cold.raw_items.take(items[0][keep]).to_pylist()
    for rank, (item, score) in enumerate(zip(raw, scores[0][keep]), 1):
        print(f"{rank:>4}  {item}  {score:.4f}")
    return {"checkpoint": str(cfg.path(r.checkpoint)), "given": len(r.items), "k": r.k, "recommended": len(raw)}
