"""ranking/index.py against exact top-K (ranking/topk.py, itself tested against brute force): an index
searched in full gives the exact lists; a partial one never returns a masked item and counts the users it
leaves short; a user with many masked items asks again."""
import numpy as np
import pytest
import torch

from gnnrec.ranking import index as ann
from gnnrec.ranking.topk import top_k

K = 10


def data(num_users=200, num_items=1500, dim=8, n_excl=4000, seed=0):
    g = torch.Generator().manual_seed(seed)
    U, I = torch.randn(num_users, dim, generator=g), torch.randn(num_items, dim, generator=g)
    excl = torch.stack([torch.randint(num_users, (n_excl,), generator=g), torch.randint(num_items, (n_excl,), generator=g)])
    return U, I, excl


def collect(chunks):
    users, ids, scores = zip(*chunks)
    return torch.cat(users), torch.cat(ids), torch.cat(scores)


FULL = {"ivf": ann.IndexSpec("ivf", probes=10_000), "hnsw": ann.IndexSpec("hnsw", ef_search=2000)}


@pytest.mark.parametrize("kind", ann.KINDS)
def test_an_index_searched_in_full_gives_exact_top_k(kind):
    U, I, excl = data()
    users = torch.tensor([5, 0, 199, 17])
    index = ann.ItemIndex.build(I, FULL[kind])
    got = collect(index.search(U, K, excl, users=users, user_chunk=3))
    want = collect(top_k(U, I, K, excl, users=users))
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    assert torch.allclose(got[2], want[2], atol=1e-5)
    assert index.short == 0 and ann.overlap(got[1], want[1]) == 1.0


def test_a_partial_search_never_returns_a_masked_item_and_counts_short_users():
    U, I, excl = data()
    index = ann.ItemIndex.build(I, ann.IndexSpec("ivf", lists=30, probes=1))
    users, ids, scores = collect(index.search(U, 200, excl, user_chunk=64))
    masked = set(zip(*excl.tolist()))
    for u, row in zip(users.tolist(), ids.tolist()):
        assert not any((u, i) in masked for i in row if i >= 0)
        assert len({i for i in row if i >= 0}) == sum(i >= 0 for i in row)  # no item twice
    short = (ids[:, -1] < 0)
    assert index.short == int(short.sum()) > 0  # one cell of 50 items cannot give 200
    assert torch.isneginf(scores[ids < 0]).all()
    assert torch.allclose(scores[ids >= 0], (U[users][:, None, :] * I[ids.clamp(min=0)]).sum(-1)[ids >= 0], atol=1e-5)


def test_a_user_whose_masked_items_fill_the_first_fetch_asks_again():
    """User 0 has the 300 items it scores highest masked: far past the chunk's 99th percentile."""
    U, I, excl = data(n_excl=200)
    heavy = torch.topk(U[0] @ I.T, 300).indices
    excl = torch.cat([excl, torch.stack([torch.zeros_like(heavy), heavy])], 1)
    got = collect(ann.ItemIndex.build(I, FULL["ivf"]).search(U, K, excl))
    want = collect(top_k(U, I, K, excl))
    assert torch.equal(got[1], want[1])


def test_related_items_exclude_the_item_itself():
    """Items as queries with (item, item) masked: each item's K best others by the same score."""
    _, I, _ = data()
    items = torch.arange(0, 1500, 7)
    own = torch.stack([items, items])
    got = collect(ann.ItemIndex.build(I, FULL["ivf"]).search(I, K, own, users=items))[1]
    S = I[items] @ I.T
    S[torch.arange(len(items)), items] = float("-inf")
    assert torch.equal(got, torch.topk(S, K, dim=1).indices)
    assert not (got == items[:, None]).any()


def test_an_index_read_back_searches_as_built(tmp_path):
    U, I, excl = data()
    spec = ann.IndexSpec("ivf", lists=20, probes=3)
    built = ann.ItemIndex.build(I, spec)
    built.write(tmp_path / "items.faiss")
    read = ann.ItemIndex.read(tmp_path / "items.faiss", I, spec)
    assert read.knobs == built.knobs == {"ivf_lists": 20, "ivf_probes": 3}
    assert torch.equal(collect(read.search(U, K, excl))[1], collect(built.search(U, K, excl))[1])


def test_ivf_lists_default_and_floor():
    spec = ann.IndexSpec("ivf")
    assert spec.ivf_lists(2_000_000) == round(4 * np.sqrt(2_000_000))
    assert spec.ivf_lists(1000) == 1000 // 39 and spec.ivf_lists(10) == 1
    with pytest.raises(ValueError, match="index kind"):
        ann.ItemIndex.build(torch.randn(5, 4), ann.IndexSpec("lsh"))
