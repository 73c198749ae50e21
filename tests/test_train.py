"""The train stage through the real runtime: DistDGL graph servers as Ray actors, Ray Train workers
as DistDGL clients and DDP ranks (gloo on CPU)."""
import contextlib
import json
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from gnnrec import JobFailed, UserError
from gnnrec.launch.cluster import loopback_interface
from gnnrec.launch.config import load_config
from gnnrec.launch.graph_servers import RUNS, GraphServerDied, reclaim
from conftest import partitioned_dataset
from gnnrec.trainer.train import run as train


SHARED_MEMORY = Path("/dev/shm")  # where DistDGL's servers put the graph (Linux)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return partitioned_dataset(tmp_path_factory.mktemp("train"), parts=1)


def _cfg(workdir, *overrides):
    return load_config(None, [f"workdir={workdir}", "train.trainers_per_partition=2", "train.record_visits=true",
                              "train.batch_size=256", "train.lr=0.05", *overrides])


@pytest.mark.parametrize("model, sampler", [("mf", "none"), ("ngcf", "neighbor"), ("gcn", "node"),
                                            ("graphsage", "cluster")])  # saint: node's importance, cluster's filter
def test_two_trainers_visit_every_edge_once_and_stay_in_sync(local_ray, workdir, model, sampler):
    layers = "train.layers=0" if sampler == "none" else "train.layers=2"
    inputs = "train.inputs=id+features" if model == "ngcf" else "train.inputs=id"  # NGCF: the item projection too
    cfg = _cfg(workdir, f"train.model={model}", f"train.sampler={sampler}", layers, inputs,
               "train.fanouts=[]" if sampler == "none" else "train.fanouts=[5, 5]", "train.epochs=3",
               "train.node_sampling.nodes=300", "train.validate_split=none")
    summary = train(cfg)
    out = workdir / "train"
    num_train = pq.read_metadata(workdir / "dataset" / "edges" / "train.parquet").num_rows
    assert summary["trainers"] == 2 and summary["edges_per_epoch"] == num_train
    assert 100 < summary["peak_rss_mb_per_trainer"] < 24_000  # a trainer process's own peak, in MB
    for epoch in range(3):
        visited = np.concatenate([np.load(out / "visits" / f"rank{r}_epoch{epoch}.npy") for r in range(2)])
        assert len(visited) == num_train and np.array_equal(np.sort(visited), np.arange(num_train))
    ranks = [json.loads((out / "ranks" / f"rank{r}.json").read_text()) for r in range(2)]
    if model != "mf":  # dense weights (NGCF: the feature projection's among them) (MF has none: its ID rows live in the servers)
        assert ranks[0]["param_checksum"] != 0 and ranks[0]["param_checksum"] == ranks[1]["param_checksum"]
    assert ranks[0]["steps_per_epoch"] == ranks[1]["steps_per_epoch"]  # the sparse optimizer is a collective
    assert all(r["losses"][-1] < r["losses"][0] for r in ranks)  # it learns
    assert (out / "model" / "state.json").exists() and (out / "config.yaml").exists()


