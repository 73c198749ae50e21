"""infer, mine and training with mined negatives, through the real runtime (graph servers, Ray Train)."""
import json
import shutil
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch

from gnnrec import UserError
from gnnrec.launch.config import load_config
from gnnrec.data.formats import Dataset
from gnnrec.inference.evaluate import run as evaluate_stage
from gnnrec.inference.trained import TrainedModel
from gnnrec.inference.infer import run as infer_stage
from gnnrec.inference.mine import draw_slots, run as mine_stage, window_ranks
from gnnrec.trainer.train import run as train
from conftest import partitioned_dataset, watch_processes

K = 20


@pytest.fixture(scope="module")
def trained(tmp_path_factory, local_ray):
    """LightGCN trained 2 epochs by 2 trainers (validation on val), then `infer` and `mine` of it."""
    work = partitioned_dataset(tmp_path_factory.mktemp("infer"), parts=1)
    overrides = [f"workdir={work}", "train.trainers_per_partition=2", "train.batch_size=256", "train.lr=0.05",
                 "train.layers=2", "train.fanouts=[5, 5]", "train.epochs=2", f"infer.k={K}",
                 "mine.window=[5, 40]", "mine.per_user=6"]
    cfg = load_config(None, overrides)
    train(cfg)
    reports = {}
    for stage, out in ((infer_stage, work / "infer"), (mine_stage, work / "mined")):
        with watch_processes(out) as reports[out.name]:
            stage(cfg)
    return work, cfg, reports


def _read(path) -> pa.Table:
    return pa.concat_tables([pq.read_table(f) for f in sorted(path.glob("part-*.parquet"))])


def _dataset_ids(work, node_type: str, raw) -> np.ndarray:
    ids = pq.read_table(work / "dataset" / "ids" / f"{node_type}.parquet", columns=["raw_id"])["raw_id"]
    return pc.index_in(raw, value_set=ids).to_numpy(zero_copy_only=False)


@pytest.fixture(scope="module")
def trained_social(trained):
    """SocialGCN trained 1 epoch on the same dataset (it has social edges), then `infer` of it."""
    work, _, _ = trained
    cfg = load_config(None, [f"workdir={work}", "train.model=socialgcn", "train.batch_size=512", "train.lr=0.05",
                             "train.layers=2", "train.fanouts=[5, 5]", "train.validate_split=none",
                             "train.out={workdir}/train-social", "train.checkpoints={workdir}/checkpoints-social",
                             "infer.checkpoint={workdir}/train-social", "infer.out={workdir}/infer-social", "infer.users=30",
                             "infer.k=1000"])  # above the catalog's 300 items
    train(cfg)
    infer_stage(cfg)
    return work


def test_the_same_seed_gives_the_same_run(trained_social):
    """One trainer, one seed: the same losses and ID tables to the last bit (the servers draw the
    tables from the seed; several trainers' sparse updates meet in the servers in arrival order)."""
    from gnnrec.trainer.checkpoint import load_tables
    work = trained_social
    cfg = load_config(work / "train-social" / "config.yaml", ["train.out={workdir}/train-social-again",
                                                             "train.checkpoints={workdir}/checkpoints-social-again"])
    train(cfg)
    runs = [work / "train-social", work / "train-social-again"]
    first, again = ([json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]
                    for run in runs)
    assert first == again
    for a, b in zip(*(load_tables(run / "model").values() for run in runs)):
        assert torch.equal(a, b)


def _exported(work, node_type: str, infer="infer") -> torch.Tensor:
    """The exported embeddings of a node type as a matrix in dataset-id order."""
    table = _read(work / infer / f"{node_type}s")
    rows = _dataset_ids(work, node_type, table["id"])
    assert np.array_equal(np.sort(rows), np.arange(len(rows)))  # every node exactly once
    vectors = np.stack(table["embedding"].to_numpy(zero_copy_only=False))
    out = np.empty_like(vectors)
    out[rows] = vectors
    return torch.from_numpy(out)


@pytest.mark.parametrize("model", ["lightgcn", "socialgcn"])
def test_layerwise_inference_equals_the_full_graph_forward(request, model):
    """Through the graph servers as in one process: for SocialGCN, social ties count both ways."""
    work = request.getfixturevalue("trained")[0] if model == "lightgcn" else request.getfixturevalue("trained_social")
    train_dir, infer = (work / "train", "infer") if model == "lightgcn" else (work / "train-social", "infer-social")
    trained_model = TrainedModel(train_dir)
    assert trained_model.config.train.model == model
    assert (trained_model.social is not None) == (model == "socialgcn")
    U, I = trained_model.embeddings()
    assert torch.allclose(_exported(work, "user", infer), U, atol=1e-5)
    assert torch.allclose(_exported(work, "item", infer), I, atol=1e-5)
    manifest = json.loads((work / infer / "manifest.json").read_text())
    assert manifest["users"]["rows"] == U.shape[0] and manifest["dim"] == U.shape[1]
    assert manifest["k"] == (K if model == "lightgcn" else 300)  # infer-social asked for 1000 of 300 items


