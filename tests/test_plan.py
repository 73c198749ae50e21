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


@pytest.mark.parametrize("where", ["launch.address", "RAY_ADDRESS"])
def test_a_dead_ray_address_is_one_line_in_seconds(monkeypatch, where):
    import socket
    import time

    from gnnrec.launch.config import load_config
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{s.getsockname()[1]}"
    if where == "RAY_ADDRESS":
        monkeypatch.setenv("RAY_ADDRESS", dead)
    launch = load_config(None, [f"launch.address={dead}"] if where == "launch.address" else []).launch
    started = time.time()
    with pytest.raises(UserError, match=f"^{where}={dead}: no Ray head answers there"):
        cluster.start_ray(launch)
    assert time.time() - started < 30


def test_an_embedded_ray_that_does_not_start_is_one_line_and_leaves_no_process(monkeypatch):
    """Ray's own start-up failure (its raylet not registered within a hard-coded 30 s on a loaded
    machine), played by an init that starts a process and raises Ray's message."""
    import subprocess
    import sys

    import psutil

    from gnnrec import JobFailed
    from gnnrec.launch.config import load_config
    started = []

    def init_that_times_out(**_):
        started.append(subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"]))
        raise Exception("The current node timed out during startup. This could happen because some of the "
                        "raylet failed to startup or the GCS has become overloaded.")

    monkeypatch.setattr(cluster.ray, "is_initialized", lambda: False)
    monkeypatch.setattr(cluster.ray, "init", init_that_times_out)
    monkeypatch.setattr(cluster.ray, "shutdown", lambda: None)  # not this session's Ray
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with pytest.raises(JobFailed, match=r"^the embedded Ray did not start \(The current node timed out during "
                                        r"startup\..*\); .*launch.num_cpus\)$"):
        cluster.start_ray(load_config().launch)
    assert started[0].wait(timeout=10) != 0 and not psutil.pid_exists(started[0].pid)
