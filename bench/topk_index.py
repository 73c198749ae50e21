"""Top-K for every user: exact scoring against each FAISS index of `infer.index`, as JSON.

    python bench/topk_index.py [--sizes 1e7 1e8] [--workdir /tmp/gnnrec-scale] [--steps 240] [--batch 8192]
                               [--model lightgcn] [--paths exact ivf hnsw] [--exact-users-over 1e12]

For each size E, the synthetic log of bench/scale.py (E rows: E/20 users, E/50 items) is made, ingested,
partitioned (K=1) and trained where the workdir lacks it (`--model`, default LightGCN: 2 layers, fanouts
[10, 5], dim 64, batches of `--batch` 8,192 with 4 negatives, lr 0.05, `--steps` steps in 3 epochs:
models-synthetic-10m.json's recipe), then `gnnrec infer` runs once per path, top-20 for every user: wall seconds end to end
(embeddings of every node included), the ranking's own seconds, peak memory of the whole process tree
(PSS, as bench/scale.py measures it), and from the manifest the index's recall@20 against exact top-20 on
its seeded 1,000 users (`infer.check_users`) and the users it left with fewer than 20.
Test Recall@20 and NDCG@20 of the model through each path are computed from its written top-20 for one
seeded sample of 10,000 users (those with test items), the same users for every path.

Exact top-20 for every user costs users x items dot products: past `--exact-users-over` (default 1e12,
i.e. the 100M log's 4.9M x 2.0M) it is run on the 10,000 sampled users only (`infer.users`), and its
all-user seconds are extrapolated from its ranking seconds per user (labelled `extrapolated`).
Writes bench/results/topk_index.json (a size's paths not in `--paths` kept from its earlier row).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from scale import GNNREC, RESULTS, measured, stages
from gnnrec.data.formats import Dataset
from gnnrec.inference.evaluate import evaluate_exported
from gnnrec.inference.trained import TrainOutput
from gnnrec.ranking.metrics import sample_users

K, SAMPLE, SEED = 20, 10_000, 0
TRAIN = ["train.lr=0.05", "train.epochs=3", "train.validate_split=none"]


def prepare(work: Path, edges: int, args) -> None:
    """synth, ingest, partition K=1 and train, each skipped where its output is there."""
    for name, argv, outputs in stages(edges, args):
        if name in ("synth", "ingest", "partition_k1", "train") and not (work / outputs[0]).exists():
            if name == "train":
                argv = [*argv, *TRAIN, f"train.model={args.model}", f"train.max_steps_per_epoch={-(-args.steps // 3)}"]
            print(json.dumps({"edges": edges, "prepare": name, **measured([GNNREC, argv[0], f"workdir={work}",
                                                                          *argv[1:]], work / f"{name}.log")}),
                  file=sys.stderr, flush=True)


def test_recall(work: Path, out: Path, users: np.ndarray) -> dict:
    """Recall@20 and NDCG@20 of `out`'s top-20 on the test items of the sampled `users` (those with any),
    by `gnnrec evaluate`'s code for exported lists."""
    dataset = Dataset(work / "dataset")
    test = dataset.edges("test")
    test = test[:, torch.from_numpy(np.isin(test[0].numpy(), users))]
    metrics = evaluate_exported(out, dataset, test, (K,))
    return {"test_users": int(test[0].unique().numel()), "recall@20": round(metrics["recall@20"], 4),
            "ndcg@20": round(metrics["ndcg@20"], 4)}


def run_path(work: Path, path: str, users: np.ndarray, all_users: bool) -> dict:
    out = work / f"infer-{path}"
    argv = [GNNREC, "infer", f"workdir={work}", f"infer.index={path}", f"infer.out={out}", f"infer.k={K}"]
    if not all_users:
        argv += [f"infer.users={SAMPLE}", f"infer.seed={SEED}"]
    result = measured(argv, work / f"infer-{path}.log")
    manifest = json.loads((out / "manifest.json").read_text())
    result.update({key: manifest[key] for key in ("index", "index_recall", "index_recall_users", "index_seconds",
                                                  "ivf_lists", "ivf_probes", "hnsw_m", "hnsw_ef_search",
                                                  "short_users", "topk_seconds") if key in manifest})
    result.update(users_ranked=manifest["topk"]["rows"] // K, embed_seconds=round(sum(manifest["layer_seconds"]), 1),
                  **test_recall(work, out, users))
    return result


def run_size(edges: int, args, previous: dict | None) -> dict:
    """The size's row: `--paths` measured, the other paths of an earlier row of the same size kept."""
    work = Path(args.workdir) / f"{edges:.0e}".replace("+", "")
    work.mkdir(parents=True, exist_ok=True)
    prepare(work, edges, args)
    dataset = Dataset(work / "dataset")
    users = sample_users(dataset.num_users, SAMPLE, SEED)
    t = TrainOutput(work / "train").config.train
    row = {"edges": edges, "users": dataset.num_users, "items": dataset.num_items,
           "model": {"model": t.model, "layers": t.layers, "batch_size": t.batch_size, "lr": t.lr,
                     "steps": t.max_steps_per_epoch and t.epochs * t.max_steps_per_epoch},
           "paths": (previous or {}).get("paths", {})}
    for path in args.paths:
        all_users = path != "exact" or dataset.num_users * dataset.num_items <= args.exact_users_over
        result = run_path(work, path, users, all_users)
        if not all_users:
            per_user = result["topk_seconds"] / result["users_ranked"]
            result["all_users_seconds_extrapolated"] = round(result["seconds"] + per_user * dataset.num_users)
        row["paths"][path] = result
        print(json.dumps({"edges": edges, "path": path, **result}), file=sys.stderr, flush=True)
    exact = row["paths"].get("exact")
    for result in row["paths"].values():
        if exact:
            result["recall_vs_exact"] = round(result["recall@20"] / exact["recall@20"], 4)
    return row


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=float, nargs="+", default=[1e7, 1e8])
    p.add_argument("--workdir", default="/tmp/gnnrec-scale")
    p.add_argument("--steps", type=int, default=240, help="training steps (3 epochs)")
    p.add_argument("--batch", type=int, default=8192, help="training edges per step")
    p.add_argument("--model", default="lightgcn", help="train.model of the model ranked")
    p.add_argument("--paths", nargs="+", default=["exact", "ivf", "hnsw"])
    p.add_argument("--exact-users-over", type=float, default=1e12,
                   help="users x items past which exact ranks the 10,000 sampled users only")
    args = p.parse_args()
    args.metis_up_to, args.sample_users = 0, SAMPLE  # what scale.stages reads
    path = RESULTS / "topk_index.json"
    rows = {r["edges"]: r for r in json.loads(path.read_text())} if path.exists() else {}
    for size in args.sizes:
        rows[int(size)] = run_size(int(size), args, rows.get(int(size)))
        path.write_text(json.dumps([rows[e] for e in sorted(rows)], indent=2) + "\n")
    print(path.read_text())


if __name__ == "__main__":
    main()