def test_exported_top_k_masks_training_items_and_reproduces_validation(trained):
    work, cfg, _ = trained
    top = _read(work / "infer" / "topk").to_pandas()
    train_pairs = Dataset(work / "dataset").edges("train").numpy()
    user = _dataset_ids(work, "user", pa.array(top["user_id"]))
    item = _dataset_ids(work, "item", pa.array(top["item_id"]))
    assert not np.isin(user * 10**6 + item, train_pairs[0] * 10**6 + train_pairs[1]).any()
    U, I = _exported(work, "user"), _exported(work, "item")
    assert np.allclose(top["score"], (U[user] * I[item]).sum(1).numpy(), atol=1e-4)
    assert (top.groupby("user_id")["score"].apply(lambda s: (np.diff(s.to_numpy()) <= 1e-6).all())).all()
    summary = evaluate_stage(load_config(None, [f"workdir={work}", "evaluate.split=val", "evaluate.ks=[20]",
                                                "evaluate.recommendations={workdir}/infer"]))
    results = json.loads((work / "evaluate" / "metrics.json").read_text())["results"]
    history = [json.loads(line) for line in (work / "train" / "metrics.jsonl").read_text().splitlines()]
    best = max(history, key=lambda m: m["ndcg@20"])  # the model the output holds
    assert results["exported_top_k"]["recall@20"] == pytest.approx(best["recall@20"], abs=2e-3)
    assert results["exported_top_k"]["ndcg@20"] == pytest.approx(best["ndcg@20"], abs=2e-3)
    assert results["exported_top_k"]["recall@20"] == pytest.approx(summary["recall@20"], abs=2e-3)


def test_sharded_evaluate_gives_the_one_process_metrics(trained):
    """evaluate.sharded: 2 workers over the graph servers, each ranking its share of the users (test: the
    validation items masked too), give the one-process stage's numbers."""
    work = trained[0]
    results = {}
    for sharded in ("false", "true"):
        evaluate_stage(load_config(None, [f"workdir={work}", "evaluate.ks=[10, 20]", f"evaluate.sharded={sharded}",
                                          f"evaluate.out={{workdir}}/evaluate-{sharded}"]))
        results[sharded] = json.loads((work / f"evaluate-{sharded}" / "metrics.json").read_text())["results"]
    one, sharded = results["false"], results["true"]
    assert sharded["lightgcn"] == pytest.approx(one["lightgcn"], abs=1e-4) and one["lightgcn"]["recall@20"] > 0
    assert sharded["popularity"]["num_users"] == one["popularity"]["num_users"]
    # popularity's ties between equal degrees fall by item id, and partition ids are not dataset ids
    assert sharded["popularity"]["recall@20"] == pytest.approx(one["popularity"]["recall@20"], abs=0.02)


def test_infer_users_ranks_a_seeded_sample_and_embeds_every_node(trained_social):
    work = trained_social
    manifest = json.loads((work / "infer-social" / "manifest.json").read_text())
    top = _read(work / "infer-social" / "topk")
    assert manifest["topk_users"] == 30 and len(set(top["user_id"].to_pylist())) == 30
    assert manifest["k"] == Dataset(work / "dataset").num_items == 300  # infer.k=1000, clipped to the catalog
    assert manifest["users"]["rows"] == Dataset(work / "dataset").num_users > 30


def test_mined_negatives_come_from_the_rank_window(trained):
    work, cfg, _ = trained
    mined = _read(work / "mined").to_pandas()
    U, I = _exported(work, "user"), _exported(work, "item")
    train_pairs = Dataset(work / "dataset").edges("train")
    scores = U @ I.T
    scores[train_pairs[0], train_pairs[1]] = float("-inf")
    rank_of = torch.argsort(torch.argsort(scores, dim=1, descending=True), dim=1)  # 0 = top
    u, i = torch.from_numpy(mined["user"].to_numpy()), torch.from_numpy(mined["item"].to_numpy())
    assert mined["rank"].between(5, 40).all()
    assert (rank_of[u, i].numpy() == mined["rank"].to_numpy()).mean() > 0.99  # float ties aside
    assert not np.isin(u * 10**6 + i, train_pairs[0] * 10**6 + train_pairs[1]).any()
    assert (mined.groupby("user").size() == 6).all()
    assert set(mined["user"]) == set(train_pairs[0].tolist())  # every user with training items


