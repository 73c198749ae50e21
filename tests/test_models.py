"""Models, layers, blocks and losses on tiny graphs: exact formulas, shapes, learning, devices."""
import math
import subprocess
import sys

import pytest
import torch

from gnnrec.model.blocks import (Batch, Block, drop_edges, full_graph_blocks, graph_edges, sym_norm,
                                   time_decay)
from gnnrec.model.layers import GATConv, attend, propagate, scatter_max, scatter_sum, segment_softmax
from gnnrec.model.losses import LOSSES, Rows, bpr_loss, max_margin_loss, view_contrast_loss
from gnnrec.ranking.metrics import evaluate
from gnnrec.model.models import MODELS, GCN, LightGCN, NodeInput, Popularity, score

# 3 users, 4 items, 2 social pairs; homogeneous ids: users 0..2, items 3..6
N_USERS, N_ITEMS, N = 3, 4, 7
UI = torch.tensor([[0, 0, 1, 1, 2, 2, 2], [0, 1, 1, 2, 0, 2, 3]])
SOCIAL = torch.tensor([[0, 1], [1, 2]])
GNNS = [name for name in MODELS if name not in ("popularity", "mf")]


def dense_adj(src, dst, n):
    a = torch.zeros(n, n)
    a[dst, src] = 1.0  # row = receiver
    return a


def tiny_graph(social=False):
    return graph_edges(UI[0], UI[1], N_USERS, *(SOCIAL if social else (None, None)))


def sampled_blocks(src, dst, etype, weight=None):
    """A 2-layer MFG chain with local ids = global ids: layer 1 feeds nodes 0..4, layer 2 nodes 0..2."""
    blocks = []
    for num_src, num_dst in [(N, 5), (5, 3)]:
        keep = (dst < num_dst) & (src < num_src)
        blocks.append(Block(src[keep], dst[keep], num_src, num_dst, etype=etype[keep],
                            weight=None if weight is None else weight[keep]))
    return blocks


def test_block_conventions():
    src, dst, etype = tiny_graph(social=True)
    assert src.numel() == 2 * (7 + 2) and (etype == 1).sum() == 4
    b = Block(src, dst, N, N, weight=torch.ones(src.numel()), etype=etype)
    with pytest.raises(ValueError):
        Block(src, dst, 3, 5)
    batch = Batch(torch.arange(N), [b], users=torch.tensor([0]), pos_items=torch.tensor([3]))
    (order, crow), (src_order, src_crow) = b.by_dst(), b.by_src()  # once, where the block is made, and moved
    moved = batch.to("cpu")
    assert moved.blocks[0].num_edges == src.numel() and moved.output_nodes.tolist() == list(range(N))
    assert set(moved.blocks[0]._sorted) == {"dst", "src"} and torch.equal(moved.blocks[0].by_dst()[1], crow)
    assert torch.all(dst[order][1:] >= dst[order][:-1]) and crow[-1] == src.numel()
    assert torch.all(src[src_order][1:] >= src[src_order][:-1]) and torch.equal(src_crow.diff(), torch.bincount(src, minlength=N))
    assert drop_edges(b, 1.0).num_edges == 0 and drop_edges(b, 0.0) is b
    keep = torch.rand(src.numel(), generator=torch.Generator().manual_seed(0)) < 0.6
    kept = b.edge_subset(keep)
    assert set(kept._sorted) == {"dst", "src"}  # carried over from b, not sorted again
    for (order, crow), index in ((kept.by_dst(), dst[keep]), (kept.by_src(), src[keep])):
        assert torch.equal(torch.arange(len(index)) if order is None else order, torch.argsort(index, stable=True))
        assert torch.equal(crow.diff(), torch.bincount(index, minlength=N))
    assert time_decay(torch.tensor([0.0, 2.0]), 0.5).tolist() == pytest.approx([1.0, torch.e ** -1])


def test_lightgcn_one_layer_by_hand():
    # path user0 - item0 - user1: degrees 1, 2, 1
    src, dst, _ = graph_edges(torch.tensor([0, 1]), torch.tensor([0, 0]), 2)
    e = torch.tensor([[1.0, 0.0], [0.0, 2.0], [4.0, 4.0]])  # user0, user1, item0
    out = LightGCN(2, 1)(e, full_graph_blocks(src, dst, 3, 1))
    r2 = 2 ** -0.5
    layer1 = torch.tensor([[4 * r2, 4 * r2],          # u0 <- item0 / sqrt(1*2)
                           [4 * r2, 4 * r2],          # u1 <- item0 / sqrt(1*2)
                           [1 * r2, 2 * r2]])         # item0 <- (u0 + u1) / sqrt(2*1)
    assert torch.allclose(out, (e + layer1) / 2)     # alpha_l = 1/(L+1), L = 1


