"""Parquet ingest: ID maps, deduplication, nulls, splits, graph, features, input forms, bad input, real data."""
from collections import Counter, defaultdict

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gnnrec import UserError
from gnnrec.launch import cli
from gnnrec.launch.config import load_config
from gnnrec.dgl_adapter import load_graph
from gnnrec.data.formats import Dataset
from gnnrec.data.ingest import run as ingest, shared_items

from conftest import (BARE, DATASETS, edge_cfg, leftovers, make_cfg, raw_pairs, read_ids, read_json,
                      read_split, write_parquet)


def _frame(directory) -> pd.DataFrame:
    return pq.read_table(directory).to_pandas()


def _all_pairs(dataset) -> list[set]:
    return [raw_pairs(dataset, s) for s in ("train", "val", "test")]


# ---------------------------------------------------------------- counts and the dataset directory

def test_counts_on_small_synthetic(small_synth):
    d, stats = small_synth["dataset"], small_synth["stats"]
    inter = _frame(small_synth["synth_dir"] / "interactions")
    social = _frame(small_synth["synth_dir"] / "social")
    pairs = set(zip(inter.user_id, inter.item_id))
    loops = social.user_id == social.friend_id
    friends = set(zip(social.user_id[~loops], social.friend_id[~loops]))
    users = set(inter.user_id) | set(social.user_id) | set(social.friend_id)

    meta, saved = Dataset(d).meta, read_json(d / "stats.json")
    assert meta["num_users"] == stats["users"] == len(users)
    assert meta["num_items"] == stats["items"] == inter.item_id.nunique()
    assert sum(meta["edges"].values()) == len(pairs)
    assert meta["edges"] == {"train": stats["train_edges"], "val": stats["val_edges"], "test": stats["test_edges"]}
    assert stats["interactions_rows_read"] == len(inter) == 60_000
    assert stats["interactions_duplicates_collapsed"] == len(inter) - len(pairs)
    assert stats["social_rows_read"] == len(social)
    assert stats["social_self_loops_dropped"] == int(loops.sum()) > 0
    assert stats["social_duplicates_collapsed"] == int((~loops).sum()) - len(friends)
    assert meta["social_edges"] == len(friends)
    assert meta["feature_dims"] == {"item": 4}
    assert meta["edge_columns"] == ["count", "timestamp"]
    assert meta["id_types"] == {"user": "int", "item": "int"}
    assert {k: saved[k] for k in ("users", "items", "train_edges", "social_edges")} == \
        {k: stats[k] for k in ("users", "items", "train_edges", "social_edges")}
    assert load_config(d / "config.yaml") == small_synth["cfg"]
    assert leftovers(d.parent) == []
    # ID maps: raw users/items are exactly the input's, sorted
    assert read_ids(d, "user").tolist() == sorted(users)
    assert read_ids(d, "item").tolist() == sorted(set(inter.item_id))
    # social edges map back to the deduplicated non-loop pairs
    s = read_split(d, "social")
    u = read_ids(d, "user")
    assert set(zip(u[s["src"]].tolist(), u[s["dst"]].tolist())) == friends


def test_graph_loads_with_dgl(small_synth):
    d = small_synth["dataset"]
    meta = Dataset(d).meta
    g = load_graph(d / "graph.dgl")
    assert set(g.ntypes) == {"user", "item"}
    assert g.num_nodes("user") == meta["num_users"] and g.num_nodes("item") == meta["num_items"]
    train = read_split(d, "train")
    assert g.num_edges("interacts") == g.num_edges("interacted_by") == meta["edges"]["train"]
    src, dst = (t.numpy() for t in g.edges(etype="interacts"))
    assert set(zip(src.tolist(), dst.tolist())) == set(zip(train["user"].tolist(), train["item"].tolist()))
    rsrc, rdst = (t.numpy() for t in g.edges(etype="interacted_by"))
    assert set(zip(rdst.tolist(), rsrc.tolist())) == set(zip(src.tolist(), dst.tolist()))
    # edge data follows its edge
    order = np.lexsort((dst, src))
    torder = np.lexsort((train["item"], train["user"]))
    for name in ("count", "timestamp"):
        assert np.array_equal(g.edges["interacts"].data[name].numpy()[order], train[name][torder])
        assert np.array_equal(g.edges["interacted_by"].data[name].numpy(), g.edges["interacts"].data[name].numpy())
    social = read_split(d, "social")
    assert g.num_edges("follows") == meta["social_edges"] == len(social["src"])
    fs, fd = (t.numpy() for t in g.edges(etype="follows"))
    assert set(zip(fs.tolist(), fd.tolist())) == set(zip(social["src"].tolist(), social["dst"].tolist()))
    # no duplicate edge can reach METIS
    assert len(set(zip(src.tolist(), dst.tolist()))) == len(src)
    assert len(set(zip(fs.tolist(), fd.tolist()))) == len(fs) and not np.any(fs == fd)


# ---------------------------------------------------------------- duplicates, self-loops, nulls

DUPS = {"user_id": [1, 1, 1, 2, 2, 3, 1], "item_id": [10, 10, 10, 20, 20, 30, 20],
        "w": [1, 5, 2, 3, 3, 7, 4], "ts": [100, 300, 200, 50, 60, 10, 5]}


@pytest.mark.parametrize("weight_rule, time_rule, expected", [
    ("max", "latest", {(1, 10): (3, 5.0, 300), (1, 20): (1, 4.0, 5), (2, 20): (2, 3.0, 60), (3, 30): (1, 7.0, 10)}),
    ("sum", "earliest", {(1, 10): (3, 8.0, 100), (1, 20): (1, 4.0, 5), (2, 20): (2, 6.0, 50), (3, 30): (1, 7.0, 10)}),
])
def test_duplicates_collapsed(tmp_path, weight_rule, time_rule, expected):
    path = write_parquet(tmp_path / "in.parquet", DUPS)
    cfg = edge_cfg(tmp_path, path, "split.ratios=[1, 0, 0]", f"ingest.duplicate_weight={weight_rule}",
                   f"ingest.duplicate_timestamp={time_rule}", weight="w", timestamp="ts")
    stats = ingest(cfg)
    d = cfg.path(cfg.ingest.out)
    assert stats["interactions_duplicates_collapsed"] == 3
    assert (stats["train_edges"], stats["val_edges"], stats["test_edges"]) == (4, 0, 0)
    e = read_split(d, "train")
    u, i = read_ids(d, "user"), read_ids(d, "item")
    got = {(u[a], i[b]): (c, w, t) for a, b, c, w, t in zip(e["user"], e["item"], e["count"], e["weight"], e["timestamp"])}
    assert got == expected
    assert e["weight"].dtype == np.float64 and e["timestamp"].dtype == np.int64
    g = load_graph(d / "graph.dgl")
    assert sorted(g.edges["interacts"].data["count"].tolist()) == [1, 1, 2, 3]