def test_training_round_with_mined_negatives_follows_the_curriculum(trained):
    work, _, _ = trained
    cfg = load_config(None, [f"workdir={work}", "train.trainers_per_partition=2", "train.batch_size=256",
                             "train.lr=0.05", "train.layers=2", "train.fanouts=[5, 5]", "train.epochs=4",
                             "train.resume=true", "train.hard_negatives={workdir}/mined",
                             "train.out={workdir}/round2"])
    summary = train(cfg)
    history = [json.loads(line) for line in (work / "round2" / "metrics.jsonl").read_text().splitlines()]
    assert summary["epochs"] == 4 and [m.get("hard_negatives") for m in history] == [None, None, 0, 1]
    assert all(np.isfinite(m["loss"]) for m in history)


def test_unreadable_mined_negatives_are_a_user_error_without_restart(trained, tmp_path):
    work, _, _ = trained
    shutil.copytree(work / "checkpoints", tmp_path / "checkpoints")
    (tmp_path / "mined").mkdir()
    (tmp_path / "mined" / "part-00000.parquet").write_bytes(b"not parquet")  # found by a worker, not the driver
    cfg = load_config(None, [f"workdir={work}", "train.trainers_per_partition=2", "train.batch_size=256",
                             "train.layers=2", "train.fanouts=[5, 5]", "train.epochs=6", "train.resume=true",
                             f"train.hard_negatives={tmp_path}/mined", f"train.checkpoints={tmp_path}/checkpoints",
                             f"train.out={tmp_path}/out"])
    with pytest.raises(UserError, match="cannot read hard negatives") as raised:
        train(cfg)
    assert str(raised.value).startswith(f"{tmp_path / 'mined'}: ")  # the worker's one line, as it wrote it
    assert not (tmp_path / "out").exists()


def test_infer_and_mine_workers_all_start_and_report_their_processes(trained):
    """Every job kind beats from its worker session (infer and mine used to fail at launch.start_timeout_s:
    only training sent heartbeats): the driver writes processes.json once every worker has beaten."""
    for kind in ("infer", "mined"):
        report = trained[2][kind]
        assert [t["rank"] for t in report["trainers"]] == [0, 1] and all(t["pid"] > 0 for t in report["trainers"])
        assert [s["partition"] for s in report["graph_servers"]] == [0]


def test_draws_depend_on_the_user_alone():
    users = np.array([3, 17, 42, 99])
    whole = draw_slots(users, 30, 5, seed=1)
    assert np.array_equal(draw_slots(users[2:], 30, 5, seed=1), whole[2:])  # any sharding, same draws
    assert all(len(set(row)) == 5 and row.max() < 30 for row in whole)
    assert not np.array_equal(draw_slots(users, 30, 5, seed=2), whole)


@pytest.mark.parametrize("window", [[0, 1000], [0.5, 1.5], [10, 10]])
def test_a_window_outside_the_catalog_is_a_user_error(window):
    with pytest.raises(UserError, match="mine.window"):
        window_ranks(window, 300)


def test_non_positive_k_is_a_config_error():
    with pytest.raises(UserError, match="infer.k"):
        load_config(None, ["infer.k=0"])


def test_an_index_searched_in_full_gives_exact_top_k_and_related_items(trained):
    """infer.index=ivf probing every cell, 2 ranks reading the index rank 0 built: the exact top-K, and
    every item's K related items as brute force ranks them (the item itself excluded)."""
    work, _, _ = trained
    summary = infer_stage(load_config(None, [f"workdir={work}", "infer.index=ivf", "infer.ivf.probes=1000",
                                             "infer.related_items=true", "infer.out={workdir}/infer-ivf",
                                             f"infer.k={K}"]))
    assert summary["index"] == "ivf" and summary["index_recall"] == 1.0 and summary["short_users"] == 0
    ranked = [_read(work / out / "topk").to_pandas().sort_values(["user_id", "rank"]) for out in ("infer", "infer-ivf")]
    assert np.array_equal(ranked[0]["item_id"], ranked[1]["item_id"])
    assert np.allclose(ranked[0]["score"], ranked[1]["score"], atol=1e-5)
    related = _read(work / "infer-ivf" / "related")
    item = _dataset_ids(work, "item", related["item_id"])
    other = _dataset_ids(work, "item", related["related_id"])
    I = _exported(work, "item", "infer-ivf")
    S = I @ I.T
    S.fill_diagonal_(float("-inf"))
    want = torch.topk(S, K, dim=1).indices.numpy()
    rank = related["rank"].to_numpy()
    assert len(item) == I.shape[0] * K and np.array_equal(other, want[item, rank - 1])
    manifest = json.loads((work / "infer-ivf" / "manifest.json").read_text())
    assert manifest["related"]["rows"] == I.shape[0] * K and manifest["ivf_probes"] == manifest["ivf_lists"]
    assert sorted(p.name for p in (work / "infer-ivf").iterdir()) == [
        "config.yaml", "items", "manifest.json", "related", "topk", "users"]