def test_lightgcn_matches_dense_power_series():
    src, dst, _ = tiny_graph()
    a = dense_adj(src, dst, N)
    d = a.sum(1).rsqrt()
    a_hat = d[:, None] * a * d[None, :]
    e0 = torch.randn(N, 8)
    want = (e0 + a_hat @ e0 + a_hat @ a_hat @ e0 + a_hat @ a_hat @ a_hat @ e0) / 4
    blocks = full_graph_blocks(src, dst, N, 3)
    assert torch.allclose(sym_norm(blocks[0]), a_hat[dst, src])
    assert torch.allclose(LightGCN(8, 3)(e0, blocks), want, atol=1e-6)


def test_gcn_matches_dense_formula():
    torch.manual_seed(0)
    src, dst, _ = tiny_graph()
    a = dense_adj(src, dst, N) + torch.eye(N)
    d = a.sum(1).rsqrt()
    a_hat = d[:, None] * a * d[None, :]
    model = GCN(8, 2)
    h0 = torch.randn(N, 8)
    l1, l2 = model.convs[0].lin, model.convs[1].lin
    want = a_hat @ torch.relu(a_hat @ h0 @ l1.weight.T + l1.bias) @ l2.weight.T + l2.bias
    assert torch.allclose(model(h0, full_graph_blocks(src, dst, N, 2)), want, atol=1e-5)


def test_ngcf_matches_dense_formula():
    torch.manual_seed(0)
    src, dst, _ = tiny_graph()
    a = dense_adj(src, dst, N)
    d = a.sum(1).clamp(min=1).rsqrt()
    a_hat = d[:, None] * a * d[None, :]
    model = MODELS["ngcf"](8, 2, dropout=0.0).eval()
    h0 = torch.randn(N, 8)
    layers, h = [h0], h0
    for conv in model.convs:
        s = a_hat @ h
        h = torch.nn.functional.leaky_relu(conv.w1(h + s) + conv.w2(s * h), 0.2)
        layers.append(torch.nn.functional.normalize(h, dim=1))
    assert torch.allclose(model(h0, full_graph_blocks(src, dst, N, 2)), torch.cat(layers, 1), atol=1e-5)
    # biases start at zero: no shared offset outweighs small embeddings in the normalized layers
    assert torch.equal(model(torch.zeros(N, 8), full_graph_blocks(src, dst, N, 2)), torch.zeros(N, 24))


def test_segment_softmax_and_gat_attention_sum_to_one():
    logits = torch.tensor([1.0, 2.0, 3.0, 0.5])
    index = torch.tensor([0, 0, 1, 0])
    got = segment_softmax(logits, index, 3)
    assert torch.allclose(got[[0, 1, 3]], torch.softmax(logits[[0, 1, 3]], 0)) and got[2] == 1.0
    src, dst, _ = tiny_graph()
    for self_loops in (True, False):
        block = Block(src, dst, N, N, weight=torch.rand(src.numel()) + 0.1)
        out, alpha = GATConv(8, 4, heads=3, self_loops=self_loops)(block, torch.randn(N, 8), return_attention=True)
        assert out.shape == (N, 12) and alpha.shape[1] == 3
        receivers = torch.cat([dst, torch.arange(N)]) if self_loops else dst
        assert torch.allclose(scatter_sum(alpha, receivers, N), torch.ones(N, 3))


def test_aggregation_gradients():
    index = torch.tensor([0, 0, 1, 2, 2, 2])
    x = torch.randn(6, 2, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: segment_softmax(t, index, 4), (x,))
    assert torch.autograd.gradcheck(lambda t: scatter_max(t, index, 4), (x,))
    # the sparse product (its backward over the block's by-src order) against gather + scatter
    src, dst = torch.tensor([0, 3, 1, 3, 4, 2, 0]), torch.tensor([0, 0, 1, 2, 2, 2, 1])
    block, coef = Block(src, dst, 5, 3), torch.rand(7, dtype=torch.double)
    h = torch.randn(5, 2, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: propagate(block, t, coef), (h,))
    assert torch.allclose(propagate(block, h, coef), scatter_sum(h[src] * coef[:, None], dst, 3))
    # the block keeps its matrices for the same coefficients only: others build their own
    other = torch.rand(7, dtype=torch.double)
    assert torch.allclose(propagate(block, h, other), scatter_sum(h[src] * other[:, None], dst, 3))
    assert torch.autograd.gradcheck(lambda t: propagate(block, t, coef), (h,))


