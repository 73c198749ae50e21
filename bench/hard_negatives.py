"""Mined hard negatives vs uniform negatives only, on Gowalla, as JSON.

    python bench/hard_negatives.py [--epochs 6] [--more 4] [--workdir runs/bench-hard] [key=value ...]

Trains the Gowalla config (configs/gowalla_lightgcn.yaml with the key=value overrides) for `--epochs`
epochs, then continues that checkpoint twice for `--more` epochs each: once as before (uniform
negatives only), once after `gnnrec mine` with the mined negatives added by PinSage's curriculum
(epoch n of the round adds n - 1 per positive). Both arms start from the same checkpoint and draw
the same uniform negatives; Recall@20 and NDCG@20 on the test split after the first epochs and after
each arm. Run from the repository root (the config reads ../shared/datasets).
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from gnnrec.launch.config import load_config
from gnnrec.launch.stages import run, run_stage

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "gowalla_lightgcn.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=6, help="epochs before mining (R)")
    parser.add_argument("--more", type=int, default=4, help="epochs of each arm after them (E)")
    parser.add_argument("--workdir", default="runs/bench-hard")
    args, overrides = parser.parse_known_args()
    base = [f"workdir={args.workdir}", "train.patience=0", "train.validate_every=1000"]  # validate at the end only
    first = run(load_config(CONFIG, base + overrides + [f"train.epochs={args.epochs}",
                                                        "run.stages=[ingest, partition, train]"]))["train"]
    out = {"dataset": "gowalla", "epochs": args.epochs, "more": args.more,
           "after_first_epochs": {k: first[k] for k in ("recall@20", "ndcg@20")}}
    work = Path(args.workdir)
    for arm in ("uniform", "mined"):
        shutil.rmtree(work / f"checkpoints-{arm}", ignore_errors=True)
        shutil.copytree(work / "checkpoints", work / f"checkpoints-{arm}")
        cfg = load_config(CONFIG, base + overrides + [
            f"train.epochs={args.epochs + args.more}", "train.resume=true",
            f"train.checkpoints={{workdir}}/checkpoints-{arm}", f"train.out={{workdir}}/train-{arm}",
            *(["train.hard_negatives={workdir}/mined"] if arm == "mined" else [])])
        mined = run_stage("mine", cfg) if arm == "mined" else {}
        trained = run_stage("train", cfg)
        out[arm] = {k: trained[k] for k in ("recall@20", "ndcg@20", "seconds")}
        if mined:
            out[arm].update(mined_negatives=mined["negatives"], window=mined["window"])
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