def test_social_self_loops_dropped_and_counted(tmp_path):
    inter = write_parquet(tmp_path / "in.parquet", {"user_id": [1, 2, 3], "item_id": [1, 1, 1]})
    soc = write_parquet(tmp_path / "soc.parquet", {"a": [1, 2, 2, 3, 3, 4, 5], "b": [1, 3, 3, 3, 1, 4, 1]})
    cfg = edge_cfg(tmp_path, inter, f"ingest.social.path={soc}", "ingest.social.src_column=a",
                   "ingest.social.dst_column=b")
    stats = ingest(cfg)
    d = cfg.path(cfg.ingest.out)
    assert stats["social_rows_read"] == 7
    assert stats["social_self_loops_dropped"] == 3  # (1,1), (3,3), (4,4)
    assert stats["social_duplicates_collapsed"] == 1  # (2,3) twice
    assert read_json(d / "stats.json")["social_self_loops_dropped"] == 3
    s, u = read_split(d, "social"), read_ids(d, "user")
    assert set(zip(u[s["src"]].tolist(), u[s["dst"]].tolist())) == {(2, 3), (3, 1), (5, 1)}
    # users only in the social graph (4 only in a self-loop, 5 only as a follower) are still users
    assert u.tolist() == [1, 2, 3, 4, 5] and stats["social_only_users"] == 2
    assert load_graph(d / "graph.dgl").num_edges("follows") == 3


def _with_nulls(tmp_path):
    return write_parquet(tmp_path / "in.parquet", pa.table({
        "user_id": pa.array([1, None, 3, 4, 5, 6], pa.int64()),
        "item_id": pa.array([1, 2, None, 4, 5, None], pa.int64()),
        "ts": pa.array([1, 2, 3, None, 5, 6], pa.int64())}))


def test_nulls_dropped_and_counted(tmp_path):
    path = _with_nulls(tmp_path)
    cfg = edge_cfg(tmp_path, path, "split.ratios=[1, 0, 0]", timestamp="ts")
    stats = ingest(cfg)
    d = cfg.path(cfg.ingest.out)
    assert stats["interactions_rows_read"] == 6
    assert stats["interactions_rows_with_nulls_dropped"] == 4
    assert read_json(d / "stats.json")["interactions_rows_with_nulls_dropped"] == 4
    assert raw_pairs(d, "train") == {(1, 1), (5, 5)}
    assert read_ids(d, "user").tolist() == [1, 5]  # ids of dropped rows are not nodes


def test_nulls_rejected(tmp_path, capsys):
    path = _with_nulls(tmp_path)
    cfg = edge_cfg(tmp_path, path, "ingest.nulls=reject", timestamp="ts")
    with pytest.raises(UserError, match=r"in\.parquet.*'user_id'.*null"):
        ingest(cfg)
    assert not (tmp_path / "dataset").exists() and leftovers(tmp_path) == []


# ---------------------------------------------------------------- raw IDs

def test_string_ids_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    users = [f"user-{k}" for k in rng.integers(0, 50, 400)]
    items = [f"item/{k}é" for k in rng.integers(0, 80, 400)]
    path = write_parquet(tmp_path / "in.parquet", {"user_id": users, "item_id": items})
    cfg = edge_cfg(tmp_path, path)
    ingest(cfg)
    d = cfg.path(cfg.ingest.out)
    assert Dataset(d).meta["id_types"] == {"user": "str", "item": "str"}
    t = pq.read_table(d / "ids" / "user.parquet")
    assert t.schema.field("id").type == pa.int64()
    assert pa.types.is_large_string(t.schema.field("raw_id").type) or pa.types.is_string(t.schema.field("raw_id").type)
    train, val, test = _all_pairs(d)
    assert train | val | test == set(zip(users, items))
    assert not (train & val or train & test or val & test)
    assert sorted(read_ids(d, "user").tolist()) == sorted(set(users))


def test_string_ids_from_synth_with_social_and_features(tmp_path):
    from gnnrec.data.synth import run as synth
    cfg = make_cfg(tmp_path, "synth.users=200", "synth.items=100", "synth.edges=3000", "synth.social_edges=300",
                   "synth.item_feature_dim=2", "synth.string_ids=true")
    synth(cfg)
    stats = ingest(cfg)
    d = cfg.path(cfg.ingest.out)
    inter = _frame(cfg.path(cfg.synth.out) / "interactions")
    assert set().union(*_all_pairs(d)) == set(zip(inter.user_id, inter.item_id))
    assert stats["items_without_features"] == 0
    feats, raw = np.load(d / "features" / "item.npy"), read_ids(d, "item")
    f = _frame(cfg.path(cfg.synth.out) / "item_features.parquet").set_index("item_id")
    assert np.allclose(feats, f.loc[raw, ["f0", "f1"]].to_numpy())


def test_non_contiguous_int_ids(tmp_path):
    edges = {(10, 5), (1000, 5), (7, 500), (10, 50000), (7, 5), (1000, 50000)}
    u, i = zip(*sorted(edges))
    path = write_parquet(tmp_path / "in.parquet", {"user_id": list(u), "item_id": list(i)})
    cfg = edge_cfg(tmp_path, path, "split.ratios=[1, 0, 0]")
    ingest(cfg)
    d = cfg.path(cfg.ingest.out)
    assert read_ids(d, "user").tolist() == [7, 10, 1000]
    assert read_ids(d, "item").tolist() == [5, 500, 50000]
    e = read_split(d, "train")
    assert set(zip(e["user"].tolist(), e["item"].tolist())) == {(1, 0), (2, 0), (0, 1), (1, 2), (0, 0), (2, 2)}
    assert raw_pairs(d, "train") == edges


def test_huge_sparse_and_negative_int_ids(tmp_path):
    users = [-5, 2**62, 3, 2**62, -5]  # int64, far from contiguous
    items = [70000, 0, 70000, 1, 1]  # int32 in the file
    path = write_parquet(tmp_path / "in.parquet", {"user_id": users, "item_id": pa.array(items, pa.int32())})
    cfg = edge_cfg(tmp_path, path, "split.ratios=[1, 0, 0]")
    ingest(cfg)
    d = cfg.path(cfg.ingest.out)
    assert read_ids(d, "user").tolist() == [-5, 3, 2**62]
    assert raw_pairs(d, "train") == set(zip(users, items))


@pytest.mark.parametrize("kind", ["dense", "sparse", "str"])
def test_a_dataset_grown_from_a_base_keeps_its_ids_and_numbers_new_ones_after(tmp_path, kind):
    """ingest.base: the base's users and items keep their ids (even one the new log lacks), new IDs follow in
    order, the edges are the new log's, and the ids still resolve (dense table, sparse int64 and string maps)."""
    raw = {"dense": lambda x: x, "sparse": lambda x: x * 2**40 - 7, "str": lambda x: f"n{x:03d}"}[kind]
    old = [(3, 1), (9, 1), (5, 4)]
    new = [(9, 1), (2, 8), (11, 4), (5, 6)]  # user 3 gone; users 2, 11 and items 6, 8 new
    first = write_parquet(tmp_path / "old.parquet", {"user_id": [raw(u) for u, _ in old], "item_id": [raw(i) for _, i in old]})
    second = write_parquet(tmp_path / "new.parquet", {"user_id": [raw(u) for u, _ in new], "item_id": [raw(i) for _, i in new]})
    ingest(edge_cfg(tmp_path, first, "split.ratios=[1, 0, 0]", "ingest.out={workdir}/d0"))
    stats = ingest(edge_cfg(tmp_path, second, "split.ratios=[1, 0, 0]", "ingest.out={workdir}/d1",
                            "ingest.base={workdir}/d0"))
    assert read_ids(tmp_path / "d1", "user").tolist() == [raw(u) for u in (3, 5, 9, 2, 11)]
    assert read_ids(tmp_path / "d1", "item").tolist() == [raw(i) for i in (1, 4, 6, 8)]
    assert stats["new_users"] == 2 and stats["new_items"] == 2
    assert raw_pairs(tmp_path / "d1", "train") == {(raw(u), raw(i)) for u, i in new}


