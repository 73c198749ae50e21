"""Negative items for (user, positive item) pairs: a registry of samplers over new (contiguous) ids.

    sampler = NEGATIVES["popularity"](item_degree, positives=Positives(train_user, train_item, num_items))
    neg = sampler.sample(users, pos_items, k, rng)          # int64 [len(users), k]

Hard-negative file (written by `gnnrec mine`, read by `hard`): Parquet with columns
    user  int64   new user id
    item  int64   new item id, never one of the user's positives
    rank  int32   the item's rank in the model's scores for the user (0 = top)
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from gnnrec import UserError
from gnnrec.arrays import KeySet, group_by

HARD_NEGATIVE_COLUMNS = ("user", "item", "rank")


class Positives:
    """Membership test for (user, item) training edges (`arrays.KeySet` of user * num_items + item)."""

    def __init__(self, user: np.ndarray, item: np.ndarray, num_items: int):
        self.num_items = num_items
        self.pairs = KeySet(np.asarray(user, np.int64) * num_items + item)

    @classmethod
    def of_users(cls, indptr: np.ndarray, items: np.ndarray, num_items: int) -> "Positives":
        """From every user's items, an in-CSR (indptr over users, their items)."""
        return cls(np.repeat(np.arange(len(indptr) - 1), np.diff(indptr)), items, num_items)

    def contains(self, user: np.ndarray, item: np.ndarray) -> np.ndarray:
        return self.pairs.contains(np.asarray(user, np.int64) * self.num_items + item)


class NegativeSampler:
    """Base: `draw` proposes candidates; `sample` redraws those that are the user's positives."""

    def __init__(self, num_items: int, positives: Positives | None = None, max_redraws: int = 10):
        self.num_items, self.positives, self.max_redraws = num_items, positives, max_redraws

    def draw(self, users, pos_items, k, rng) -> np.ndarray:
        raise NotImplementedError

    def sample(self, users: np.ndarray, pos_items: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
        neg = self.draw(users, pos_items, k, rng)
        if self.positives is None:
            return neg
        rows = np.arange(len(users))  # those still to check: only redrawn rows are checked again
        for _ in range(self.max_redraws):
            bad = self.positives.contains(np.repeat(users[rows], k).reshape(-1, k), neg[rows])
            redrawn = bad.any(axis=1)
            if not redrawn.any():
                break
            rows, bad = rows[redrawn], bad[redrawn]
            neg[rows] = np.where(bad, self.draw(users[rows], pos_items[rows], k, rng), neg[rows])
        else:  # users whose positives cover most of the catalog: fall back to uniform over the rest
            bad = self.positives.contains(np.repeat(users[rows], k).reshape(-1, k), neg[rows])
            for r, c in zip(*np.nonzero(bad)):
                neg[rows[r], c] = self._uniform_non_positive(users[rows[r]], rng)
        return neg

    def _uniform_non_positive(self, user, rng) -> int:
        keys = self.positives.pairs.keys
        start, stop = np.searchsorted(keys, [user * self.num_items, (user + 1) * self.num_items])
        taken = keys[start:stop] - user * self.num_items
        if len(taken) >= self.num_items:
            raise UserError(f"user {user} has every item as a positive: no negative exists")
        free = np.setdiff1d(np.arange(self.num_items), taken, assume_unique=True)
        return int(rng.choice(free))


class UniformNegatives(NegativeSampler):
    def draw(self, users, pos_items, k, rng):
        return rng.integers(0, self.num_items, (len(users), k))


class PopularityNegatives(NegativeSampler):
    """P(item) ∝ degree^0.75 (word2vec's and PinSage's smoothing)."""

    def __init__(self, item_degree: np.ndarray, positives=None, power: float = 0.75, **kw):
        super().__init__(len(item_degree), positives, **kw)
        cdf = np.cumsum(np.power(item_degree.astype(np.float64), power))
        self.cdf = cdf / cdf[-1]

    def draw(self, users, pos_items, k, rng):
        return np.minimum(np.searchsorted(self.cdf, rng.random((len(users), k)), side="right"), self.num_items - 1)


class InBatchNegatives(NegativeSampler):
    """The positives of other pairs in the batch (popularity-weighted by construction)."""

    def draw(self, users, pos_items, k, rng):
        n = len(users)
        if n < 2:
            return rng.integers(0, self.num_items, (n, k))
        other = (np.arange(n)[:, None] + rng.integers(1, n, (n, k))) % n  # never the pair's own row
        return pos_items[other]


class HardNegatives(NegativeSampler):
    """Negatives mined per user (the file schema above; `path` a file, or a directory of part-*.parquet); users
    without mined items get uniform ones. `id_maps` (user map, item map) translate the file's ids into
    the sampler's (e.g. dataset ids -> partition ids)."""

    def __init__(self, path, num_users: int, num_items: int, positives=None, id_maps=None, **kw):
        super().__init__(num_items, positives, **kw)
        path = Path(path)
        files = sorted(path.glob("part-*.parquet")) if path.is_dir() else [path]
        try:
            table = pa.concat_tables([pq.read_table(f, columns=list(HARD_NEGATIVE_COLUMNS)) for f in files])
        except Exception as e:  # noqa: BLE001 - any read failure is the user's file
            raise UserError(f"{path}: cannot read hard negatives ({e})") from None
        user, item = table["user"].to_numpy(), table["item"].to_numpy()
        if len(user) and (user.min() < 0 or user.max() >= num_users or item.min() < 0 or item.max() >= num_items):
            raise UserError(f"{path}: user or item id out of range for this dataset")
        if id_maps is not None:
            user, item = id_maps[0][user], id_maps[1][item]
        self.indptr, self.items = group_by(user, item, num_users)

    def draw(self, users, pos_items, k, rng):
        start, deg = self.indptr[users], self.indptr[users + 1] - self.indptr[users]
        pick = start[:, None] + (rng.random((len(users), k)) * deg[:, None]).astype(np.int64)
        mined = self.items[np.minimum(pick, max(len(self.items) - 1, 0))] if len(self.items) else 0
        return np.where(deg[:, None] > 0, mined, rng.integers(0, self.num_items, (len(users), k)))


class WithHard:
    """`base` negatives plus `num_hard` mined ones per positive, as extra columns; PinSage's curriculum
    raises num_hard by one per epoch of a training round."""

    def __init__(self, base: NegativeSampler, hard: HardNegatives):
        self.base, self.hard, self.num_hard = base, hard, 0

    @property
    def positives(self):
        return self.base.positives

    @positives.setter
    def positives(self, positives):
        self.base.positives = self.hard.positives = positives

    def sample(self, users, pos_items, k, rng) -> np.ndarray:
        neg = self.base.sample(users, pos_items, k, rng)
        if not self.num_hard:
            return neg
        return np.concatenate([neg, self.hard.sample(users, pos_items, self.num_hard, rng)], axis=1)


NEGATIVES = {"uniform": UniformNegatives, "popularity": PopularityNegatives,
             "in_batch": InBatchNegatives, "hard": HardNegatives}
