"""Refusals of damaged, tampered or hostile state, each in one line: names read from files confined to
their directory, damaged checkpoint files, one job per output, a disk that refuses bytes, a signal."""
import json
import os
import resource
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pytest
import torch

from conftest import edge_cfg, read_split, write_parquet
from gnnrec import UserError, exclusive
from gnnrec.data.formats import Partitions
from gnnrec.launch import cli
from gnnrec.trainer import checkpoint
from gnnrec.trainer.checkpoint import TrainState
from gnnrec.trainer.train import _fresh_checkpoints

OUTSIDE = ["/etc", "../..", "link"]  # an absolute path, a climb out, a symlink that leads out


def _name(directory, how: str) -> str:
    if how == "link":
        (directory / "link").symlink_to("/etc", target_is_directory=True)
    return how


def _checkpoints(tmp_path, steps=(3, 5), dense=None) -> object:
    tables = {"user": torch.randn(7, 4), "item": torch.randn(5, 4)}
    rows = type("RowAdamState", (), {"state": {n: (torch.zeros(len(t)), torch.zeros_like(t), torch.zeros_like(t))
                                               for n, t in tables.items()}})
    for step in steps:
        checkpoint.save(tmp_path, TrainState(global_step=step), tables, rows, dense or checkpoint.DenseState({}), 0, 1)
    return tables, rows


@pytest.mark.parametrize("how", OUTSIDE)
def test_the_latest_pointer_cannot_lead_out_of_its_directory(tmp_path, how):
    _checkpoints(tmp_path)
    (tmp_path / "latest").write_text(_name(tmp_path, how))
    with pytest.raises(UserError, match=f"latest: names '{how}', which is not inside"):
        checkpoint.latest(tmp_path)


@pytest.mark.parametrize("how", OUTSIDE)
def test_a_best_checkpoint_named_in_state_json_cannot_lead_out(tmp_path, how):
    _checkpoints(tmp_path)
    assert checkpoint.best(tmp_path).name == "step-000000005"  # none validated: the latest
    latest = checkpoint.latest(tmp_path)
    TrainState(global_step=5, best_checkpoint=_name(tmp_path, how)).write(latest)
    with pytest.raises(UserError, match=f"step-000000005/state.json: names '{how}', which is not inside"):
        checkpoint.best(tmp_path)


def _partitions(tmp_path, part_graph="part0/graph.dgl", graph_name="gnnrec") -> Partitions:
    (tmp_path / "part0").mkdir()
    for name in ("graph.dgl", "node_feat.dgl", "edge_feat.dgl"):
        (tmp_path / "part0" / name).write_bytes(b"")
    (tmp_path / "partition_stats.json").write_text("{}")
    files = {"part_graph": part_graph, "node_feats": "part0/node_feat.dgl", "edge_feats": "part0/edge_feat.dgl"}
    (tmp_path / "gnnrec.json").write_text(json.dumps({"num_parts": 1, "graph_name": graph_name, "part-0": files}))
    return Partitions(tmp_path)


@pytest.mark.parametrize("how", ["/etc/passwd", "../../elsewhere/graph.dgl", "part0/link.dgl"])
def test_a_partition_config_cannot_name_files_outside_its_directory(tmp_path, how):
    partitions = _partitions(tmp_path, how)
    (tmp_path / "part0" / "link.dgl").symlink_to("/etc/passwd")
    with pytest.raises(UserError, match=f"gnnrec.json: names '{how}', which is not inside"):
        partitions.meta


@pytest.mark.parametrize("name", ["../../../tmp/x", "a/b", ""])
def test_a_graph_name_that_is_not_a_plain_name_is_refused(tmp_path, name):
    """Jobs name their files (/dev/shm, their runs directory) after the partition config's graph_name."""
    with pytest.raises(UserError, match=f"gnnrec.json: graph_name '{name}' is not a plain name"):
        _partitions(tmp_path, graph_name=name).meta


def test_a_missing_partition_file_is_named_before_any_job_starts(tmp_path):
    assert _partitions(tmp_path).meta["num_parts"] == 1
    (tmp_path / "part0" / "graph.dgl").unlink()
    with pytest.raises(UserError, match=r"part0/graph.dgl: missing \(named by .*gnnrec.json; partition again\)"):
        Partitions(tmp_path).meta