def test_a_base_of_another_id_type_or_with_kcore_is_refused(tmp_path, capsys):
    ints = write_parquet(tmp_path / "ints.parquet", {"user_id": [1, 2], "item_id": [1, 2]})
    strs = write_parquet(tmp_path / "strs.parquet", {"user_id": ["a", "b"], "item_id": ["x", "y"]})
    ingest(edge_cfg(tmp_path, ints, "split.ratios=[1, 0, 0]", "ingest.out={workdir}/d0"))
    cfg = edge_cfg(tmp_path, strs, "split.ratios=[1, 0, 0]", "ingest.out={workdir}/d1", "ingest.base={workdir}/d0")
    with pytest.raises(UserError, match=r"ingest.base=\{workdir\}/d0 \(users\): its IDs are int64"):
        ingest(cfg)
    assert not (tmp_path / "d1").exists()
    with pytest.raises(UserError, match=r"ingest.base=\{workdir\}/d0: k-core filtering"):
        ingest(edge_cfg(tmp_path, ints, "ingest.out={workdir}/d2", "ingest.base={workdir}/d0", "ingest.min_user_degree=2"))


# ---------------------------------------------------------------- splits

def _per_user(pairs_by_split):
    out = defaultdict(Counter)
    for split, pairs in pairs_by_split.items():
        for u, _ in pairs:
            out[u][split] += 1
    return out


def test_ratio_split(small_synth):
    d = small_synth["dataset"]
    train, val, test = _all_pairs(d)
    inter = _frame(small_synth["synth_dir"] / "interactions")
    deduped = set(zip(inter.user_id, inter.item_id))
    assert not (train & val or train & test or val & test)
    assert train | val | test == deduped
    # no duplicate edge remains: the split files hold exactly as many rows as distinct pairs
    assert sum(len(read_split(d, s)["user"]) for s in ("train", "val", "test")) == len(deduped)
    n = len(deduped)
    assert abs(len(val) / n - 0.1) < 0.03 and abs(len(test) / n - 0.1) < 0.03, (len(val) / n, len(test) / n)
    for u, c in _per_user({"train": train, "val": val, "test": test}).items():
        deg = sum(c.values())
        if deg >= 2:
            assert c["train"] >= 1, (u, c)
        assert abs(c["test"] - 0.1 * deg) <= 1 and abs(c["val"] - 0.1 * deg) <= 1, (u, c)
    stats = small_synth["stats"]
    assert stats["users_without_train_edges"] == 0


def test_ratio_split_seed_and_uneven_ratios(tmp_path):
    rng = np.random.default_rng(1)
    edges = {(int(u), int(i)) for u, i in zip(rng.integers(0, 40, 3000), rng.integers(0, 300, 3000))}
    u, i = zip(*edges)
    path = write_parquet(tmp_path / "in.parquet", {"user_id": list(u), "item_id": list(i)})
    results = {}
    for name, ratios, seed in (("a", "[0.5, 0.2, 0.3]", 0), ("b", "[0.5, 0.2, 0.3]", 0), ("c", "[0.5, 0.2, 0.3]", 1)):
        cfg = edge_cfg(tmp_path, path, f"ingest.out={{workdir}}/{name}", f"split.ratios={ratios}", f"split.seed={seed}")
        ingest(cfg)
        results[name] = _all_pairs(cfg.path(cfg.ingest.out))
    assert results["a"] == results["b"]  # deterministic for a seed
    assert results["a"][2] != results["c"][2]  # another seed, another split
    train, val, test = results["a"]
    assert train | val | test == edges
    assert abs(len(train) / len(edges) - 0.5) < 0.03
    assert abs(len(val) / len(edges) - 0.2) < 0.03
    assert abs(len(test) / len(edges) - 0.3) < 0.03


@pytest.mark.parametrize("split", [["split.ratios=[0.7, 0.2, 0.1]"], ["split.method=temporal", "split.val_last=2"]])
def test_refit_split_trains_on_the_validation_edges_and_keeps_the_test(tmp_path, split):
    rng = np.random.default_rng(4)
    df = pd.DataFrame({"user_id": rng.integers(0, 60, 3000), "item_id": rng.integers(0, 400, 3000),
                       "ts": rng.permutation(3000)})
    path = tmp_path / "in.parquet"
    df.to_parquet(path)
    splits = {}
    for refit in (False, True):
        cfg = edge_cfg(tmp_path, path, "ingest.interactions.timestamp_column=ts", f"ingest.out={{workdir}}/{refit}",
                       f"split.refit={refit}", *split)
        ingest(cfg)
        splits[refit] = _all_pairs(cfg.path(cfg.ingest.out))
    (train, val, test), (refit_train, refit_val, refit_test) = splits[False], splits[True]
    assert len(val) > 100 and not refit_val
    assert refit_train == train | val and refit_test == test


def test_ratio_split_small_degrees(tmp_path):
    # degree 1: train only; degree 2: one train + one test; degree 3: one each
    edges = {(1, 1), (2, 1), (2, 2), (3, 1), (3, 2), (3, 3)}
    u, i = zip(*sorted(edges))
    path = write_parquet(tmp_path / "in.parquet", {"user_id": list(u), "item_id": list(i)})
    cfg = edge_cfg(tmp_path, path)
    ingest(cfg)
    per_user = _per_user(dict(zip(("train", "val", "test"), _all_pairs(cfg.path(cfg.ingest.out)))))
    assert per_user[1] == Counter(train=1)
    assert per_user[2] == Counter(train=1, test=1)
    assert per_user[3] == Counter(train=1, val=1, test=1)


@pytest.mark.parametrize("rounding", ["at_least_one", "random"])
def test_ratio_split_shares_on_a_log_of_light_users(tmp_path, rounding):
    """2,000 users of 2-6 edges, ratios 0.98/0.01/0.01: "random" rounding keeps each held-out share
    within 1 point of its ratio; "at_least_one" gives every user of 3 or more edges one of each."""
    rng = np.random.default_rng(3)
    deg = rng.integers(2, 7, 2000)
    users = np.repeat(np.arange(2000), deg)
    items = np.concatenate([rng.choice(500, d, replace=False) for d in deg])
    path = write_parquet(tmp_path / "in.parquet", {"user_id": users.tolist(), "item_id": items.tolist()})
    cfg = edge_cfg(tmp_path, path, "split.ratios=[0.98, 0.01, 0.01]", f"split.rounding={rounding}")
    ingest(cfg)
    train, val, test = _all_pairs(cfg.path(cfg.ingest.out))
    per_user = _per_user({"train": train, "val": val, "test": test})
    assert all(c["train"] >= 1 for c in per_user.values())
    shares = len(val) / len(users), len(test) / len(users)
    if rounding == "random":
        assert all(abs(share - 0.01) < 0.01 for share in shares), shares
    else:
        assert all(share > 0.15 for share in shares), shares  # what the README warns of
        assert all(c["val"] == c["test"] == 1 for u, c in per_user.items() if deg[u] >= 3)


