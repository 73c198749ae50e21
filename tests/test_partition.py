"""The partition stage: DGL loads what we write, every training edge is inner in exactly one part,
balance, stats, bad input. One small synthetic dataset (with social edges and item features) is
shared by the whole module; each (method, K) is partitioned once."""
import json
import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from gnnrec import UserError
from gnnrec.launch.cli import main
from gnnrec.launch.config import load_config
from gnnrec.data.formats import Dataset
from gnnrec.data.ingest import run as ingest
from gnnrec.data.synth import run as synth

METHODS = ("metis", "random", "random-walk")


def dgl_load(config_json, part_id):
    """DGL's own loader, untouched: (graph, node_feats, edge_feats, partition book, ntypes, etypes)."""
    os.environ.setdefault("DGLBACKEND", "pytorch")
    import dgl
    g, nfeat, efeat, gpb, _, ntypes, etypes = dgl.distributed.load_partition(str(config_json), part_id)
    return g, nfeat, efeat, gpb, ntypes, etypes


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("partition")
    cfg = load_config(None, [f"workdir={tmp}", "synth.edges=20000", "synth.users=1500", "synth.items=800",
                             "synth.social_edges=3000", "synth.item_feature_dim=4"])
    synth(cfg)
    ingest(cfg)
    return tmp


def overrides(dataset, method, parts, out, *more):
    return [f"workdir={dataset}", f"partition.method={method}", f"partition.parts={parts}",
            f"partition.out={out}", *more]


_cache = {}


@pytest.fixture
def partitioned(dataset, request):
    """Partition once per (method, parts); the summary and output directory."""
    from gnnrec.partition.stage import run as partition
    method, parts = request.param
    if (method, parts) not in _cache:
        out = dataset / f"parts-{method}-{parts}"
        cfg = load_config(None, overrides(dataset, method, parts, out))
        _cache[method, parts] = (partition(cfg), out)
    return _cache[method, parts]


CASES = [(m, k) for m in METHODS for k in (1, 2, 4)]


@pytest.mark.parametrize("partitioned", CASES, indirect=True, ids=[f"{m}-K{k}" for m, k in CASES])
def test_dgl_loads_partitions_and_every_edge_is_inner_once(dataset, partitioned):
    summary, out = partitioned
    meta = Dataset(dataset / "dataset").meta
    config = out / "gnnrec.json"
    parts = summary["parts"]
    train = pq.read_table(dataset / "dataset" / "edges" / "train.parquet").to_pandas()
    social = pq.read_table(dataset / "dataset" / "edges" / "social.parquet").to_pandas()
    orig = {t: np.load(out / "orig_nids" / f"{t}.npy") for t in ("user", "item")}
    features = np.load(dataset / "dataset" / "features" / "item.npy")
    seen = {"user:interacts:item": [], "item:interacted_by:user": [], "user:follows:user": [],
            "user:followed_by:user": []}  # the reverse twins are read back as the pairs they reverse
    inner_count = {"user": 0, "item": 0}
    for p in range(parts):
        g, nfeat, efeat, gpb, ntypes, etypes = dgl_load(config, p)
        assert set(ntypes) == {"user", "item"} and len(etypes) == 4
        inner = g.ndata["inner_node"].numpy().astype(bool)
        nid, ntype = g.ndata["_ID"].numpy(), g.ndata["_TYPE"].numpy()
        # inner nodes first, in global order, and the partition book agrees they are ours
        assert inner[:inner.sum()].all()
        assert (gpb.nid2partid(g.ndata["_ID"][inner]).numpy() == p).all()
        assert (g.ndata["part_id"].numpy()[inner] == p).all() and (g.ndata["part_id"].numpy()[~inner] != p).all()
        if parts == 1:
            assert (~inner).sum() == 0
        ie = g.edata["inner_edge"].numpy().astype(bool)
        assert ie[:ie.sum()].all()
        assert (gpb.eid2partid(g.edata["_ID"][ie]).numpy() == p).all()
        src, dst = (x.numpy() for x in g.edges())
        assert inner[dst[ie]].all(), "an inner edge belongs to the part of its destination"
        # per-type ids -> dataset ids -> the edge in the dataset
        for t in ("user", "item"):
            mask = inner & (ntype == json.loads(config.read_text())["ntypes"][t])
            _, typed = gpb.map_to_per_ntype(g.ndata["_ID"][mask])
            inner_count[t] += int(mask.sum())
            if t == "item":
                np.testing.assert_array_equal(nfeat["item/feat"].numpy(), features[orig["item"][typed.numpy()]])
        etype_ids = json.loads(config.read_text())["etypes"]
        for name, i in etype_ids.items():
            s_type, _, d_type = name.split(":")
            m = ie & (g.edata["_TYPE"].numpy() == i)
            _, s_typed = gpb.map_to_per_ntype(g.ndata["_ID"][src[m]])
            _, d_typed = gpb.map_to_per_ntype(g.ndata["_ID"][dst[m]])
            s_orig, d_orig = orig[s_type][s_typed.numpy()], orig[d_type][d_typed.numpy()]
            if name in ("item:interacted_by:user", "user:followed_by:user"):
                s_orig, d_orig = d_orig, s_orig
            seen[name].append(np.stack([s_orig, d_orig], 1))
            # orig_eids: new per-type edge id -> dataset edge (row of train.parquet / social.parquet)
            _, typed_eids = gpb.map_to_per_etype(g.edata["_ID"][m])
            rows = np.load(out / "orig_eids" / f"{name}.npy")[typed_eids.numpy()]
            table = social[["src", "dst"]] if "follow" in name else train[["user", "item"]]
            np.testing.assert_array_equal(table.to_numpy()[rows], np.stack([s_orig, d_orig], 1))
            if name == "user:interacts:item":
                np.testing.assert_array_equal(efeat[f"{name}/count"].numpy(), train["count"].to_numpy()[rows])
            if "follow" not in name:
                assert len(efeat[f"{name}/count"]) == m.sum()
        assert np.isfinite(summary["edge_cut"])
    users, items = meta["num_users"], meta["num_items"]
    assert inner_count == {"user": users, "item": items}
    for name, pairs in seen.items():
        pairs = np.concatenate(pairs)
        expected = social[["src", "dst"]].to_numpy() if "follow" in name else train[["user", "item"]].to_numpy()
        got = pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]
        np.testing.assert_array_equal(got, expected)  # each edge exactly once, none missing
    stats = json.loads((out / "partition_stats.json").read_text())
    assert len(stats["per_part"]) == parts
    assert sum(s["train_edges"] for s in stats["per_part"]) == meta["edges"]["train"]
    assert sum(s["val_edges"] for s in stats["per_part"]) == meta["edges"]["val"]
    if parts > 1 and summary["method"] != "random":
        assert summary["imbalance"] <= 0.10, summary


