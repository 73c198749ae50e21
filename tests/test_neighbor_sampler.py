"""GraphSAGE neighbour sampler: sampled edges are real, fanouts hold, batch edges never carry messages,
blocks chain, full-fanout blocks reproduce full-graph LightGCN, prefetch keeps order and errors, and a
served DistGraph gives the same neighbourhoods (and random-walk neighbourhoods) as the local CSR."""
import time
from collections import Counter

import numpy as np
import pytest
import torch

from gnnrec.samplers.neighbor import NeighborSampler, Relabeler, TimeDecay
from gnnrec.samplers.neighborhoods import CSRNeighborhoods, sample_rows
from gnnrec.samplers.prefetch import Prefetcher
from gnnrec.samplers.random_walk import RandomWalkSampler
from gnnrec.model.blocks import SOCIAL, full_graph_blocks, graph_edges
from gnnrec.model.models import LightGCN

NU, NI = 12, 9


def _toy_graph():
    rng = np.random.default_rng(3)
    key = np.unique(rng.integers(0, NU * NI, 60))
    user, item = key // NI, key % NI
    pairs = np.unique(rng.integers(0, NU, (30, 2)), axis=0)
    follower, followee = pairs[pairs[:, 0] != pairs[:, 1]].T
    return user, item, follower, followee


USER, ITEM, FOLLOWER, FOLLOWEE = _toy_graph()
TIME = 1_000 + 97 * USER + 13 * ITEM  # a timestamp per interaction (seconds)
DECAY = TimeDecay(0.002, newest=int(TIME.max()))


def _check_decayed(batch):
    """Every interaction message of every block weighs exp(-rate (newest - t)) of its pair's timestamp,
    every social one 1."""
    when = {(u, NU + i): t for u, i, t in zip(USER.tolist(), ITEM.tolist(), TIME.tolist())}
    checked = 0
    for layer in range(len(batch.blocks)):
        for (s, d, etype), w in zip(message_edges(batch, layer), batch.blocks[layer].weight.tolist()):
            expected = 1.0 if etype == SOCIAL else np.exp(-DECAY.rate * (DECAY.newest - when[min(s, d), max(s, d)]))
            assert w == pytest.approx(expected, rel=1e-6), (s, d, etype)
            checked += etype != SOCIAL
    assert checked and any(w < 0.9 for b in batch.blocks for w in b.weight.tolist())  # old edges weigh less


def full_edges():
    """The symmetric message graph as (src, dst, etype) over the homogeneous ids."""
    src, dst, etype = graph_edges(torch.from_numpy(USER), torch.from_numpy(ITEM), NU,
                                  torch.from_numpy(FOLLOWER), torch.from_numpy(FOLLOWEE))
    return src.numpy(), dst.numpy(), etype.numpy()


def message_edges(batch, layer):
    """Global (src, dst, etype) triples of one block."""
    b, nodes = batch.blocks[layer], batch.input_nodes.numpy()
    return list(zip(nodes[b.src.numpy()].tolist(), nodes[b.dst.numpy()].tolist(), b.etype.tolist()))


class FixedNegatives:
    def __init__(self, neg):
        self.neg = neg

    def sample(self, users, pos_items, k, rng):
        return self.neg[: len(users), :k]


def local_sampler(fanouts, **kw):
    graph = CSRNeighborhoods.from_edges(USER, ITEM, NU, NI, social=(FOLLOWER, FOLLOWEE))
    return NeighborSampler(graph, fanouts, NU, NI, **kw)


def batch_pairs(n=4, seed=0):
    pick = np.random.default_rng(seed).choice(len(USER), n, replace=False)
    return USER[pick], ITEM[pick]


