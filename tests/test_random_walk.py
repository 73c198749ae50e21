"""Random-walk (PinSage) blocks: visit-count weights of mean 1 per node, at most T in-edges of the other node
type, no batch pair as an edge; the neighbourhoods match exact walk probabilities and DGL's
PinSAGESampler one hop shifted; the local-first back-end walks as the whole CSR does; PinSageConv sees
the weights; the config picks random walks for PinSage."""
import numpy as np
import pytest
import torch

from gnnrec import UserError
from gnnrec.arrays import group_by
from gnnrec.launch.config import load_config
from gnnrec.model.blocks import INTERACTION
from gnnrec.model.layers import PinSageConv
from gnnrec.model.models import Recommender
from gnnrec.samplers.neighborhoods import CSRNeighborhoods, LocalFirstNeighborhoods
from gnnrec.samplers.random_walk import RandomWalkSampler

NU, NI = 60, 40


def _graph(seed=0, num_users=NU, num_items=NI, edges=500):
    """A random user-item graph in which every node has an edge."""
    rng = np.random.default_rng(seed)
    user = np.concatenate([np.arange(num_users), rng.integers(0, num_users, edges)])
    item = np.concatenate([rng.integers(0, num_items, num_users), rng.integers(0, num_items, edges)])
    user = np.concatenate([user, rng.integers(0, num_users, num_items)])
    item = np.concatenate([item, np.arange(num_items)])
    key = np.unique(user * num_items + item)
    return key // num_items, key % num_items


USER, ITEM = _graph()


class FixedNegatives:
    def __init__(self, neg):
        self.neg = neg

    def sample(self, users, pos_items, k, rng):
        return self.neg[: len(users), :k]


def _weights(block, src_nodes, dst_nodes) -> dict:
    """{(global src, global dst): the src's share of the dst's visits} of a block."""
    total = torch.zeros(block.num_dst, dtype=torch.float64).index_add_(0, block.dst, block.weight.double())
    share = block.weight.double() / total[block.dst]
    return {(int(src_nodes[s]), int(dst_nodes[d])): float(w)
            for s, d, w in zip(block.src.tolist(), block.dst.tolist(), share.tolist())}


def test_blocks_carry_normalized_visit_counts_of_at_most_T_other_type_nodes_and_no_batch_pair():
    graph = CSRNeighborhoods.from_edges(USER, ITEM, NU, NI)
    T = 4
    pick = np.random.default_rng(1).choice(len(USER), 12, replace=False)
    users, items = USER[pick], ITEM[pick]
    sampler = RandomWalkSampler(graph, 2, NU, NI, walks=30, neighbors=T, seed=2,
                                negatives=FixedNegatives(np.arange(24).reshape(12, 2) % NI), num_negatives=2)
    batch = sampler.sample(users, items)
    nodes = batch.input_nodes.numpy()
    out = batch.output_nodes.numpy()
    assert np.array_equal(out[batch.users.numpy()], users) and np.array_equal(out[batch.pos_items.numpy()], items + NU)
    banned = {(u, i + NU) for u, i in zip(users.tolist(), items.tolist())}
    banned |= {(i, u) for u, i in banned}
    degree = np.concatenate([np.bincount(USER, minlength=NU), np.bincount(ITEM, minlength=NI)])
    assert batch.blocks[0].num_dst == batch.blocks[1].num_src
    for b in batch.blocks:
        src, dst = nodes[b.src.numpy()], nodes[b.dst.numpy()]
        assert np.all((src < NU) != (dst < NU))  # users hear items, items hear users
        assert torch.all(b.etype == INTERACTION)
        in_edges = np.bincount(b.dst.numpy(), minlength=b.num_dst)
        assert in_edges.max() <= T and (in_edges > 0).all()  # every node here has an edge to walk
        total = torch.zeros(b.num_dst, dtype=torch.float64).index_add_(0, b.dst, b.weight.double())
        assert torch.allclose(total, torch.from_numpy(in_edges).double(), atol=1e-5)  # mean 1 per dst
        assert len(set(zip(src.tolist(), dst.tolist()))) == b.num_edges  # one edge per visited node
        assert not set(zip(src.tolist(), dst.tolist())) & banned
        assert np.array_equal(b.deg.numpy(), degree[nodes[:b.num_src]])
    # visit counts: most blocks' weights are not uniform
    b = batch.blocks[0]
    spread = [b.weight[b.dst == d].std().item() for d in range(b.num_dst) if (b.dst == d).sum() > 1]
    assert np.mean(np.array(spread) > 0) > 0.5


