"""Subgraph batches (samplers/subgraph.py) on the toy graph of the neighbour sampler's tests. Cluster-GCN:
the blocks are the subgraph induced by the batch's users' clusters and the seeds; an epoch visits the
pairs cluster by cluster, each once. GraphSAINT: inclusion probabilities as defined, and an unbiased layer."""
from collections import Counter

import numpy as np
import torch

from gnnrec.model.blocks import full_graph_blocks
from gnnrec.model.models import LightGCN
from gnnrec.samplers.importance import importance
from gnnrec.samplers.negatives import NEGATIVES
from gnnrec.launch.config import load_config
from gnnrec.samplers.neighbor import NeighborSampler
from gnnrec.samplers.subgraph import ClusterSampler, SaintSampler, epoch_order
from gnnrec.trainer.batches import block_sampler

from test_importance_sampler import assert_unbiased_layer, toy_graph
from test_neighbor_sampler import NI, NU, batch_pairs, full_edges, message_edges

CLUSTERS = np.arange(NU + NI) % 4  # users and items spread over 4 clusters


def test_blocks_are_the_subgraph_induced_by_the_batch_clusters_and_seeds():
    graph = toy_graph()
    src, dst, etype = full_edges()
    sampler = ClusterSampler(graph, 2, NU, NI, CLUSTERS, negatives=NEGATIVES["uniform"](NI), num_negatives=2)
    for seed in range(6):
        users, items = batch_pairs(3, seed)
        batch = sampler.sample(users, items)
        seeds = set(batch.input_nodes[:batch.blocks[-1].num_dst].tolist())
        inside = {v for v in range(NU + NI) if CLUSTERS[v] in set(CLUSTERS[users].tolist())} | seeds
        banned = {(u, i + NU) for u, i in zip(users.tolist(), items.tolist())}
        banned |= {(i, u) for u, i in banned}
        for layer, block in enumerate(batch.blocks):
            dst_nodes = set(batch.input_nodes[:block.num_dst].tolist())
            expected = Counter((s, d, e) for s, d, e in zip(src.tolist(), dst.tolist(), etype.tolist())
                               if d in dst_nodes and s in inside and (s, d) not in banned)
            assert Counter(message_edges(batch, layer)) == expected  # all of S's edges into the layer, no other
            assert dst_nodes <= inside and block.weight is None


def test_an_epoch_visits_each_pair_once_cluster_by_cluster():
    user_clusters = np.random.default_rng(0).integers(0, 7, 500)
    orders = [epoch_order(user_clusters, 7, np.random.default_rng(seed)) for seed in (1, 2)]
    for order in orders:
        assert np.array_equal(np.sort(order), np.arange(500))
        visited = user_clusters[order]
        assert np.count_nonzero(np.diff(visited)) == 6  # one run per cluster
    assert not np.array_equal(orders[0], orders[1])


def test_saint_inclusion_probabilities_are_their_definition():
    """P(v in S) and P(u, v in S) for n draws from q, against their frequencies over 20,000 subgraphs."""
    q = importance(toy_graph(), NU, NI)
    sampler = SaintSampler(toy_graph(), 1, NU, NI, nodes=5, q=q, seed=0)
    hits = np.zeros(NU + NI)
    pair, both = (0, NU + 1), 0
    runs = 20_000
    for _ in range(runs):
        sampler._choose(np.zeros(0, np.int64))
        hits += sampler.drawn
        both += sampler.drawn[pair[0]] and sampler.drawn[pair[1]]
    p = 1 - (1 - q) ** 5
    assert np.allclose(sampler.inclusion(q), p)
    assert (np.abs(hits / runs - p) <= 4 * np.sqrt(p * (1 - p) / runs) + 1e-9).all()
    p_both = p[pair[0]] + p[pair[1]] - (1 - (1 - q[pair[0]] - q[pair[1]]) ** 5)
    assert abs(both / runs - p_both) <= 4 * np.sqrt(p_both * (1 - p_both) / runs)


def test_saint_layer_is_an_unbiased_estimate_of_the_full_one_and_stays_in_the_subgraph():
    """The mean of many GraphSAINT LightGCN layers is the full-graph layer (within its standard error);
    every message comes from a drawn node or a seed."""
    sampler = SaintSampler(toy_graph(), 1, NU, NI, nodes=6, exclude_batch_edges=False, seed=0)

    def inside(batch):
        senders = {s for s, _, _ in message_edges(batch, 0)}
        assert senders <= set(batch.output_nodes.tolist()) | set(np.flatnonzero(sampler.drawn).tolist())
    assert_unbiased_layer(sampler, inside)


def test_saint_outer_layer_is_unbiased_for_every_node_of_the_subgraph():
    """A node of the subgraph that is no seed hears its neighbours weighted by p_v / p_uv: its outer-layer
    output, averaged over the batches it is in, is its full-graph layer (within the standard error)."""
    torch.manual_seed(0)
    h = torch.randn(NU + NI, 4, dtype=torch.float64)
    src, dst, etype = (torch.from_numpy(a) for a in full_edges())
    model = LightGCN(4, num_layers=2).eval()
    exact = model.layer(0, full_graph_blocks(src, dst, NU + NI, 1, etype=etype)[0], h)
    users, items = batch_pairs(2)
    sampler = SaintSampler(toy_graph(), 2, NU, NI, nodes=6, exclude_batch_edges=False, seed=0)
    outputs = {}
    for _ in range(4000):
        batch = sampler.sample(users, items)
        block = batch.blocks[0]
        out = model.layer(0, block, h[batch.input_nodes])
        seeds = set(batch.output_nodes.tolist())
        for row, node in enumerate(batch.input_nodes[:block.num_dst].tolist()):
            if node not in seeds:
                outputs.setdefault(node, []).append(out[row])
    checked = 0
    for node, rows in outputs.items():
        if len(rows) >= 200:
            rows = torch.stack(rows)
            error = (rows.mean(0) - exact[node]).abs()
            assert (error <= 4 * rows.std(0) / np.sqrt(len(rows)) + 1e-9).all(), (node, error.max())
            checked += 1
    assert checked >= 3


def test_the_config_chooses_graphsaint_for_training_and_whole_neighbourhoods_for_inference():
    t = load_config(None, ["train.sampler=saint", "train.saint.nodes=5", "train.layers=2"]).train
    sampler = block_sampler(t, toy_graph(), NU, NI)
    assert isinstance(sampler, SaintSampler) and sampler.nodes == 5 and len(sampler.fanouts) == 2
    exact = block_sampler(t, toy_graph(), NU, NI, inference=True)
    assert type(exact) is NeighborSampler and exact.fanouts == [-1, -1]
