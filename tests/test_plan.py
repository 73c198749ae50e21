"""The job plan's memory estimate: what a machine must hold, and refusal when Ray offers less."""
import json

import pytest

from gnnrec import UserError
from gnnrec.data.formats import Partitions
from gnnrec.launch import cluster

GB = 2**30


def _one_part(path, edges: int) -> Partitions:
    """A partition directory of one part of 70k nodes and `edges` edges (its DGL files empty)."""
    (path / "part0").mkdir()
    files = {kind: f"part0/{kind}.dgl" for kind in ("part_graph", "node_feats", "edge_feats")}
    for name in files.values():
        (path / name).write_bytes(b"")
    meta = {"num_parts": 1, "num_nodes": 70_000, "graph_name": "g", "part-0": files}
    (path / "gnnrec.json").write_text(json.dumps(meta))
    (path / "partition_stats.json").write_text(json.dumps({"per_part": [{"nodes": 70_000, "edges": edges}]}))
    return Partitions(path)


@pytest.fixture
def one_part(tmp_path):
    return _one_part(tmp_path, 1_600_000)


def machine(monkeypatch, memory_gb, cpus=4):
    monkeypatch.setattr(cluster.ray, "nodes", lambda: [{"Alive": True, "Resources": {"memory": memory_gb * GB,
                                                                                     "CPU": cpus}}])


def test_estimate_counts_servers_trainers_and_the_batch(one_part, monkeypatch):
    machine(monkeypatch, 16)
    small = cluster.plan(one_part, 1, 64, False).est_memory_per_machine_gb
    # graph (1.6M edges x 64 B) + ID rows with Adam moments (70k x 64 x 12 B) + Ray + a trainer (and
    # its 24 B per edge)
    want = (1_600_000 * (64 + 24) + 70_000 * (48 + 64 * 12)) / GB + 2 + 0.7
    assert small == pytest.approx(want, abs=0.01)
    # Gowalla's batch (65,536 edges x 18 rows): the trainer's peak measured 3.3 GB there
    batch = 65_536 * 18 * 64 * 36 / GB
    gowalla = cluster.plan(one_part, 1, 64, False, batch_rows=65_536 * 18).est_memory_per_machine_gb
    assert gowalla - small == pytest.approx(batch, abs=0.01)
    two = cluster.plan(one_part, 2, 64, False, batch_rows=65_536 * 18).est_memory_per_machine_gb
    assert two - gowalla == pytest.approx(0.7 + batch, abs=0.01)  # one more trainer (half the edges each)


def test_refuses_a_job_that_does_not_fit(one_part, monkeypatch):
    machine(monkeypatch, 4)
    cluster.plan(one_part, 1, 64, False, batch_rows=8192 * 3)
    with pytest.raises(UserError, match="needs ~5.4 GB per machine but Ray offers 4.0 GB.*train.batch_size"):
        cluster.plan(one_part, 1, 64, False, batch_rows=65_536 * 18)


def test_refuses_a_cluster_with_too_few_cpus_before_starting(one_part, monkeypatch):
    """Before, Ray waited for the CPUs for launch.start_timeout_s, then restarted the job."""
    machine(monkeypatch, 16, cpus=2)
    assert cluster.plan(one_part, 1, 64, False).trainers == 1
    with pytest.raises(UserError, match=r"needs 3 CPUs per Ray node \(a graph server and 2 trainer\(s\)\), a node has "
                                        r"2: raise launch.num_cpus"):
        cluster.plan(one_part, 2, 64, False)


def test_the_embedded_rays_dashboard_agent_serves_no_metrics_without_a_token():
    """Ray's dashboard agent answered /metrics on every interface without Ray's token; embedded, it is off."""
    import psutil
    import ray
    if ray.is_initialized():
        ray.shutdown()
    cluster.start_embedded(2)
    try:
        agents = [p for p in psutil.Process().children(recursive=True) if "DashboardAgent" in " ".join(p.cmdline())]
        ports = {c.laddr.port for p in agents for c in p.net_connections("inet")
                 if c.status == psutil.CONN_LISTEN and c.laddr.ip in ("::", "0.0.0.0")}
        assert len(agents) == 1 and ports
        assert not [port for port in ports if _serves(f"http://127.0.0.1:{port}/metrics")]
    finally:
        ray.shutdown()


