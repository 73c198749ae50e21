"""Random-walk (PinSage) neighbourhoods against DGL's own sampler, and the negative samplers."""
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from gnnrec import UserError
from gnnrec.arrays import KeySet
from gnnrec.samplers.negatives import NEGATIVES, Positives
from gnnrec.samplers.neighborhoods import CSRNeighborhoods
from gnnrec.samplers.pinsage import PinSageSampler

GOWALLA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "gowalla" / "train.parquet"


def _pinsage_agreement(user, item, seeds, walks=2000, k=10):
    """Top-k overlap and count correlation of ours vs DGL, beside DGL vs DGL (its own noise)."""
    import dgl
    num_users, num_items = int(user.max()) + 1, int(item.max()) + 1
    u, i = torch.from_numpy(user), torch.from_numpy(item)
    g = dgl.heterograph({("user", "ui", "item"): (u, i), ("item", "iu", "user"): (i, u)})

    def from_dgl(seed):
        dgl.seed(seed)
        ng = dgl.sampling.PinSAGESampler(g, "item", "user", 3, 0.5, walks, k)(torch.from_numpy(seeds))
        src, dst = ng.edges()
        return {(int(d), int(s)): int(c) for s, d, c in zip(src, dst, ng.edata["weights"])}

    sampler = PinSageSampler(CSRNeighborhoods.from_edges(user, item, num_users, num_items), num_items,
                             num_traversals=3, termination_prob=0.5, num_walks=walks, num_neighbors=k, seed=3)
    pos, nb, counts = sampler.sample(seeds)
    ours = {(int(seeds[p]), int(n)): int(c) for p, n, c in zip(pos, nb, counts)}

    def overlap(x, y):
        return np.mean([len({n for d, n in x if d == s} & {n for d, n in y if d == s}) / k for s in seeds])

    def corr(x, y):
        keys = sorted(set(x) | set(y))
        return np.corrcoef([x.get(key, 0) for key in keys], [y.get(key, 0) for key in keys])[0, 1]

    a, b = from_dgl(1), from_dgl(2)
    return overlap(ours, a), overlap(b, a), corr(ours, a), corr(b, a), sum(ours.values()), sum(a.values())


def _check_agreement(user, item, seeds):
    ours_overlap, dgl_overlap, ours_corr, dgl_corr, ours_mass, dgl_mass = _pinsage_agreement(user, item, seeds)
    assert ours_overlap >= dgl_overlap - 0.05, (ours_overlap, dgl_overlap)
    assert ours_corr >= dgl_corr - 0.08, (ours_corr, dgl_corr)
    assert abs(ours_mass - dgl_mass) <= 0.03 * dgl_mass


def test_pinsage_matches_dgl_on_synthetic_graph():
    rng = np.random.default_rng(0)
    user = rng.integers(0, 400, 6000)
    item = (user % 8) * 25 + rng.integers(0, 25, 6000)  # 8 communities of 25 items
    key = np.unique(user * 200 + item)
    user, item = key // 200, key % 200
    _check_agreement(user, item, np.arange(0, 200, 2))


def test_pinsage_matches_dgl_on_gowalla():
    if not GOWALLA.exists():
        pytest.skip("../shared/datasets/gowalla is absent")
    table = pq.read_table(GOWALLA)
    user, item = table["user_id"].to_numpy(), table["item_id"].to_numpy()
    seeds = np.random.default_rng(0).choice(int(item.max()) + 1, 300, replace=False)
    _check_agreement(user, item, seeds)