@pytest.mark.parametrize("by_dst", [False, True])
def test_attention_products_match_the_messages_they_replace(by_dst):
    """attend (per head a sparse product, the attention's gradient a sampled product) against gather +
    multiply + scatter, forward and both gradients; and propagate with coefficients that need a gradient
    (SocialGCN's gates) is its one-head case."""
    src, dst = torch.tensor([0, 3, 1, 3, 4, 2, 0, 4]), torch.tensor([0, 0, 1, 2, 2, 2, 1, 0])
    if by_dst:  # as samplers emit them
        order = torch.argsort(dst, stable=True)
        src, dst = src[order], dst[order]
    block = Block(src, dst, 5, 3)
    alpha = torch.rand(8, 2, dtype=torch.double, requires_grad=True)
    z = torch.randn(5, 2, 3, dtype=torch.double, requires_grad=True)
    assert torch.allclose(attend(block, alpha, z), scatter_sum(z[src] * alpha[..., None], dst, 3))
    assert torch.autograd.gradcheck(lambda a, t: attend(block, a, t), (alpha, z))
    coef, h = alpha[:, 0], z[:, 0]
    assert torch.allclose(propagate(block, h, coef), scatter_sum(h[src] * coef[:, None], dst, 3))
    assert torch.autograd.gradcheck(lambda c, t: propagate(block, t, c), (coef, h))


def test_global_degrees_and_options():
    src, dst, etype = tiny_graph()
    full = full_graph_blocks(src, dst, N, 1)[0]
    sampled = sampled_blocks(src, dst, etype)[1]
    keep = (dst < 3) & (src < 5)
    # with the whole graph's degrees, a sampled block keeps the full graph's coefficients
    deg = torch.bincount(dst, minlength=N).float()[:5]
    assert torch.allclose(sym_norm(Block(sampled.src, sampled.dst, 5, 3, deg=deg)), sym_norm(full)[keep])
    h0 = torch.randn(N, 4)
    model = MODELS["lightgcn"](4, 2, edge_dropout=0.5, node_dropout=0.2, residual=True).eval()
    blocks = full_graph_blocks(src, dst, N, 2)
    assert torch.equal(model(h0, blocks), model(h0, blocks))  # dropouts act only in training
    assert not torch.allclose(model(h0, blocks), LightGCN(4, 2)(h0, blocks))  # residual changes it
    with pytest.raises(ValueError):
        model(h0, blocks[:1])


@pytest.mark.parametrize("name", GNNS + ["mf"])
def test_forward_shapes_and_gradients(name):
    torch.manual_seed(0)
    src, dst, etype = tiny_graph(social=name == "socialgcn")
    weight = torch.rand(src.numel()) + 0.5
    layers = 0 if name == "mf" else 2
    blocks = sampled_blocks(src, dst, etype, weight)[:layers] if layers else []
    dim = 8
    model = MODELS[name](dim, layers)
    inp = NodeInput(N, dim)
    nodes = torch.arange(N if layers else 3)
    h0 = inp(nodes)
    out = model(h0, blocks)
    assert out.shape[0] == 3 and out.dim() == 2 and torch.isfinite(out).all()
    assert out.shape[1] == (dim * (layers + 1) if name == "ngcf" else dim)
    batch = Batch(nodes, blocks, users=torch.tensor([0, 1]), pos_items=torch.tensor([2, 2]),
                  neg_items=torch.tensor([1, 0]))
    loss = bpr_loss(out[batch.users], out[batch.pos_items], out[batch.neg_items],
                    ego=(h0[batch.users], h0[batch.pos_items], h0[batch.neg_items]))
    loss.backward()
    assert inp.emb.weight.grad is not None and inp.emb.weight.grad.abs().sum() > 0
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{name}: no gradient for {pname}"


def test_socialgcn_gates_only_social_edges():
    src, dst, etype = tiny_graph(social=True)
    blocks = full_graph_blocks(src, dst, N, 1, etype=etype)
    h0 = torch.randn(N, 4)
    gated, plain = MODELS["socialgcn"](4, 1), MODELS["socialgcn"](4, 1, attention=False)
    # items (3..6) have no social edges, so only users' outputs can differ
    a, b = gated(h0, blocks), plain(h0, blocks)
    assert torch.allclose(a[3:], b[3:]) and not torch.allclose(a[:3], b[:3])
    assert torch.allclose(plain(h0, blocks), LightGCN(4, 1)(h0, blocks))