@pytest.mark.parametrize("partitioned", [("metis", 2)], indirect=True)
def test_id_maps_resolve_raw_ids_and_held_out_edges_follow_users(dataset, partitioned):
    _, out = partitioned
    for t in ("user", "item"):
        ids = pq.read_table(out / "ids" / f"{t}.parquet").to_pandas()
        raw = pq.read_table(dataset / "dataset" / "ids" / f"{t}.parquet").to_pandas()
        np.testing.assert_array_equal(ids["id"], np.arange(len(ids)))
        np.testing.assert_array_equal(ids["raw_id"], raw["raw_id"].to_numpy()[ids["dataset_id"]])
        np.testing.assert_array_equal(ids["dataset_id"], np.load(out / "orig_nids" / f"{t}.npy"))
    config = json.loads((out / "gnnrec.json").read_text())
    user_ranges = config["node_map"]["user"]
    users_before = np.cumsum([0] + [b - a for a, b in user_ranges])
    test = pq.read_table(dataset / "dataset" / "edges" / "test.parquet").to_pandas()
    total = 0
    for p in range(2):
        held = pq.read_table(out / f"part{p}" / "edges" / "test.parquet").to_pandas()
        total += len(held)
        assert ((held["user"] >= users_before[p]) & (held["user"] < users_before[p + 1])).all()
    assert total == len(test)


def test_halo_hops_two_adds_halo_edges(dataset):
    from gnnrec.partition.stage import run as partition
    out = dataset / "parts-halo2"
    summary = partition(load_config(None, overrides(dataset, "random", 2, out, "partition.halo_hops=2")))
    one = _cache.get(("random", 2))
    train = pq.read_table(dataset / "dataset" / "edges" / "train.parquet").to_pandas()[["user", "item"]].to_numpy()
    orig = {t: np.load(out / "orig_nids" / f"{t}.npy") for t in ("user", "item")}
    etypes = json.loads((out / "gnnrec.json").read_text())["etypes"]
    for p in range(2):
        g, _, _, gpb, _, _ = dgl_load(out / "gnnrec.json", p)
        halo = g.edata["inner_edge"] == 0
        assert halo.sum().item() > 0
        src, dst = g.edges()
        inner = g.ndata["inner_node"].bool()
        assert not inner[dst[halo]].any()
        assert (gpb.eid2partid(g.edata["_ID"][halo]).numpy() != p).all()
        # a halo edge's global id names the same dataset edge as its endpoints
        m = halo & (g.edata["_TYPE"] == etypes["user:interacts:item"])
        _, typed = gpb.map_to_per_etype(g.edata["_ID"][m])
        rows = np.load(out / "orig_eids" / "user:interacts:item.npy")[typed.numpy()]
        _, u = gpb.map_to_per_ntype(g.ndata["_ID"][src[m]])
        _, i = gpb.map_to_per_ntype(g.ndata["_ID"][dst[m]])
        np.testing.assert_array_equal(train[rows], np.stack([orig["user"][u.numpy()], orig["item"][i.numpy()]], 1))
    if one is not None:
        assert summary["halo_fraction"] >= one[0]["halo_fraction"]


