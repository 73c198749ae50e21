"""Node features as model inputs, as JSON: `train.inputs` id, id+features and features on one synthetic log.

    python bench/features.py [--workdir /tmp/features] [--epochs 10]

The quickstart's log (5,000 users, 3,000 items, 150,000 rows, 24 communities; each item's 8 features are
its community's centroid plus noise), split 8:1:1 per user, LightGCN with fanouts [10, 5] for up to
`--epochs` epochs chosen on validation; test Recall@20 / NDCG@20 per `train.inputs`, with popularity's.
With `features` an item's input is its projected features alone: no item ID embedding is learned.
"""
from __future__ import annotations

import argparse
import json

from gnnrec.launch.config import load_config
from gnnrec.launch.stages import run
from models import own_outputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="/tmp/features")
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args()
    base = [f"workdir={args.workdir}", "synth.social_edges=0", "ingest.social=null", f"train.epochs={args.epochs}",
            "train.patience=3"]
    run(load_config(None, base + ["run.stages=[synth, ingest, partition]"]))
    out = {"epochs": args.epochs, "inputs": {}}
    for inputs in ("id", "id+features", "features"):
        name = inputs.replace("+", "-")
        summary = run(load_config(None, base + [
            f"train.inputs={inputs}", "run.stages=[train, evaluate]", *own_outputs(name)]))
        train, test = summary["train"], summary["evaluate"]
        out["inputs"][inputs] = {"val_recall@20": train["recall@20"], "epoch": train["model_epoch"],
                                 "test_recall@20": test["recall@20"], "test_ndcg@20": test["ndcg@20"],
                                 "popularity_test_recall@20": test["popularity_recall@20"]}
        print(json.dumps({inputs: out["inputs"][inputs]}), flush=True)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
