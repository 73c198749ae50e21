"""The `gnnrec` CLI: help, `run` end to end, errors as one line with exit 2."""
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gnnrec import UserError
from gnnrec.launch import cli, stages
from gnnrec.launch.config import load_config
from gnnrec.data.formats import Dataset

from conftest import REPO, leftovers, make_cfg, read_json

STAGES = ["synth", "ingest", "partition", "train", "mine", "infer", "evaluate", "plan", "recommend", "run"]


def _one_error_line(err: str, stage: str) -> str:
    lines = err.strip("\n").split("\n")
    assert len(lines) == 1, err
    assert lines[0].startswith(f"gnnrec {stage}: error: "), err
    return lines[0]


def test_help_lists_the_stages(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "usage: gnnrec" in out
    listed = [line.split()[0] for line in out.splitlines() if line.startswith("    ") and line.split()
              and line.split()[0] in STAGES]
    assert listed == STAGES
    assert list(stages.HELP) == STAGES


def test_stage_help(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["ingest", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "--config" in out and "key.sub=value" in out


def test_no_stage_or_unknown_stage_is_a_usage_error(capsys):
    for argv in ([], ["bogus"]):
        with pytest.raises(SystemExit) as e:
            cli.main(argv)
        assert e.value.code == 2
    assert "gnnrec" in capsys.readouterr().err


def test_run_end_to_end(tmp_path, capsys, monkeypatch, local_ray):
    # every stage of the quickstart pipeline, one training round (rounds: tests/test_infer.py)
    # with time decay (the blocks of training, validation, mining and inference weighted by their edges'
    # age) and items known by their features alone (h0 = W x + b: training, layer-wise inference, evaluate),
    # from a relative workdir as `make demo`'s: Ray's workers do not run in this directory
    args = ["synth.edges=5000", "synth.social_edges=500", "run.rounds=1", "train.time_decay.rate=0.01",
            "train.inputs=features"]
    monkeypatch.chdir(tmp_path)
    assert cli.main(["run", "workdir=work", *args]) == 0
    out, err = capsys.readouterr()
    tmp_path = tmp_path / "work"
    assert read_json(tmp_path / "partitions" / "partition_stats.json")["newest_timestamp"] > 0
    dense = torch.load(tmp_path / "train" / "model" / "dense.pt", weights_only=True)["model"]
    assert dense["inputs.proj.item.weight"].shape == (32, 8) and "inputs.proj.user.weight" not in dense
    assert read_json(tmp_path / "evaluate" / "metrics.json")["results"]["lightgcn"]["recall@20"] > 0
    assert "synth summary" in out and "ingest summary" in out
    assert out.index("synth summary") < out.index("ingest summary") < out.index("plan:")  # each as its stage ends
    meta = Dataset(tmp_path / "dataset").meta
    stats = read_json(tmp_path / "dataset" / "stats.json")
    ingest_part = out[out.index("ingest summary"):]
    for key in ("users", "items", "train_edges", "val_edges", "test_edges", "social_edges"):
        assert any(line.split() == [key, f"{stats[key]:,}"] for line in ingest_part.splitlines()), key
    assert sum(meta["edges"].values()) + stats["interactions_duplicates_collapsed"] == 5000
    assert meta["social_edges"] > 0 and meta["feature_dims"] == {"item": 8}
    # the resolved config is written beside every output
    cfg = make_cfg("work", *args)
    assert load_config(tmp_path / "synth" / "config.yaml") == cfg
    assert load_config(tmp_path / "dataset" / "config.yaml") == cfg
    assert leftovers(tmp_path) == []


def test_run_refit_trains_again_on_the_validation_edges_for_the_chosen_epochs(tmp_path, local_ray):
    mf = ["train.model=mf", "train.sampler=none", "train.layers=0", "train.fanouts=[]"]
    cfg = make_cfg(tmp_path, "synth.edges=3000", "synth.social_edges=0", "synth.item_feature_dim=0",
                   "ingest.social=null", "ingest.item_features=null", *mf, "train.epochs=2", "run.rounds=1",
                   "run.refit=true", "run.stages=[synth, ingest, partition, train, evaluate]")
    summaries = stages.run(cfg)
    assert summaries["train"]["epochs"] == 2
    assert summaries["train (refit)"]["epochs"] == summaries["train"]["model_epoch"]
    first, refit = (read_json(tmp_path / name / "stats.json") for name in ("dataset", "dataset-refit"))
    assert refit["val_edges"] == 0 and refit["train_edges"] == first["train_edges"] + first["val_edges"] > 0
    assert refit["test_edges"] == first["test_edges"]
    assert load_config(tmp_path / "evaluate" / "config.yaml").evaluate.checkpoint == "{workdir}/train-refit"
    with pytest.raises(UserError, match="run.refit needs"):  # nothing chosen on validation to refit
        stages.run(cfg.model_copy(update={"train": cfg.train.model_copy(update={"validate_split": "none"})}))


def test_progress_without_a_terminal_is_a_line_every_interval(capsys):
    from gnnrec.launch.job import Progress

    progress = Progress(every_s=0.0)
    for step in (1, 3, 7):
        progress.show({"desc": "epoch 1", "step": step, "steps": 10, "epoch": 0, "loss": 0.5})
    progress.show()
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(",")[0] for line in lines] == ["epoch 1: step 3 of 10", "epoch 1: step 7 of 10"]
    assert all("loss 0.5000" in line and "steps/s" in line for line in lines)


def test_single_stages_and_config_file(tmp_path, capsys):
    config = tmp_path / "my.yaml"
    config.write_text(f"workdir: {tmp_path}\nsynth:\n  users: 300\n  items: 200\n  edges: 2000\n"
                      "  social_edges: 100\n  item_feature_dim: 2\n")
    assert cli.main(["synth", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("synth summary\n-------------\n")
    assert any(line.split() == ["edges", "2,000"] for line in out.splitlines())
    assert cli.main(["ingest", "--config", str(config), "split.method=temporal"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("ingest summary")
    meta = Dataset(tmp_path / "dataset").meta
    assert meta["num_users"] <= 300 and meta["num_items"] <= 200
    assert load_config(tmp_path / "dataset" / "config.yaml").split.method == "temporal"


def test_stages_are_plain_functions(tmp_path):
    cfg = make_cfg(tmp_path, "synth.users=100", "synth.items=50", "synth.edges=1000", "synth.social_edges=0",
                   "synth.item_feature_dim=0", "ingest.social=null", "ingest.item_features=null",
                   "run.stages=[synth, ingest]")
    summary = stages.run_stage("synth", cfg)
    assert summary["edges"] == 1000 and Path(summary["out"]) == tmp_path / "synth"
    summaries = stages.run(cfg)
    assert list(summaries) == ["synth", "ingest"]
    assert summaries["ingest"]["interactions_rows_read"] == 1000


def test_an_output_under_a_file_is_one_line(tmp_path, capsys):
    (tmp_path / "taken").write_text("")
    assert cli.main(["synth", f"workdir={tmp_path}", "synth.edges=100", "synth.out={workdir}/taken/synth"]) == 2
    assert "taken" in _one_error_line(capsys.readouterr().err, "synth")


def test_a_disk_that_refuses_more_bytes_is_one_line_and_leaves_nothing(tmp_path):
    """A write cut short mid-output (a file-size limit: the kernel refuses more bytes, as on a full disk):
    exit 2, one line, no partial output."""
    def limit_files():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a refused write, not a killed process
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))
    proc = subprocess.run([sys.executable, "-m", "gnnrec.launch.cli", "synth", f"workdir={tmp_path}",
                           "synth.edges=200000"], preexec_fn=limit_files, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "File too large" in _one_error_line(proc.stderr, "synth")
    assert list(tmp_path.iterdir()) == []


def test_bad_config_file_exits_2(tmp_path, capsys):
    assert cli.main(["synth", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml" in _one_error_line(capsys.readouterr().err, "synth")
    bad = tmp_path / "bad.yaml"
    bad.write_text("synth:\n  edges: -5\n")
    assert cli.main(["synth", "--config", str(bad), f"workdir={tmp_path}"]) == 2
    assert "'synth.edges'" in _one_error_line(capsys.readouterr().err, "synth")
    assert not (tmp_path / "synth").exists()


def test_overrides_may_follow_the_flags(tmp_path, capsys):
    assert cli.main(["recommend", "--checkpoint", str(tmp_path / "none"), f"workdir={tmp_path}", "--items", "a",
                     "recommend.k=3"]) == 2
    assert f"recommend.checkpoint={tmp_path / 'none'}: not a training output" in _one_error_line(
        capsys.readouterr().err, "recommend")
    with pytest.raises(SystemExit):
        cli.main(["recommend", "--checkpoint", str(tmp_path / "none"), "--bogus"])
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err


def test_format_table():
    text = cli.format_table("x summary", {"edges": 1234567, "ok": True, "rate": 0.5, "out": "/a"})
    assert text.splitlines() == ["x summary", "---------", "edges  1,234,567", "ok     True",
                                 "rate   0.5", "out    /a"]


def test_console_script_exit_code_on_bad_key(tmp_path):
    script = Path(sys.executable).parent / "gnnrec"
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "gnnrec.launch.cli"]
    proc = subprocess.run([*cmd, "ingest", f"workdir={tmp_path}", "ingest.bogus_key=1"],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    line = _one_error_line(proc.stderr, "ingest")
    assert "'ingest.bogus_key'" in line and "unknown key" in line
    assert list(tmp_path.iterdir()) == []


def test_module_entry_point_help():
    proc = subprocess.run([sys.executable, "-m", "gnnrec.launch.cli", "--help"], capture_output=True,
                          text=True, timeout=60, cwd=REPO)
    assert proc.returncode == 0 and all(name in proc.stdout for name in STAGES)