def _exact_visits(user, item, num_users, num_items, length, restart_prob):
    """[num_items, num_users] and [num_users, num_items]: expected visits of the other type per walk,
    sum over traversals t of (1 - p)^t e_v (P P')^t P (no dead ends: every node has an edge)."""
    a = np.zeros((num_users, num_items))
    a[user, item] = 1
    p_ui, p_iu = a / a.sum(1, keepdims=True), a.T / a.T.sum(1, keepdims=True)
    from_item = sum((1 - restart_prob) ** t * np.linalg.matrix_power(p_iu @ p_ui, t) @ p_iu for t in range(length))
    from_user = sum((1 - restart_prob) ** t * np.linalg.matrix_power(p_ui @ p_iu, t) @ p_ui for t in range(length))
    return from_item, from_user


def test_walk_neighbourhoods_match_exact_random_walk_probabilities():
    nu, ni = 7, 5
    user, item = _graph(3, nu, ni, edges=8)
    from_item, from_user = _exact_visits(user, item, nu, ni, length=3, restart_prob=0.5)
    graph = CSRNeighborhoods.from_edges(user, item, nu, ni)
    nodes = np.arange(nu + ni)
    sampler = RandomWalkSampler(graph, 1, nu, ni, walks=20000, length=3, restart_prob=0.5, neighbors=2, seed=0)
    block, src_nodes = sampler.node_block(nodes, fanout=-1)  # every visited node
    got = _weights(block, src_nodes, nodes)
    for v in range(nu + ni):
        exact = from_user[v] if v < nu else from_item[v - nu]
        offset = nu if v < nu else 0
        share = exact / exact.sum()
        measured = np.array([got.get((offset + j, v), 0.0) for j in range(len(exact))])
        assert np.allclose(measured, share, atol=0.015), (v, measured, share)
    # top T = 2: the chosen nodes are the most probable ones (up to near ties)
    block, src_nodes = sampler.node_block(nodes)
    top = _weights(block, src_nodes, nodes)
    for v in range(nu + ni):
        exact = from_user[v] if v < nu else from_item[v - nu]
        offset = nu if v < nu else 0
        share = exact / exact.sum()
        chosen = [s - offset for s, d in top if d == v]
        assert len(chosen) == min(2, np.count_nonzero(share))
        assert share[chosen].min() >= np.sort(share)[-2] - 0.02


def test_item_neighbourhoods_are_dgl_pinsage_walks_one_hop_shifted():
    """Our walk from item i counts the user of each traversal: the first from i itself, each later one
    (continuing with probability 1 - p) from the item PinSAGESampler reaches after a traversal of a walk
    one traversal shorter. So E[ours] = P_iu[i] + (1 - p) * sum_j visits_dgl(i, j) / walks * P_iu[j]."""
    import dgl
    nu, ni, walks, p = 30, 20, 4000, 0.5
    user, item = _graph(5, nu, ni, edges=120)
    g = dgl.heterograph({("user", "ui", "item"): (torch.from_numpy(user), torch.from_numpy(item)),
                         ("item", "iu", "user"): (torch.from_numpy(item), torch.from_numpy(user))})
    dgl.seed(0)
    seeds = torch.arange(ni)
    neighbours = dgl.sampling.PinSAGESampler(g, "item", "user", 2, p, walks, ni)(seeds)
    src, dst = neighbours.edges()
    visits = np.zeros((ni, ni))
    np.add.at(visits, (dst.numpy(), src.numpy()), neighbours.edata["weights"].numpy())
    a = np.zeros((nu, ni))
    a[user, item] = 1
    p_iu = a.T / a.T.sum(1, keepdims=True)
    expected = p_iu + (1 - p) * (visits / walks) @ p_iu
    expected /= expected.sum(1, keepdims=True)
    sampler = RandomWalkSampler(CSRNeighborhoods.from_edges(user, item, nu, ni), 1, nu, ni, walks=walks,
                                length=3, restart_prob=p, seed=1)
    items = nu + np.arange(ni)
    block, src_nodes = sampler.node_block(items, fanout=-1)
    got = _weights(block, src_nodes, items)
    ours = np.array([[got.get((u, nu + i), 0.0) for u in range(nu)] for i in range(ni)])
    assert np.abs(ours - expected).sum(1).max() < 0.12  # total variation x 2, per item
    assert np.abs(ours - expected).sum(1).mean() < 0.06