@pytest.mark.parametrize("leave_last, val_last", [(1, 0), (1, 1), (2, 1)])
def test_temporal_split(tmp_path, leave_last, val_last):
    rng = np.random.default_rng(2)
    n = 4000
    df = pd.DataFrame({"user_id": rng.integers(0, 200, n), "item_id": rng.integers(0, 500, n),
                       "ts": rng.permutation(n) * 10})  # distinct times: "latest" is unambiguous
    path = write_parquet(tmp_path / "in.parquet", pa.Table.from_pandas(df, preserve_index=False))
    cfg = edge_cfg(tmp_path, path, "split.method=temporal", f"split.leave_last={leave_last}",
                   f"split.val_last={val_last}", timestamp="ts")
    ingest(cfg)
    d = cfg.path(cfg.ingest.out)
    latest = df.groupby(["user_id", "item_id"]).ts.max()  # duplicates keep their latest time
    u, i = read_ids(d, "user"), read_ids(d, "item")
    parts = {}
    for split in ("train", "val", "test"):
        e = read_split(d, split)
        parts[split] = pd.DataFrame({"user_id": u[e["user"]], "item_id": i[e["item"]], "ts": e["timestamp"]})
        assert np.array_equal(parts[split].ts.to_numpy(),
                              latest.loc[list(zip(parts[split].user_id, parts[split].item_id))].to_numpy())
    everything = pd.concat(parts.values())
    assert len(everything) == len(latest)
    for user, group in latest.reset_index().groupby("user_id"):
        times = np.sort(group.ts.to_numpy())[::-1]
        n_test = min(leave_last, len(times) - 1)
        n_val = min(val_last, len(times) - 1 - n_test)
        got = {s: np.sort(p.ts[p.user_id == user].to_numpy())[::-1] for s, p in parts.items()}
        assert np.array_equal(got["test"], times[:n_test]), user  # the user's latest edges
        assert np.array_equal(got["val"], times[n_test:n_test + n_val]), user
        assert len(got["train"]) == len(times) - n_test - n_val >= 1


def _test_file_case(tmp_path):
    train = write_parquet(tmp_path / "train.parquet",
                          {"user_id": [1, 1, 2, 2, 3, 3], "item_id": [10, 11, 10, 12, 11, 12]})
    test = write_parquet(tmp_path / "test.parquet", {"user_id": [1, 2, 4, 3, 1], "item_id": [12, 10, 11, 99, 12]})
    return edge_cfg(tmp_path, train, "split.method=test_file", f"split.test_path={test}")


def test_test_file_split(tmp_path):
    cfg = _test_file_case(tmp_path)
    stats = ingest(cfg)
    d = cfg.path(cfg.ingest.out)
    assert raw_pairs(d, "test") == {(1, 12), (4, 11), (3, 99)}
    assert raw_pairs(d, "train") == {(1, 10), (1, 11), (2, 10), (2, 12), (3, 11), (3, 12)}
    assert raw_pairs(d, "val") == set()
    assert stats["test_rows_read"] == 5
    assert stats["test_duplicates_collapsed"] == 1  # (1, 12) twice
    assert stats["test_edges_also_in_train_dropped"] == 1  # (2, 10) would leak the answer
    saved = read_json(d / "stats.json")
    assert saved["test_only_users"] == 1 and saved["test_only_items"] == 1  # user 4, item 99
    assert read_ids(d, "user").tolist() == [1, 2, 3, 4] and read_ids(d, "item").tolist() == [10, 11, 12, 99]
    g = load_graph(d / "graph.dgl")
    assert (g.num_nodes("user"), g.num_nodes("item"), g.num_edges("interacts")) == (4, 4, 6)
    assert saved["users_without_train_edges"] == 1 and saved["items_without_train_edges"] == 1


def test_test_file_split_with_validation(tmp_path):
    rng = np.random.default_rng(3)
    edges = {(int(u), int(i)) for u, i in zip(rng.integers(0, 30, 2000), rng.integers(0, 200, 2000))}
    u, i = zip(*edges)
    train = write_parquet(tmp_path / "train.parquet", {"user_id": list(u), "item_id": list(i)})
    test = write_parquet(tmp_path / "test.parquet", {"user_id": [0, 1], "item_id": [1000, 1001]})
    cfg = edge_cfg(tmp_path, train, "split.method=test_file", f"split.test_path={test}", "split.val_ratio=0.25")
    ingest(cfg)
    tr, va, te = _all_pairs(cfg.path(cfg.ingest.out))
    assert te == {(0, 1000), (1, 1001)}
    assert tr | va == edges and not tr & va
    assert abs(len(va) / len(edges) - 0.25) < 0.03


# ---------------------------------------------------------------- RecBole's filters: minimum weight, k-core

def test_min_weight_drops_light_rows_before_deduplication(tmp_path):
    path = write_parquet(tmp_path / "in.parquet", {
        "user_id": [1, 1, 1, 2, 2, 3, 3], "item_id": [10, 10, 20, 10, 30, 20, 40],
        "rating": pa.array([2, 4, 3, 5, 1, 2, 1], pa.int8())})  # integer ratings, as ML-1M's
    cfg = edge_cfg(tmp_path, path, "split.ratios=[1, 0, 0]", "ingest.interactions.min_weight=3",
                   "ingest.duplicate_weight=sum", weight="rating")
    stats = ingest(cfg)
    d = cfg.path(cfg.ingest.out)
    assert stats["interactions_rows_read"] == 7
    assert read_json(d / "stats.json")["interactions_below_min_weight_dropped"] == 4
    assert stats["interactions_duplicates_collapsed"] == 0  # (1, 10) weighing 2 went before deduplication
    e, u, i = read_split(d, "train"), read_ids(d, "user"), read_ids(d, "item")
    got = {(u[a], i[b]): (c, w) for a, b, c, w in zip(e["user"], e["item"], e["count"], e["weight"])}
    assert got == {(1, 10): (1, 4.0), (1, 20): (1, 3.0), (2, 10): (1, 5.0)}
    assert u.tolist() == [1, 2] and i.tolist() == [10, 20]  # ids met only in light rows are not nodes


# Users u1, u2, u6 and items i1, i2, i5 form the 2-core; u3..u5 and i3, i4 hang off it as a chain that
# one round of pruning only shortens: u5 (one distinct item, twice), then i4, u4, i3, u3.
KCORE_LOG = [("u1", "i1"), ("u1", "i2"), ("u1", "i5"), ("u2", "i1"), ("u2", "i2"), ("u6", "i2"), ("u6", "i5"),
             ("u3", "i2"), ("u3", "i3"), ("u4", "i3"), ("u4", "i4"), ("u5", "i4"), ("u5", "i4")]