def test_init_from_a_previous_model_keeps_its_rows_on_a_grown_dataset(local_ray, workdir):
    """Incremental training: a log with new users and items, ingested on the first dataset (ingest.base)
    and partitioned anew, trains from the first model (train.init_from): every old user and item starts
    at its old row (a step of lr 1e-9 leaves it there), a new user at its old items' mean, a new user or
    item with no old neighbour fresh; the dense weights carry over. A dataset that renumbered the old IDs is
    refused, naming train.init_from."""
    from gnnrec.data.ingest import run as ingest
    from gnnrec.partition.stage import run as partition
    from gnnrec.inference.trained import TrainOutput
    from gnnrec.trainer.checkpoint import load_tables

    one_step = ["train.model=gcn", "train.layers=2", "train.fanouts=[5, 5]", "train.epochs=1",
                "train.max_steps_per_epoch=1", "train.validate_split=none"]
    train(_cfg(workdir, *one_step, "train.out={workdir}/t0"))
    log = pq.read_table(workdir / "synth" / "interactions").select(["user_id", "item_id", "timestamp"])
    grown = log.to_pydict()
    grown["user_id"] += [-1, -2, -2]  # new users and items (negative: they sort before every old ID), later
    grown["item_id"] += [-5, 0, -6]
    grown["timestamp"] += [max(grown["timestamp"]) + 1] * 3
    (workdir / "grown").mkdir()
    pq.write_table(pa.table(grown, schema=log.schema), workdir / "grown" / "log.parquet")
    for name, base in (("d1", "{workdir}/dataset"), ("renumbered", "null")):
        cfg = _cfg(workdir, "ingest.interactions.path={workdir}/grown", f"ingest.base={base}",
                   f"ingest.out={{workdir}}/{name}", f"partition.dataset={{workdir}}/{name}",
                   f"partition.out={{workdir}}/p-{name}")
        ingest(cfg)
        partition(cfg)
    cfg = _cfg(workdir, *one_step, "train.init_from={workdir}/t0", "train.lr=1e-9", "train.out={workdir}/t1",
               "partition.dataset={workdir}/d1", "train.partitions={workdir}/p-d1", "train.replay=0.5",
               "train.max_steps_per_epoch=null")
    train(cfg)
    # train.replay=0.5: the epoch visited every new edge and half the old ones, each once
    visited = np.concatenate([np.load(workdir / "t1" / "visits" / f"rank{r}_epoch0.npy") for r in range(2)])
    times = pq.read_table(workdir / "d1" / "edges" / "train.parquet")["timestamp"].to_numpy()
    newer = int((times > pq.read_table(workdir / "dataset" / "edges" / "train.parquet")["timestamp"].to_numpy().max()).sum())
    assert len(np.unique(visited)) == len(visited) and abs(len(visited) - newer - (len(times) - newer) / 2) <= 1
    old, new = TrainOutput(workdir / "t0"), TrainOutput(workdir / "t1")
    old_tables, new_tables = load_tables(old.model_dir), load_tables(new.model_dir)
    for node_type in ("user", "item"):
        old_ids = old.partitions.partition_ids(node_type)
        new_ids = new.partitions.partition_ids(node_type)
        assert len(new_ids) == len(old_ids) + 2  # -1, -2 and -5, -6, numbered after the old ones
        kept = new_tables[node_type][new_ids[:len(old_ids)]]
        assert torch.allclose(kept, old_tables[node_type][old_ids], atol=1e-6)
    item_zero = old_tables["item"][old.partitions.partition_ids("item")[old.dataset.raw_ids("item").to_pylist().index(0)]]
    new_users = new_tables["user"][new.partitions.partition_ids("user")[-2:]]  # -2 (items 0, -6), then -1 (item -5)
    assert torch.allclose(new_users[0], item_zero, atol=1e-6) and not torch.allclose(new_users[1], item_zero, atol=1e-3)
    new_items = new_tables["item"][new.partitions.partition_ids("item")[-2:]]
    assert not torch.allclose(new_items, torch.zeros(2, 32)) and not torch.allclose(new_items[0], new_items[1])
    old_dense = torch.load(old.model_dir / "dense.pt", weights_only=True)["model"]
    new_dense = torch.load(new.model_dir / "dense.pt", weights_only=True)["model"]
    assert all(torch.allclose(old_dense[k], new_dense[k], atol=1e-6) for k in old_dense)
    with pytest.raises(UserError, match=r"train.init_from=\{workdir\}/t0: the users of its dataset .* do not keep"):
        train(_cfg(workdir, *one_step, "train.init_from={workdir}/t0", "partition.dataset={workdir}/renumbered",
                   "train.partitions={workdir}/p-renumbered"))


