"""Time decay on a log whose tastes drift, as JSON: LightGCN with and without `train.time_decay`.

    python bench/time_decay.py [--workdir /tmp/time-decay] [--rates 0 0.003 0.01 0.03] [--epochs 20]

A synthetic log (the quickstart's size: 5,000 users, 3,000 items, 150,000 rows, 24 communities) whose
users move to the next community in the last 30% of the year (`synth.drift=0.3`), split in time: each
user's latest interaction is the test edge, the one before it the validation edge (`split.method=temporal`).
LightGCN (2 layers, fanouts [10, 5]) is trained for `--epochs` at each decay rate (per day; 0 = off), the
epoch chosen on validation NDCG@20; the rate to keep is the one with the best validation Recall@20,
and test Recall@20 / NDCG@20 are reported for every rate, with popularity's.
"""
from __future__ import annotations

import argparse
import json

from gnnrec.launch.config import load_config
from gnnrec.launch.stages import run
from models import own_outputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="/tmp/time-decay")
    parser.add_argument("--rates", nargs="*", type=float, default=[0.0, 0.003, 0.01, 0.03])
    parser.add_argument("--epochs", type=int, default=20)
    args = parser.parse_args()
    base = [f"workdir={args.workdir}", "synth.drift=0.3", "synth.social_edges=0", "synth.item_feature_dim=0",
            "ingest.social=null", "ingest.item_features=null", "split.method=temporal", "split.val_last=1",
            f"train.epochs={args.epochs}", "train.validate_k=20", "train.patience=5"]
    run(load_config(None, base + ["run.stages=[synth, ingest, partition]"]))
    out = {"drift": 0.3, "epochs": args.epochs, "rates_per_day": {}}
    for rate in args.rates:
        name = f"rate-{rate:g}"
        summary = run(load_config(None, base + [
            f"train.time_decay.rate={rate}", "run.stages=[train, evaluate]", *own_outputs(name)]))
        train, test = summary["train"], summary["evaluate"]
        out["rates_per_day"][f"{rate:g}"] = {
            "val_recall@20": train["recall@20"], "val_ndcg@20": train["ndcg@20"], "epoch": train["model_epoch"],
            "test_recall@20": test["recall@20"], "test_ndcg@20": test["ndcg@20"],
            "popularity_test_recall@20": test["popularity_recall@20"]}
        print(json.dumps({name: out["rates_per_day"][f"{rate:g}"]}), flush=True)
    chosen = max(out["rates_per_day"], key=lambda r: out["rates_per_day"][r]["val_recall@20"])
    out["chosen_on_validation"] = chosen
    off = out["rates_per_day"]["0"]["test_recall@20"] if "0" in out["rates_per_day"] else None
    out["test_recall@20_over_no_decay"] = off and round(out["rates_per_day"][chosen]["test_recall@20"] / off, 3)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