def test_relabeler_unique_is_np_unique_and_leaves_its_scratch_clean():
    rng = np.random.default_rng(0)
    relabel = Relabeler(5000)
    for n in (0, 1, 20_000):
        ids = rng.integers(0, 5000, n)
        distinct, inverse = relabel.unique(ids, start=7)
        expected, expected_inverse = np.unique(ids, return_inverse=True)
        assert np.array_equal(distinct, expected) and np.array_equal(inverse, expected_inverse + 7)
        assert (relabel.local == -1).all()
        dst = np.unique(rng.integers(0, 5000, 50))
        nodes, src_local = relabel(dst, ids)
        assert np.array_equal(nodes[: len(dst)], dst) and np.array_equal(nodes[src_local], ids)
        assert np.array_equal(np.sort(nodes[len(dst):]), nodes[len(dst):]) and len(set(nodes)) == len(nodes)
        assert (relabel.local == -1).all()


def test_csr_rows_sample_distinct_existing_neighbours_up_to_fanout_uniformly():
    graph = CSRNeighborhoods.from_edges(USER, ITEM, NU, NI, social=(FOLLOWER, FOLLOWEE))
    rng = np.random.default_rng(0)
    neighbours = {"interacted_by": lambda d: set(ITEM[USER == d]), "interacts": lambda d: set(USER[ITEM == d]),
                  "follows": lambda d: set(FOLLOWER[FOLLOWEE == d]), "followed_by": lambda d: set(FOLLOWEE[FOLLOWER == d])}
    users, items = np.arange(NU), np.arange(NI)
    for fanout in (0, 1, 2, 3, -1):
        for relation, src, at, _ in graph.sample(users, items, fanout, rng):
            dst = users if relation != "interacts" else items
            for pos in range(len(dst)):
                got = src[at == pos].tolist()
                true = neighbours[relation](dst[pos])
                assert len(got) == len(set(got)) and set(got) <= true  # distinct, real
                assert len(got) == (len(true) if fanout < 0 else min(fanout, len(true)))
    # uniform: every neighbour of a 6-edge row is drawn with probability 2/6
    indptr, indices = np.array([0, 6]), np.arange(6)
    counts = np.bincount(np.concatenate([sample_rows(indptr, indices, np.array([0]), 2, rng)[0]
                                         for _ in range(3000)]), minlength=6)
    assert np.all(np.abs(counts / 3000 - 2 / 6) < 0.04)


def test_blocks_chain_roles_map_to_seeds_and_deg_is_whole_graph_degree():
    users, items = batch_pairs()
    neg = np.array([[1, 2], [2, 5], [8, 0], [3, 3]])
    batch = local_sampler([3, 2], negatives=FixedNegatives(neg), num_negatives=2).sample(users, items)
    out = batch.output_nodes.numpy()
    assert np.array_equal(out[batch.users.numpy()], users)
    assert np.array_equal(out[batch.pos_items.numpy()], items + NU)
    assert np.array_equal(out[batch.neg_items.numpy()], neg + NU)
    assert len(set(out.tolist())) == len(out) == len(set(users) | set(items + NU) | set(neg.ravel() + NU))
    assert batch.blocks[0].num_src == len(batch.input_nodes) == len(set(batch.input_nodes.tolist()))
    assert batch.blocks[0].num_dst == batch.blocks[1].num_src
    _, dst, _ = full_edges()
    degree = np.bincount(dst, minlength=NU + NI)
    for b in batch.blocks:
        assert b.src.max() < b.num_src and b.dst.max() < b.num_dst
        assert np.array_equal(b.deg.numpy(), degree[batch.input_nodes.numpy()[:b.num_src]])


