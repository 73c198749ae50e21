"""Ranking metrics against hand-computed values on tiny examples; masking of known items."""
import math

import numpy as np
import pytest
import torch

from gnnrec.ranking.metrics import evaluate, evaluate_topk, sample_truth
from gnnrec.ranking.topk import to_csr, top_k

# I = identity, so U's rows are the scores themselves. 5 items, 4 users.
SCORES = torch.tensor([[5., 4, 3, 2, 1],    # u0: ranking 0 1 2 3 4; train {0}; truth {2, 4}
                       [1., 2, 3, 4, 5],    # u1: ranking 4 3 2 1 0; train {4, 3}; truth {2}
                       [0., 0, 0, 0, 9],    # u2: no held-out item -> not evaluated
                       [0., 1, 2, 3, 4]])   # u3: ranking 4 3 2 1 0; no train; truth {0, 1, 2}
TRAIN = torch.tensor([[0, 1, 1], [0, 4, 3]])           # edge index (user, item)
TRUTH = torch.tensor([[0, 0, 1, 3, 3, 3], [2, 4, 2, 0, 1, 2]])
L2 = lambda r: 1 / math.log2(r + 1)  # noqa: E731  DCG discount of rank r (1-based)

# Masked top-3 lists: u0 [1, 2, 3], u1 [2, 1, 0], u3 [4, 3, 2]. Hits: u0 rank 2, u1 rank 1, u3 rank 3 (K=3 only).
NDCG_U0 = L2(2) / (L2(1) + L2(2))            # 1 hit at rank 2, |T|=2
NDCG_U3_K3 = L2(3) / (L2(1) + L2(2) + L2(3))  # 1 hit at rank 3, |T|=3
EXPECTED = {
    "recall@2": (1 / 2 + 1 + 0) / 3, "precision@2": (1 / 2 + 1 / 2 + 0) / 3, "hit_rate@2": 2 / 3,
    "ndcg@2": (NDCG_U0 + 1 + 0) / 3, "mrr@2": (1 / 2 + 1 + 0) / 3, "coverage@2": 4 / 5,  # {1,2,4,3}
    "recall@3": (1 / 2 + 1 + 1 / 3) / 3, "precision@3": (1 / 3 + 1 / 3 + 1 / 3) / 3, "hit_rate@3": 1.0,
    "ndcg@3": (NDCG_U0 + 1 + NDCG_U3_K3) / 3, "mrr@3": (1 / 2 + 1 + 1 / 3) / 3, "coverage@3": 5 / 5,
    "num_users": 3,
}


def check(got):
    assert set(got) == set(EXPECTED)
    for name, want in EXPECTED.items():
        assert got[name] == pytest.approx(want, abs=1e-9), name


def test_hand_computed_values():
    check(evaluate(SCORES, torch.eye(5), TRUTH, exclude=TRAIN, ks=[2, 3]))
    # spelled-out numbers, in case the formulas above share a mistake with the code
    got = evaluate(SCORES, torch.eye(5), TRUTH, exclude=TRAIN, ks=[2, 3])
    assert got["ndcg@2"] == pytest.approx((0.6309297536 / 1.6309297536 + 1) / 3)  # 0.4622843
    assert got["ndcg@3"] == pytest.approx((0.3868528072 + 1 + 0.5 / 2.1309297536) / 3)  # 0.5404974


def test_formats_and_chunking_agree():
    csr_truth, csr_train = to_csr(TRUTH, 4), to_csr(TRAIN, 4)
    assert csr_truth[0].tolist() == [0, 2, 3, 3, 6]
    check(evaluate(SCORES, torch.eye(5), csr_truth, exclude=csr_train, ks=[3, 2], chunk_size=1))


def test_masking_removes_train_items():
    # without the mask, u0's and u1's top items are exactly their training items
    top0 = torch.cat([t for _, t, _ in top_k(SCORES, torch.eye(5), 2)])
    assert top0[0].tolist() == [0, 1] and top0[1].tolist() == [4, 3]
    top = torch.cat([t for _, t, _ in top_k(SCORES, torch.eye(5), 5, exclude=TRAIN)])
    for user, item in TRAIN.T.tolist():
        assert item not in top[user].tolist()
    assert top[1].tolist() == [2, 1, 0, -1, -1]  # only 3 unmasked items left: empty slots are -1
    unmasked = evaluate(SCORES, torch.eye(5), TRUTH, ks=[2])
    assert unmasked["recall@2"] == pytest.approx((0 + 0 + 0) / 3)  # train items crowd out the truth


def test_precomputed_topk_lists():
    top = torch.tensor([[1, 2, 3], [2, 1, 0], [4, 0, 1], [4, 3, 2]])  # row 2 has no truth: skipped
    check(evaluate_topk(top, TRUTH, num_items=5, ks=[2, 3]))
    # explicit user ids and padding: user 1 only, list [0, 2, -1]
    got = evaluate_topk(torch.tensor([[0, 2, -1]]), TRUTH, 5, ks=[3], users=torch.tensor([1]), num_users=4)
    assert got["recall@3"] == 1.0 and got["mrr@3"] == pytest.approx(1 / 2)
    assert got["ndcg@3"] == pytest.approx(L2(2) / L2(1)) and got["coverage@3"] == pytest.approx(2 / 5)


def test_a_sample_of_users_keeps_every_held_out_item_of_exactly_those_users():
    users, items = np.array([0, 0, 1, 2, 2, 2, 5, 7]), np.arange(8)
    u, i = sample_truth(users, items, 3, seed=1)
    assert len(np.unique(u)) == 3 and set(np.unique(u)) <= set(users)
    assert sorted(i) == [k for k in range(8) if users[k] in set(u)]  # all their pairs, no other
    assert np.array_equal(sample_truth(users, items, 3, seed=1)[1], i)  # seeded
    assert sample_truth(users, items, None, 0)[0] is users and sample_truth(users, items, 5, 0)[0] is users
