"""The evaluate stage: partition ids mapped back to dataset ids, metrics of model and popularity."""
import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from gnnrec import UserError
from gnnrec.launch import cli
from gnnrec.launch.config import load_config
from gnnrec.launch.stages import run
from gnnrec.model.models import Popularity, Recommender
from gnnrec.ranking.metrics import evaluate
from gnnrec.inference.evaluate import run as evaluate_stage
from gnnrec.inference.trained import Interactions, input_embeddings, propagate_all


def test_embeddings_follow_partition_renumbering():
    cfg = load_config(None, ["train.model=mf", "train.layers=0", "train.fanouts=[]", "train.dim=4"])
    tables = {"user": torch.randn(3, 4), "item": torch.randn(2, 4)}  # rows in partition ids
    orig_user, orig_item = np.array([2, 0, 1]), np.array([1, 0])  # partition id -> dataset id
    none = torch.zeros(0, dtype=torch.long)
    h0 = input_embeddings(tables, orig_user, orig_item)
    h = propagate_all(Recommender(cfg.train), h0, Interactions(none, none, 3), 0)
    U, I = h[:3], h[3:]
    assert torch.equal(U[2], tables["user"][0]) and torch.equal(U[0], tables["user"][1])
    assert torch.equal(U[1], tables["user"][2])
    assert torch.equal(I[1], tables["item"][0]) and torch.equal(I[0], tables["item"][1])


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A dataset, its partitions and an (untrained) LightGCN checkpoint written as `train` writes one."""
    work = tmp_path_factory.mktemp("evaluate")
    cfg = load_config(None, [f"workdir={work}", "synth.users=300", "synth.items=200", "synth.edges=4000",
                             "run.stages=[synth, ingest, partition]"])
    run(cfg)
    meta = json.loads((work / "dataset" / "meta.json").read_text())
    model = work / "train" / "model"  # one trainer's checkpoint (trainer/checkpoint.py)
    model.mkdir(parents=True)
    cfg.save(work / "train")
    for n in ("user", "item"):
        np.save(model / f"ids-rank0-{n}.npy", np.random.default_rng(0).normal(size=(meta[f"num_{n}s"], cfg.train.dim))
                .astype(np.float32))
    torch.save({"model": Recommender(cfg.train).state_dict()}, model / "dense.pt")
    (model / "state.json").write_text(json.dumps({"world": 1}))
    return work, meta


def test_evaluate_stage_reports_model_and_popularity(checkpoint):
    work, meta = checkpoint
    summary = evaluate_stage(load_config(None, [f"workdir={work}", "evaluate.ks=[5, 20]"]))
    results = json.loads((work / "evaluate" / "metrics.json").read_text())["results"]
    assert set(results) == {"lightgcn", "popularity"}
    edges = {s: pq.read_table(work / "dataset" / "edges" / f"{s}.parquet") for s in ("train", "val", "test")}
    t = lambda s: torch.from_numpy(np.stack([edges[s]["user"].to_numpy(), edges[s]["item"].to_numpy()]))  # noqa: E731
    pop = Popularity.from_interactions(t("train")[0], t("train")[1], meta["num_users"], meta["num_items"])
    expected = evaluate(*pop.embeddings(), t("test"), torch.cat([t("train"), t("val")], 1), ks=(5, 20))
    assert results["popularity"] == pytest.approx(expected)  # the stage's plumbing, value for value
    assert results["lightgcn"]["num_users"] == len(np.unique(edges["test"]["user"].to_numpy()))
    assert all(0 <= v <= 1 for k, v in results["lightgcn"].items() if k != "num_users")
    assert summary["popularity_recall@20"] == round(expected["recall@20"], 4)
    # a seeded sample of users: the same metrics over exactly those users
    sampled = evaluate_stage(load_config(None, [f"workdir={work}", "evaluate.ks=[5, 20]", "evaluate.users=7",
                                                "evaluate.out={workdir}/evaluate-7"]))
    results = json.loads((work / "evaluate-7" / "metrics.json").read_text())["results"]
    assert sampled["users"] == 7 and results["lightgcn"]["num_users"] == results["popularity"]["num_users"] == 7


def test_evaluate_without_checkpoint_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="not a training output"):
        evaluate_stage(load_config(None, [f"workdir={tmp_path}"]))


def test_a_model_of_partitions_made_again_is_one_line(checkpoint, tmp_path, capsys):
    """Before: RuntimeError: shape mismatch, from evaluate and recommend."""
    work, _ = checkpoint
    again = tmp_path / "work"
    shutil.copytree(work, again)
    run(load_config(None, [f"workdir={again}", "synth.users=250", "synth.items=200", "synth.edges=4000",
                           "run.stages=[synth, ingest, partition]"]))
    load_config(again / "train" / "config.yaml", [f"workdir={again}"]).save(again / "train")
    for stage in ("evaluate", "recommend"):
        assert cli.main([stage, f"workdir={again}", "--items", "1"] if stage == "recommend" else
                        [stage, f"workdir={again}"]) == 2
        assert "a model of 300 users, its partitions" in capsys.readouterr().err


def test_a_checkpoint_of_another_model_is_a_user_error(checkpoint, tmp_path):
    work, _ = checkpoint
    other = tmp_path / "train"
    shutil.copytree(work / "train", other)
    cfg = load_config(other / "config.yaml", ["train.model=ngcf"])  # the saved weights are LightGCN's (none)
    cfg.save(other)
    with pytest.raises(UserError, match="do not fit train.model=ngcf"):
        evaluate_stage(load_config(None, [f"workdir={work}", f"evaluate.checkpoint={other}"]))
    for stage in ("infer", "mine"):  # refused in the driver, before any worker starts
        assert cli.main([stage, f"workdir={work}", f"{stage}.checkpoint={other}"]) == 2