def _serves(url: str) -> bool:
    import http.client
    import urllib.request
    try:
        return urllib.request.urlopen(url, timeout=5).status == 200
    except (OSError, http.client.HTTPException):  # refused, unauthorized (HTTPError) or not HTTP at all
        return False


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


def _curve(tmp_path, train_loop_edges_per_s=1000):
    """A bench/scale.py result of one size: 1M rows, 600k training edges, 70k nodes; K=4 parts of 35k nodes."""
    row = {"edges": 1_000_000, "dataset": {"users": 50_000, "items": 20_000, "train_edges": 600_000},
           "stages": {"ingest": {"seconds": 10.0, "peak_gb": 0.5},
                      "partition_k4_random_walk": {"seconds": 20.0, "peak_gb": 1.0, "max_part_nodes": 35_000},
                      "train": {"train_loop_edges_per_s": train_loop_edges_per_s},
                      "infer": {"seconds": 70.0, "peak_gb": 2.0}, "evaluate": {"seconds": 5.0, "peak_gb": 1.0}}}
    topk = {"edges": 1_000_000, "users": 50_000, "items": 20_000,  # exact: 1e8 scores/s; ivf 1,000 users/s
            "paths": {"exact": {"users_ranked": 10_000, "topk_seconds": 2.0, "index": "exact"},
                      "ivf": {"users_ranked": 50_000, "topk_seconds": 50.0, "index": "ivf", "index_recall": 0.97}}}
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "scale.json").write_text(json.dumps([row]))
    (tmp_path / "bench" / "topk_index.json").write_text(json.dumps([topk]))
    return tmp_path / "bench" / "scale.json"


def _plan(curve, *overrides):
    from gnnrec.launch.config import load_config
    from gnnrec.launch.sizing import run as plan_stage
    return plan_stage(load_config(None, [f"plan.curve={curve}", f"plan.topk_curve={curve.with_name('topk_index.json')}",
                                         "train.batch_size=8192", "train.num_negatives=4", "train.dim=64", *overrides]))


def test_plan_of_the_curves_own_size_on_one_machine_agrees_with_the_train_plan_line(tmp_path, monkeypatch):
    """`gnnrec plan` at the size the curve measured, on one machine: the estimate `gnnrec train` prints
    for partitions of that size (600k training edges, both directions; 70k nodes)."""
    plan = _plan(_curve(tmp_path), "plan.edges=1000000", "plan.users=50000", "plan.items=20000", "plan.machines=1")
    machine(monkeypatch, 64)
    train = cluster.plan(_one_part(tmp_path, 1_200_000), 1, 64, False, batch_rows=8192 * 6)
    assert plan["train_est_memory_per_machine_gb"] == train.est_memory_per_machine_gb
    assert plan["train_hours_per_epoch"] == round(600_000 / 1000 / 3600, 2)


def test_plan_picks_the_fewest_machines_that_hold_the_job_and_scales_the_curve(tmp_path):
    from gnnrec.launch import sizing
    curve = _curve(tmp_path)
    plan = _plan(curve, "plan.edges=1000000000", "plan.machine_memory_gb=64")
    k = plan["machines"]
    part_nodes = lambda m: min(70_000_000, -(-140_000_000 // m))  # noqa: E731 - halo 1: twice its 1/K share
    fits = [sizing.machine_bytes(-(-2 * 600_000_000 // m), part_nodes(m), 64, 8192 * 6, 1) <= 64 * GB
            for m in (k - 1, k)]
    assert fits == [False, True] and plan["train_edges"] == 600_000_000
    assert plan["train_hours_per_epoch"] == round(600_000_000 / (k * 1000) / 3600, 2)
    assert plan["ingest_hours"] == round(10.0 * 1000 / 3600, 2) and plan["partition_memory_gb (one machine)"] == 1000
    # top-K of all 50M users: exact at 1e8 scores/s over 20M items; ivf at 1,000 users/s x sqrt(1000) slower
    assert plan["topk_all_users_hours (exact)"] == round(50_000_000 * 20_000_000 / 1e8 / k / 3600, 2)
    assert plan["topk_all_users_hours (ivf)"] == round(50_000_000 / 1000 * 1000 ** 0.5 / k / 3600, 2)
    with pytest.raises(UserError, match="over plan.machine_memory_gb=64: fewer plan.machines"):
        _plan(curve, "plan.edges=1000000000", "plan.machines=1")
    with pytest.raises(UserError, match="plan.curve=.*missing.json: not a bench/scale.py result"):
        _plan(tmp_path / "missing.json")
