"""The synthetic generator: determinism, chunked files, power-law degrees, planted communities, oracle recall."""
from collections import defaultdict

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from gnnrec.data.ingest import run as ingest
from gnnrec.data.synth import item_community, scramble, run as synth, unscramble, user_community

from conftest import make_cfg, read_ids, read_json, read_split


def _read(directory) -> pa.Table:
    files = sorted(directory.glob("*.parquet"))
    return pa.concat_tables([pq.read_table(f) for f in files])


def _synth(workdir, *overrides):
    cfg = make_cfg(workdir, *overrides)
    synth(cfg)
    return cfg, cfg.path(cfg.synth.out)


TINY = ["synth.users=300", "synth.items=200", "synth.edges=5000", "synth.social_edges=800",
        "synth.item_feature_dim=3", "synth.communities=4", "synth.weights=true"]


def test_same_seed_same_tables_different_seed_different(tmp_path):
    _, a = _synth(tmp_path / "a", *TINY, "synth.seed=3")
    _, b = _synth(tmp_path / "b", *TINY, "synth.seed=3")
    _, c = _synth(tmp_path / "c", *TINY, "synth.seed=4")
    for part in ("interactions", "social"):
        ta, tb, tc = _read(a / part), _read(b / part), _read(c / part)
        assert ta.num_rows == tc.num_rows
        assert ta.equals(tb), part
        assert not ta.equals(tc), part
        assert not np.array_equal(ta.column(0).to_numpy(), tc.column(0).to_numpy())
    fa, fb, fc = (pq.read_table(d / "item_features.parquet") for d in (a, b, c))
    assert fa.equals(fb) and not fa.equals(fc)


def test_manifest_config_and_columns(tmp_path):
    cfg, out = _synth(tmp_path, *TINY)
    manifest = read_json(out / "synth.json")
    assert manifest["users"] == 300 and manifest["items"] == 200 and manifest["edges"] == 5000
    assert manifest["social_edges"] == 800 and manifest["item_feature_dim"] == 3
    from gnnrec.launch.config import load_config
    assert load_config(out / "config.yaml") == cfg
    t = _read(out / "interactions")
    assert t.column_names == ["user_id", "item_id", "timestamp", "weight"]
    users, items = t.column("user_id").to_numpy(), t.column("item_id").to_numpy()
    assert users.min() >= 0 and users.max() < 300 and items.min() >= 0 and items.max() < 200
    ts = t.column("timestamp").to_numpy()
    assert ts.min() >= 1_500_000_000 and ts.max() < 1_500_000_000 + 365 * 24 * 3600
    w = t.column("weight").to_numpy()
    assert w.min() >= 1 and np.all(w == np.round(w))
    s = _read(out / "social")
    assert s.column_names == ["user_id", "friend_id"] and s.num_rows == 800
    assert s.column("friend_id").to_numpy().max() < 300
    assert not list(tmp_path.glob(".*tmp-*"))


def test_optional_parts_are_absent_when_off(tmp_path):
    _, out = _synth(tmp_path, "synth.users=50", "synth.items=40", "synth.edges=500", "synth.social_edges=0",
                    "synth.item_feature_dim=0", "synth.timestamps=false", "synth.weights=false")
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "interactions", "synth.json"]
    assert _read(out / "interactions").column_names == ["user_id", "item_id"]


def test_chunks_and_files(tmp_path):
    _, out = _synth(tmp_path, *TINY, "synth.edges=10000", "synth.chunk_edges=1000", "synth.file_edges=3000",
                    "synth.social_edges=2500")
    files = sorted((out / "interactions").glob("*.parquet"))
    assert [f.name for f in files] == [f"part-{k:05d}.parquet" for k in range(4)]
    rows = [pq.ParquetFile(f).metadata.num_rows for f in files]
    assert rows == [3000, 3000, 3000, 1000] and sum(rows) == 10000
    # each chunk is written as its own row group(s): bounded memory while writing
    assert all(pq.ParquetFile(f).metadata.num_row_groups >= 1 for f in files)
    social = [pq.ParquetFile(f).metadata.num_rows for f in sorted((out / "social").glob("*.parquet"))]
    assert social == [2500]  # three chunks (1000, 1000, 500) never fill a 3000-row file
    feats = pq.read_table(out / "item_features.parquet")
    assert feats.num_rows == 200 and np.array_equal(feats.column("item_id").to_numpy(), np.arange(200))


