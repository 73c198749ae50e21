"""Cold start, as JSON: users held out of training entirely, recommended from a few items or from features.

    python bench/cold_start.py [--held-out 500] [--workdir runs/gowalla-cold] [key=value ...]
    python bench/cold_start.py --synthetic [--held-out 500] [--workdir /tmp/cold-synthetic] [key=value ...]

Holds `--held-out` random users (seed 0) out of the log, trains on the other users (ingest, partition,
train; the key=value overrides apply), then gives each held-out user some of their items and measures
Recall@20 on the rest of their history (`gnnrec.inference.recommend.held_out_recall`) against the most
popular items'.

- Gowalla (default): the Gowalla config (configs/gowalla_lightgcn.yaml); 1-5 random items of each
  held-out user's whole history (train + test) are given. Run from the repository root (the config
  reads ../shared/datasets).
- `--synthetic`: the quickstart's log with 8 user features (each user's community centroid plus noise),
  no social edges, LightGCN [10, 5] for 10 epochs. Two models: `train.inputs=features` (users are their
  projected features, W x: the feature path) and `train.inputs=id` (new users start as the mean of the 20
  training users with the most similar features: the fallback). Each held-out user is given their
  features and no items, then features and 1-5 items.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from gnnrec.launch.config import load_config
from gnnrec.launch.stages import run
from gnnrec.inference.recommend import ColdStart, held_out_recall
from models import own_outputs

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "gowalla_lightgcn.yaml"
SYNTHETIC = ["synth.user_feature_dim=8", "synth.social_edges=0", "ingest.social=null",
             "ingest.user_features.path={workdir}/synth/user_features.parquet", "ingest.user_features.id_column=user_id",
             "train.epochs=10", "train.validate_split=none"]


def hold_out(logs: dict, column: str, n: int, work: Path):
    """Writes each log without `n` random users (seed 0) to work/kept-<name>.parquet; returns those users."""
    users = np.unique(logs["train"][column].to_numpy())
    held = pa.array(np.random.default_rng(0).choice(users, n, replace=False))
    for name, log in logs.items():
        pq.write_table(log.filter(pc.invert(pc.is_in(log[column], value_set=held))), work / f"kept-{name}.parquet")
    return held


def histories(logs: dict, held, user_column: str, item_column: str):
    """Every held-out user's items (all logs), indexed by user."""
    both = pa.concat_tables(logs.values())
    return both.filter(pc.is_in(both[user_column], value_set=held)).to_pandas().groupby(user_column)[item_column].apply(list)


def figures(cold: ColdStart, history, **given) -> dict:
    out = held_out_recall(cold, history.tolist(), k=20, **given)
    return {**out, "ratio_to_popularity": round(out["recall"] / out["popularity_recall"], 2)}


def gowalla(work: Path, held_out: int, overrides: list) -> dict:
    given = load_config(CONFIG, [f"workdir={work}"] + overrides)
    logs = {"train": pq.read_table(given.path(given.ingest.interactions.path)),
            "test": pq.read_table(given.path(given.split.test_path))}
    held = hold_out(logs, given.ingest.interactions.src_column, held_out, work)
    cfg = load_config(CONFIG, [f"workdir={work}", f"ingest.interactions.path={work}/kept-train.parquet",
                               f"split.test_path={work}/kept-test.parquet", "run.stages=[ingest, partition, train]"]
                      + overrides)
    trained = run(cfg)["train"]
    history = histories(logs, held, given.ingest.interactions.src_column, given.ingest.interactions.dst_column)
    return {"dataset": "gowalla", "held_out_users": held_out, **figures(ColdStart(cfg.path(cfg.train.out)), history),
            "train_epochs": trained["epochs"], "train_seconds": trained["seconds"]}


def synthetic(work: Path, held_out: int, overrides: list) -> dict:
    base = [f"workdir={work}", *SYNTHETIC, *overrides]
    cfg = load_config(None, base + ["run.stages=[synth]"])
    run(cfg)
    logs = {"train": pa.concat_tables(pq.read_table(f) for f in sorted((work / "synth" / "interactions").glob("*.parquet")))}
    held = hold_out(logs, "user_id", held_out, work)
    run(load_config(None, base + ["ingest.interactions.path={workdir}/kept-train.parquet", "run.stages=[ingest, partition]"]))
    history = histories(logs, held, "user_id", "item_id")
    features = pq.read_table(work / "synth" / "user_features.parquet").to_pandas().set_index("user_id") \
        .loc[history.index].to_numpy(np.float32)
    out = {"dataset": "synthetic (quickstart log, 8 user features)", "held_out_users": held_out}
    for inputs in ("features", "id"):
        trained = run(load_config(None, base + [f"train.inputs={inputs}", "run.stages=[train]", *own_outputs(inputs)]))
        cold = ColdStart(work / f"train-{inputs}")
        out[f"inputs={inputs}"] = {"features only": figures(cold, history, features=features, given=(0, 0)),
                                   "features and 1-5 items": figures(cold, history, features=features),
                                   "train_seconds": trained["train"]["seconds"]}
        print(json.dumps({inputs: out[f"inputs={inputs}"]}), flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--held-out", type=int, default=500)
    parser.add_argument("--synthetic", action="store_true", help="the quickstart's log with user features")
    parser.add_argument("--workdir", default=None)
    args, overrides = parser.parse_known_args()
    work = Path(args.workdir or ("/tmp/cold-synthetic" if args.synthetic else "runs/gowalla-cold"))
    work.mkdir(parents=True, exist_ok=True)
    print(json.dumps((synthetic if args.synthetic else gowalla)(work, args.held_out, overrides), indent=2))


if __name__ == "__main__":
    main()