def test_sampled_edges_exist_respect_fanout_and_never_carry_batch_edges():
    src, dst, etype = full_edges()
    graph_multiset = Counter(zip(src.tolist(), dst.tolist(), etype.tolist()))
    sampler = local_sampler([2, 1], negatives=FixedNegatives(np.full((6, 1), 4)))
    for seed in range(5):
        users, items = batch_pairs(6, seed)
        batch = sampler.sample(users, items)
        banned = {(u, i + NU) for u, i in zip(users.tolist(), items.tolist())}
        banned |= {(i, u) for u, i in banned}
        for layer, fanout in enumerate([2, 1]):
            edges = message_edges(batch, layer)
            assert not Counter(edges) - graph_multiset  # every sampled edge is in the graph
            assert not {(s, d) for s, d, _ in edges} & banned
            per_relation = Counter((d, s < NU, t) for s, d, t in edges)
            # interactions: one relation per dst; social: followers + followees, fanout each
            assert all(n <= fanout * (2 if t == SOCIAL else 1) for (_, _, t), n in per_relation.items())


def test_full_fanout_gives_all_neighbours_minus_batch_edges():
    src, dst, etype = full_edges()
    users, items = batch_pairs()
    for exclude in (False, True):
        batch = local_sampler([-1], exclude_batch_edges=exclude).sample(users, items)
        out = set(batch.output_nodes.tolist())
        banned = {(u, i + NU) for u, i in zip(users.tolist(), items.tolist())} if exclude else set()
        banned |= {(i, u) for u, i in banned}
        expected = Counter((s, d, t) for s, d, t in zip(src.tolist(), dst.tolist(), etype.tolist())
                           if d in out and (s, d) not in banned)
        assert Counter(message_edges(batch, 0)) == expected


def test_time_decay_weighs_each_sampled_interaction_by_its_age():
    graph = CSRNeighborhoods.from_edges(USER, ITEM, NU, NI, social=(FOLLOWER, FOLLOWEE), timestamp=TIME)
    users, items = batch_pairs(4)
    for fanouts in ([2, 1], [-1, -1]):
        _check_decayed(NeighborSampler(graph, fanouts, NU, NI, time_decay=DECAY).sample(users, items))
    assert NeighborSampler(graph, [2, 1], NU, NI).sample(users, items).blocks[0].weight is None  # off: unweighted


def test_full_fanout_blocks_reproduce_full_graph_lightgcn():
    torch.manual_seed(0)
    h = torch.randn(NU + NI, 8, dtype=torch.float64)
    src, dst, etype = (torch.from_numpy(a) for a in full_edges())
    model = LightGCN(8, num_layers=2).eval()
    full = model(h, full_graph_blocks(src, dst, NU + NI, 2, etype=etype))
    users, items = batch_pairs()
    batch = local_sampler([-1, -1], exclude_batch_edges=False,
                          negatives=FixedNegatives(np.array([[0], [7], [2], [5]]))).sample(users, items)
    sampled = model(h[batch.input_nodes], batch.blocks)
    assert torch.allclose(sampled, full[batch.output_nodes], atol=1e-12)
    assert batch.blocks[1].num_dst < batch.blocks[0].num_dst  # the seeds are a strict subset: a real check


def test_whole_graph_batches_give_the_seeds_their_sampled_outputs_and_drop_the_batch_pairs(monkeypatch):
    """Once a batch's whole neighbourhoods are most of the graph, later batches train on the whole graph
    (samplers/neighbor.WholeGraph): the same seeds' outputs as their sampled blocks give, batch pairs dropped."""
    torch.manual_seed(0)
    h = torch.randn(NU + NI, 8, dtype=torch.float64)
    model = LightGCN(8, num_layers=2).eval()
    neg = np.array([[0], [7], [2], [5]])
    users, items = batch_pairs()
    whole = local_sampler([-1, -1], negatives=FixedNegatives(neg))
    whole.sample(users, items)  # the toy graph's 2-hop neighbourhoods: (nearly) every node
    assert whole.whole is not None
    monkeypatch.setattr("gnnrec.samplers.neighbor.WHOLE_GRAPH_SHARE", 2.0)  # never
    sampled = local_sampler([-1, -1], negatives=FixedNegatives(neg))
    users, items = batch_pairs(seed=1)
    a, b = whole.sample(users, items), sampled.sample(users, items)
    assert torch.equal(a.input_nodes, torch.arange(NU + NI)) and sampled.whole is None
    for role in ("users", "pos_items", "neg_items"):
        assert torch.equal(a.input_nodes[getattr(a, role)], b.output_nodes[getattr(b, role)])
    out_a, out_b = model(h[a.input_nodes], a.blocks), model(h[b.input_nodes], b.blocks)
    assert torch.allclose(out_a[a.users], out_b[b.users], atol=1e-12)
    assert torch.allclose(out_a[a.pos_items], out_b[b.pos_items], atol=1e-12)
    pairs = {(u, i + NU) for u, i in zip(users.tolist(), items.tolist())}
    edges = set(message_edges(a, 0)) | set(message_edges(a, 1))
    assert not {(s, d) for s, d, _ in edges} & (pairs | {(i, u) for u, i in pairs})
    assert len(message_edges(a, 0)) == len(full_edges()[0]) - 2 * len(pairs)  # only those