def test_kcore_iterated_until_stable(tmp_path):
    u, i = zip(*KCORE_LOG)
    inter = write_parquet(tmp_path / "in.parquet", {"user_id": list(u), "item_id": list(i)})
    test = write_parquet(tmp_path / "test.parquet", {"user_id": ["u2", "u1", "u3", "u2", "u1"],
                                                     "item_id": ["i5", "i3", "i1", "i9", "i1"]})
    soc = write_parquet(tmp_path / "soc.parquet", {"a": ["u1", "u1", "u7"], "b": ["u2", "u5", "u1"]})
    cfg = edge_cfg(tmp_path, inter, "split.method=test_file", f"split.test_path={test}",
                   f"ingest.social.path={soc}", "ingest.social.src_column=a", "ingest.social.dst_column=b",
                   "ingest.min_user_degree=2", "ingest.min_item_degree=2")
    stats = ingest(cfg)
    d = cfg.path(cfg.ingest.out)
    assert raw_pairs(d, "train") == set(KCORE_LOG[:7])
    assert raw_pairs(d, "test") == {("u2", "i5")}  # the others name i3, u3, i9 (test-only) or a train edge
    s, users = read_split(d, "social"), read_ids(d, "user")
    assert set(zip(users[s["src"]].tolist(), users[s["dst"]].tolist())) == {("u1", "u2")}
    assert users.tolist() == ["u1", "u2", "u6"] and read_ids(d, "item").tolist() == ["i1", "i2", "i5"]
    assert np.all(np.diff(read_split(d, "train")["user"]) >= 0)  # renumbered in order: still sorted by user
    saved = read_json(d / "stats.json")
    assert {k: saved[k] for k in saved if k.startswith("kcore_")} == {
        "kcore_rounds": 5, "kcore_users_dropped": 4, "kcore_items_dropped": 3, "kcore_edges_dropped": 5,
        "kcore_test_edges_dropped": 3, "kcore_social_edges_dropped": 2}  # u7 (social only), i9 (test only)
    assert saved["interactions_duplicates_collapsed"] == 1 and saved["test_edges_also_in_train_dropped"] == 1
    assert (saved["users"], saved["items"], saved["train_edges"], saved["test_edges"]) == (3, 3, 7, 1)
    assert saved["social_only_users"] == saved["test_only_users"] == saved["test_only_items"] == 0
    meta, g = Dataset(d).meta, load_graph(d / "graph.dgl")
    assert (meta["num_users"], meta["num_items"]) == (g.num_nodes("user"), g.num_nodes("item")) == (3, 3)
    assert (g.num_edges("interacts"), g.num_edges("follows")) == (7, 1)


def _core_by_peeling(pairs: set, min_user: int, min_item: int) -> set:
    """The k-core found one node at a time, an order unlike ingest's rounds: the core is unique."""
    while True:
        users, items = Counter(u for u, _ in pairs), Counter(i for _, i in pairs)
        short_user = next((u for u, n in users.items() if n < min_user), None)
        short_item = next((i for i, n in items.items() if n < min_item), None)
        if short_user is None and short_item is None:
            return pairs
        pairs = {(u, i) for u, i in pairs if u != short_user and i != short_item}


@pytest.mark.parametrize("min_user, min_item", [(4, 0), (0, 5), (4, 5)])
def test_kcore_is_the_largest_subgraph_meeting_both_minimums(tmp_path, min_user, min_item):
    rng = np.random.default_rng(5)
    u, i = rng.zipf(1.5, 3000) % 150, rng.zipf(1.5, 3000) % 400  # skewed: a core and a fringe
    path = write_parquet(tmp_path / "in.parquet", {"user_id": u, "item_id": i})
    cfg = edge_cfg(tmp_path, path, f"ingest.min_user_degree={min_user}", f"ingest.min_item_degree={min_item}")
    stats = ingest(cfg)
    d = cfg.path(cfg.ingest.out)
    log = set(zip(u.tolist(), i.tolist()))
    core = set().union(*_all_pairs(d))  # the filter runs before the split
    assert 0 < len(core) < len(log)
    users, items = Counter(u for u, _ in core), Counter(i for _, i in core)
    assert min(users.values()) >= min_user and min(items.values()) >= min_item
    assert core == _core_by_peeling(log, min_user, min_item)  # so no edge of the largest core was dropped
    assert read_ids(d, "user").tolist() == sorted(users) and read_ids(d, "item").tolist() == sorted(items)
    assert stats["kcore_edges_dropped"] == len(log) - len(core)
    assert stats["kcore_users_dropped"] == len(set(u.tolist())) - len(users)
    assert stats["kcore_items_dropped"] == len(set(i.tolist())) - len(items)


# ---------------------------------------------------------------- social ties: the overlap filter

# (user, training items, validation item, test item) under split.method=temporal, leave_last=1, val_last=1:
# the latest edge is the test edge, the one before it the validation edge.
OVERLAP_LOG = [("u1", ["i1", "i2", "i3", "i4"], "i8", "i9"),
               ("u2", ["i1", "i2", "i5"], "i6", "i7"),
               ("u3", ["i3", "i7"], "i10", "i11"),
               ("u4", ["i8", "i9", "i12"], "i13", "i14")]
# training overlap by hand: count, Jaccard. u1-u4 share only u1's held-out i8, i9; u2-u3 only u2's test
# item i7; u5 has no item at all.
OVERLAP_TIES = {("u1", "u2"): (2, 2 / 5), ("u2", "u1"): (2, 2 / 5), ("u1", "u3"): (1, 1 / 5),
                ("u3", "u1"): (1, 1 / 5), ("u1", "u4"): (0, 0.0), ("u2", "u3"): (0, 0.0), ("u5", "u1"): (0, 0.0)}


def _overlap_case(tmp_path, *overrides):
    rows = [(u, i, t) for u, items, val, test in OVERLAP_LOG
            for u, i, t in [*((u, i, n) for n, i in enumerate(items)), (u, val, 100), (u, test, 200)]]
    u, i, t = zip(*rows)
    inter = write_parquet(tmp_path / "in.parquet", {"user_id": list(u), "item_id": list(i), "ts": list(t)})
    a, b = zip(*OVERLAP_TIES)
    soc = write_parquet(tmp_path / "soc.parquet", {"a": list(a), "b": list(b)})
    cfg = edge_cfg(tmp_path, inter, "split.method=temporal", "split.leave_last=1", "split.val_last=1",
                   f"ingest.social.path={soc}", "ingest.social.src_column=a", "ingest.social.dst_column=b",
                   *overrides, timestamp="ts")
    return cfg, ingest(cfg)


def _raw_social(dataset) -> set:
    s, users = read_split(dataset, "social"), read_ids(dataset, "user")
    return set(zip(users[s["src"]].tolist(), users[s["dst"]].tolist()))


@pytest.mark.parametrize("overlap, minimum", [("jaccard", 0.4), ("jaccard", 0.3), ("jaccard", 0.2),
                                              ("jaccard", 0.01), ("count", 1), ("count", 2), ("count", 3)])
def test_social_overlap_filter_by_hand(tmp_path, overlap, minimum):
    cfg, stats = _overlap_case(tmp_path, f"ingest.social.overlap={overlap}", f"ingest.social.min_overlap={minimum}")
    d = cfg.path(cfg.ingest.out)
    train, held_out = raw_pairs(d, "train"), raw_pairs(d, "val") | raw_pairs(d, "test")
    assert {("u1", "i8"), ("u1", "i9"), ("u2", "i7")} <= held_out and {("u4", "i8"), ("u4", "i9"), ("u3", "i7")} <= train
    value = {"count": 0, "jaccard": 1}[overlap]
    expected = {tie for tie, by in OVERLAP_TIES.items() if by[value] >= minimum}
    assert _raw_social(d) == expected  # never u1-u4 nor u2-u3: their items meet only in held-out edges
    saved = read_json(d / "stats.json")
    assert saved["social_low_overlap_dropped"] == stats["social_low_overlap_dropped"] == len(OVERLAP_TIES) - len(expected)
    assert saved["social_overlap_kept_share"] == round(len(expected) / len(OVERLAP_TIES), 4)
    assert saved["social_edges"] == len(expected) == load_graph(d / "graph.dgl").num_edges("follows")