def _damage(model, kind: str) -> str:
    """Damage one file of the checkpoint `model` as `kind` says; return the file's name."""
    dense, state = model / "dense.pt", model / "state.json"
    if kind == "dense: not a torch file":
        dense.write_text("garbage\n")
    elif kind == "dense: cut short":
        dense.write_bytes(dense.read_bytes()[:len(dense.read_bytes()) // 2])
    elif kind == "dense: a link to another file":
        dense.unlink()
        dense.symlink_to(state)
    elif kind == "state: not JSON":
        state.write_text("{not json")
    elif kind == "state: an unknown key":
        state.write_text(json.dumps({**json.loads(state.read_text()), "bogus": 1}))
    elif kind == "state: no trainers":
        state.write_text(json.dumps({**json.loads(state.read_text()), "world": 0}))
    elif kind == "state: a number for a name":
        state.write_text(json.dumps({**json.loads(state.read_text()), "best_checkpoint": 5}))
    return dense.name if kind.startswith("dense") else state.name


@pytest.mark.parametrize("kind", ["dense: not a torch file", "dense: cut short", "dense: a link to another file",
                                  "state: not JSON", "state: an unknown key", "state: no trainers",
                                  "state: a number for a name"])
def test_a_damaged_checkpoint_file_is_one_line_naming_it(tmp_path, kind):
    tables, rows = _checkpoints(tmp_path, steps=(1,), dense=checkpoint.DenseState({"w": torch.randn(64, 64)}))
    name = _damage(checkpoint.latest(tmp_path), kind)
    with pytest.raises(UserError, match=f"step-000000001/{name}: damaged") as refused:
        checkpoint.restore(checkpoint.latest(tmp_path), tables, rows, 0, 1)
    assert "\n" not in str(refused.value) and "another model" not in str(refused.value)


def _hold(path) -> subprocess.Popen:
    """Another process holding `path`'s job lock until it is killed (bounded: it exits after 5 minutes)."""
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom gnnrec import exclusive\n"
                               "with exclusive(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(300)",
                               str(path)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == "held\n"
    return holder


def test_one_job_per_output_and_a_dead_job_holds_no_lock(tmp_path):
    out = tmp_path / "train"
    holder = _hold(out)
    try:
        assert cli.main(["synth", f"workdir={tmp_path}", "synth.edges=100", f"synth.out={out}"]) == 2
        with pytest.raises(UserError, match=f"train: another job is writing it \\(pid {holder.pid} on "):
            with exclusive(out):
                pass
    finally:
        holder.kill()  # as SIGKILL ends a job: the kernel drops its lock
        holder.wait(timeout=60)
    assert not out.exists()
    with exclusive(out):
        assert (tmp_path / ".train.lock").read_text() == f"pid {os.getpid()} on {os.uname().nodename}"
    assert list(tmp_path.iterdir()) == [], "the lock file is removed with the lock"


def test_a_second_training_job_leaves_the_first_ones_checkpoints_alone(tmp_path):
    checkpoints = tmp_path / "checkpoints"
    _checkpoints(checkpoints)
    holder = _hold(checkpoints)
    try:
        with pytest.raises(UserError, match="checkpoints: another job is writing it"), \
                _fresh_checkpoints(checkpoints, keep=False):
            pass
    finally:
        holder.kill()
        holder.wait(timeout=60)
    assert checkpoint.latest(checkpoints).name == "step-000000005"
    assert not (tmp_path / "checkpoints.previous").exists()


@pytest.mark.parametrize("ending, previous_kept", [(RuntimeError("a failure"), True), (KeyboardInterrupt(), False)])
def test_a_fresh_run_ended_after_its_own_checkpoint(tmp_path, ending, previous_kept):
    """A failure keeps the previous run's checkpoints aside (nothing lost); a stop on purpose (SIGINT,
    SIGTERM) leaves its own, which a resume continues from."""
    checkpoints = tmp_path / "checkpoints"
    _checkpoints(checkpoints, steps=(3,))
    with pytest.raises(type(ending)), _fresh_checkpoints(checkpoints, keep=False):
        _checkpoints(checkpoints, steps=(8,))
        (checkpoints / "step-000000009.tmp").mkdir()  # what a trainer was writing
        raise ending
    assert [p.name for p in checkpoints.iterdir()] == ["latest", "step-000000008"] or \
        sorted(p.name for p in checkpoints.iterdir()) == ["latest", "step-000000008"]
    assert (tmp_path / "checkpoints.previous").exists() == previous_kept


def _limited(size: int):
    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a refused write, not a killed process
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))
    return limit