def test_random_walk_over_ray_workers(dataset):
    from gnnrec.partition.stage import run as partition
    out = dataset / "parts-ray"
    summary = partition(load_config(None, overrides(dataset, "random-walk", 2, out, "partition.workers=2",
                                                    "partition.mmap=true")))
    assert summary["imbalance"] <= 0.10 and summary["edge_cut"] < 0.5
    assert (out / "gnnrec.json").exists()


DIST_CHECK = """
import os, sys
os.environ["DGL_DIST_MODE"] = "standalone"
os.environ["DGLBACKEND"] = "pytorch"
import dgl, torch
dgl.distributed.initialize(None)
g = dgl.distributed.DistGraph("gnnrec", part_config=sys.argv[1])
print(g.num_nodes("user"), g.num_nodes("item"), g.num_edges(("user", "interacts", "item")))
assert g.nodes["item"].data["feat"][torch.arange(2)].shape == (2, 4)
frontier = dgl.distributed.sample_neighbors(g, {"user": torch.arange(5)}, 3)
assert frontier.num_edges() > 0
dgl.distributed.exit_client()
"""


@pytest.mark.parametrize("partitioned", [("random-walk", 1)], indirect=True)
def test_distgraph_serves_one_partition_standalone(dataset, partitioned):
    _, out = partitioned
    meta = Dataset(dataset / "dataset").meta
    run = subprocess.run([sys.executable, "-c", DIST_CHECK, str(out / "gnnrec.json")],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert f"{meta['num_users']} {meta['num_items']} {meta['edges']['train']}" in run.stdout


@pytest.mark.parametrize("method", METHODS)
def test_clusters_are_saved_per_partition_id_and_keep_edges_inside(dataset, method):
    """partition.clusters: every node's cluster by partition id; most training edges stay inside a
    cluster (METIS and the random-walk partitioner; random hashing: about 1/8), so the ids line up."""
    from gnnrec.data.formats import Partitions
    from gnnrec.partition.stage import run as partition
    out = dataset / f"clusters-{method}"
    summary = partition(load_config(None, overrides(dataset, method, 2, out, "partition.clusters=8")))
    parts, meta = Partitions(out), Dataset(dataset / "dataset").meta
    clusters = parts.clusters()
    assert summary["clusters"] == 8 and len(clusters) == meta["num_users"] + meta["num_items"]
    assert set(np.unique(clusters)) == set(range(8))
    train = pq.read_table(dataset / "dataset" / "edges" / "train.parquet")
    user = parts.partition_ids("user")[train["user"].to_numpy()]
    item = parts.partition_ids("item")[train["item"].to_numpy()] + meta["num_users"]
    inside = np.mean(clusters[user] == clusters[item])
    assert inside > 0.4 if method != "random" else inside < 0.25, inside


def part_of(parts, node_type: str, dataset_ids: np.ndarray) -> np.ndarray:
    """The part of each node (dataset ids)."""
    return parts.parts(node_type)[parts.partition_ids(node_type)[dataset_ids]]


def test_a_grown_dataset_keeps_the_base_parts_and_places_its_new_users_by_their_neighbours(dataset):
    """partition.base: old users and items stay in their part; a new user joins the part of most of its
    items; DGL loads the result; a base with another number of parts is refused naming partition.base."""
    from gnnrec.data.formats import Partitions
    from gnnrec.partition.stage import run as partition
    partition(load_config(None, overrides(dataset, "metis", 2, dataset / "p-base")))
    log = pq.read_table(dataset / "synth" / "interactions")
    new = []  # 3 new users, each with 6 rows of an existing user's
    for k, old_user in enumerate(np.unique(log["user_id"].to_numpy())[:3]):
        rows = log.filter(pc.equal(log["user_id"], old_user)).slice(0, 6)
        new.append(rows.set_column(rows.schema.get_field_index("user_id"), "user_id",
                                   pa.array([-1 - k] * len(rows), log.schema.field("user_id").type)))
    (dataset / "grown").mkdir()
    pq.write_table(pa.concat_tables([log, *new]), dataset / "grown" / "log.parquet")
    grown = overrides(dataset, "metis", 2, dataset / "p-grown", "partition.base={workdir}/p-base",
                      "ingest.interactions.path={workdir}/grown", "ingest.base={workdir}/dataset",
                      "ingest.out={workdir}/d-grown", "partition.dataset={workdir}/d-grown")
    ingest(load_config(None, grown))
    assert partition(load_config(None, grown))["base"] == str(dataset / "p-base")
    base, parts = Partitions(dataset / "p-base"), Partitions(dataset / "p-grown")
    for node_type in ("user", "item"):
        old = base.orig_nids(node_type)
        assert np.array_equal(part_of(parts, node_type, old), part_of(base, node_type, old))
    train = pq.read_table(dataset / "d-grown" / "edges" / "train.parquet")
    users, item_parts = train["user"].to_numpy(), part_of(parts, "item", train["item"].to_numpy())
    new_users = np.arange(len(base.orig_nids("user")), len(parts.orig_nids("user")))
    assert len(new_users) == 3
    for user, part in zip(new_users, part_of(parts, "user", new_users)):
        counts = np.bincount(item_parts[users == user], minlength=2)
        assert counts[part] == counts.max()  # the part of most of its items
    inner = 0
    for part in range(2):  # DGL's own loader reads every part
        g = dgl_load(dataset / "p-grown" / "gnnrec.json", part)[0]
        inner += int(g.ndata["inner_node"].sum())
    assert inner == len(parts.orig_nids("user")) + len(parts.orig_nids("item"))
    with pytest.raises(UserError, match=r"partition.base=.*p-base: 2 parts, partition.parts=4"):
        partition(load_config(None, overrides(dataset, "metis", 4, dataset / "p-4", "partition.base={workdir}/p-base")))


@pytest.mark.parametrize("bad, message", [
    (["partition.parts=0"], "partition.parts"),
    (["partition.parts=100000"], "more than the nodes of a type"),
    (["partition.clusters=100000"], "partition.clusters=100000"),
    (["partition.method=spectral"], "partition.method"),
    (["partition.dataset=/nonexistent/dataset"], "not a gnnrec dataset"),
])
def test_bad_input_exits_2_and_writes_nothing(dataset, capsys, bad, message):
    out = dataset / "bad-out"
    assert main(["partition", *overrides(dataset, "random", 2, out), *bad]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err
    assert not out.exists()


def test_incomplete_or_old_dataset_exits_2(dataset, tmp_path, capsys):
    import shutil
    broken = tmp_path / "broken"
    shutil.copytree(dataset / "dataset", broken)
    (broken / "edges" / "val.parquet").unlink()
    out = tmp_path / "out"
    args = ["partition", *overrides(dataset, "metis", 2, out), f"partition.dataset={broken}"]
    assert main(args) == 2
    assert "incomplete dataset" in capsys.readouterr().err
    meta = json.loads((broken / "meta.json").read_text())
    meta["version"] = 0
    (broken / "meta.json").write_text(json.dumps(meta))
    assert main(args) == 2
    assert "expected gnnrec-dataset v1" in capsys.readouterr().err
    meta["version"] = 1
    (broken / "meta.json").write_text(json.dumps(meta))
    shutil.copy(dataset / "dataset" / "edges" / "val.parquet", broken / "edges" / "val.parquet")
    train = broken / "edges" / "train.parquet"
    train.write_bytes(train.read_bytes()[:200])  # damaged since ingest
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "its edges cannot be read" in err[0]
    assert not out.exists() and not list(tmp_path.glob(".out.tmp-*"))


def test_crash_mid_write_leaves_no_partition_directory(dataset, monkeypatch):
    from gnnrec.partition import stage, writer
    out = dataset / "crash-out"

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")
    monkeypatch.setattr(writer.dgl_adapter, "save_partition", boom)
    with pytest.raises(RuntimeError):
        stage.run(load_config(None, overrides(dataset, "random", 2, out)))
    assert not out.exists() and not list(dataset.glob(".crash-out.tmp-*"))


def test_duplicate_edges_never_reach_metis(dataset, tmp_path, capsys):
    """DGL's METIS corrupts the heap on duplicate edges: a dataset holding one is refused up front."""
    import shutil
    import pyarrow as pa
    broken = tmp_path / "dup"
    shutil.copytree(dataset / "dataset", broken)
    train = pq.read_table(broken / "edges" / "train.parquet")
    pq.write_table(pa.concat_tables([train.slice(0, 1), train]), broken / "edges" / "train.parquet")
    out = tmp_path / "out"
    assert main(["partition", *overrides(dataset, "metis", 2, out), f"partition.dataset={broken}"]) == 2
    assert "without duplicates" in capsys.readouterr().err
    assert not out.exists()
