"""The typed config: quickstart, `key.sub=value` overrides, errors naming the key, save/load round trip."""
from pathlib import Path

import pytest
import yaml

from gnnrec import UserError
from gnnrec.launch.config import QUICKSTART, Config, load_config
from gnnrec.launch.sections import FeatureInput

from conftest import REPO


def test_quickstart_loads_with_its_values():
    cfg = load_config()
    assert QUICKSTART == REPO / "configs" / "quickstart.yaml"
    assert cfg == load_config(QUICKSTART)
    assert cfg.workdir == "runs/quickstart"
    assert (cfg.synth.users, cfg.synth.items, cfg.synth.edges) == (5000, 3000, 150_000)
    assert cfg.synth.communities == 24 and cfg.synth.in_community == 0.8
    assert cfg.synth.social_edges == 20_000 and cfg.synth.item_feature_dim == 8
    assert cfg.ingest.social.dst_column == "friend_id"
    assert cfg.ingest.item_features.id_column == "item_id"
    assert cfg.split.method == "ratio" and cfg.split.ratios == (0.8, 0.1, 0.1)
    assert cfg.run.stages[:2] == ["synth", "ingest"]
    # a section the file leaves out takes its defaults
    assert cfg.partition == Config().partition


def test_overrides_are_typed():
    cfg = load_config(None, ["synth.edges=1234", "synth.in_community=0.5", "synth.string_ids=true",
                             "split.ratios=[0.7, 0.2, 0.1]", "run.stages=[synth]", "ingest.social=null",
                             "ingest.interactions.weight_column=w", "synth.seed=7", "ingest.nulls=reject"])
    assert cfg.synth.edges == 1234 and type(cfg.synth.edges) is int
    assert cfg.synth.in_community == 0.5 and type(cfg.synth.in_community) is float
    assert cfg.synth.string_ids is True
    assert cfg.split.ratios == (0.7, 0.2, 0.1)
    assert cfg.run.stages == ["synth"]
    assert cfg.ingest.social is None
    assert cfg.ingest.interactions.weight_column == "w"
    # a sibling key the override does not touch keeps the file's value
    assert cfg.ingest.interactions.src_column == "user_id"
    assert cfg.synth.seed == 7 and cfg.ingest.nulls == "reject"
    # the file's other values are untouched
    assert cfg.synth.users == 5000


def test_override_empty_value_is_null_and_later_override_wins():
    cfg = load_config(None, ["ingest.interactions.timestamp_column=", "synth.edges=10", "synth.edges=20"])
    assert cfg.ingest.interactions.timestamp_column is None
    assert cfg.synth.edges == 20


def test_override_into_section_missing_from_file_starts_from_defaults():
    cfg = load_config(None, ["partition.parts=4", "ingest.user_features.path=/x/users.parquet"])
    assert cfg.partition.parts == 4
    assert cfg.partition.method == Config().partition.method
    assert cfg.ingest.user_features == FeatureInput(path="/x/users.parquet")


@pytest.mark.parametrize("text, key", [
    ("synth:\n  bogus: 1\n", "synth.bogus"),
    ("ingest:\n  interactions:\n    path: x\n    src_column: a\n    dst_column: b\n    colour: red\n",
     "ingest.interactions.colour"),
    ("nosuch: 1\n", "nosuch"),
])
def test_unknown_key_in_file_is_named(tmp_path, text, key):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(UserError, match=rf"'{key}'.*unknown key"):
        load_config(path)


@pytest.mark.parametrize("override, key", [
    ("synth.bogus=1", "synth.bogus"),
    ("nosuch.key=1", "nosuch"),
    ("ingest.interactions.colour=red", "ingest.interactions.colour"),
    ("split.typo=1", "split.typo"),
])
def test_unknown_key_in_override_is_named(override, key):
    with pytest.raises(UserError, match=rf"'{key}'.*unknown key"):
        load_config(None, [override])


@pytest.mark.parametrize("override, key", [
    ("synth.edges=-1", "synth.edges"),
    ("synth.edges=abc", "synth.edges"),
    ("synth.in_community=1.5", "synth.in_community"),
    ("split.ratios=[0.5, 0.2, 0.1]", "split.ratios"),
    ("split.ratios=[1.2, -0.1, -0.1]", "split.ratios"),
    ("split.ratios=[0.5, 0.5]", "split.ratios"),
    ("split.method=bogus", "split.method"),
    ("ingest.nulls=ignore", "ingest.nulls"),
    ("run.stages=[synth, bogus]", "run.stages"),
    ("partition.parts=0", "partition.parts"),
    ("launch.health_timeout_s=.inf", "launch.health_timeout_s"),  # was an OverflowError once workers started
    ("train.lr=nan", "train.lr"),
])
def test_bad_value_names_the_key(override, key):
    with pytest.raises(UserError, match=rf"config key '{key}[.'\d]"):
        load_config(None, [override])