def test_replay_keeps_every_new_edge_and_a_share_of_the_old():
    from gnnrec.trainer.recipe import _replayed
    older = np.arange(100) % 4 != 0  # 25 new, 75 old
    for seed in range(3):
        visit = _replayed(older, 0.2, np.random.default_rng(seed))
        assert set(np.flatnonzero(~older)) <= set(visit) and np.count_nonzero(older[visit]) == 15
        assert len(np.unique(visit)) == len(visit) == 40


def test_validation_early_stopping_and_resume(local_ray, workdir):
    """LightGCN validates every epoch (layer-wise inference through the servers); the output holds the
    best epoch's checkpoint, curves.png; a resumed run continues the step count where it stopped (its
    epoch cut at train.max_steps_per_epoch)."""
    cfg = _cfg(workdir, "train.model=lightgcn", "train.layers=2", "train.fanouts=[5, 5]", "train.epochs=2",
               "train.out={workdir}/first", "train.tensorboard=true")
    first = train(cfg)
    history = [json.loads(line) for line in (workdir / "first" / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in history] == [0, 1] and all(0 < m["recall@20"] <= 1 for m in history)
    assert history[1]["recall@20"] > history[0]["recall@20"]  # it learns, as validation sees it
    assert (workdir / "first" / "curves.png").stat().st_size > 1000
    board = EventAccumulator(str(workdir / "first" / "tensorboard"))  # train.tensorboard: the same numbers
    board.Reload()
    expected = {"loss": [m["loss"] for m in history], "ndcg@20": [m["ndcg@20"] for m in history],
                "phases/forward": [m["phases"]["forward"] for m in history]}
    for tag, values in expected.items():
        assert [(e.step, e.value) for e in board.Scalars(tag)] == [(1, pytest.approx(values[0], rel=1e-6)),
                                                                    (2, pytest.approx(values[1], rel=1e-6))]
    again = train(_cfg(workdir, "train.model=lightgcn", "train.layers=2", "train.fanouts=[5, 5]",
                       "train.epochs=3", "train.resume=true", "train.validate_users=20", "train.max_steps_per_epoch=2",
                       "train.out={workdir}/resumed"))
    per_epoch = first["steps"] // 2
    assert per_epoch > 2 and again["steps"] == 2 * per_epoch + 2 and again["epochs"] == 3
    ranks = [json.loads((workdir / "resumed" / "ranks" / f"rank{r}.json").read_text()) for r in range(2)]
    assert all(r["steps_run"] == 2 for r in ranks)  # only the third epoch ran, and only 2 of its batches
    visited = len(np.load(workdir / "resumed" / "visits" / "rank0_epoch2.npy"))
    assert visited == pytest.approx(2 * ranks[0]["edges_per_epoch"] / per_epoch, abs=2)
    history = [json.loads(line) for line in (workdir / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert len(history) == 3
    assert history[1]["validated_users"] > 20 and history[2]["validated_users"] == 20  # a sample of 20 users


def test_a_fresh_run_keeps_the_previous_checkpoints_until_it_has_its_own(local_ray, workdir):
    mf = ("train.model=mf", "train.sampler=none", "train.layers=0", "train.fanouts=[]", "train.validate_split=none",
          "train.max_failures=0", "train.out={workdir}/fresh")
    train(_cfg(workdir, *mf, "train.epochs=1"))
    checkpoints = workdir / "checkpoints"
    before = (checkpoints / "latest").read_text()
    with pytest.raises(UserError, match="do not fit .*train.dim=8"):  # refused before any worker starts
        train(_cfg(workdir, *mf, "train.epochs=2", "train.resume=true", "train.dim=8"))
    with pytest.raises(JobFailed, match="did not start within"):  # fails before its first checkpoint
        train(_cfg(workdir, *mf, "train.epochs=1", "launch.start_timeout_s=0.01"))
    assert (checkpoints / "latest").read_text() == before and (checkpoints / before).is_dir()
    assert not (workdir / "checkpoints.previous").exists()


def test_a_diverging_run_stops_in_one_line_and_writes_no_model(local_ray, workdir):
    """Before, train.lr=1e30 ended with exit 0, loss nan and a model of NaN as the output."""
    with pytest.raises(UserError, match=r"^training diverged: the loss is (nan|inf) at epoch 1, step \d+; lower "
                                        r"train.lr \(now 1e\+30\)"):
        train(_cfg(workdir, "train.model=lightgcn", "train.lr=1e30", "train.epochs=2", "train.validate_split=none",
                   "train.out={workdir}/diverged", "train.checkpoints={workdir}/diverged-checkpoints"))
    assert not (workdir / "diverged").exists()
    assert not list((workdir / "diverged-checkpoints").glob("step-*"))


def test_pinsage_trains_on_random_walk_blocks_through_the_cli(local_ray, workdir):
    """`gnnrec train train.model=pinsage` trains on random-walk blocks (pinsage's default sampler);
    validation (layer-wise, through the servers) and `gnnrec evaluate` (the whole graph in memory) infer
    over random-walk blocks too, so they agree. (PinSageConv's weights: tests/test_random_walk.py; two
    epochs of PinSage on this data land near popularity's recall, so beating it is not asserted.)"""
    from gnnrec.launch import cli
    assert cli.main(["train", f"workdir={workdir}", "train.model=pinsage", "train.epochs=2", "train.batch_size=256",
                     "train.lr=0.05", "train.out={workdir}/pinsage",
                     "train.checkpoints={workdir}/checkpoints-pinsage"]) == 0
    assert load_config(workdir / "pinsage" / "config.yaml").train.sampler == "random_walk"
    history = [json.loads(line) for line in (workdir / "pinsage" / "metrics.jsonl").read_text().splitlines()]
    assert history[1]["recall@20"] > history[0]["recall@20"] > 0
    assert cli.main(["evaluate", f"workdir={workdir}", "evaluate.checkpoint={workdir}/pinsage", "evaluate.split=val",
                     "evaluate.out={workdir}/pinsage-evaluate"]) == 0
    results = json.loads((workdir / "pinsage-evaluate" / "metrics.json").read_text())["results"]
    assert abs(results["pinsage"]["recall@20"] - history[1]["recall@20"]) < 0.03


def test_killed_trainer_restarts_from_the_last_checkpoint(local_ray, workdir):
    """SIGKILL of a trainer mid-epoch: servers and trainers restart from the last checkpoint and the
    job ends with the same number of steps as an uninterrupted run."""
    cfg = _cfg(workdir, "train.model=mf", "train.sampler=none", "train.layers=0", "train.fanouts=[]",
               "train.epochs=8", "train.checkpoint_every=4", "train.validate_split=none",
               "train.out={workdir}/restarted")
    latest = workdir / "checkpoints" / "latest"
    killed = _kill_once(workdir / "restarted", "trainers", ready=lambda tmp: latest.exists())
    summary = train(cfg)
    assert killed and summary["restarts"] == 1
    ranks = [json.loads((workdir / "restarted" / "ranks" / f"rank{r}.json").read_text()) for r in range(2)]
    uninterrupted = 8 * ranks[0]["steps_per_epoch"]
    assert summary["steps"] == uninterrupted == ranks[0]["global_step"]
    assert 0 < ranks[0]["steps_run"] < uninterrupted  # the last attempt continued, it did not start over
    history = (workdir / "restarted" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in history] == list(range(8))


# 200 epochs (about a minute): long enough to be killed after its first epoch, short enough that a
# missed kill fails the test in minutes instead of training for hours
KILLED = ("train.model=mf", "train.sampler=none", "train.layers=0", "train.fanouts=[]", "train.epochs=200",
          "train.max_failures=0", "train.validate_split=none", "train.out={workdir}/killed")


def test_killed_trainer_fails_the_job_within_a_minute(local_ray, workdir):
    killed = _kill_once(workdir / "killed", "trainers", ready=_trained_an_epoch)
    with pytest.raises(JobFailed, match=r"trainer rank \d (\(pid \d+ on [\d.]+\) died|stopped)") as failure:
        train(_cfg(workdir, *KILLED))
    (killed_at, pid), = killed
    assert time.time() - killed_at < 60
    assert f"pid {pid} " in str(failure.value) or "stopped" in str(failure.value)
    assert not (workdir / "killed").exists()


def test_killed_graph_server_fails_the_job_within_a_minute(local_ray, workdir):
    killed = _kill_once(workdir / "killed", "graph_servers", ready=_trained_an_epoch)
    with pytest.raises(GraphServerDied, match="partition 0"):
        train(_cfg(workdir, *KILLED))
    (killed_at, pid), = killed
    assert time.time() - killed_at < 60
    assert not (workdir / "killed").exists()  # nothing that looks complete
    # what the killed server left on the node is reclaimed by the next server to start here
    run, = (r for r in RUNS.glob("*") if (r / "pid").read_text() == str(pid))
    graph = run.name.rsplit("-", 1)[0]
    assert list(SHARED_MEMORY.glob(f"*{graph}*"))
    reclaim(RUNS)
    assert not run.exists() and not list(SHARED_MEMORY.glob(f"*{graph}*"))


def test_frozen_graph_server_fails_the_job_within_the_health_timeout(local_ray, workdir):
    """SIGSTOP (a stuck process, a paused VM): the trainers would wait on it forever while their
    heartbeats go on; the server's silence fails the job."""
    frozen = _kill_once(workdir / "killed", "graph_servers", ready=_trained_an_epoch, sig=signal.SIGSTOP)
    with pytest.raises(GraphServerDied, match="partition 0 .* stopped answering"):
        train(_cfg(workdir, *KILLED, "launch.health_timeout_s=20"))
    (frozen_at, pid), = frozen
    assert time.time() - frozen_at < 60
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)  # the job has killed it already, unless it failed to


def test_frozen_trainer_fails_the_job_within_the_health_timeout(local_ray, workdir):
    """SIGSTOP of a trainer stops every thread of it, its heartbeat's too."""
    frozen = _kill_once(workdir / "killed", "trainers", ready=_trained_an_epoch, sig=signal.SIGSTOP)
    with pytest.raises(JobFailed, match=r"trainer rank 0 stopped \(no heartbeat for 5 s\)"):
        train(_cfg(workdir, *KILLED, "launch.health_timeout_s=20"))
    (frozen_at, pid), = frozen
    assert time.time() - frozen_at < 60
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def test_a_silent_worker_killed_for_memory_is_named_so(local_ray):
    """Ray's memory monitor kills the job's newest tasks together, TorchTrainer.fit's task among them:
    what `ray.get` of that task raises then names the cause in the job's failure."""
    import ray
    from gnnrec.launch.job import Failure, _out_of_memory

    def oom():
        raise ray.exceptions.OutOfMemoryError("Task was killed due to the node running low on memory.")
    assert "the machine ran out of memory" in _out_of_memory(ray.remote(oom).remote())
    assert _out_of_memory(ray.remote(lambda: None).remote()) == ""
    assert _out_of_memory(ray.remote(lambda: Failure("trainer rank 0 died", True)).remote()) == ""
    assert "ran out of memory" in _out_of_memory(ray.remote(lambda: Failure("... out of memory ...", True)).remote())


def test_a_stuck_trainer_fails_the_job_within_the_health_timeout(local_ray, workdir, monkeypatch):
    """A trainer whose training thread blocks (a deadlock) while its process and heartbeat thread go
    on: its progress stops, and that fails the job (without the check, the job would never end).
    Meanwhile the job's sockets are listed: in embedded mode none of ours listens beyond loopback."""
    monkeypatch.setenv("GNNREC_FAIL_POINTS", "train.step=hang@3")
    seen = {}
    watcher = threading.Thread(target=_watch_listening, args=(workdir / "killed", seen), daemon=True)
    watcher.start()
    started = time.time()
    with pytest.raises(JobFailed, match=r"trainer rank \d is stuck at epoch 1, step 3 of \d+ \(alive, but no progress "
                                        r"for 20 s\)"):
        train(_cfg(workdir, *KILLED, "launch.health_timeout_s=20"))
    assert time.time() - started < 120
    assert not (workdir / "killed").exists()
    # DistDGL's servers and clients and gloo's pairs on 127.0.0.1; beyond it only the wildcard ports of
    # Ray's own gRPC server in every process and torch's TCPStore in rank 0 (README: not ours to bind)
    watcher.join(timeout=10)
    assert sorted(seen) == [("graph_servers", 0), ("trainers", 0), ("trainers", 1)]
    for (role, rank), (sockets, env) in seen.items():
        assert any(ip == "127.0.0.1" for ip, _ in sockets) and env.get("GLOO_SOCKET_IFNAME") == loopback_interface()
        beyond = [ip for ip, _ in sockets if ip != "127.0.0.1"]
        assert set(beyond) <= {"::", "0.0.0.0"} and len(beyond) <= (2 if role == "trainers" and rank == 0 else 1), \
            (role, rank, sockets)


def _watch_listening(out, seen: dict) -> None:
    """Until the job that writes `out` ends (its processes.json, beside `out`, gone): for each process it
    reports, seen[(role, rank or partition)] = ({(ip, port) it was seen listening on}, its environment)."""
    deadline = time.time() + 600
    while time.time() < deadline and not (seen and not list(out.parent.glob(f".{out.name}.tmp-*/processes.json"))):
        for report in out.parent.glob(f".{out.name}.tmp-*/processes.json"):
            with contextlib.suppress(OSError, ValueError, psutil.Error):  # the job may end meanwhile
                for role, processes in json.loads(report.read_text()).items():
                    for p in processes:
                        proc = psutil.Process(p["pid"])
                        sockets, _ = seen.setdefault((role, p.get("rank", p.get("partition"))), (set(), proc.environ()))
                        sockets.update((c.laddr.ip, c.laddr.port) for c in proc.net_connections("inet")
                                       if c.status == psutil.CONN_LISTEN)
        time.sleep(0.2)


def test_an_exception_of_the_code_fails_the_job_without_a_restart(local_ray, workdir, monkeypatch, capsys):
    monkeypatch.setenv("GNNREC_FAIL_POINTS", "train.step=raise@2")
    with pytest.raises(JobFailed, match=r"trainer rank \d raised FailPointError: fail point train.step .*not restarted") \
            as failure:
        train(_cfg(workdir, *KILLED, "train.max_failures=2"))
    assert not failure.value.restartable and "restarting" not in capsys.readouterr().out


def test_a_mistyped_fail_point_is_refused_before_the_job_starts(local_ray, workdir, monkeypatch):
    monkeypatch.setenv("GNNREC_FAIL_POINTS", "train.step=explode")
    with pytest.raises(UserError, match="GNNREC_FAIL_POINTS=train.step=explode: 'train.step=explode' is not"):
        train(_cfg(workdir, *KILLED))


def _trained_an_epoch(tmp):
    metrics = tmp / "metrics.jsonl"
    return metrics.exists() and metrics.read_text().strip() != ""


def _kill_once(out, role: str, ready, sig=signal.SIGKILL) -> list:
    """SIGKILL (or `sig`), as an operator would, this job's first process of `role` ("trainers" or "graph_servers")
    by the pid the job reports in the processes.json of its temporary output (`out`'s sibling), as soon
    as `ready(that directory)` holds; returns a list that receives (the kill time, the pid)."""
    killed = []

    def kill():
        deadline = time.time() + 600  # set-up can take minutes on a loaded machine
        while time.time() < deadline and not killed:
            for report in out.parent.glob(f".{out.name}.tmp-*/processes.json"):
                with contextlib.suppress(OSError, ValueError):  # the job may end or rewrite it meanwhile
                    pid = json.loads(report.read_text())[role][0]["pid"]
                    if ready(report.parent):
                        os.kill(pid, sig)
                        killed.append((time.time(), pid))
                        return
            time.sleep(0.2)

    threading.Thread(target=kill, daemon=True).start()
    return killed