def test_scramble_is_a_bijection():
    for n in (1, 7, 1000, 12_345):
        ids = scramble(np.arange(n), n)
        assert np.array_equal(np.sort(ids), np.arange(n))
        assert np.array_equal(unscramble(ids, n), np.arange(n))


def test_power_law_degrees(small_synth):
    t = _read(small_synth["synth_dir"] / "interactions")
    s = small_synth["cfg"].synth
    for col, n in (("item_id", s.items), ("user_id", s.users)):
        deg = np.sort(np.bincount(t.column(col).to_numpy(), minlength=n))[::-1]
        top = deg[: n // 100].sum() / deg.sum()
        # uniform would give 1%; a Zipf(0.9) popularity gives well over 10x that
        assert top > 0.10, (col, top)
        # heavy tail: the most popular node has many times the median degree
        assert deg[0] > 20 * max(np.median(deg), 1), col
    # popular ids are scattered over the id space (rank r -> id r*P mod n), not the lowest ids
    items = np.bincount(t.column("item_id").to_numpy(), minlength=s.items)
    top10 = set(np.argsort(-items)[:10].tolist())
    assert top10 != set(range(10)) and max(top10) > s.items // 10


def test_planted_communities(small_synth):
    s = small_synth["cfg"].synth
    t = _read(small_synth["synth_dir"] / "interactions")
    same = np.mean(user_community(t.column("user_id").to_numpy(), s)
                   == item_community(t.column("item_id").to_numpy(), s))
    expected = s.in_community + (1 - s.in_community) / s.communities
    assert abs(same - expected) < 0.02, (same, expected)
    # every community has members on both sides
    assert set(np.unique(user_community(np.arange(s.users), s))) == set(range(s.communities))
    assert set(np.unique(item_community(np.arange(s.items), s))) == set(range(s.communities))


def test_planted_communities_follow_in_community(tmp_path):
    cfg, out = _synth(tmp_path, *TINY, "synth.edges=20000", "synth.in_community=0.3", "synth.communities=5")
    s = cfg.synth
    t = _read(out / "interactions")
    same = np.mean(user_community(t.column("user_id").to_numpy(), s)
                   == item_community(t.column("item_id").to_numpy(), s))
    assert abs(same - (0.3 + 0.7 / 5)) < 0.04, same


def test_drift_moves_tastes_to_the_next_community_late_in_the_year(tmp_path):
    from gnnrec.data.synth import START_TIME, YEAR
    cfg, out = _synth(tmp_path, *TINY, "synth.edges=20000", "synth.in_community=1.0", "synth.drift=0.25")
    s = cfg.synth
    t = _read(out / "interactions")
    home, taste = user_community(t.column("user_id").to_numpy(), s), item_community(t.column("item_id").to_numpy(), s)
    late = t.column("timestamp").to_numpy() >= START_TIME + 0.75 * YEAR
    assert 0.2 < late.mean() < 0.3
    assert np.all(taste[~late] == home[~late]) and np.all(taste[late] == (home[late] + 1) % s.communities)


def test_social_homophily(small_synth):
    s = small_synth["cfg"].synth
    t = _read(small_synth["synth_dir"] / "social")
    assert t.num_rows == s.social_edges
    same = np.mean(user_community(t.column("user_id").to_numpy(), s)
                   == user_community(t.column("friend_id").to_numpy(), s))
    expected = s.homophily + (1 - s.homophily) / s.communities
    assert abs(same - expected) < 0.02, (same, expected)


def test_item_features(small_synth):
    s = small_synth["cfg"].synth
    t = pq.read_table(small_synth["synth_dir"] / "item_features.parquet")
    assert t.column_names == ["item_id"] + [f"f{k}" for k in range(s.item_feature_dim)]
    assert all(t.schema.field(f"f{k}").type == pa.float32() for k in range(s.item_feature_dim))
    assert t.num_rows == s.items
    ids = t.column("item_id").to_numpy()
    assert np.array_equal(np.sort(ids), np.arange(s.items))
    x = np.column_stack([t.column(f"f{k}").to_numpy() for k in range(s.item_feature_dim)])
    assert np.isfinite(x).all()
    # features carry the community: items sit near their community's centroid
    comm = item_community(ids, s)
    centroids = np.stack([x[comm == c].mean(0) for c in range(s.communities)])
    nearest = np.argmin(((x[:, None, :] - centroids[None]) ** 2).sum(-1), axis=1)
    assert np.mean(nearest == comm) > 0.8
    # and the ingested matrix holds the same values in new-id order
    feats = np.load(small_synth["dataset"] / "features" / "item.npy")
    raw = read_ids(small_synth["dataset"], "item")
    assert feats.shape == (len(raw), s.item_feature_dim) and feats.dtype == np.float32
    by_raw = dict(zip(ids.tolist(), x))
    assert all(np.array_equal(feats[k], by_raw[r]) for k, r in enumerate(raw.tolist()))


def test_user_features_carry_the_users_community(tmp_path):
    cfg, out = _synth(tmp_path / "a", *TINY, "synth.user_feature_dim=4")
    s = cfg.synth
    t = pq.read_table(out / "user_features.parquet")
    assert t.column_names == ["user_id"] + [f"f{k}" for k in range(4)] and t.num_rows == s.users
    ids = t.column("user_id").to_numpy()
    x = np.column_stack([t.column(f"f{k}").to_numpy() for k in range(4)])
    comm = user_community(ids, s)
    centroids = np.stack([x[comm == c].mean(0) for c in range(s.communities)])
    assert np.mean(np.argmin(((x[:, None, :] - centroids[None]) ** 2).sum(-1), axis=1) == comm) > 0.8
    assert read_json(out / "synth.json")["user_feature_dim"] == 4
    _, without = _synth(tmp_path / "b", *TINY)  # the item features do not depend on the user ones
    assert pq.read_table(out / "item_features.parquet").equals(pq.read_table(without / "item_features.parquet"))
    assert not (without / "user_features.parquet").exists()


def test_string_ids(tmp_path):
    _, out = _synth(tmp_path, *TINY, "synth.string_ids=true")
    t = _read(out / "interactions")
    assert pa.types.is_string(t.schema.field("user_id").type)
    assert pa.types.is_string(t.schema.field("item_id").type)
    assert all(v.startswith("u") for v in t.column("user_id").to_pylist()[:100])
    assert all(v.startswith("i") for v in t.column("item_id").to_pylist()[:100])
    s = _read(out / "social")
    assert pa.types.is_string(s.schema.field("friend_id").type)
    f = pq.read_table(out / "item_features.parquet")
    assert pa.types.is_string(f.schema.field("item_id").type)
    # same numbers as the int ids of the same seed
    _, ints = _synth(tmp_path / "int", *TINY)
    ti = _read(ints / "interactions")
    assert [f"u{v}" for v in ti.column("user_id").to_pylist()] == t.column("user_id").to_pylist()


def _recall_at_20(order_for_user, train: dict, test: dict) -> float:
    recalls = []
    for u, held in test.items():
        seen = train.get(u, ())
        rec = [i for i in order_for_user(u) if i not in seen][:20]
        recalls.append(len(held.intersection(rec)) / len(held))
    return float(np.mean(recalls))


def _oracle_vs_popularity(tmp_path, *overrides):
    cfg = make_cfg(tmp_path, "synth.social_edges=0", "synth.item_feature_dim=0", "ingest.social=null",
                   "ingest.item_features=null", *overrides)
    synth(cfg)
    ingest(cfg)
    s, d = cfg.synth, cfg.path(cfg.ingest.out)
    raw_users, raw_items = read_ids(d, "user"), read_ids(d, "item")
    tr, te = read_split(d, "train"), read_split(d, "test")
    train, test = defaultdict(set), defaultdict(set)
    for u, i in zip(tr["user"].tolist(), tr["item"].tolist()):
        train[u].add(i)
    for u, i in zip(te["user"].tolist(), te["item"].tolist()):
        test[u].add(i)
    assert len(test) > 1000
    pop = np.bincount(tr["item"], minlength=len(raw_items))
    by_pop = np.argsort(-pop, kind="stable")
    ucomm, icomm = user_community(raw_users, s), item_community(raw_items, s)  # communities of RAW ids
    by_comm = {c: by_pop[icomm[by_pop] == c][:300] for c in range(s.communities)}
    popular = _recall_at_20(lambda u: by_pop[:300], train, test)
    oracle = _recall_at_20(lambda u: by_comm[ucomm[u]], train, test)
    return oracle, popular


def test_community_oracle_recall_far_above_popularity(tmp_path):
    # the embedded default (5000 users, 3000 items, 150k edges, 24 communities, in_community 0.8)
    oracle, popular = _oracle_vs_popularity(tmp_path)
    assert popular > 0.02  # popularity is a real baseline, not zero
    assert oracle >= 3 * popular, (oracle, popular)