def test_node_input_modes():
    feats = torch.randn(N, 5)
    nodes = torch.tensor([4, 0])
    assert NodeInput(N, 8)(nodes).shape == (2, 8)
    only_feat = NodeInput(N, 8, features=feats, use_id=False)
    assert torch.allclose(only_feat(nodes), only_feat.proj(feats[nodes]))
    both = NodeInput(N, 8, features=feats)
    assert torch.allclose(both(nodes, feats=feats[nodes]), both.emb(nodes) + both.proj(feats[nodes]))
    with pytest.raises(ValueError):
        NodeInput(N, 8, use_id=False)


def test_losses_by_hand():
    u, p, n = torch.tensor([[1.0, 0.0]]), torch.tensor([[2.0, 0.0]]), torch.tensor([[1.0, 1.0]])
    # scores: pos 2, neg 1 -> -ln sigmoid(1) = ln(1 + e^-1) = 0.3132617; L2: (1 + 4 + 2) / 2
    assert bpr_loss(u, p, n, l2=0.0).item() == pytest.approx(0.31326169)
    assert bpr_loss(u, p, n, ego=(u, p, n), l2=0.1).item() == pytest.approx(0.31326169 + 0.1 * 3.5)
    assert max_margin_loss(u, p, n, margin=1.5).item() == pytest.approx(0.5)   # max(0, 1 - 2 + 1.5)
    assert max_margin_loss(u, p, n, margin=0.5).item() == 0.0
    two = torch.stack([n[0], torch.tensor([3.0, 0.0])]).unsqueeze(0)           # 2 negatives: 1 and 3
    assert max_margin_loss(u, p, two, margin=0.5).item() == pytest.approx((0 + 1.5) / 2)
    # in-batch: user 0's negative is user 1's positive and vice versa
    uu, pp = torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([[2.0, 0.0], [1.0, 0.0]])
    # pos scores 2, 0; in-batch neg scores 1, 0 -> max(0, 1 - 2 + 1) = 0, max(0, 0 - 0 + 1) = 1
    assert max_margin_loss(uu, pp, None, margin=1.0).item() == pytest.approx((0 + 1) / 2)
    assert set(LOSSES) == {"bpr", "max_margin", "cosine_contrastive", "softmax", "alignment_uniformity"}


def test_new_losses_by_hand():
    u, p = torch.tensor([[1.0, 0.0]]), torch.tensor([[2.0, 0.0]])
    n = torch.tensor([[[1.0, 1.0], [0.0, 3.0]]])  # cosines with u: 1/sqrt(2) and 0
    ccl = LOSSES["cosine_contrastive"]
    # (1 - cos 1) + w * mean(max(0, 0.7071 - m), max(0, 0 - m))
    assert ccl(u, p, n, margin=0.5, negative_weight=2.0).item() == pytest.approx(2.0 * (0.70710678 - 0.5) / 2)
    assert ccl(u, p, n, margin=0.8).item() == 0.0
    # cosines 1 | 0.7071, 0 at t = 0.5: -log(e^2 / (e^2 + e^1.4142 + e^0))
    expected = math.log(math.exp(2) + math.exp(2 * 0.70710678) + 1) - 2
    assert LOSSES["softmax"](u, p, n, temperature=0.5).item() == pytest.approx(expected)
    au = LOSSES["alignment_uniformity"]
    uu, pp = torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    # alignment: (0 + |(0,1) - (1,0)|^2) / 2 = 1; users: one pair at distance^2 2 -> log e^-4 = -4;
    # items: one pair at distance 0 -> log e^0 = 0
    assert au(uu, pp, gamma=1.0).item() == pytest.approx(1 + (-4 + 0) / 2)
    a, b = torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    # cosines: 1 with its own row, 0 with the other; at t = 0.5 each row is -log(e^2 / (e^2 + e^0))
    assert view_contrast_loss(a, b, 0.5).item() == pytest.approx(math.log(1 + math.exp(-2)))
    assert view_contrast_loss(a, b.flip(0), 0.5).item() == pytest.approx(math.log(1 + math.exp(2)))