def test_a_checkpoint_the_disk_refuses_is_one_line_and_leaves_nothing(tmp_path):
    """Rows written to a disk that refuses more bytes (a file-size limit here, ENOSPC on a full disk):
    before, a memory-mapped write died with SIGBUS and left step-*.tmp."""
    code = ("import sys, torch\nfrom gnnrec import UserError\nfrom gnnrec.trainer import checkpoint\n"
            "tables = {'user': torch.randn(50_000, 16), 'item': torch.randn(10, 16)}\n"
            "rows = type('R', (), {'state': {n: (torch.zeros(len(t)), t, t) for n, t in tables.items()}})\n"
            "try:\n    checkpoint.save(sys.argv[1], checkpoint.TrainState(global_step=9), tables, rows,\n"
            "                    checkpoint.DenseState({}), 0, 1)\n"
            "except UserError as e:\n    print(e)\n    sys.exit(2)")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], preexec_fn=_limited(1_000_000),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "File too large (writing the checkpoint" in done.stdout and done.stdout.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("stage", ["ingest", "partition"])
def test_graph_files_the_disk_refuses_are_one_line_not_a_dgl_backtrace(tmp_path, stage):
    assert cli.main(["run", f"workdir={tmp_path}", "synth.users=2000", "synth.items=1000", "synth.edges=60000",
                     "run.stages=[synth, ingest]"]) == 0
    before = sorted(tmp_path.iterdir())
    done = subprocess.run([sys.executable, "-m", "gnnrec.launch.cli", stage, f"workdir={tmp_path}",
                           f"{stage}.out={{workdir}}/again"], preexec_fn=_limited(600_000), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "the disk refused more bytes" in done.stderr
    assert sorted(tmp_path.iterdir()) == before


@pytest.mark.parametrize("unit, scale", [("s", 1), ("ms", 10**3), ("us", 10**6), ("ns", 10**9)])
def test_timestamps_of_any_unit_are_read_as_seconds_floored(tmp_path, unit, scale):
    """Spark writes timestamp[ms] and pandas timestamp[ns]: valid input, floored to the second."""
    seconds = np.array([1_600_000_000, 1_600_000_001, -3], np.int64)
    stamps = seconds * scale + (scale // 2 if scale > 1 else 0)  # half a second more: floored away
    path = write_parquet(tmp_path / "in.parquet", pa.table({
        "user_id": [1, 2, 3], "item_id": [7, 8, 9], "ts": pa.array(stamps, pa.timestamp(unit))}))
    from gnnrec.data.ingest import run as ingest
    ingest(edge_cfg(tmp_path, path, "split.ratios=[1.0, 0.0, 0.0]", timestamp="ts"))
    train = read_split(tmp_path / "dataset", "train")
    assert sorted(train["timestamp"]) == sorted(seconds)


def test_a_sigterm_stops_training_as_sigint_does(tmp_path):
    """Before, Ray's handler aborted the driver (exit 134) and left step-*.tmp and checkpoints.previous."""
    from conftest import partitioned_dataset
    partitioned_dataset(tmp_path, parts=1)
    args = [f"workdir={tmp_path}", "train.model=mf", "train.sampler=none", "train.layers=0", "train.fanouts=[]",
            "train.validate_split=none", "train.batch_size=64", "train.checkpoint_every=5", "train.max_failures=0"]
    _checkpoints(tmp_path / "checkpoints")  # a previous run's, moved aside while this one runs
    driver = subprocess.Popen([sys.executable, "-m", "gnnrec.launch.cli", "train", *args, "train.epochs=200"],
                              stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while not list(tmp_path.glob(".train.tmp-*/metrics.jsonl")) and time.time() < deadline:
        time.sleep(0.2)  # an epoch done: the job is under way, checkpoints written
    driver.send_signal(signal.SIGTERM)
    assert driver.wait(timeout=120) == 130
    assert driver.stderr.read().strip().splitlines()[-1].startswith("gnnrec train: stopped")
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith((".", "checkpoints", "train"))) == \
        ["checkpoints"]  # no output, no checkpoints.previous, no lock
    assert not list((tmp_path / "checkpoints").glob("*.tmp")) and checkpoint.latest(tmp_path / "checkpoints")
