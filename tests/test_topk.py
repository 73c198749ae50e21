"""top_k against brute force on small random data: ids, scores, order, masking, padding, item shards."""
import pytest
import torch

from gnnrec.ranking.topk import top_k

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def data(num_users=50, num_items=37, dim=8, n_excl=300, seed=0):
    g = torch.Generator().manual_seed(seed)
    U, I = torch.randn(num_users, dim, generator=g), torch.randn(num_items, dim, generator=g)
    excl = torch.stack([torch.randint(num_users, (n_excl,), generator=g),
                        torch.randint(num_items, (n_excl,), generator=g)])
    return U, I, excl


def brute(U, I, k, excl=None, users=None):
    """(ids, scores) by sorting every user's unmasked items, padded with -1 / -inf."""
    S = U @ I.T
    users = range(U.shape[0]) if users is None else users.tolist()
    masked = set() if excl is None else set(zip(excl[0].tolist(), excl[1].tolist()))
    ids, scores = [], []
    for u in users:
        cand = sorted(((S[u, i].item(), i) for i in range(I.shape[0]) if (u, i) not in masked), reverse=True)[:k]
        cand += [(float("-inf"), -1)] * (k - len(cand))
        scores.append([s for s, _ in cand])
        ids.append([i for _, i in cand])
    return torch.tensor(ids), torch.tensor(scores)


def collect(gen):
    users, ids, scores = zip(*gen)
    for i, s in zip(ids, scores):
        assert i.dtype == torch.int64 and s.dtype == torch.float32
    return torch.cat(users).cpu(), torch.cat(ids).cpu(), torch.cat(scores).cpu()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("csr", [False, True])
def test_matches_brute_force(device, csr):
    U, I, excl = data()
    exclude = excl
    if csr:  # the same sets as a CSR pair
        order = torch.argsort(excl[0], stable=True)
        exclude = (torch.cat([torch.zeros(1, dtype=torch.long), torch.bincount(excl[0], minlength=50).cumsum(0)]),
                   excl[1][order])
    users, ids, scores = collect(top_k(U.to(device), I.to(device), 10, exclude, user_chunk=16))
    want_ids, want_scores = brute(U, I, 10, excl)
    assert torch.equal(users, torch.arange(50))
    assert torch.equal(ids, want_ids)
    torch.testing.assert_close(scores, want_scores, rtol=1e-6, atol=1e-6)
    assert (scores[:, :-1] >= scores[:, 1:]).all()  # best first
    masked = set(zip(excl[0].tolist(), excl[1].tolist()))
    assert not any((u, i) in masked for u, row in enumerate(ids.tolist()) for i in row)


def test_padding_when_fewer_than_k_items_remain():
    U, I, _ = data(num_users=4, num_items=12)
    excl = torch.tensor([[0] * 5 + [1] * 12, list(range(5)) + list(range(12))])  # u0: 7 left, u1: none
    for k in (10, 15):  # 15 > catalog size
        _, ids, scores = collect(top_k(U, I, k, excl, user_chunk=3))
        want_ids, want_scores = brute(U, I, k, excl)
        assert ids.shape == scores.shape == (4, k)
        assert torch.equal(ids, want_ids)
        torch.testing.assert_close(scores, want_scores, rtol=1e-6, atol=1e-6)
        assert (ids[0, 7:] == -1).all() and torch.isneginf(scores[0, 7:]).all() and (ids[0, :7] >= 5).all()
        assert (ids[1] == -1).all() and torch.isneginf(scores[1]).all()
        assert (ids[2:, 12:] == -1).all() and (ids[2:, :12] >= 0).all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("item_chunk", [1, 5, 7, 10, 36, 37, 100])
def test_item_shards_equal_unsplit(device, item_chunk):
    U, I, excl = data(n_excl=900)  # some users lose most of a shard
    U, I = U.to(device), I.to(device)
    _, ids, scores = collect(top_k(U, I, 10, excl, user_chunk=16))
    _, ids_s, scores_s = collect(top_k(U, I, 10, excl, user_chunk=16, item_chunk=item_chunk))
    assert torch.equal(ids_s, ids)
    # the same up to rounding: BLAS may sum a dot product in another order for another matrix shape
    torch.testing.assert_close(scores_s, scores, rtol=1e-6, atol=1e-6)


def test_a_score_bound_shrinks_the_user_chunks_not_the_lists():
    """max_scores=37 x 3: chunks of 3 users over the whole catalog (of 1 user for 100), the same lists."""
    U, I, excl = data()
    _, ids, scores = collect(top_k(U, I, 10, excl, user_chunk=16))
    for bound in (37 * 3, 100, 1):
        chunks = list(top_k(U, I, 10, excl, user_chunk=16, max_scores=bound))
        assert max(len(users) for users, _, _ in chunks) == max(1, bound // 37)
        _, ids_b, scores_b = collect(iter(chunks))
        assert torch.equal(ids_b, ids)
        torch.testing.assert_close(scores_b, scores, rtol=1e-6, atol=1e-6)


def test_users_subset():
    U, I, excl = data()
    users = torch.tensor([41, 3, 17, 0, 49, 3])
    got_users, ids, scores = collect(top_k(U, I, 6, excl, users=users, user_chunk=4, item_chunk=9))
    want_ids, want_scores = brute(U, I, 6, excl, users)
    assert torch.equal(got_users, users)
    assert torch.equal(ids, want_ids)
    torch.testing.assert_close(scores, want_scores, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("item_chunk", [None, 4])
def test_scores_are_exact_dot_products(item_chunk):
    # small integer embeddings: every dot product is exact in float32, whatever the summation order
    g = torch.Generator().manual_seed(3)
    U = torch.randint(-4, 5, (20, 6), generator=g).float().requires_grad_()
    I = torch.randint(-4, 5, (15, 6), generator=g).float().requires_grad_()
    excl = torch.stack([torch.randint(20, (40,), generator=g), torch.randint(15, (40,), generator=g)])
    users, ids, scores = collect(top_k(U, I, 5, excl, user_chunk=7, item_chunk=item_chunk))
    exact = U.detach().long() @ I.detach().long().T
    rows = torch.arange(20).unsqueeze(1)
    assert torch.equal(scores, exact[rows, ids].float())
    # ties may order differently from brute force, but the top scores are the same
    _, want_scores = brute(U.detach(), I.detach(), 5, excl)
    assert torch.equal(scores, want_scores)
    assert all(len(set(row)) == 5 for row in ids.tolist())
    masked = set(zip(excl[0].tolist(), excl[1].tolist()))
    assert not any((u, i) in masked for u, row in enumerate(ids.tolist()) for i in row)