def test_social_overlap_filter_off_by_default(tmp_path):
    cfg, stats = _overlap_case(tmp_path)
    assert (cfg.ingest.social.overlap, cfg.ingest.social.min_overlap) == ("jaccard", 0)
    assert _raw_social(cfg.path(cfg.ingest.out)) == set(OVERLAP_TIES)
    assert "social_low_overlap_dropped" not in stats


@pytest.mark.parametrize("overlap, minimum", [("jaccard", 0.05), ("count", 2)])
def test_social_overlap_filter_matches_sets(tmp_path, overlap, minimum):
    rng = np.random.default_rng(7)
    u, i = rng.zipf(1.6, 4000) % 120, rng.zipf(1.3, 4000) % 300
    a, b = rng.integers(0, 140, 3000), rng.integers(0, 140, 3000)  # users 120..139 only in the social graph
    inter = write_parquet(tmp_path / "in.parquet", {"user_id": u, "item_id": i})
    soc = write_parquet(tmp_path / "soc.parquet", {"a": a, "b": b})
    cfg = edge_cfg(tmp_path, inter, f"ingest.social.path={soc}", "ingest.social.src_column=a",
                   "ingest.social.dst_column=b", f"ingest.social.overlap={overlap}",
                   f"ingest.social.min_overlap={minimum}")
    stats = ingest(cfg)
    d = cfg.path(cfg.ingest.out)
    items = defaultdict(set)
    for user, item in raw_pairs(d, "train"):
        items[user].add(item)
    ties = {(x, y) for x, y in zip(a.tolist(), b.tolist()) if x != y}

    def by(x, y):
        shared, union = len(items[x] & items[y]), len(items[x] | items[y])
        return shared if overlap == "count" else (shared / union if union else 0.0)

    expected = {t for t in ties if by(*t) >= minimum}
    assert 0 < len(expected) < len(ties)
    assert _raw_social(d) == expected
    assert stats["social_low_overlap_dropped"] == len(ties) - len(expected)


