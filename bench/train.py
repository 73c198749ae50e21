"""Training benchmark on Gowalla through the distributed runtime, as JSON.

    python bench/train.py [--epochs 1] [--workdir runs/bench-train] [--metrics runs/gowalla/train/metrics.jsonl]

Runs `gnnrec train` (the Gowalla config: 1 partition, 1 trainer, LightGCN with 3 layers, dim 64,
batches of 65536 edges with 16 negatives each) with sampled fanouts [10, 10, 10] and with full
neighbourhoods ([-1, -1, -1]) for `--epochs` epochs each, validating on the config's validation
split after every epoch. Figures per run: training edges/s per trainer, epoch seconds, Recall@20 after the epochs.
Anchor, in the same run: one process of pure PyTorch doing full-graph LightGCN steps (the whole graph
propagated per batch, no sampling, no servers) on the same data, batches and negatives; `over_anchor` is
ours over the anchor in training edges/s. `phases_s_per_step`: the trainer's seconds per step in each
phase and the sampler thread's own (overlapping, "sampler: ...") from metrics.jsonl;
`sampler_thread_edges_per_s`: training edges per second of the sampler thread's busy time in the same
run (it shares the cores with the trainer), and `end_to_end_over_sampler` the trainer's over it;
`sampler_only_edges_per_s`: the same sampler alone (the project's NeighborSampler over the training
graph in memory: negatives, positives excluded, blocks; no model, optimizer or servers), and
`end_to_end_over_sampler_only` the trainer's over that. `time_to_recall_0.15_s` / `_0.17_s` are read
from the metrics.jsonl of a longer run (`--metrics`, default the Gowalla config's): cumulative
training seconds until validation Recall@20 reaches the figure (null if never).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from anchor import batches, lightgcn_steps
from gnnrec.launch.config import load_config
from gnnrec.launch.stages import run
from gnnrec.samplers.negatives import Positives, UniformNegatives
from gnnrec.samplers.neighbor import NeighborSampler
from gnnrec.samplers.neighborhoods import CSRNeighborhoods

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "gowalla_lightgcn.yaml"


def train_edges(dataset: Path) -> tuple[np.ndarray, np.ndarray, int, int]:
    """(user, item) of a dataset's training edges (int64), and the numbers of users and items they span."""
    t = pq.read_table(dataset / "edges" / "train.parquet", columns=["user", "item"])
    user, item = t["user"].to_numpy().astype(np.int64), t["item"].to_numpy().astype(np.int64)
    return user, item, int(user.max()) + 1, int(item.max()) + 1


def anchor_edges_per_s(dataset: Path, batch_size: int, num_negatives: int, steps: int = 5) -> float:
    """Full-graph LightGCN training steps as a user would write them in plain PyTorch (bench/anchor.py,
    on CPU with the caller's 1 thread), as PyG's LightGCN example does: the normalized adjacency
    D^-1/2 A D^-1/2 once, `torch.sparse.mm` per layer, the mean of the layers, BPR over the config's
    batches and negatives with L2 on the ego rows. No gnnrec code, so a change to the project's layers
    or losses cannot move the yardstick. Training edges per second."""
    user, item, nu, ni = train_edges(dataset)
    draws = batches(len(user), ni, batch_size, num_negatives, steps)
    return lightgcn_steps(torch.from_numpy(user), torch.from_numpy(item), nu, ni, draws)["edges_per_s"]


def sampler_only_edges_per_s(dataset: Path, fanouts: list[int], batch_size: int, num_negatives: int,
                             batches: int = 4) -> float:
    """Training edges per second of the trainer's sampler alone, over the training graph in memory."""
    user, item, nu, ni = train_edges(dataset)
    negatives = UniformNegatives(ni, Positives(user, item, ni))
    sampler = NeighborSampler(CSRNeighborhoods.from_edges(user, item, nu, ni), fanouts, nu, ni,
                              negatives=negatives, num_negatives=num_negatives)
    order = np.random.default_rng(0).permutation(len(user))
    picks = [order[b * batch_size:(b + 1) * batch_size] for b in range(batches + 1)]
    sampler.sample(user[picks[0]], item[picks[0]])  # warm-up, untimed
    started = time.perf_counter()
    for pick in picks[1:]:
        sampler.sample(user[pick], item[pick])
    return batches * batch_size / (time.perf_counter() - started)


def time_to_recall(metrics: Path, target: float = 0.15):
    if not metrics.exists():
        return None
    elapsed = 0.0
    for line in metrics.read_text().splitlines():
        m = json.loads(line)
        elapsed += m["seconds"]
        if m.get("recall@20", 0) >= target:
            return round(elapsed, 1)
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--workdir", default="runs/bench-train")
    parser.add_argument("--metrics", default="runs/gowalla/train/metrics.jsonl")
    args = parser.parse_args()
    torch.set_num_threads(1)
    base = [f"workdir={args.workdir}", f"train.epochs={args.epochs}", "train.patience=0", "train.validate_every=1"]
    cfg = load_config(CONFIG, base + ["run.stages=[ingest, partition]"])
    run(cfg)
    anchor = anchor_edges_per_s(Path(args.workdir) / "dataset", cfg.train.batch_size, cfg.train.num_negatives)
    out = {"dataset": "gowalla", "anchor_full_graph_torch_edges_per_s": round(anchor)}
    for name, fanouts in (("fanouts_10_10_10", "[10, 10, 10]"), ("full_neighbourhood", "[-1, -1, -1]")):
        overrides = ["train.layers=3", f"train.fanouts={fanouts}", "run.stages=[train]",
                     f"train.out={{workdir}}/train-{name}"]
        summary = run(load_config(CONFIG, base + overrides))["train"]
        history = [json.loads(line) for line in
                   (Path(args.workdir) / f"train-{name}" / "metrics.jsonl").read_text().splitlines()]
        edges_per_s = float(np.mean([m["edges_per_s"] for m in history]))
        phases = {k: round(float(np.mean([m["phases"][k] for m in history])), 4) for k in history[-1]["phases"]}
        sampler_s = sum(v for k, v in phases.items() if k.startswith("sampler: "))
        edges_per_step = summary["edges_per_epoch"] / summary["trainers"] / history[0]["step"]  # per trainer
        sampler = edges_per_step / sampler_s if sampler_s else None
        alone = sampler_only_edges_per_s(Path(args.workdir) / "dataset", json.loads(fanouts), cfg.train.batch_size,
                                         cfg.train.num_negatives)
        out[name] = {"edges_per_s_per_trainer": round(edges_per_s), "over_anchor": round(edges_per_s / anchor, 3),
                     "sampler_thread_edges_per_s": sampler and round(sampler),
                     "end_to_end_over_sampler": sampler and round(edges_per_s / sampler, 3),
                     "sampler_only_edges_per_s": round(alone),
                     "end_to_end_over_sampler_only": round(edges_per_s / alone, 3),
                     "phases_s_per_step": phases,
                     "epoch_seconds": round(float(np.mean([m["seconds"] for m in history])), 1),
                     "epochs": len(history), "recall@20": round(history[-1]["recall@20"], 4),
                     "ndcg@20": round(history[-1]["ndcg@20"], 4), "job_seconds": summary["seconds"]}
    for target in (0.15, 0.17):
        out[f"time_to_recall_{target}_s"] = time_to_recall(Path(args.metrics), target)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