def test_prefetcher_yields_in_order_and_reraises_sampler_errors():
    def batches(fail_at=None):
        for k in range(7):
            if k == fail_at:
                raise RuntimeError("sampler broke")
            time.sleep(0.005)
            yield k
    assert list(Prefetcher(batches(), depth=2)) == list(range(7))
    got = []
    with pytest.raises(RuntimeError, match="sampler broke"):
        for k in Prefetcher(batches(fail_at=4)):
            got.append(k)
    assert got == [0, 1, 2, 3]

    def endless():
        k = 0
        while True:
            yield k
            k += 1
    with Prefetcher(endless(), depth=3) as p:
        assert [next(p) for _ in range(5)] == list(range(5))
    assert not p._thread.is_alive()  # closed without draining the producer


def test_prefetched_sampler_batches_match_direct_sampling():
    users, items = batch_pairs(8)
    chunks = [(users[k:k + 3], items[k:k + 3]) for k in range(0, 8, 3)]
    direct, sampler = local_sampler([2, 2], seed=5), local_sampler([2, 2], seed=5)
    expected = [direct.sample(u, i) for u, i in chunks]
    got = list(Prefetcher(sampler.sample(u, i) for u, i in chunks))
    assert len(got) == 3
    for a, b in zip(got, expected):
        assert torch.equal(a.input_nodes, b.input_nodes)
        assert all(torch.equal(x.src, y.src) and torch.equal(x.dst, y.dst) for x, y in zip(a.blocks, b.blocks))


# ---------------------------------------------------------------- DistGraph back-end

@pytest.fixture(scope="module")
def served_toy(tmp_path_factory):
    import ray
    from gnnrec.dgl_adapter import _dgl
    dgl = _dgl()
    u, i, a, b = (torch.from_numpy(x) for x in (USER, ITEM, FOLLOWER, FOLLOWEE))
    g = dgl.heterograph({("user", "interacts", "item"): (u, i), ("item", "interacted_by", "user"): (i, u),
                         ("user", "follows", "user"): (a, b)}, num_nodes_dict={"user": NU, "item": NI})
    for etype in ("interacts", "interacted_by"):
        g.edges[etype].data["timestamp"] = torch.from_numpy(TIME)
    out = tmp_path_factory.mktemp("nbr-parts")
    dgl.distributed.partition_graph(g, "nbr", 1, str(out), part_method="random")
    return out / "nbr.json"


