"""Every model of the registry on one dataset config, at the config's budget, as JSON.

    python bench/models.py --config configs/lastfm_social.yaml [--workdir /tmp/models-lastfm] [--only gat gcn]
    python bench/models.py --config configs/gowalla_lightgcn.yaml --workdir /tmp/models-gowalla train.epochs=20 \
        train.dense_lr=0.005
    python bench/models.py --losses --config configs/gowalla_lightgcn.yaml --workdir /tmp/models-gowalla \
        train.epochs=20 train.dense_lr=0.005
    python bench/models.py --config configs/quickstart.yaml --name synthetic-10m --samplers ... (README: Samplers)

Makes the config's log where its stages start with `synth`, ingests and partitions it once, then trains and evaluates each model with the config's
settings (epochs, early stopping on its validation split, the test split evaluated once; key=value
arguments change them for every row) and the model's own overrides below: LightGCN, NGCF, GraphSAGE
(mean and pool), PinSage (random walks and neighbour samples), GAT, GCN, MF, and SocialGCN (with and
without the social pre-filter, where the config has social edges). Per model: test Recall@K and
NDCG@K (the config's `evaluate.ks`), the best epoch, epochs trained, training seconds, the median
epoch's training edges/s and the peak RSS per trainer, and Recall@20 over popularity's. Writes
`bench/results/models-<dataset>.json` (`--name`, default the config's first word; merged with earlier runs' rows, so `--only` adds to it). With
`--losses`, the config's model with each objective of the registry instead (losses, contrastive views,
mixed negatives), into `bench/results/losses-<dataset>.json`. The rows on other samplers (random walks,
Cluster-GCN, GraphSAINT, FastGCN) are the config's model on those blocks; `--samplers`: the config's
model on each training strategy only.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from gnnrec.launch.config import load_config
from gnnrec.launch.stages import run

RESULTS = Path(__file__).resolve().parent / "results"


def own_outputs(name: str) -> list[str]:
    """Overrides giving a variant of a config its own train output, checkpoints and evaluation (also
    bench/time_decay.py's and bench/features.py's)."""
    return [f"train.out={{workdir}}/train-{name}", f"train.checkpoints={{workdir}}/checkpoints-{name}",
            f"evaluate.checkpoint={{workdir}}/train-{name}", f"evaluate.out={{workdir}}/evaluate-{name}"]

MODELS = {  # row: overrides of the config
    "lightgcn": [],
    "ngcf": ["train.model=ngcf"],
    "graphsage mean": ["train.model=graphsage"],
    "graphsage pool": ["train.model=graphsage", "train.model_options.aggr=pool"],
    "pinsage, random walks": ["train.model=pinsage", "train.sampler=random_walk"],
    "pinsage, neighbour samples": ["train.model=pinsage", "train.sampler=neighbor"],
    "gat": ["train.model=gat"],
    "gcn": ["train.model=gcn"],
    "mf": ["train.model=mf", "train.layers=0", "train.sampler=none", "train.fanouts=[]"],
    # chosen on LastFM's validation split (a config with one negative per pair; full-graph checks, 60
    # epochs): GraphSAGE's validation NDCG@10 0.108 -> 0.123 with 8 negatives (l2 1e-3, edge dropout 0.2,
    # combine=mean, residual and dense_lr 0.001 did not help); PinSage's 0.096 -> 0.112 with 8 negatives,
    # 0.118 with the residual connection too (combine=mean and dense_lr 0.001 did not help)
    "graphsage mean, 8 negatives": ["train.model=graphsage", "train.num_negatives=8"],
    "graphsage pool, 8 negatives": ["train.model=graphsage", "train.model_options.aggr=pool", "train.num_negatives=8"],
    "pinsage, random walks, residual": ["train.model=pinsage", "train.sampler=random_walk",
                                        "train.model_options.residual=true"],
    "pinsage, random walks, residual, 8 negatives": ["train.model=pinsage", "train.sampler=random_walk",
                                                     "train.model_options.residual=true", "train.num_negatives=8"],
    "pinsage, neighbour samples, residual, 8 negatives": ["train.model=pinsage", "train.sampler=neighbor",
                                                          "train.model_options.residual=true", "train.num_negatives=8"],
    # then L2 on the dense weights (train.dense_l2), same checks: GraphSAGE with 8 negatives 0.123 -> 0.129
    # at 1e-4 (1e-3: 0.129, Recall@20 0.208 vs 0.219); PinSage, residual, 8 negatives 0.118 -> 0.122 at 1e-4
    "graphsage mean, 8 negatives, dense l2": ["train.model=graphsage", "train.num_negatives=8", "train.dense_l2=1e-4"],
    "pinsage, random walks, residual, 8 negatives, dense l2": [
        "train.model=pinsage", "train.sampler=random_walk", "train.model_options.residual=true",
        "train.num_negatives=8", "train.dense_l2=1e-4"],
    "pinsage, neighbour samples, residual, 8 negatives, dense l2": [
        "train.model=pinsage", "train.sampler=neighbor", "train.model_options.residual=true",
        "train.num_negatives=8", "train.dense_l2=1e-4"],
    "pinsage, neighbour samples, residual": ["train.model=pinsage", "train.sampler=neighbor",
                                             "train.model_options.residual=true"],
    # then a sweep on validation NDCG@10 (README): GraphSAGE 0.1206 -> 0.1305, PinSage 0.1160 -> 0.1267
    "graphsage mean, 32 negatives, node dropout 0.1": ["train.model=graphsage", "train.num_negatives=32",
                                                       "train.model_options.node_dropout=0.1"],
    "pinsage, random walks, residual, 32 negatives, node dropout 0.1, 20 walk neighbours": [
        "train.model=pinsage", "train.sampler=random_walk", "train.model_options.residual=true",
        "train.num_negatives=32", "train.model_options.node_dropout=0.1", "train.random_walk.neighbors=20"],
    # XSimGCL's contrastive views (configs/start.yaml's): LightGCN's Recall@10 on LastFM 0.1911 -> 0.2056;
    # GraphSAGE's falls (PinSage's, on random walks, was stopped at validation NDCG@10 0.054 at epoch 11)
    "graphsage mean, 8 negatives, contrastive views": ["train.model=graphsage", "train.num_negatives=8",
                                                       "train.contrast.weight=0.1"],
}
SAMPLERS = {  # the config's model on other training strategies' blocks (README: train.sampler)
    "lightgcn, random-walk neighbours (PinSage's)": ["train.sampler=random_walk"],
    "lightgcn, cluster batches (128 METIS clusters)": [
        "train.sampler=cluster", "partition.clusters=128", "partition.out={workdir}/partitions-clusters",
        "train.partitions={workdir}/partitions-clusters"],
    "lightgcn, GraphSAINT subgraphs (8192 nodes)": ["train.sampler=saint"],
    "lightgcn, FastGCN node samples (4096 a layer)": ["train.sampler=node"],
}
SOCIAL = {
    "socialgcn": ["train.model=socialgcn"],
    "socialgcn, ties of Jaccard >= 0.02": ["train.model=socialgcn", "ingest.social.min_overlap=0.02",
                                           "ingest.out={workdir}/dataset-overlap",
                                           "partition.dataset={workdir}/dataset-overlap",
                                           "partition.out={workdir}/partitions-overlap",
                                           "train.partitions={workdir}/partitions-overlap"],
}
LOSSES = {  # row: overrides of the config (its own model)
    "bpr (the config)": [],
    "cosine contrastive (SimpleX)": ["train.loss=cosine_contrastive"],
    "sampled softmax over cosines (SSM)": ["train.loss=softmax"],
    "alignment + uniformity (DirectAU)": ["train.loss=alignment_uniformity"],
    "bpr, mixed negatives (MixGCF)": ["train.negative_mixing=true"],
    "bpr + contrastive views (XSimGCL)": ["train.contrast.weight=0.1"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--only", nargs="*", help="these rows only")
    parser.add_argument("--losses", action="store_true", help="the config's model with each objective")
    parser.add_argument("--samplers", action="store_true", help="the config's model on each training strategy")
    parser.add_argument("--name", help="the results' name (default: the config's first word)")
    args, budget = parser.parse_known_args()
    # --only takes every later word: key=value ones are the budget's, not rows
    budget += [word for word in args.only or () if "=" in word]
    args.only = [word for word in args.only or () if "=" not in word]
    base = load_config(args.config, ([f"workdir={args.workdir}"] if args.workdir else []) + budget)
    rows = (LOSSES if args.losses else {"lightgcn": MODELS["lightgcn"], **SAMPLERS} if args.samplers
            else {**MODELS, **SAMPLERS, **(SOCIAL if base.ingest.social is not None else {})})
    common = [f"workdir={base.workdir}", *budget]
    first = ["synth"] * (base.run.stages[0] == "synth")
    run(load_config(args.config, common + [f"run.stages=[{', '.join(first + ['ingest', 'partition'])}]"]))
    name = args.name or Path(args.config).stem.split("_")[0]
    out = RESULTS / f"{'losses' if args.losses else 'models'}-{name}.json"
    table = json.loads(out.read_text()) if out.exists() else {}
    for row, overrides in rows.items():
        if args.only and row not in args.only:
            continue
        slug = row.replace(",", "").replace(">=", "ge").replace(" ", "-")
        stages = ["ingest"] * any(o.startswith("ingest.") for o in overrides)
        stages += ["partition"] * any(o.startswith(("ingest.", "partition.")) for o in overrides)
        stages = f"[{', '.join(stages + ['train', 'evaluate'])}]"
        cfg = load_config(args.config, common + overrides + [
            f"run.stages={stages}", *own_outputs(slug)])
        started = time.time()
        summary = run(cfg)
        metrics = [json.loads(line) for line in (cfg.path(cfg.train.out) / "metrics.jsonl").read_text().splitlines()]
        test = summary["evaluate"]
        table[row] = {"overrides": budget + overrides,
                      **{k: round(v, 4) for k, v in test.items() if k.startswith(("recall@", "ndcg@"))},
                      "over_popularity": round(test["recall@20"] / test["popularity_recall@20"], 2),
                      "best_epoch": summary["train"]["model_epoch"], "epochs": len(metrics),
                      "train_seconds": round(sum(m["seconds"] for m in metrics), 1),
                      "edges_per_s_per_trainer": round(float(np.median([m["edges_per_s"] for m in metrics]))),
                      "peak_rss_mb_per_trainer": summary["train"]["peak_rss_mb_per_trainer"],
                      "job_seconds": round(time.time() - started, 1)}
        print(json.dumps({row: table[row]}), flush=True)
        RESULTS.mkdir(exist_ok=True)
        out.write_text(json.dumps(table, indent=2) + "\n")


if __name__ == "__main__":
    main()
