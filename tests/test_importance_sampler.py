"""FastGCN's layer-wise importance sampling (samplers/importance.py) on the toy graph of the neighbour
sampler's tests: the importance distribution, the blocks' weights, and an unbiased layer."""
from collections import Counter

import numpy as np
import torch

from gnnrec.model.blocks import full_graph_blocks
from gnnrec.model.models import LightGCN
from gnnrec.samplers.importance import NodeSampler, importance
from gnnrec.samplers.neighborhoods import CSRNeighborhoods

from test_neighbor_sampler import FOLLOWEE, FOLLOWER, ITEM, NI, NU, USER, batch_pairs, full_edges, message_edges


def toy_graph():
    return CSRNeighborhoods.from_edges(USER, ITEM, NU, NI, social=(FOLLOWER, FOLLOWEE))


def test_importance_is_the_squared_column_norm_of_the_normalized_adjacency():
    """On the interaction graph (no parallel edges) q is the squared column norm of D^-1/2 A D^-1/2; with
    the social edges (a mutual follow is two parallel edges each way) the sum of 1/(d_u d_v) over v's edges."""
    src, dst, _ = full_edges()
    social = np.zeros(len(src), bool)
    social[2 * len(USER):] = True
    for graph, keep in ((CSRNeighborhoods.from_edges(USER, ITEM, NU, NI), ~social), (toy_graph(), social | ~social)):
        s, d = src[keep], dst[keep]
        a = np.zeros((NU + NI, NU + NI))
        np.add.at(a, (d, s), 1.0)  # row = receiver
        degree = a.sum(1)
        per_edge = np.bincount(s, weights=1 / (degree[s] * degree[d]), minlength=NU + NI)
        assert np.allclose(importance(graph, NU, NI, chunk=5), per_edge / per_edge.sum())
        if not social[keep].any():
            norm = a / np.sqrt(np.outer(degree, degree).clip(min=1e-12)) * (np.outer(degree, degree) > 0)
            assert np.allclose(per_edge, (norm ** 2).sum(0))


def test_each_edge_comes_from_a_drawn_node_weighted_by_its_importance_ratio():
    """Every message is a graph edge from a drawn node v into a dst node, weighing c_v / (n q(v)) with c_v a
    whole number of draws; and every graph edge from a node it drew into a dst node is there (less the
    batch's own pairs)."""
    graph = toy_graph()
    q = importance(graph, NU, NI)
    src, dst, etype = full_edges()
    graph_edges = Counter(zip(src.tolist(), dst.tolist(), etype.tolist()))
    n = 7
    sampler = NodeSampler(graph, [n, n], NU, NI, q=q, seed=1)
    for seed in range(4):
        users, items = batch_pairs(4, seed)
        batch = sampler.sample(users, items)
        banned = {(u, i + NU) for u, i in zip(users.tolist(), items.tolist())}
        banned |= {(i, u) for u, i in banned}
        for layer, block in enumerate(batch.blocks):
            edges = message_edges(batch, layer)
            assert not Counter(edges) - graph_edges and not {(s, d) for s, d, _ in edges} & banned
            draws = {}
            for (s, _, _), w in zip(edges, block.weight.tolist()):
                count = w * n * q[s]
                assert abs(count - round(count)) < 1e-4 and 1 <= round(count) <= n
                assert draws.setdefault(s, round(count)) == round(count)  # one ratio per drawn node
            assert sum(draws.values()) <= n
            nodes = batch.input_nodes.numpy()
            receivers = set(nodes[: block.num_dst].tolist())
            reached = Counter((s, d, t) for s, d, t in zip(src.tolist(), dst.tolist(), etype.tolist())
                              if s in draws and d in receivers and (s, d) not in banned)
            assert Counter(edges) == reached


def assert_unbiased_layer(sampler, check=lambda batch: None, runs: int = 3000):
    """The mean of `runs` LightGCN layers on a one-layer sampler's blocks, for a batch's seeds, is the
    full-graph layer (within 4 standard errors); `check` sees every batch."""
    torch.manual_seed(0)
    h = torch.randn(NU + NI, 4, dtype=torch.float64)
    src, dst, etype = (torch.from_numpy(a) for a in full_edges())
    model = LightGCN(4, num_layers=1).eval()
    exact = model(h, full_graph_blocks(src, dst, NU + NI, 1, etype=etype))
    users, items = batch_pairs(3)
    draws = []
    for _ in range(runs):
        batch = sampler.sample(users, items)
        check(batch)
        draws.append(model(h[batch.input_nodes], batch.blocks)[torch.argsort(batch.output_nodes)])
    draws = torch.stack(draws)
    seeds = torch.sort(batch.output_nodes).values
    error = (draws.mean(0) - exact[seeds]).abs()
    assert (error <= 4 * draws.std(0) / np.sqrt(len(draws)) + 1e-9).all(), error.max()
    assert (draws.std(0) > 0).any()  # it is a sample, not the whole layer


def test_the_sampled_layer_is_an_unbiased_estimate_of_the_full_one():
    assert_unbiased_layer(NodeSampler(toy_graph(), [6], NU, NI, exclude_batch_edges=False, seed=0))
