"""Cold start: top-K items for users the model has never seen, from a handful of their items, their
profile features, or both.

Each new user joins the training graph as a node linked to their items, and the model's own layers
aggregate over the enlarged graph: LightGCN/NGCF fold the user in from the items' layer representations
(e_u^(l+1) = sum over the user's items of e_i^(l) / sqrt(d_u d_i)), GraphSAGE/PinSage apply their
inductive aggregators. The new user's input h0, from what is known about them:

- a model with a user feature projection (`train.inputs` features or id+features, `ingest.user_features`)
  and the user's features x: h0 = W_user x, plus (id+features) the mean of the items' h0 as the ID row;
- else, given items: the mean of those items' h0 (MF: that mean is the user's representation);
- else, given features only: the mean h0 of the `similar_users` training users whose features are
  nearest by cosine (the fallback for a model trained on IDs).

The given items are never recommended back.

    gnnrec recommend --checkpoint runs/quickstart/train --items 12,845,97 --k 10
    gnnrec recommend --checkpoint runs/quickstart/train "recommend.features=[0.3, -1.2, 0.8]"
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
import torch.nn.functional as F

from gnnrec import UserError
from gnnrec.inference.trained import Interactions, TrainedModel, propagate_all
from gnnrec.ranking.topk import top_k


class ColdStart:
    """A trained model ready to recommend for new users (one full-graph pass per call, in this process)."""

    def __init__(self, train_dir, similar_users: int = 20):
        trained = TrainedModel(train_dir, "recommend.checkpoint")
        self.model, self.h0, self.train, self.social = trained.model, trained.h0, trained.train, trained.social
        dims = trained.dataset.meta["feature_dims"]
        self.user_features = trained.dataset.features("user") if "user" in dims else None
        self.similar_users = similar_users
        self.time_decay, self.timestamp = trained.time_decay, trained.timestamp
        self.train_cfg = trained.config.train
        self.num_layers = self.train_cfg.layers
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

    def new_user_inputs(self, item_lists: list[np.ndarray], features: Optional[np.ndarray]) -> torch.Tensor:
        """h0 [n, dim] of new users from their items (dataset ids) and/or features [n, f] (module docstring)."""
        given = torch.tensor([len(s) > 0 for s in item_lists])
        item_mean = torch.stack([self.h0[self.num_users + torch.from_numpy(s)].mean(0) if len(s)
                                 else self.h0.new_zeros(self.h0.shape[1]) for s in item_lists])
        if features is None:
            if not given.all():
                raise UserError("recommend: give each new user's items (recommend.items) or features (recommend.features)")
            return item_mean
        features = self.checked_features(features, len(item_lists))
        inputs = self.model.inputs
        if inputs is not None and "user" in inputs.proj:
            with torch.no_grad():
                return inputs("user", item_mean, features)
        known = F.normalize(torch.from_numpy(self.user_features), dim=1)
        nearest = (F.normalize(features, dim=1) @ known.T).topk(min(self.similar_users, len(known)), dim=1).indices
        return torch.where(given[:, None], item_mean, self.h0[:self.num_users][nearest].mean(1))

    def checked_features(self, features, n: int) -> torch.Tensor:
        """[n, f] float32 features of n new users, f the dataset's user feature width; else a UserError."""
        if self.user_features is None:
            raise UserError("recommend.features: the model's dataset has no user features (ingest.user_features)")
        features = torch.tensor(np.asarray(features, np.float32)).reshape(n, -1)
        if features.shape[1] != self.user_features.shape[1]:
            raise UserError(f"recommend.features: {features.shape[1]} values, the dataset's user features have "
                            f"{self.user_features.shape[1]}")
        return features

    def recommend(self, item_lists: list[np.ndarray], k: int, features: Optional[np.ndarray] = None
                  ) -> tuple[np.ndarray, np.ndarray]:
        """(items [n, k] dataset ids, -1 where fewer remain; scores [n, k]) for n new users given as lists
        of dataset item ids (empty where only features are known) and, optionally, features [n, f]."""
        if k < 1:
            raise UserError(f"recommend.k={k}: must be at least 1")
        n, nu = len(item_lists), self.num_users
        new_users = torch.repeat_interleave(torch.arange(nu, nu + n), torch.tensor([len(s) for s in item_lists]))
        new_items = torch.from_numpy(np.concatenate(item_lists).astype(np.int64))
        h0 = torch.cat([self.h0[:nu], self.new_user_inputs(item_lists, features), self.h0[nu:]])  # known, new, items
        timestamp = None if self.time_decay is None else np.concatenate(  # the new users' items: now
            [self.timestamp, np.full(len(new_items), self.time_decay.newest)])
        graph = Interactions(torch.cat([self.train[0], new_users]), torch.cat([self.train[1], new_items]), nu + n,
                             self.social, timestamp)
        h = propagate_all(self.model, h0, graph, self.num_layers, self.train_cfg, self.time_decay)
        given = torch.stack([new_users - nu, new_items])
        (_, items, scores), = top_k(h[nu:nu + n], h[nu + n:], k, given, user_chunk=max(n, 1))
        return items.numpy(), scores.numpy()


def held_out_recall(cold: ColdStart, histories, k: int = 20, seed: int = 0, features: Optional[np.ndarray] = None,
                    given: tuple[int, int] = (1, 5)) -> dict:
    """Recall@k of cold-start recommendations, and of the most popular items, for users held out of
    training: of each history (raw item IDs), `given` (at least, at most) random items are given, with the
    user's row of `features` when given, and the rest are to be found. Histories with nothing left to
    find are skipped."""
    rng = np.random.default_rng(seed)
    catalog = cold.raw_items.to_numpy()
    shown, rest, kept = [], [], []
    for row, history in enumerate(histories):
        items = rng.permutation(np.unique(history))
        items = items[np.isin(items, catalog)]
        n = int(rng.integers(given[0], given[1] + 1))
        if len(items) > n:
            shown.append(cold.item_ids(items[:n].tolist()))
            rest.append(set(cold.item_ids(items[n:].tolist()).tolist()))
            kept.append(row)
    top, _ = cold.recommend(shown, k, None if features is None else features[kept])
    popular = np.argsort(-np.bincount(cold.train[1].numpy(), minlength=cold.num_items))[:k + given[1]]
    by_popularity = [[i for i in popular if i not in set(g.tolist())][:k] for g in shown]

    def recall(lists) -> float:
        return float(np.mean([len(set(found) & r) / len(r) for found, r in zip(lists, rest)]))

    return {"users": len(shown), "k": k, "recall": recall(top.tolist()), "popularity_recall": recall(by_popularity)}


def run(cfg) -> dict:
    r = cfg.recommend
    if not r.items and not r.features:
        raise UserError("recommend.items: give the new user's items (--items a,b,c) or features (recommend.features)")
    cold = ColdStart(cfg.path(r.checkpoint), r.similar_users)
    items, scores = cold.recommend([cold.item_ids(r.items) if r.items else np.empty(0, np.int64)], r.k,
                                   [r.features] if r.features else None)
    keep = items[0] >= 0
    raw = cold.raw_items.take(items[0][keep]).to_pylist()
    for rank, (item, score) in enumerate(zip(raw, scores[0][keep]), 1):
        print(f"{rank:>4}  {item}  {score:.4f}")
    return {"checkpoint": str(cfg.path(r.checkpoint)), "given": len(r.items), "features": bool(r.features),
            "k": r.k, "recommended": len(raw)}