def test_pinsage_neighbours_stay_in_community_and_respect_k():
    rng = np.random.default_rng(1)
    user = rng.integers(0, 300, 5000)
    item = (user % 3) * 30 + rng.integers(0, 30, 5000)
    sampler = PinSageSampler(CSRNeighborhoods.from_edges(user, item, 300, 90), 90, num_walks=50, num_neighbors=5)
    seeds = np.array([0, 31, 89])
    pos, nb, counts = sampler.sample(seeds)
    assert np.all(np.bincount(pos, minlength=3) == 5)
    assert np.all(nb // 30 == seeds[pos] // 30)  # walks never leave a community with no bridge
    assert np.all(np.diff(counts[pos == 0]) <= 0)  # most visited first


def _graph(rng, num_users=50, num_items=40, edges=400):
    key = np.unique(rng.integers(0, num_users, edges) * num_items + rng.integers(0, num_items, edges))
    return key // num_items, key % num_items


@pytest.mark.parametrize("num_keys", [0, 1, 1000, 100_000])
def test_key_set_agrees_with_isin(num_keys):
    rng = np.random.default_rng(num_keys)
    keys = rng.integers(-10**12, 10**12, num_keys)
    queries = np.concatenate([rng.integers(-10**12, 10**12, 50_000), keys[:1000], keys[:1000] + 1])
    queries = queries[rng.permutation(len(queries))][: len(queries) // 2 * 2].reshape(-1, 2)  # any shape
    found = KeySet(keys).contains(queries)
    assert found.shape == queries.shape and np.array_equal(found, np.isin(queries, keys))


@pytest.mark.parametrize("name", ["uniform", "popularity", "in_batch"])
def test_negatives_exclude_positives(name):
    rng = np.random.default_rng(0)
    user, item = _graph(rng)
    user = np.concatenate([user, np.zeros(38, np.int64)])  # user 0 likes 38 of 40 items
    item = np.concatenate([item, np.arange(38)])
    key = np.unique(user * 40 + item)
    user, item = key // 40, key % 40
    positives = Positives(user, item, 40)
    degree = np.bincount(item, minlength=40)
    sampler = (NEGATIVES[name](degree, positives=positives) if name == "popularity"
               else NEGATIVES[name](40, positives=positives))
    batch = rng.integers(0, len(user), 256)
    neg = sampler.sample(user[batch], item[batch], 5, rng)
    assert neg.shape == (256, 5)
    assert not positives.contains(np.repeat(user[batch], 5), neg.ravel()).any()
    assert set(np.unique(neg[user[batch] == 0])) <= {38, 39}


def test_popularity_negatives_follow_degree_power():
    rng = np.random.default_rng(0)
    degree = np.array([1, 10, 100, 1000])
    sampler = NEGATIVES["popularity"](degree)
    draws = sampler.sample(np.zeros(100_000, np.int64), np.zeros(100_000, np.int64), 1, rng).ravel()
    expected = degree ** 0.75 / (degree ** 0.75).sum()
    assert np.allclose(np.bincount(draws, minlength=4) / len(draws), expected, atol=0.01)


def test_uniform_negatives_cover_catalog_evenly():
    draws = NEGATIVES["uniform"](10).sample(np.zeros(50_000, np.int64), np.zeros(50_000, np.int64), 1,
                                            np.random.default_rng(0))
    assert np.allclose(np.bincount(draws.ravel(), minlength=10) / 50_000, 0.1, atol=0.01)


def test_in_batch_negatives_are_other_rows_positives():
    rng = np.random.default_rng(0)
    pos = np.arange(100, 164)
    neg = NEGATIVES["in_batch"](1000).sample(np.arange(64), pos, 8, rng)
    assert np.isin(neg, pos).all()
    assert not (neg == pos[:, None]).any()


def test_hard_negatives_read_mined_file(tmp_path):
    path = tmp_path / "hard.parquet"
    pq.write_table(pa.table({"user": np.array([0, 0, 1], np.int64), "item": np.array([5, 6, 7], np.int64),
                             "rank": np.array([10, 11, 12], np.int32)}), path)
    sampler = NEGATIVES["hard"](path, num_users=3, num_items=10)
    neg = sampler.sample(np.array([0, 1, 2]), np.array([1, 1, 1]), 20, np.random.default_rng(0))
    assert set(neg[0]) == {5, 6} and set(neg[1]) == {7}
    assert len(set(neg[2])) > 3  # no mined items: uniform
    pq.write_table(pa.table({"user": np.array([9], np.int64), "item": np.array([5], np.int64),
                             "rank": np.array([0], np.int32)}), path)
    with pytest.raises(UserError, match="out of range"):
        NEGATIVES["hard"](path, num_users=3, num_items=10)
