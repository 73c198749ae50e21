"""The whole pipeline at growing sizes, as JSON: seconds, peak memory and disk of every stage.

    python bench/scale.py [--sizes 1e6 1e7 1e8] [--workdir /tmp/gnnrec-scale] [--steps 30] [--sample-users 10000]

For each size E, a synthetic log of E rows (the project's generator: E/20 users, E/50 items, power-law
degrees, planted communities; a ratio split 0.8/0.1/0.1) goes through `gnnrec synth`, `ingest`,
`partition` (K=1; K=4 with the random-walk partitioner; K=4 METIS up to `--metis-up-to` edges),
`train` on the K=1 partitions (LightGCN, 2 layers, fanouts [10, 5], dim 64, batches of `--batch`
edges with 4 negatives, 1 trainer, `--steps` steps: `train.max_steps_per_epoch`, no validation),
`infer` (every layer of every node; top-K for a seeded sample of `--sample-users` users:
`infer.users`) and `evaluate` (test split, the same size of user sample: `evaluate.users`). Each
stage is its own `gnnrec` process; per stage: wall seconds, peak memory of its whole process tree
(driver, embedded Ray, graph servers, trainers: the sum of proportional set sizes, so shared memory
counts once, sampled every second: reading smaps_rollup of a 20 GB process tree takes a
tenth of a core at that rate, half a core at 0.2 s), bytes its output holds, and rows (log edges) per second.

Anchor, measured in the same run at every size: `pyarrow.parquet.read_table` of the synthetic log
(what any job over it must at least do). `--only train` re-measures one stage after a change, on the
outputs an earlier run left in the workdir, the rows' other figures kept. `x_read` is a stage's
seconds over the anchor's; `per_edge_vs_smallest` its seconds per edge over the same stage's at the
smallest size (1 = linear scaling). Writes `bench/results/scale.json` and the log-log plot `bench/results/scale.png`.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
GNNREC = str(Path(sys.executable).parent / "gnnrec")


def tree_pss_bytes(root: int) -> int:
    """The proportional set size of `root` and all its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        todo.extend(children.get(pid, ()))
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                total += next(int(line.split()[1]) for line in f if line.startswith("Pss:")) * 1024
        except (OSError, StopIteration):
            pass
    return total


def measured(command: list[str], log: Path) -> dict:
    """Run `command` to its end; its wall seconds and the peak PSS of its process tree."""
    peak, done = [0], threading.Event()
    with open(log, "w") as out:
        started = time.perf_counter()
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)

        def sample():
            while not done.wait(1.0):
                peak[0] = max(peak[0], tree_pss_bytes(process.pid))
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        rc = process.wait()
        seconds = time.perf_counter() - started
        done.set()
        sampler.join()
    if rc:
        raise SystemExit(f"{' '.join(command)} failed (exit {rc}): see {log}\n" + log.read_text()[-3000:])
    return {"seconds": round(seconds, 2), "peak_gb": round(peak[0] / 2**30, 3)}


def disk_bytes(*paths: Path) -> int:
    """Bytes of the files under `paths`, a hard-linked file once (train's model/ links its checkpoint)."""
    files = {(s.st_dev, s.st_ino): s.st_size for p in paths if p.exists() for f in p.rglob("*") if f.is_file()
             for s in [f.stat()]}
    return sum(files.values())


def read_anchor(log_dir: Path) -> float:
    code = ("import sys, time, pyarrow.parquet as pq; t = time.perf_counter(); "
            "pq.read_table(sys.argv[1], columns=['user_id', 'item_id']); print(time.perf_counter() - t)")
    return float(subprocess.run([sys.executable, "-c", code, str(log_dir)], check=True, capture_output=True,
                                text=True).stdout)


def stages(edges: int, args) -> list[tuple[str, list[str], list[str]]]:
    """(name, gnnrec arguments, output paths under the workdir) of each stage, in order."""
    k4 = [("partition_k4_random_walk", "random-walk")]
    if edges <= args.metis_up_to:
        k4.append(("partition_k4_metis", "metis"))
    train = ["train.model=lightgcn", "train.layers=2", "train.fanouts=[10, 5]", "train.dim=64",
             f"train.batch_size={args.batch}", "train.num_negatives=4", "train.lr=0.01", "train.epochs=1",
             f"train.max_steps_per_epoch={args.steps}", "train.validate_split=none", "train.max_failures=0"]
    return [
        ("synth", ["synth", f"synth.edges={edges}", f"synth.users={edges // 20}", f"synth.items={edges // 50}",
                   "synth.social_edges=0", "synth.item_feature_dim=0", "synth.timestamps=false"], ["synth"]),
        ("ingest", ["ingest", "ingest.social=null", "ingest.item_features=null",
                    "ingest.interactions.timestamp_column=null"], ["dataset"]),
        ("partition_k1", ["partition", "partition.parts=1", "partition.method=random"], ["partitions"]),
        *[(name, ["partition", "partition.parts=4", f"partition.method={method}", f"partition.out={{workdir}}/{name}"],
           [name]) for name, method in k4],
        ("train", ["train", *train], ["train", "checkpoints"]),
        ("infer", ["infer", f"infer.users={args.sample_users}"], ["infer"]),
        ("evaluate", ["evaluate", f"evaluate.users={args.sample_users}", "evaluate.ks=[20]"], ["evaluate"]),
    ]


