"""Cluster-GCN's batches (samplers/cluster.py) on the toy graph of the neighbour sampler's tests: the
blocks are the subgraph induced by the batch's users' clusters and the seeds; an epoch visits the pairs
cluster by cluster, each once."""
from collections import Counter

import numpy as np

from gnnrec.samplers.cluster import ClusterSampler, epoch_order
from gnnrec.samplers.negatives import NEGATIVES
from gnnrec.samplers.neighborhoods import CSRNeighborhoods

from test_neighbor_sampler import FOLLOWEE, FOLLOWER, ITEM, NI, NU, USER, batch_pairs, full_edges, message_edges

CLUSTERS = np.arange(NU + NI) % 4  # users and items spread over 4 clusters


def test_blocks_are_the_subgraph_induced_by_the_batch_clusters_and_seeds():
    graph = CSRNeighborhoods.from_edges(USER, ITEM, NU, NI, social=(FOLLOWER, FOLLOWEE))
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
        assert sampler.inside.sum() == 0  # the batch's clusters are forgotten after it


def test_an_epoch_visits_each_pair_once_cluster_by_cluster():
    user_clusters = np.random.default_rng(0).integers(0, 7, 500)
    orders = [epoch_order(user_clusters, 7, np.random.default_rng(seed)) for seed in (1, 2)]
    for order in orders:
        assert np.array_equal(np.sort(order), np.arange(500))
        visited = user_clusters[order]
        assert np.count_nonzero(np.diff(visited)) == 6  # one run per cluster
    assert not np.array_equal(orders[0], orders[1])
