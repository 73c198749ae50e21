"""Incremental training on a log that grows, as JSON: fine-tuning yesterday's model on today's dataset
against a full retrain.

    python bench/incremental.py [--workdir /tmp/incremental] [--epochs 20] [--fine-tune 4] [--replay-epochs 10]

A synthetic log (the quickstart's size, tastes drifting in the last 30% of the year: `synth.drift=0.3`)
cut in time into three periods: the first 80% of its rows by timestamp are yesterday's log (less those of
one user and one item in 20, which arrive today with all their rows), the next 10% arrive today, the last
10% are the test (`split.method=test_file`; a tenth of each period's training
edges is held out for validation). Yesterday's job: ingest, partition, LightGCN for up to `--epochs`
(early stopping on validation). Today's dataset grows yesterday's (`ingest.base`: old ids kept, new users
and items numbered after them), its nodes placed in yesterday's partitions (`partition.base`); then (a) a full retrain for up to `--epochs`, and
(b) `train.init_from` yesterday's model for a fixed number of epochs, its last epoch kept (no validation:
the tenth held out at random is mostly yesterday's edges, and it stops a fine-tune before it moves to
today's tastes): `--fine-tune` epochs over the same edges, new users and items starting at their old
neighbours' mean (and, as a check of that, at fresh rows); `--replay-epochs` epochs each visiting today's
edges and 20% of yesterday's (`train.replay=0.2`) and 50%. Test Recall@20 / NDCG@20 of each (and of
yesterday's model on the same test), training seconds, and each (b) over (a).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from gnnrec.launch.config import load_config
from gnnrec.launch.stages import run
from models import own_outputs


def cut_in_time(log_dir: Path, out: Path) -> None:
    """periods/{old, all, test}: the log's first 80% of rows by timestamp (less those of one user and item
    in 20: they arrive today), the first 90%, the last 10%."""
    log = pq.read_table(log_dir).select(["user_id", "item_id", "timestamp"])
    t = log["timestamp"].to_numpy()
    first, second = np.quantile(t, [0.8, 0.9])
    later = (log["user_id"].to_numpy() % 20 == 0) | (log["item_id"].to_numpy() % 20 == 0)
    for name, keep in (("old", (t < first) & ~later), ("all", t < second), ("test", t >= second)):
        (out / name).mkdir(parents=True, exist_ok=True)
        pq.write_table(log.filter(keep), out / name / "part-0.parquet")


def trained(cfg, summary: dict) -> dict:
    """Test figures, epochs, seconds of training (the epochs') and of the train job (startup included)."""
    test, metrics = summary["evaluate"], (cfg.path(cfg.train.out) / "metrics.jsonl").read_text().splitlines()
    return {"test_recall@20": test["recall@20"], "test_ndcg@20": test["ndcg@20"],
            "popularity_test_recall@20": test["popularity_recall@20"], "epochs": summary["train"]["epochs"],
            "model_epoch": summary["train"]["model_epoch"],
            "train_seconds": round(sum(json.loads(m)["seconds"] for m in metrics), 1),
            "job_seconds": summary["train"]["seconds"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="/tmp/incremental")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--fine-tune", type=int, default=4)
    parser.add_argument("--replay-epochs", type=int, default=10)
    args = parser.parse_args()
    work = Path(args.workdir)
    common = [f"workdir={work}", "synth.drift=0.3", "synth.social_edges=0", "synth.item_feature_dim=0",
              "ingest.social=null", "ingest.item_features=null", "split.method=test_file",
              "split.test_path={workdir}/periods/test", "split.val_ratio=0.1", "train.validate_k=20",
              "train.patience=3", "train.validate_every=2"]
    run(load_config(None, common + ["run.stages=[synth]"]))
    cut_in_time(work / "synth" / "interactions", work / "periods")
    days = {"old": [], "new": ["ingest.base={workdir}/dataset-old", "partition.base={workdir}/partitions-old"]}
    for day, more in days.items():
        run(load_config(None, common + more + [
            f"ingest.interactions.path={{workdir}}/periods/{'old' if day == 'old' else 'all'}",
            f"ingest.out={{workdir}}/dataset-{day}", f"partition.dataset={{workdir}}/dataset-{day}",
            f"partition.out={{workdir}}/partitions-{day}", "run.stages=[ingest, partition]"]))
    stats = json.loads((work / "dataset-new" / "stats.json").read_text())
    before = json.loads((work / "dataset-old" / "stats.json").read_text())
    out = {"epochs": args.epochs, "fine_tune_epochs": args.fine_tune, "replay_epochs": args.replay_epochs,
           "train_edges_yesterday": before["train_edges"],
           "train_edges_today": stats["train_edges"], "new_users": stats["new_users"], "new_items": stats["new_items"],
           "untrained_yesterday": {"users": before["users_without_train_edges"], "items": before["items_without_train_edges"]},
           "untrained_today": {"users": stats["users_without_train_edges"], "items": stats["items_without_train_edges"]}}
    tune = [f"train.init_from={work}/train-yesterday", "train.validate_split=none"]
    jobs = {"yesterday": ("old", args.epochs, []),
            "full retrain": ("new", args.epochs, []),
            "fine-tune": ("new", args.fine_tune, tune),
            "fine-tune, new rows fresh": ("new", args.fine_tune, tune + ["train.init_new_from_neighbours=false"]),
            "fine-tune, new edges and 20% replay": ("new", args.replay_epochs, tune + ["train.replay=0.2"]),
            "fine-tune, new edges and 50% replay": ("new", args.replay_epochs, tune + ["train.replay=0.5"])}
    for name, (day, epochs, more) in jobs.items():
        slug = name.replace(" ", "-")
        cfg = load_config(None, common + more + [
            f"partition.dataset={{workdir}}/dataset-{day}", f"train.partitions={{workdir}}/partitions-{day}",
            f"train.epochs={epochs}", "run.stages=[train, evaluate]", *own_outputs(slug)])
        out[name] = trained(cfg, run(cfg))
        print(json.dumps({name: out[name]}), flush=True)
    full = out["full retrain"]
    out["over_full_retrain"] = {name: {k: round(out[name][k] / full[k], 3) for k in ("test_recall@20", "train_seconds",
                                                                                  "job_seconds")}
                                for name in jobs if name.startswith("fine-tune")}
    print(json.dumps(out, indent=2))
    results = Path(__file__).resolve().parent / "results"
    results.mkdir(exist_ok=True)
    (results / "incremental.json").write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
