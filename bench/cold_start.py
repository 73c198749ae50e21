"""Cold start on Gowalla, as JSON: users held out of training entirely, top-20 from 1-5 of their items.

    python bench/cold_start.py [--held-out 500] [--workdir runs/gowalla-cold] [key=value ...]

Holds `--held-out` random users (seed 0) out of Gowalla's train and test files, trains the Gowalla
config (configs/gowalla_lightgcn.yaml, with the key=value overrides) on the other users (ingest,
partition, train), then gives each held-out user 1-5 random items of their whole history (train +
test) and measures Recall@20 on the rest of it (`gnnrec.trainer.recommend.held_out_recall`), against
the most popular items'. Run from the repository root (the config reads ../shared/datasets).
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
from gnnrec.trainer.recommend import ColdStart, held_out_recall

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "gowalla_lightgcn.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--held-out", type=int, default=500)
    parser.add_argument("--workdir", default="runs/gowalla-cold")
    args, overrides = parser.parse_known_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    given = load_config(CONFIG, [f"workdir={work}"] + overrides)
    logs = {"train": pq.read_table(given.path(given.ingest.interactions.path)),
            "test": pq.read_table(given.path(given.split.test_path))}
    users = np.unique(logs["train"][given.ingest.interactions.src_column].to_numpy())
    held = pa.array(np.random.default_rng(0).choice(users, args.held_out, replace=False))
    column = given.ingest.interactions.src_column
    for name, log in logs.items():
        pq.write_table(log.filter(pc.invert(pc.is_in(log[column], value_set=held))), work / f"kept-{name}.parquet")
    cfg = load_config(CONFIG, [f"workdir={work}", f"ingest.interactions.path={work}/kept-train.parquet",
                               f"split.test_path={work}/kept-test.parquet", "run.stages=[ingest, partition, train]"]
                      + overrides)
    trained = run(cfg)["train"]
    both = pa.concat_tables(logs.values())
    histories = (both.filter(pc.is_in(both[column], value_set=held)).to_pandas()
                 .groupby(column)[given.ingest.interactions.dst_column].apply(list))
    figures = held_out_recall(ColdStart(cfg.path(cfg.train.out)), histories.tolist(), k=20)
    print(json.dumps({"dataset": "gowalla", "held_out_users": args.held_out, **figures,
                      "ratio_to_popularity": round(figures["recall"] / figures["popularity_recall"], 2),
                      "train_epochs": trained["epochs"], "train_seconds": trained["seconds"]}, indent=2))


if __name__ == "__main__":
    main()