def test_shared_items_in_chunks():
    rng = np.random.default_rng(3)
    key = np.unique(rng.integers(0, 50, 600) * 40 + rng.integers(0, 40, 600))
    deg = np.bincount(key // 40, minlength=60)
    a, b = rng.integers(0, 60, 500), rng.integers(0, 60, 500)
    whole = shared_items(key, deg, 40, a, b)
    sets = [set((key[key // 40 == x] % 40).tolist()) for x in range(60)]
    assert whole.tolist() == [len(sets[x] & sets[y]) for x, y in zip(a, b)]
    for chunk in (1, 7, 100):  # a chunk is the look-ups of whole pairs, however many that are
        assert np.array_equal(shared_items(key, deg, 40, a, b, chunk=chunk), whole)


# ---------------------------------------------------------------- features

def test_feature_table(tmp_path):
    path = write_parquet(tmp_path / "in.parquet", {"user_id": [1, 2, 3], "item_id": [100, 7, 55]})
    feats = write_parquet(tmp_path / "items.parquet", {
        "key": [55, 100, 12345], "a": [1.5, 2.5, 9.0], "b": [10, 20, 90], "skip": ["x", "y", "z"]})
    ufeats = write_parquet(tmp_path / "users.parquet", {"id": [3, 1, 2], "x": [0.3, 0.1, 0.2]})
    cfg = edge_cfg(tmp_path, path, f"ingest.item_features.path={feats}", "ingest.item_features.id_column=key",
                   "ingest.item_features.columns=[a, b]", f"ingest.user_features.path={ufeats}")
    stats = ingest(cfg)
    d = cfg.path(cfg.ingest.out)
    x = np.load(d / "features" / "item.npy")
    assert x.dtype == np.float32 and x.shape == (3, 2)
    assert read_ids(d, "item").tolist() == [7, 55, 100]
    assert x.tolist() == [[0, 0], [1.5, 10], [2.5, 20]]  # item 7 has no row: zeros
    assert stats["item_feature_rows_unknown_id"] == 1  # 12345 is no item
    assert stats["items_without_features"] == 1
    xu = np.load(d / "features" / "user.npy")
    assert xu.shape == (3, 1) and np.allclose(xu[:, 0], [0.1, 0.2, 0.3])
    assert Dataset(d).meta["feature_dims"] == {"user": 1, "item": 2}


# ---------------------------------------------------------------- input forms

def test_inputs_file_directory_and_glob(tmp_path):
    rng = np.random.default_rng(4)
    frames = [pd.DataFrame({"user_id": rng.integers(0, 50, 300), "item_id": rng.integers(0, 90, 300)})
              for _ in range(3)]
    src = tmp_path / "in"
    for k, f in enumerate(frames):
        write_parquet(src / ("nested" if k == 2 else "") / f"part-{k}.parquet",
                      pa.Table.from_pandas(f, preserve_index=False))
    (src / "_SUCCESS").write_text("")
    (src / ".part-0.parquet.crc").write_text("junk")
    write_parquet(src / "_temporary" / "0" / "task_1" / "part-0.parquet",  # a Spark task attempt's rows
                  pa.Table.from_pandas(frames[0], preserve_index=False))
    whole = set(zip(*(pd.concat(frames)[c] for c in ("user_id", "item_id"))))
    expected = {
        str(src / "part-0.parquet"): set(zip(frames[0].user_id, frames[0].item_id)),
        str(src): whole,
        str(src / "**" / "part-*.parquet"): whole,
        str(src / "part-[01].parquet"): set(zip(*(pd.concat(frames[:2])[c] for c in ("user_id", "item_id")))),
        str(src / "*"): set(zip(*(pd.concat(frames[:2])[c] for c in ("user_id", "item_id")))),  # not nested/
    }
    for k, (path, pairs) in enumerate(expected.items()):
        cfg = edge_cfg(tmp_path, path, f"ingest.out={{workdir}}/out{k}")
        stats = ingest(cfg)
        assert set().union(*_all_pairs(cfg.path(cfg.ingest.out))) == pairs, path
        assert stats["interactions_rows_read"] == {0: 300, 1: 900, 2: 900, 3: 600, 4: 600}[k]


def test_file_uri(tmp_path):
    path = write_parquet(tmp_path / "in.parquet", {"user_id": [1, 2], "item_id": [3, 4]})
    cfg = edge_cfg(tmp_path, f"file://{path}", "split.ratios=[1, 0, 0]")
    ingest(cfg)
    assert raw_pairs(cfg.path(cfg.ingest.out), "train") == {(1, 3), (2, 4)}


# ---------------------------------------------------------------- bad input: one line, exit 2, nothing left behind

def _good(tmp_path, **extra):
    return write_parquet(tmp_path / "in" / "e.parquet", {"user_id": [1, 2, 3], "item_id": [4, 5, 6], **extra})


def _case_missing_column(tmp_path):
    p = write_parquet(tmp_path / "in" / "e.parquet", {"user_id": [1, 2], "item": [1, 2]})
    return [f"ingest.interactions.path={p}"], ["e.parquet", "'item_id'", "ingest.interactions.dst_column"]


def _case_float_ids(tmp_path):
    p = write_parquet(tmp_path / "in" / "e.parquet", {"user_id": [1.0, 2.0], "item_id": [1, 2]})
    return [f"ingest.interactions.path={p}"], ["e.parquet", "'user_id'", "double"]


def _case_struct_column(tmp_path):
    p = write_parquet(tmp_path / "in" / "e.parquet", {"user_id": [1, 2], "item_id": [{"a": 1}, {"a": 2}]})
    return [f"ingest.interactions.path={p}"], ["e.parquet", "'item_id'", "struct"]


def _case_string_weight(tmp_path):
    p = _good(tmp_path, w=["a", "b", "c"])
    return [f"ingest.interactions.path={p}", "ingest.interactions.weight_column=w"], ["e.parquet", "'w'"]


def _case_all_null(tmp_path):
    p = write_parquet(tmp_path / "in" / "e.parquet", pa.table({
        "user_id": [1, 2], "item_id": [1, 2], "ts": pa.array([None, None], pa.int64())}))
    return ([f"ingest.interactions.path={p}", "ingest.interactions.timestamp_column=ts"],
            ["'ts'", "entirely null", "ingest.interactions.timestamp_column"])


def _case_null_typed_column(tmp_path):
    p = write_parquet(tmp_path / "in" / "e.parquet", {"user_id": [1, 2], "item_id": [None, None]})
    return [f"ingest.interactions.path={p}"], ["e.parquet", "'item_id'"]


def _case_empty(tmp_path):
    p = write_parquet(tmp_path / "in" / "e.parquet", pa.table({"user_id": pa.array([], pa.int64()),
                                                               "item_id": pa.array([], pa.int64())}))
    return [f"ingest.interactions.path={p}"], ["e.parquet", "no rows"]


def _case_empty_directory(tmp_path):
    (tmp_path / "in").mkdir()
    return [f"ingest.interactions.path={tmp_path / 'in'}"], ["in", "no input files"]


def _case_glob_matches_nothing(tmp_path):
    _good(tmp_path)
    return [f"ingest.interactions.path={tmp_path / 'in' / '*.pq'}"], ["*.pq", "no input files"]


def _case_not_parquet(tmp_path):
    p = tmp_path / "in" / "e.parquet"
    p.parent.mkdir()
    p.write_text("user_id,item_id\n1,2\n")
    return [f"ingest.interactions.path={p}"], ["e.parquet", "not a readable Parquet file"]


def _case_truncated(tmp_path):
    p = write_parquet(tmp_path / "in" / "e.parquet", {"user_id": list(range(500)), "item_id": list(range(500))})
    p.write_bytes(p.read_bytes()[:300])
    return [f"ingest.interactions.path={p}"], ["e.parquet", "Parquet"]


def _case_corrupt_pages(tmp_path):
    p = write_parquet(tmp_path / "in" / "e.parquet", {"user_id": list(range(1000)), "item_id": list(range(1000))})
    data = bytearray(p.read_bytes())
    for k in range(8, len(data) // 2):  # the column chunks; the footer stays readable
        data[k] ^= 0xFF
    p.write_bytes(bytes(data))
    return [f"ingest.interactions.path={p}"], ["e.parquet", "corrupt"]


def _case_negative_weight(tmp_path):
    p = _good(tmp_path, w=[1.0, -2.0, 3.0])
    return [f"ingest.interactions.path={p}", "ingest.interactions.weight_column=w"], ["e.parquet", "'w'", "negative"]


def _case_nan_weight(tmp_path):
    p = _good(tmp_path, w=[1.0, float("nan"), 3.0])
    return [f"ingest.interactions.path={p}", "ingest.interactions.weight_column=w"], ["e.parquet", "'w'", "NaN"]


def _case_infinite_weight(tmp_path):
    p = _good(tmp_path, w=[1.0, float("inf"), 3.0])
    return [f"ingest.interactions.path={p}", "ingest.interactions.weight_column=w"], ["e.parquet", "'w'", "infinite"]


def _case_min_weight_without_weight_column(tmp_path):
    p = _good(tmp_path)
    return [f"ingest.interactions.path={p}", "ingest.interactions.min_weight=3"], \
        ["ingest.interactions.min_weight", "ingest.interactions.weight_column"]


def _case_min_weight_above_every_row(tmp_path):
    p = _good(tmp_path, w=[1.0, 2.0, 3.0])
    return [f"ingest.interactions.path={p}", "ingest.interactions.weight_column=w",
            "ingest.interactions.min_weight=4"], ["e.parquet", "ingest.interactions.min_weight"]


def _case_kcore_leaves_nothing(tmp_path):
    p = _good(tmp_path)  # every user has one item
    return [f"ingest.interactions.path={p}", "ingest.min_user_degree=2"], \
        ["ingest.min_user_degree=2", "no interaction"]


def _case_negative_min_degree(tmp_path):
    p = _good(tmp_path)
    return [f"ingest.interactions.path={p}", "ingest.min_item_degree=-1"], ["ingest.min_item_degree"]


def _case_jaccard_above_one(tmp_path):
    p, s = _good(tmp_path), write_parquet(tmp_path / "s.parquet", {"user_id": [1], "friend_id": [2]})
    return [f"ingest.interactions.path={p}", f"ingest.social.path={s}", "ingest.social.src_column=user_id",
            "ingest.social.dst_column=friend_id", "ingest.social.min_overlap=2"], \
        ["ingest.social.min_overlap", "at most 1"]


def _case_min_overlap_on_interactions(tmp_path):
    p = _good(tmp_path)
    return [f"ingest.interactions.path={p}", "ingest.interactions.min_overlap=1"], \
        ["ingest.interactions.min_overlap", "unknown key"]


def _case_unknown_key(tmp_path):
    p = _good(tmp_path)
    return [f"ingest.interactions.path={p}", "ingest.interactions.wieght_column=w"], \
        ["ingest.interactions.wieght_column", "unknown key"]


def _case_nonexistent(tmp_path):
    return [f"ingest.interactions.path={tmp_path / 'nope.parquet'}"], ["nope.parquet", "no such file"]


def _case_feature_duplicate_ids(tmp_path):
    p = _good(tmp_path)
    f = write_parquet(tmp_path / "f.parquet", {"id": [4, 5, 4], "x": [1.0, 2.0, 3.0]})
    return [f"ingest.interactions.path={p}", f"ingest.item_features.path={f}", "ingest.item_features.id_column=id"], \
        ["f.parquet", "duplicate id", "'id'", "ingest.item_features"]


def _case_feature_id_type(tmp_path):
    p = _good(tmp_path)
    f = write_parquet(tmp_path / "f.parquet", {"id": [4.5, 5.0], "x": [1.0, 2.0]})
    return [f"ingest.interactions.path={p}", f"ingest.item_features.path={f}", "ingest.item_features.id_column=id"], \
        ["f.parquet", "'id'", "ingest.item_features.id_column"]


def _case_feature_non_numeric(tmp_path):
    p = _good(tmp_path)
    f = write_parquet(tmp_path / "f.parquet", {"id": [4, 5], "x": ["a", "b"]})
    return [f"ingest.interactions.path={p}", f"ingest.item_features.path={f}", "ingest.item_features.id_column=id"], \
        ["f.parquet", "'x'", "numeric"]


def _case_temporal_without_timestamp(tmp_path):
    p = _good(tmp_path)
    return [f"ingest.interactions.path={p}", "split.method=temporal"], \
        ["split.method=temporal", "ingest.interactions.timestamp_column"]


def _case_mixed_id_types(tmp_path):
    p = _good(tmp_path)
    t = write_parquet(tmp_path / "t.parquet", {"user_id": ["a"], "item_id": ["b"]})
    return [f"ingest.interactions.path={p}", "split.method=test_file", f"split.test_path={t}"], ["t.parquet", "IDs"]


def _case_mixed_types_between_files(tmp_path):
    _good(tmp_path)
    write_parquet(tmp_path / "in" / "f.parquet", {"user_id": ["x"], "item_id": [1]})
    return [f"ingest.interactions.path={tmp_path / 'in'}"], ["f.parquet", "'user_id'"]


BAD = [v for k, v in sorted(globals().items()) if k.startswith("_case_")]


@pytest.mark.parametrize("case", BAD, ids=[f.__name__[6:] for f in BAD])
def test_bad_input(tmp_path, capsys, case):
    overrides, expected = case(tmp_path)
    argv = ["ingest", f"workdir={tmp_path}", *BARE, *overrides]
    assert cli.main(argv) == 2
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.strip("\n").split("\n")
    assert len(lines) == 1 and lines[0].startswith("gnnrec ingest: error: "), err
    for text in expected:
        assert text in lines[0], (text, lines[0])
    assert not (tmp_path / "dataset").exists()
    assert leftovers(tmp_path) == [] and not list(tmp_path.rglob("*.tmp-*"))
    # and the stage function raises UserError (the CLI's only translation)
    with pytest.raises(UserError):
        ingest(load_config(None, argv[1:]))


def test_failed_ingest_keeps_the_previous_dataset(tmp_path):
    p = _good(tmp_path)
    cfg = edge_cfg(tmp_path, p)
    ingest(cfg)
    d = cfg.path(cfg.ingest.out)
    before = {f.relative_to(d): f.read_bytes() for f in d.rglob("*") if f.is_file()}
    f = write_parquet(tmp_path / "f.parquet", {"id": [4, 4], "x": [1.0, 2.0]})
    with pytest.raises(UserError, match="duplicate id"):  # fails inside the temporary directory
        ingest(edge_cfg(tmp_path, p, f"ingest.item_features.path={f}", "ingest.item_features.id_column=id"))
    assert {f.relative_to(d): f.read_bytes() for f in d.rglob("*") if f.is_file()} == before
    assert leftovers(tmp_path) == []


def test_load_meta_rejects_non_datasets(tmp_path):
    with pytest.raises(UserError, match="not a gnnrec dataset"):
        Dataset(tmp_path).meta
    (tmp_path / "meta.json").write_text('{"format": "gnnrec-dataset", "version": 999}')
    with pytest.raises(UserError, match="ingest it again"):
        Dataset(tmp_path).meta
    (tmp_path / "meta.json").write_text('{"format": "gnnrec-dataset", "version": 1, "num_users": 3}')
    with pytest.raises(UserError, match="meta.json: incomplete .*num_items"):
        Dataset(tmp_path).meta


# ---------------------------------------------------------------- the shared datasets

def _dataset(name):
    if not (DATASETS / name).is_dir():
        pytest.skip(f"{DATASETS / name} is not present")
    return DATASETS / name


def test_gowalla_counts(tmp_path):
    g = _dataset("gowalla")
    cfg = make_cfg(tmp_path, *BARE, f"ingest.interactions.path={g / 'train.parquet'}", "split.method=test_file",
                   f"split.test_path={g / 'test.parquet'}")
    stats = ingest(cfg)
    assert (stats["users"], stats["items"]) == (29_858, 40_981)
    assert (stats["train_edges"], stats["val_edges"], stats["test_edges"]) == (810_128, 0, 217_242)
    assert stats["interactions_duplicates_collapsed"] == stats["test_duplicates_collapsed"] == 0
    assert stats["test_edges_also_in_train_dropped"] == 0
    assert stats["test_only_users"] == stats["test_only_items"] == 0
    d = cfg.path(cfg.ingest.out)
    graph = load_graph(d / "graph.dgl")
    assert (graph.num_nodes("user"), graph.num_nodes("item")) == (29_858, 40_981)
    assert graph.num_edges("interacts") == graph.num_edges("interacted_by") == 810_128
    # the test split maps back to exactly the given test file
    te = read_split(d, "test")
    raw = pq.read_table(g / "test.parquet").to_pandas()
    u, i = read_ids(d, "user"), read_ids(d, "item")
    assert np.array_equal(np.sort(u[te["user"]] * 10**6 + i[te["item"]]),
                          np.sort(raw.user_id.to_numpy() * 10**6 + raw.item_id.to_numpy()))


def test_lastfm_counts(tmp_path):
    lf = _dataset("lastfm")
    cfg = make_cfg(tmp_path, *BARE, f"ingest.interactions.path={lf / 'interactions.parquet'}",
                   "ingest.interactions.weight_column=weight", f"ingest.social.path={lf / 'social.parquet'}",
                   "ingest.social.src_column=user_id", "ingest.social.dst_column=friend_id", "split.method=ratio")
    stats = ingest(cfg)
    assert (stats["users"], stats["items"]) == (1_892, 17_632)
    assert stats["train_edges"] + stats["val_edges"] + stats["test_edges"] == 92_834
    assert stats["social_edges"] == 25_434
    assert stats["social_self_loops_dropped"] == stats["social_duplicates_collapsed"] == 0
    d = cfg.path(cfg.ingest.out)
    graph = load_graph(d / "graph.dgl")
    assert graph.num_edges("follows") == 25_434 and graph.num_nodes("user") == 1_892
    assert graph.num_edges("interacts") == stats["train_edges"]
    # weights survive: the sum over all splits equals the input's
    total = sum(read_split(d, s)["weight"].sum() for s in ("train", "val", "test"))
    assert total == pq.read_table(lf / "interactions.parquet").column("weight").to_numpy().sum()


def test_what_a_killed_run_left_is_reclaimed_by_the_next(tmp_path):
    import os
    import socket
    import subprocess

    p = _good(tmp_path)
    cfg = edge_cfg(tmp_path, p)
    dead = subprocess.Popen(["true"])
    dead.wait()  # a process that has ended: its pid names a killed run's leftovers
    out = cfg.path(cfg.ingest.out)
    host = socket.gethostname()
    killed = out.parent / f".{out.name}.tmp-{host}-{dead.pid}-0000dead"
    running = out.parent / f".{out.name}.tmp-{host}-{os.getpid()}-00000000"  # a live run's: kept
    other_host = out.parent / f".{out.name}.tmp-elsewhere-{dead.pid}-00000000"  # another host's: not ours to judge
    for d in (killed, running, other_host):
        (d / "edges").mkdir(parents=True)
    ingest(cfg)
    assert not killed.exists() and running.exists() and other_host.exists()