def test_test_file_split_without_path_names_the_key():
    with pytest.raises(UserError, match=r"split.*test_path"):
        load_config(None, ["split.method=test_file"])


@pytest.mark.parametrize("override, match", [
    ("synth.edges.x=1", r"synth\.edges\.x.*'edges' is not a section"),
    ("synth", r"'synth'.*key\.sub=value"),
    ("=3", r"key\.sub=value"),
])
def test_malformed_override(override, match):
    with pytest.raises(UserError, match=match):
        load_config(None, [override])


def test_missing_and_invalid_config_files(tmp_path):
    with pytest.raises(UserError, match="nope.yaml"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("synth: [unclosed\n")
    with pytest.raises(UserError, match=r"bad\.yaml.*not valid YAML"):
        load_config(bad)
    top = tmp_path / "list.yaml"
    top.write_text("- 1\n- 2\n")
    with pytest.raises(UserError, match="mapping"):
        load_config(top)


def test_workdir_substitution():
    cfg = load_config(None, ["workdir=/data/w"])
    assert cfg.ingest.out == "{workdir}/dataset"  # the template is kept ...
    assert cfg.path(cfg.ingest.out) == Path("/data/w/dataset")  # ... and filled in on use
    assert cfg.path(cfg.synth.out) == Path("/data/w/synth")
    assert cfg.path(cfg.ingest.interactions.path) == Path("/data/w/synth/interactions")
    assert cfg.path("/abs/no/template") == Path("/abs/no/template")
    # a filesystem URI stays a URI (Path would turn s3://bucket/key into s3:/bucket/key)
    assert str(cfg.path("s3://bucket/{workdir}/x")) == "s3://bucket//data/w/x"
    assert str(cfg.path("file:///tmp/x.parquet")) == "file:///tmp/x.parquet"


def test_workdir_template_in_an_override_is_a_path_whatever_the_order():
    # `{workdir}/...` is not valid YAML on its own (a flow mapping); it must be taken as a string
    cfg = load_config(None, ["ingest.out={workdir}/d2", "workdir=/w"])
    assert cfg.ingest.out == "{workdir}/d2"
    assert cfg.path(cfg.ingest.out) == Path("/w/d2")
    cfg = load_config(None, ["synth.out={workdir}", "workdir=/w2"])
    assert cfg.path(cfg.synth.out) == Path("/w2")


def test_saved_config_round_trips(tmp_path):
    cfg = load_config(None, ["workdir=/somewhere", "synth.edges=777", "split.method=temporal",
                             "split.ratios=[0.6, 0.2, 0.2]", "ingest.social=null",
                             "ingest.user_features.path=/u.parquet", "ingest.user_features.columns=[a, b]",
                             "partition.method=random"])
    cfg.save(tmp_path)
    text = (tmp_path / "config.yaml").read_text()
    assert yaml.safe_load(text)["synth"]["edges"] == 777
    again = load_config(tmp_path / "config.yaml")
    assert again == cfg
    assert again.ingest.user_features.columns == ["a", "b"]
    # and a default config too
    Config().save(tmp_path)
    assert load_config(tmp_path / "config.yaml") == Config()


def test_time_decay_is_per_timestamp_second_from_the_newest_and_needs_timestamps_and_neighbour_samples():
    from types import SimpleNamespace
    from gnnrec.samplers.neighbor import TimeDecay
    from gnnrec.trainer.batches import time_decay

    t = load_config(None, ["train.time_decay.rate=0.5"]).train
    assert time_decay(t, SimpleNamespace(stats={"newest_timestamp": 864_000}, path="p")) == TimeDecay(0.5 / 86400, 864_000)
    assert TimeDecay(0.5 / 86400, 864_000)([864_000, 864_000 - 2 * 86400]).tolist() == pytest.approx([1, 0.3678794])
    with pytest.raises(UserError, match=r"train.time_decay.rate=0.5: the training edges of p have no timestamps"):
        time_decay(t, SimpleNamespace(stats={}, path="p"))
    walks = load_config(None, ["train.time_decay.rate=0.5", "train.sampler=random_walk"]).train
    with pytest.raises(UserError, match="weighs the edges of sampled blocks, not train.sampler=random_walk"):
        time_decay(walks, SimpleNamespace(stats={"newest_timestamp": 1}, path="p"))
    assert time_decay(load_config(None, []).train, SimpleNamespace(stats={}, path="p")) is None  # off


def test_mf_takes_no_layers_whatever_the_config_gives_a_gnn():
    """`gnnrec train train.model=mf` on the quickstart (layers 2, fanouts [10, 5]) is MF: no layers."""
    for cfg in (load_config(None, ["train.model=mf"]), load_config(QUICKSTART, ["train.model=mf", "train.layers=3"])):
        assert cfg.train.layers == 0 and cfg.train.fanouts == []
    assert load_config(QUICKSTART).train.layers == 2
