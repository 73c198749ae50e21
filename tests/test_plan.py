"""The job plan's memory estimate: what a machine must hold, and refusal when Ray offers less."""
import json

import pytest

from gnnrec import UserError
from gnnrec.data.formats import Partitions
from gnnrec.launch import cluster

GB = 2**30


@pytest.fixture
def one_part(tmp_path):
    (tmp_path / "gnnrec.json").write_text(json.dumps({"num_parts": 1, "num_nodes": 70_000}))
    (tmp_path / "partition_stats.json").write_text(json.dumps({"per_part": [{"nodes": 70_000, "edges": 1_600_000}]}))
    return Partitions(tmp_path)


def machine(monkeypatch, memory_gb):
    monkeypatch.setattr(cluster.ray, "nodes", lambda: [{"Alive": True, "Resources": {"memory": memory_gb * GB}}])


def test_estimate_counts_servers_trainers_and_the_batch(one_part, monkeypatch):
    machine(monkeypatch, 16)
    small = cluster.plan(one_part, 1, 64, False)["est_memory_per_machine_gb"]
    # graph (1.6M edges x 64 B) + ID rows with Adam moments (70k x 64 x 12 B) + Ray + a trainer
    want = (1_600_000 * 64 + 70_000 * (48 + 64 * 12)) / GB + 2 + 0.7
    assert small == pytest.approx(want, abs=0.01)
    # Gowalla's batch (65,536 edges x 18 rows): the trainer's peak measured 3.3 GB there
    batch = 65_536 * 18 * 64 * 36 / GB
    gowalla = cluster.plan(one_part, 1, 64, False, batch_rows=65_536 * 18)["est_memory_per_machine_gb"]
    assert gowalla - small == pytest.approx(batch, abs=0.01)
    two = cluster.plan(one_part, 2, 64, False, batch_rows=65_536 * 18)["est_memory_per_machine_gb"]
    assert two - gowalla == pytest.approx(0.7 + batch, abs=0.01)  # one more trainer, the same servers


def test_refuses_a_job_that_does_not_fit(one_part, monkeypatch):
    machine(monkeypatch, 4)
    cluster.plan(one_part, 1, 64, False, batch_rows=8192 * 3)
    with pytest.raises(UserError, match="needs ~5.4 GB per machine but Ray offers 4.0 GB.*train.batch_size"):
        cluster.plan(one_part, 1, 64, False, batch_rows=65_536 * 18)