def run_size(edges: int, args, previous: dict | None) -> dict:
    work = Path(args.workdir) / f"{edges:.0e}".replace("+", "")
    work.mkdir(parents=True, exist_ok=True)
    row = previous if args.only else {"edges": edges, "stages": {}}
    for name, argv, outputs in stages(edges, args):
        if args.only and name not in args.only:
            continue
        result = measured([GNNREC, argv[0], f"workdir={work}", *argv[1:]], work / f"{name}.log")
        result["disk_gb"] = round(disk_bytes(*(work / p for p in outputs)) / 2**30, 3)
        result["measured"] = time.strftime("%Y-%m-%d")  # with --only, a row mixes runs
        result["edges_per_s"] = round(edges / result["seconds"])
        if name.startswith("partition"):
            stats = json.loads((work / outputs[0] / "partition_stats.json").read_text())
            result.update({k: stats[k] for k in ("edge_cut", "halo_fraction")},
                          max_part_edges=max(p["edges"] for p in stats["per_part"]),
                          max_part_nodes=max(p["nodes"] for p in stats["per_part"]))
        if name == "train":
            metrics = json.loads((work / "train" / "metrics.jsonl").read_text().splitlines()[-1])
            result["train_loop_edges_per_s"] = round(metrics["edges_per_s"])
            result["input_rows_per_step"] = round(metrics["input_rows_per_step"])  # the batch's frontier
            result["phases"] = metrics["phases"]
            result["steps"] = args.steps
            plan = re.search(r"est_memory_per_machine_gb=([0-9.]+)", (work / "train.log").read_text())
            result["plan_est_gb"] = float(plan.group(1))  # the plan line's estimate, against peak_gb
        row["stages"][name] = result
        print(json.dumps({"edges": edges, "stage": name, **result}), file=sys.stderr, flush=True)
        if name == "synth":
            row["anchor_read_s"] = round(read_anchor(work / "synth" / "interactions"), 3)
    stats = json.loads((work / "dataset" / "stats.json").read_text())
    row["dataset"] = {k: stats[k] for k in ("users", "items", "train_edges", "val_edges", "test_edges")}
    for result in row["stages"].values():
        result["x_read"] = round(result["seconds"] / row["anchor_read_s"], 2)
    return row


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    for name in dict.fromkeys(n for r in rows for n in r["stages"]):  # METIS stops at --metis-up-to
        have = [r for r in rows if name in r["stages"]]
        x = [r["edges"] for r in have]
        left.loglog(x, [r["stages"][name]["seconds"] for r in have], "o-", label=name)
        right.loglog(x, [r["stages"][name]["peak_gb"] for r in have], "o-", label=name)
    left.loglog([r["edges"] for r in rows], [r["anchor_read_s"] for r in rows], "k--", label="anchor: read the log")
    for axis, label in ((left, "seconds"), (right, "peak GB (process tree PSS)")):
        axis.set_xlabel("log rows (edges)")
        axis.set_ylabel(label)
        axis.grid(True, which="both", alpha=0.3)
    left.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--sizes", type=float, nargs="+", default=[1e6, 1e7, 1e8])
    p.add_argument("--workdir", default="/tmp/gnnrec-scale")
    p.add_argument("--steps", type=int, default=30, help="training steps at every size")
    p.add_argument("--batch", type=int, default=8192, help="training edges per step")
    p.add_argument("--sample-users", type=int, default=10_000, help="users ranked by infer's top-K and evaluate")
    p.add_argument("--metis-up-to", type=float, default=1e7, help="largest size partitioned by METIS too")
    p.add_argument("--only", nargs="+", help="re-measure these stages at --sizes on the workdir's outputs of an "
                   "earlier run, every other figure kept from scale.json (e.g. --only train)")
    args = p.parse_args()

    earlier = {r["edges"]: r for r in json.loads((RESULTS / "scale.json").read_text())} if args.only else {}
    by_size = dict(earlier)
    for size in args.sizes:
        if args.only and int(size) not in earlier:
            raise SystemExit(f"--only: bench/results/scale.json has no row of {int(size)} edges to complete")
        by_size[int(size)] = run_size(int(size), args, earlier.get(int(size)))
        rows = [by_size[e] for e in sorted(by_size)]
        smallest = rows[0]
        for row in rows:
            for name, result in row["stages"].items():
                if name in smallest["stages"]:
                    base = smallest["stages"][name]["seconds"] / smallest["edges"]
                    result["per_edge_vs_smallest"] = round(result["seconds"] / row["edges"] / base, 2)
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "scale.json").write_text(json.dumps(rows, indent=2) + "\n")  # kept as each size ends
        plot(rows, RESULTS / "scale.png")
    print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
