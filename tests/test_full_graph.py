"""Whole-graph training (samplers/full_graph.py): the block is the graph's normalized adjacency, forward
and backward, through one shared matrix; a batch's negatives are never a training item; one partition
only; and a job trains on it with 2 trainers, validates in one pass and stops at train.max_minutes."""
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from gnnrec import UserError
from gnnrec.arrays import group_by
from gnnrec.launch.sizing import machine_bytes
from gnnrec.model.blocks import full_graph_blocks, graph_edges
from gnnrec.model.models import LightGCN
from gnnrec.samplers.full_graph import FullGraphSampler, whole_graph
from gnnrec.samplers.negatives import UniformNegatives

NU, NI = 30, 12


def _pairs(seed=0):
    rng = np.random.default_rng(seed)
    key = np.unique(rng.integers(0, NU * NI, 150))
    return key // NI, key % NI


def _csr(user, item):
    """dgl_adapter.local_in_csr's shape for one partition: {relation: (indptr, src ids, edge ids)}, own."""
    eids = np.arange(len(user))
    return ({"interacted_by": (*group_by(user, item, NU), eids), "interacts": (*group_by(item, user, NI), eids)},
            {"user": (0, NU), "item": (0, NI)})


def test_the_whole_graph_block_is_lightgcn_over_the_graph_forward_and_backward():
    user, item = _pairs()
    csr, _ = _csr(user, item)
    block = whole_graph(csr["interacted_by"][:2], csr["interacts"][:2], NU)
    assert block._matrices["src"] is block._matrices["dst"]  # one matrix for A and A^T
    expected_blocks = full_graph_blocks(*graph_edges(torch.from_numpy(user), torch.from_numpy(item), NU)[:2],
                                        NU + NI, 2)
    model, h0 = LightGCN(8, 2), torch.randn(NU + NI, 8, dtype=torch.float64)
    a, b = h0.clone().requires_grad_(), h0.clone().requires_grad_()
    out, expected = model(a.float(), [block] * 2), model(b.float(), expected_blocks)
    assert torch.allclose(out, expected, atol=1e-6)
    weights = torch.randn_like(out)
    (out * weights).sum().backward()
    (expected * weights).sum().backward()
    assert torch.allclose(a.grad, b.grad, atol=1e-6)
    assert block.to("cpu") is block  # no copy, and the matrix it built stays with it


def test_negatives_are_never_training_items_and_the_batch_covers_every_node():
    user, item = _pairs()
    sampler = FullGraphSampler(*_csr(user, item), NU, NI, UniformNegatives(NI), num_negatives=8, layers=2)
    batch = sampler.sample(user, item)
    assert torch.equal(batch.input_nodes, torch.arange(NU + NI)) and len(batch.blocks) == 2
    assert torch.equal(batch.users, torch.from_numpy(user))
    assert torch.equal(batch.pos_items - NU, torch.from_numpy(item))
    training = set(zip(user.tolist(), item.tolist()))
    negatives = (batch.neg_items - NU).tolist()
    assert not any((u, j) in training for u, row in zip(user.tolist(), negatives) for j in row)
    loose = FullGraphSampler(*_csr(user, item), NU, NI, UniformNegatives(NI), 8, 2, exclude_positives=False)
    loose_negatives = (loose.sample(user, item).neg_items - NU).tolist()
    assert any((u, j) in training for u, row in zip(user.tolist(), loose_negatives) for j in row)


def test_a_partition_without_every_node_is_refused():
    csr, _ = _csr(*_pairs())
    with pytest.raises(UserError, match="partition.parts=1"):
        FullGraphSampler(csr, {"user": (0, NU // 2), "item": (0, NI)}, NU, NI, UniformNegatives(NI), 1, 2)


def test_sizing_counts_every_node_of_the_whole_graph_per_trainer():
    sampled = machine_bytes(2 * 60_000_000, 7_000_000, 64, 8192 * 6, 1)
    whole = machine_bytes(2 * 60_000_000, 7_000_000, 64, 8192 * 2, 1, full_graph=True)
    assert whole - sampled > 7_000_000 * 64 * 20


def test_full_graph_job_visits_every_edge_validates_and_stops_at_max_minutes(local_ray, tmp_path):
    from conftest import partitioned_dataset
    from test_train import _cfg
    from gnnrec.trainer.train import run as train
    workdir = partitioned_dataset(tmp_path, parts=1)
    summary = train(_cfg(workdir, "train.model=lightgcn", "train.layers=2", "train.sampler=full_graph",
                         "train.num_negatives=4", "train.epochs=5", "train.max_minutes=0.0001"))
    out = workdir / "train"
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert summary["epochs"] == 1 and len(history) == 1  # the first epoch ended past max_minutes
    assert 0 < history[0]["recall@20"] <= 1 and history[0]["validated_users"] > 0
    num_train = pq.read_metadata(workdir / "dataset" / "edges" / "train.parquet").num_rows
    visited = np.concatenate([np.load(out / "visits" / f"rank{r}_epoch0.npy") for r in range(2)])
    assert np.array_equal(np.sort(visited), np.arange(num_train))  # each training edge once, across 2 trainers
    ranks = [json.loads((out / "ranks" / f"rank{r}.json").read_text()) for r in range(2)]
    assert ranks[0]["steps_per_epoch"] == ranks[1]["steps_per_epoch"] and ranks[0]["losses"][0] > 0
    with pytest.raises(UserError, match="full_graph.*propagates the interactions only"):
        train(_cfg(workdir, "train.model=socialgcn", "train.sampler=full_graph"))