@pytest.mark.parametrize("loss", sorted(LOSSES))
def test_rows_by_index_give_the_loss_and_gradients_of_the_gathered_rows(loss):
    """Rows(h, index) (scores by a sampled product, sparse-product gradients, L2 by row counts) is
    the materialized h[index], repeats and all."""
    g = torch.Generator().manual_seed(0)
    h, h0 = torch.randn(30, 8, generator=g, requires_grad=True), torch.randn(30, 8, generator=g, requires_grad=True)
    users, pos = torch.arange(10), torch.arange(10, 20)
    index = torch.randint(0, 30, (10, 5), generator=g)
    index[0, :] = 3  # a row named five times by one pair
    index[1, 0] = 3  # and by another
    dense = LOSSES[loss](h[users], h[pos], h[index], ego=(h0[users], h0[pos], h0[index]), l2=0.1)
    by_index = LOSSES[loss](h[users], h[pos], Rows(h, index), ego=(h0[users], h0[pos], Rows(h0, index)), l2=0.1)
    assert by_index.item() == pytest.approx(dense.item(), rel=1e-5)
    for a, b in zip(torch.autograd.grad(dense, (h, h0)), torch.autograd.grad(by_index, (h, h0))):
        assert torch.allclose(a, b, atol=1e-6)


def planted_communities(num_comm=4, size=10, per_user=6, held_out=2, seed=0):
    """Users and items in `num_comm` communities of `size`; each user likes `per_user` items of its own."""
    g = torch.Generator().manual_seed(seed)
    train, test = [], []
    for u in range(num_comm * size):
        c = u // size
        items = c * size + torch.randperm(size, generator=g)[:per_user]
        test += [(u, i) for i in items[:held_out].tolist()]
        train += [(u, i) for i in items[held_out:].tolist()]
    return torch.tensor(train).T, torch.tensor(test).T, num_comm * size, num_comm * size


def train_lightgcn(train, n_users, n_items, steps=200, device="cpu"):
    torch.manual_seed(0)
    src, dst, _ = graph_edges(train[0], train[1], n_users)
    blocks = [b.to(device) for b in full_graph_blocks(src, dst, n_users + n_items, 2)]
    inp, model = NodeInput(n_users + n_items, 16).to(device), LightGCN(16, 2).to(device)
    opt = torch.optim.Adam(list(inp.parameters()) + list(model.parameters()), lr=0.05)
    nodes = torch.arange(n_users + n_items, device=device)
    users, pos = train[0].to(device), train[1].to(device) + n_users
    for _ in range(steps):
        neg = torch.randint(n_users, n_users + n_items, users.shape, device=device)
        h0 = inp(nodes)
        out = model(h0, blocks)
        loss = bpr_loss(out[users], out[pos], out[neg], ego=(h0[users], h0[pos], h0[neg]), l2=1e-4)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        out = model(inp(nodes), blocks)
    return out[:n_users], out[n_users:], loss.item()


def test_lightgcn_learns_planted_communities():
    train, test, n_users, n_items = planted_communities()
    U, I, _ = train_lightgcn(train, n_users, n_items)
    got = evaluate(U, I, test, exclude=train, ks=[5])
    U0, I0 = Popularity.from_interactions(train[0], train[1], n_users, n_items).embeddings()
    pop = evaluate(U0, I0, test, exclude=train, ks=[5])
    # a community-level model ranks the 4 unseen own-community items first: recall@5 = 1;
    # popularity has no notion of community: about a quarter of its list is in the user's community
    assert got["recall@5"] > 0.6 and got["recall@5"] > 2 * pop["recall@5"], (got, pop)


def test_score_is_dot_product():
    assert score(torch.tensor([[1.0, 2.0]]), torch.tensor([[3.0, 4.0]])).tolist() == [11.0]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_runs_on_cuda():
    train, test, n_users, n_items = planted_communities()
    U, I, loss = train_lightgcn(train, n_users, n_items, steps=50, device="cuda")
    assert U.is_cuda and torch.isfinite(U).all()
    assert evaluate(U, I, test, exclude=train, ks=[5])["num_users"] == n_users
    src, dst, etype = tiny_graph(social=True)
    blocks = [b.to("cuda") for b in sampled_blocks(src, dst, etype, torch.rand(src.numel()) + 0.5)]
    for name in GNNS:
        out = MODELS[name](8, 2).cuda()(torch.randn(N, 8, device="cuda"), blocks)
        assert out.is_cuda and out.shape[0] == 3


def test_models_import_without_dgl():
    code = ("import sys, gnnrec.model.models, gnnrec.model.losses, gnnrec.ranking.metrics; "
            "bad = [m for m in sys.modules if m == 'dgl' or m.startswith(('dgl.', 'gnnrec.partition'))]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