def test_distgraph_backend_samples_what_the_local_csr_samples(local_ray, served_toy):
    import ray
    from gnnrec.launch.graph_servers import GraphServers

    @ray.remote(num_cpus=0)
    def client(info, users, items):
        from gnnrec.launch.graph_servers import connect_client
        from gnnrec.dgl_adapter import disconnect
        from gnnrec.samplers.neighbor import NeighborSampler
        from gnnrec.dgl_adapter import local_in_csr
        from gnnrec.samplers.neighborhoods import DistNeighborhoods, LocalFirstNeighborhoods
        graph = connect_client(info)
        remote = DistNeighborhoods(graph)
        first = LocalFirstNeighborhoods(remote, *local_in_csr(graph))  # the one partition is this machine's
        out = {name: [NeighborSampler(backend, fanouts, NU, NI).sample(users, items) for fanouts in ([2, 1], [-1, -1])]
               for name, backend in (("servers", remote), ("local first", first))}
        walks = {name: _walk_weights(RandomWalkSampler(backend, 1, NU, NI, walks=3000))
                 for name, backend in (("servers", remote), ("local first", first))}
        them = np.unique(users)
        pairs = {name: sorted(zip(*(a.tolist() for a in backend.items_of(them)))) for name, backend in
                 (("servers", remote), ("local first", first))}
        timed = DistNeighborhoods(graph, times=True)
        decayed = [NeighborSampler(backend, [-1, -1], NU, NI, time_decay=DECAY).sample(users, items)
                   for backend in (timed, LocalFirstNeighborhoods(timed, *local_in_csr(graph)))]
        disconnect()
        return out, pairs, walks, decayed

    users, items = batch_pairs(6, seed=2)
    with GraphServers(served_toy, num_clients=1) as servers:
        backends, pairs, walks, decayed = ray.get(client.remote(servers.client_info, users, items), timeout=120)
    for batch in decayed:  # the servers' and this machine's shared memory's timestamps
        _check_decayed(batch)
    local = _walk_weights(RandomWalkSampler(CSRNeighborhoods.from_edges(USER, ITEM, NU, NI), 1, NU, NI, walks=3000))
    for got in walks.values():
        assert max(abs(got.get(k, 0) - local.get(k, 0)) for k in set(got) | set(local)) < 0.06
    them = set(users.tolist())
    assert pairs["servers"] == pairs["local first"] == sorted((u, i) for u, i in zip(USER.tolist(), ITEM.tolist())
                                                              if u in them)
    for small, full in backends.values():
        _check_against_the_local_csr(users, items, small, full)


def _walk_weights(sampler) -> dict:
    """{(src, dst): src's share of dst's visits} of the random-walk block into every node, every visited
    node kept."""
    nodes = np.arange(NU + NI)
    block, src_nodes = sampler.node_block(nodes, fanout=-1)
    total = torch.zeros(block.num_dst, dtype=torch.float64).index_add_(0, block.dst, block.weight.double())
    share = (block.weight.double() / total[block.dst]).tolist()
    return {(int(src_nodes[s]), int(d)): w for s, d, w in zip(block.src.tolist(), block.dst.tolist(), share)}


def _check_against_the_local_csr(users, items, small, full):

    # the DistGraph has no reverse social type: users hear their followers only
    csr = CSRNeighborhoods.from_edges(USER, ITEM, NU, NI, social=(FOLLOWER, FOLLOWEE)).csr
    local = NeighborSampler(CSRNeighborhoods({k: v for k, v in csr.items() if k != "followed_by"}, NU, NI),
                            [-1, -1], NU, NI).sample(users, items)
    for layer in range(2):
        assert Counter(message_edges(full, layer)) == Counter(message_edges(local, layer))
        assert sorted(full.input_nodes.tolist()) == sorted(local.input_nodes.tolist())
    deg = dict(zip(local.input_nodes.tolist(), local.blocks[0].deg.tolist()))
    assert dict(zip(full.input_nodes.tolist(), full.blocks[0].deg.tolist())) == deg
    all_edges = Counter(message_edges(local, 0))
    for layer, fanout in enumerate([2, 1]):
        edges = message_edges(small, layer)
        assert not Counter(edges) - all_edges
        assert all(n <= fanout for n in Counter((d, s < NU, t) for s, d, t in edges).values())
    out = small.output_nodes.numpy()
    assert np.array_equal(out[small.users.numpy()], users) and np.array_equal(out[small.pos_items.numpy()], items + NU)
    assert small.blocks[0].num_dst == small.blocks[1].num_src
