"""Time to quality at scale: test Recall@20 and NDCG@20 of a fixed seeded sample of 10,000 test users
against seconds of training, one trainer alone on this machine, for the anchor and gnnrec's paths.

    python bench/scale_quality.py [--sizes 1e7] [--workdir /tmp/gnnrec-scale] [--minutes 10]
                                  [--paths anchor mf lightgcn_sampled lightgcn_full_graph]

The logs are bench/scale.py's (synth, ingest, partition K=1, made where missing). The anchor is what a user
would write first: matrix factorization with BPR in plain PyTorch (an nn.Embedding(sparse=True) per
node type, torch.optim.SparseAdam, one uniform negative, batch 8,192, no regularization), over the same
training edges, ranked by the same code (ranking.metrics.evaluate: every item, the user's training
items masked). Its learning rate is chosen on validation: each of `--anchor-lrs` trains for the budget
with validation and test measured at the same points, and the one with the best validation Recall@20 at
the budget's end is reported. gnnrec's paths are `gnnrec train` with their settings in PATHS (not tuned
here), validated on the test split every `slice` steps (`train.validate_split=test`: its metrics.jsonl
is the curve; validation time is not training time) until `train.max_minutes`. JSON rows to stdout
and bench/results/scale_quality.json, a plot beside it (one panel per size).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scale import GNNREC, measured, stages  # noqa: E402

from gnnrec.data.formats import Dataset, Partitions  # noqa: E402
from gnnrec.ranking.metrics import evaluate, sample_truth  # noqa: E402

K, USERS, SEED, DIM = 20, 10_000, 0, 64
ANCHOR_LRS, ANCHOR_BATCH = (0.01, 0.002), 8192
PATHS = {  # gnnrec train arguments; `slice`: steps between two evaluations
    "mf": {"slice": 40, "args": ["train.model=mf", "train.batch_size=65536", "train.num_negatives=4",
                                 "train.lr=0.05"]},
    "lightgcn_sampled": {"slice": 120, "args": ["train.model=lightgcn", "train.layers=2", "train.fanouts=[10, 5]",
                                               "train.batch_size=8192", "train.num_negatives=4", "train.lr=0.05"]},
    "lightgcn_full_graph": {"slice": 8, "args": ["train.model=lightgcn", "train.layers=2", "train.sampler=full_graph",
                                                 "train.batch_size=262144", "train.num_negatives=16", "train.lr=0.05"]},
}


def prepare(work: Path, edges: int, args) -> None:
    for name, argv, outputs in stages(edges, args):
        if name in ("synth", "ingest", "partition_k1") and not (work / outputs[0]).exists():
            measured([GNNREC, argv[0], f"workdir={work}", *argv[1:]], work / f"{name}.log")


def peak_rss_gb() -> float:
    import resource
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)


def anchor(work: Path, minutes: float, points: int, lrs=ANCHOR_LRS) -> dict:
    """The plain-PyTorch MF-BPR curve of the learning rate with the best validation recall at the end."""
    partitions = Partitions(work / "partitions")
    user_ids, item_ids = partitions.partition_ids("user"), partitions.partition_ids("item")
    train = Dataset(work / "dataset").edges("train")
    users, items = torch.from_numpy(user_ids[train[0].numpy()]), torch.from_numpy(item_ids[train[1].numpy()])
    known = torch.stack([users, items])
    truth = {split: torch.from_numpy(np.stack(sample_truth(*partitions.held_out(split), USERS, SEED)))
             for split in ("val", "test")}
    runs = [_anchor_run(users, items, known, truth, lr, minutes, points, len(user_ids), len(item_ids))
            for lr in lrs]
    best = max(runs, key=lambda r: r["curve"][-1]["val_recall@20"])
    return {**best, "lrs_tried": {r["lr"]: r["curve"][-1]["val_recall@20"] for r in runs}}


def _anchor_run(users, items, known, truth, lr, minutes, points, num_users, num_items) -> dict:
    torch.manual_seed(SEED)
    user, item = torch.nn.Embedding(num_users, DIM, sparse=True), torch.nn.Embedding(num_items, DIM, sparse=True)
    for table in (user, item):
        torch.nn.init.normal_(table.weight, std=0.1)
    opt = torch.optim.SparseAdam([user.weight, item.weight], lr=lr)
    budget, trained, edges, curve = 60 * minutes, 0.0, 0, []
    next_eval = budget / points
    while trained < budget:
        for batch in torch.randperm(len(users)).split(ANCHOR_BATCH):
            started = time.perf_counter()
            u, i, j = user(users[batch]), item(items[batch]), item(torch.randint(num_items, (len(batch),)))
            loss = -F.logsigmoid((u * i).sum(1) - (u * j).sum(1)).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            trained, edges = trained + time.perf_counter() - started, edges + len(batch)
            if trained >= next_eval:
                curve.append({"seconds": round(trained, 1), **_ranked(user.weight, item.weight, known, truth)})
                print(json.dumps({"anchor_lr": lr, **curve[-1]}), file=sys.stderr, flush=True)
                next_eval += budget / points
                if trained >= budget:
                    break
    return {"lr": lr, "edges_per_s": round(edges / trained), "peak_rss_gb": peak_rss_gb(), "curve": curve}


@torch.no_grad()
def _ranked(U, I, known, truth) -> dict:
    out = {}
    for split, pairs in truth.items():
        metrics = evaluate(U, I, pairs, known, ks=(K,))
        prefix = "" if split == "test" else "val_"
        out.update({f"{prefix}{name}": round(metrics[name], 4) for name in ("recall@20", "ndcg@20")})
    return out


def gnnrec_path(work: Path, name: str, minutes: float) -> dict:
    """`gnnrec train` of a path until max_minutes, validated on the test split every slice."""
    spec, out = PATHS[name], work / f"quality-{name}"
    argv = [GNNREC, "train", f"workdir={work}", *spec["args"], f"train.max_steps_per_epoch={spec['slice']}",
            "train.epochs=100000", f"train.max_minutes={minutes}", "train.validate_split=test",
            f"train.validate_users={USERS}", f"train.validate_k={K}", f"train.dim={DIM}", "train.max_failures=0",
            f"train.out={out}/train", f"train.checkpoints={out}/checkpoints", "train.checkpoint_every=0"]
    result = measured(argv, work / f"quality-{name}.log")
    rows = [json.loads(line) for line in (out / "train" / "metrics.jsonl").read_text().splitlines()]
    seconds = np.cumsum([r["seconds"] for r in rows])
    subprocess.run(["rm", "-rf", str(out / "checkpoints")], check=True)  # GBs a slice at scale
    return {"edges_per_s": round(float(np.mean([r["edges_per_s"] for r in rows]))),
            "peak_rss_gb": result.get("peak_gb"), "wall_seconds": result.get("seconds"),
            "curve": [{"seconds": round(float(s), 1), "recall@20": round(r["recall@20"], 4),
                       "ndcg@20": round(r["ndcg@20"], 4)} for s, r in zip(seconds, rows)]}


def at_minutes(curve: list, minutes: float) -> float | None:
    """Recall@20 of the last evaluation at or before `minutes` of training."""
    before = [p["recall@20"] for p in curve if p["seconds"] <= 60 * minutes * 1.02]
    return before[-1] if before else None


def plot(rows: list, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    sizes = sorted({r["edges"] for r in rows})
    fig, axes = plt.subplots(1, len(sizes), figsize=(6 * len(sizes), 4), squeeze=False)
    for ax, edges in zip(axes[0], sizes):
        for r in (r for r in rows if r["edges"] == edges):
            ax.plot([p["seconds"] / 60 for p in r["curve"]], [p["recall@20"] for p in r["curve"]], marker=".",
                    label=r["path"])
        ax.set(title=f"{edges:,.0f} rows, one trainer", xlabel="minutes of training", ylabel="test Recall@20")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", nargs="+", type=float, default=[1e7])
    p.add_argument("--workdir", default="/tmp/gnnrec-scale")
    p.add_argument("--minutes", type=float, default=10, help="training budget of every path")
    p.add_argument("--points", type=int, default=10, help="the anchor's evaluations over the budget")
    p.add_argument("--paths", nargs="+", default=["anchor", *PATHS])
    p.add_argument("--anchor-lrs", nargs="+", type=float, default=ANCHOR_LRS, help="the anchor's choices")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "scale_quality.json"))
    p.add_argument("--batch", type=int, default=8192)  # bench/scale.py's stages take these two
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--metis-up-to", type=float, default=0)
    p.add_argument("--sample-users", type=int, default=USERS)
    args = p.parse_args()
    out = Path(args.out)
    rows = [r for r in (json.loads(out.read_text()) if out.exists() else [])
            if not (r["edges"] in args.sizes and r["path"] in args.paths)]
    for edges in args.sizes:
        work = Path(args.workdir) / f"{edges:.0e}".replace("+", "")
        prepare(work, int(edges), args)
        for name in args.paths:
            run = (anchor(work, args.minutes, args.points, args.anchor_lrs) if name == "anchor"
                   else gnnrec_path(work, name, args.minutes))
            row = {"run": f"{name}, {edges:.0e} rows", "edges": edges, "path": name, "minutes": args.minutes, **run,
                   **{f"recall@20 at {m} min": at_minutes(run["curve"], m) for m in (10, 30, 60) if m <= args.minutes}}
            rows.append(row)
            print(json.dumps(row), flush=True)
            out.write_text(json.dumps(rows, indent=1) + "\n")
    plot(rows, out.with_suffix(".png"))


if __name__ == "__main__":
    main()
