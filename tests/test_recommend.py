"""Cold start: users held out of training entirely get recommendations from a few of their items, or from
their profile features alone."""
import numpy as np
import pyarrow.parquet as pq
import pytest

from gnnrec import UserError
from gnnrec.launch import cli
from gnnrec.launch.config import load_config
from gnnrec.launch.stages import run
from gnnrec.inference.recommend import ColdStart, held_out_recall
from conftest import BARE, write_parquet

HELD_OUT = 60


@pytest.fixture(scope="module")
def model(tmp_path_factory, local_ray):
    """LightGCN trained on a synthetic log without HELD_OUT random users; their edges returned. The log's
    users have profile features (their community's centroid plus noise), unused by this model."""
    work = tmp_path_factory.mktemp("recommend")
    base = [f"workdir={work}", "synth.users=800", "synth.items=1000", "synth.edges=30000", "synth.social_edges=0",
            "synth.user_feature_dim=4"]
    run(load_config(None, base + ["run.stages=[synth]"]))
    log = pq.read_table(work / "synth" / "interactions").to_pandas()
    held = set(np.random.default_rng(1).choice(np.unique(log["user_id"]), HELD_OUT, replace=False).tolist())
    write_parquet(work / "kept.parquet", log[~log["user_id"].isin(held)][["user_id", "item_id"]].reset_index(drop=True)
                  .to_dict("list"))
    run(load_config(None, base + BARE + ["ingest.interactions.path={workdir}/kept.parquet", "train.epochs=4",
                                         "ingest.user_features.path={workdir}/synth/user_features.parquet",
                                         "ingest.user_features.id_column=user_id",
                                         "train.validate_split=none", "train.lr=0.02",
                                         "run.stages=[ingest, partition, train]"]))
    return work, log[log["user_id"].isin(held)].groupby("user_id")["item_id"].apply(list)


def test_held_out_users_beat_popularity_from_a_few_items(model):
    work, held = model
    cold = ColdStart(work / "train")
    catalog = set(cold.raw_items.to_pylist())
    given = [cold.item_ids([i for i in items if i in catalog][:3]) for items in held]
    top, scores = cold.recommend(given, 20)
    assert all(not set(g.tolist()) & set(t.tolist()) for g, t in zip(given, top))  # given items never back
    assert np.all(np.diff(scores, axis=1) <= 1e-6)
    figures = held_out_recall(cold, held.tolist(), k=20)
    assert figures["users"] >= HELD_OUT - 5
    assert figures["recall"] >= 2 * figures["popularity_recall"], figures


def test_cli_recommends_in_raw_ids_and_rejects_unknown_items(model, capsys):
    work, held = model
    known = ColdStart(work / "train").raw_items.to_pylist()
    assert cli.main(["recommend", f"workdir={work}", "--items", f"{known[0]},{known[1]}", "--k", "5"]) == 0
    lines = [line.split() for line in capsys.readouterr().out.splitlines() if line[:4].strip().isdigit()]
    assert [int(line[0]) for line in lines] == [1, 2, 3, 4, 5]
    assert all(int(line[1]) in set(known) - {known[0], known[1]} for line in lines)
    assert cli.main(["recommend", f"workdir={work}", "--items", "123456789"]) == 2
    assert "not in the model's catalog" in capsys.readouterr().err
    with pytest.raises(UserError, match="recommend.k"):
        load_config(None, ["recommend.k=0"])


def held_out_features(work, held) -> np.ndarray:
    t = pq.read_table(work / "synth" / "user_features.parquet").to_pandas().set_index("user_id")
    return t.loc[held.index].to_numpy(np.float32)


def test_a_user_known_by_features_alone_beats_popularity(model):
    """The feature path (a model trained with train.inputs=features: users are W x, no ID rows) and the
    fallback of an ID model (the mean of the most similar training users) recommend for held-out users
    from their features only; given items too, the feature path still uses them."""
    work, held = model
    run(load_config(None, [f"workdir={work}", "train.inputs=features", "train.epochs=4", "train.lr=0.02",
                           "train.validate_split=none", "train.out={workdir}/train-features",
                           "train.checkpoints={workdir}/checkpoints-features", "run.stages=[train]"]))
    features = held_out_features(work, held)
    inductive, by_ids = ColdStart(work / "train-features"), ColdStart(work / "train", similar_users=10)
    assert "user" in inductive.model.inputs.proj and by_ids.model.inputs is None
    for cold in (inductive, by_ids):
        figures = held_out_recall(cold, held.tolist(), k=20, features=features, given=(0, 0))
        assert figures["users"] >= HELD_OUT - 5
        assert figures["recall"] >= 1.5 * figures["popularity_recall"], figures
    with_items = held_out_recall(inductive, held.tolist(), k=20, features=features)
    assert with_items["recall"] >= 1.5 * with_items["popularity_recall"], with_items
    empty = [np.empty(0, np.int64)] * 2
    a, _ = inductive.recommend(empty, 5, features[:2])
    b, _ = inductive.recommend(empty, 5, features[:2] + 0.5 * np.abs(features[:2]).max())
    assert a.shape == (2, 5) and (a >= 0).all() and not np.array_equal(a, b)  # the features decide
    with pytest.raises(UserError, match="recommend.features: 3 values, the dataset's user features have 4"):
        inductive.recommend(empty[:1], 5, np.zeros((1, 3)))
    with pytest.raises(UserError, match="give each new user's items"):
        by_ids.recommend(empty[:1], 5)


def test_cli_recommends_from_features(model, capsys):
    work, held = model
    values = ", ".join(f"{v:.3f}" for v in held_out_features(work, held)[0])
    assert cli.main(["recommend", f"workdir={work}", f"recommend.features=[{values}]", "--k", "3"]) == 0
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()
            if line[:4].strip().isdigit()] == ["1", "2", "3"]
    assert cli.main(["recommend", f"workdir={work}", "recommend.features=[1.0]"]) == 2
    assert "recommend.features: 1 values" in capsys.readouterr().err


class _Payload:
    """A pickle that, loaded without weights_only, would create the file `marker`."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_pickled_payload_in_a_train_output_is_refused_not_run(model, tmp_path, capsys):
    import shutil

    import torch
    work, _ = model
    copy = tmp_path / "train"
    shutil.copytree(work / "train", copy)
    marker = tmp_path / "ran"
    torch.save({"model": _Payload(marker)}, copy / "model" / "dense.pt")
    item = pq.read_table(work / "dataset" / "ids" / "item.parquet").column("raw_id")[0].as_py()
    assert cli.main(["recommend", f"workdir={work}", f"recommend.checkpoint={copy}", "--items", str(item)]) == 2
    assert "refusing to load it" in capsys.readouterr().err and not marker.exists()


def test_a_train_output_missing_a_checkpoint_file_is_one_line(model, tmp_path, capsys):
    import shutil
    work, _ = model
    copy = tmp_path / "train"
    shutil.copytree(work / "train", copy)
    (copy / "model" / "ids-rank0-item.npy").unlink()
    item = pq.read_table(work / "dataset" / "ids" / "item.parquet").column("raw_id")[0].as_py()
    assert cli.main(["recommend", f"workdir={work}", f"recommend.checkpoint={copy}", "--items", str(item)]) == 2
    assert "ids-rank0-item.npy: missing (an incomplete copy" in capsys.readouterr().err