def _local_first() -> LocalFirstNeighborhoods:
    """The trainer's own partition (users < 30, items < 20) from local CSR rows, the rest from a stand-in
    for the servers."""
    remote = CSRNeighborhoods.from_edges(USER, ITEM, NU, NI)
    remote.relations = list(remote.csr)
    own = {"user": (0, 30), "item": (0, 20)}
    csr = {"interacted_by": group_by(USER[USER < 30], ITEM[USER < 30], 30),
           "interacts": group_by(ITEM[ITEM < 20], USER[ITEM < 20], 20)}
    return LocalFirstNeighborhoods(remote, csr, own)


def test_local_first_counts_the_nodes_whose_neighbours_the_servers_sample():
    first = _local_first()
    first.sample(np.arange(NU), np.arange(NI), 2, np.random.default_rng(0))
    assert first.remote_share() == pytest.approx((NU - 30 + NI - 20) / (NU + NI))


def test_local_first_walks_like_the_whole_csr():
    """Own rows locally, the rest from the servers: the same neighbourhoods as walking the whole graph."""
    whole = CSRNeighborhoods.from_edges(USER, ITEM, NU, NI)
    first = _local_first()
    rng = np.random.default_rng(0)
    for step, start, end, n in (("user->item", USER, ITEM, NU), ("item->user", ITEM, USER, NI)):
        nodes = np.repeat(np.arange(n), 400)
        drawn = first.sample_one(nodes, step, rng)
        assert set(zip(nodes.tolist(), drawn.tolist())) == set(zip(start.tolist(), end.tolist()))
    all_nodes = np.arange(NU + NI)
    blocks = [RandomWalkSampler(g, 1, NU, NI, walks=4000, seed=s).node_block(all_nodes, fanout=-1)
              for s, g in ((1, whole), (2, first))]
    a, b = (_weights(block, src_nodes, all_nodes) for block, src_nodes in blocks)
    assert max(abs(a.get(k, 0) - b.get(k, 0)) for k in set(a) | set(b)) < 0.03


def test_pinsage_conv_receives_the_walk_weights():
    cfg = load_config(None, ["train.model=pinsage", "train.dim=8", "train.layers=2"])
    model = Recommender(cfg.train)
    seen = []
    for conv in model.gnn.convs:
        conv.register_forward_pre_hook(lambda module, args: seen.append(args[0].weight))
    assert all(isinstance(conv, PinSageConv) for conv in model.gnn.convs)
    sampler = RandomWalkSampler(CSRNeighborhoods.from_edges(USER, ITEM, NU, NI), 2, NU, NI,
                                negatives=FixedNegatives(np.full((8, 1), 3)))
    batch = sampler.sample(USER[:8], ITEM[:8])
    model(batch, torch.randn(len(batch.input_nodes), 8)).backward()
    assert len(seen) == 2 and all(w is not None and w.std() > 0 for w in seen)


def test_config_picks_random_walks_for_pinsage():
    assert load_config(None, ["train.model=pinsage"]).train.sampler == "random_walk"
    assert load_config(None, ["train.model=pinsage", "train.sampler=neighbor"]).train.sampler == "neighbor"
    assert load_config(None, ["train.model=lightgcn"]).train.sampler == "neighbor"
    t = load_config(None, ["train.sampler=random_walk", "train.layers=3", "train.random_walk.neighbors=5"]).train
    assert t.layers == 3 and t.fanouts == [10, 5] and t.random_walk.neighbors == 5  # fanouts unused
    with pytest.raises(UserError, match="fanouts has 2 entries but layers=3"):
        load_config(None, ["train.sampler=neighbor", "train.layers=3"])
    with pytest.raises(UserError, match="train.random_walk.walk"):
        load_config(None, ["train.random_walk.walk=5"])
    with pytest.raises(UserError, match="train.random_walk.restart_prob"):
        load_config(None, ["train.random_walk.restart_prob=1"])
