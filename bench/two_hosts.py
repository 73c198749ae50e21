"""K-host training at scale: bench/scale.py's 10M-row graph on K=2 partitions, one trainer on each of
two simulated hosts, against the same training on K=1 (one host), as JSON.

    python bench/two_hosts.py [--workdir /tmp/gnnrec-scale/1e07] [--steps 60] [--epochs 2]

Needs root (network namespaces and a private /dev/shm per host: tests/hosts.py). The dataset is
bench/scale.py's at 10M rows (made here with `gnnrec synth` and `ingest` when absent). K=2: `gnnrec
partition partition.parts=2 partition.method=random-walk`, then `gnnrec train` attached to the two
hosts' Ray (`launch.address`); K=1: the same `gnnrec train` on the 1-partition graph and the embedded
Ray. Both: LightGCN, 2 layers, fanouts [10, 5], dim 64, batches of `--batch` edges with 4 negatives,
`--epochs` epochs of `--steps` steps, validation after each on the same seeded 2,000 users
(train.validate_users). Per K: training edges/s per trainer (the loop's, the mean over ranks and
epochs), the share of sampled nodes whose neighbours came from the other host's server, the last
validation's recall@20 / ndcg@20. The anchor is the K=1 run: `x_k1` = K=2's edges/s per trainer over it.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import scale  # noqa: E402
from hosts import TwoHosts, unavailable  # noqa: E402

GNNREC = str(Path(sys.executable).parent / "gnnrec")


def gnnrec(*args: str, env=None) -> float:
    started = time.perf_counter()
    done = subprocess.run([GNNREC, *args], capture_output=True, text=True, env=env, timeout=3600)
    if done.returncode:
        raise SystemExit(f"gnnrec {' '.join(args)} failed:\n{(done.stdout + done.stderr)[-3000:]}")
    return round(time.perf_counter() - started, 1)


def train(work: Path, name: str, partitions: str, args, *extra: str, env=None) -> dict:
    seconds = gnnrec("train", f"workdir={work}", f"train.partitions={partitions}", f"train.out={{workdir}}/{name}",
                     f"train.checkpoints={{workdir}}/{name}-checkpoints", "train.model=lightgcn", "train.layers=2",
                     "train.fanouts=[10, 5]", "train.dim=64", f"train.batch_size={args.batch}",
                     "train.num_negatives=4", "train.lr=0.05", f"train.epochs={args.epochs}",
                     f"train.max_steps_per_epoch={args.steps}", "train.validate_users=2000", "train.patience=100",
                     "train.max_failures=0", *extra, env=env)
    history = [json.loads(line) for line in (work / name / "metrics.jsonl").read_text().splitlines()]
    return {"seconds": seconds, "edges_per_s_per_trainer": round(sum(m["edges_per_s"] for m in history) / len(history)),
            "remote_sampling_share": round(history[-1].get("remote_sampling_share", 0.0), 4),
            "recall@20": round(history[-1]["recall@20"], 4), "ndcg@20": round(history[-1]["ndcg@20"], 4),
            "recall@20_by_epoch": [round(m["recall@20"], 4) for m in history]}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--workdir", default="/tmp/gnnrec-scale/1e07")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch", type=int, default=8192)
    args = p.parse_args()
    args.metis_up_to, args.sample_users = 0, 0  # what scale.stages reads besides --batch and --steps
    why = unavailable()
    if why:
        raise SystemExit(f"two simulated hosts: {why}")
    work = Path(args.workdir)
    if not (work / "partitions").exists():  # bench/scale.py's own stages at 10M rows
        for name, argv, _ in scale.stages(10_000_000, args):
            if name in ("synth", "ingest", "partition_k1"):
                gnnrec(argv[0], f"workdir={work}", *argv[1:])
    partition_s = gnnrec("partition", f"workdir={work}", "partition.parts=2", "partition.method=random-walk",
                         "partition.out={workdir}/partitions_k2")
    k1 = train(work, "train_k1", "{workdir}/partitions", args)
    with TwoHosts(cpus_per_host=2) as hosts:
        import ray
        env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_ADDRESS": hosts.address}
        os.environ.update(env)
        ray.init(address=hosts.address)
        hosts.wait_for_nodes(ray)  # both nodes up before the job's plan counts them
        ray.shutdown()
        k2 = train(work, "train_k2", "{workdir}/partitions_k2", args, f"launch.address={hosts.address}", env=env)
    k2["x_k1"] = round(k2["edges_per_s_per_trainer"] / k1["edges_per_s_per_trainer"], 2)
    stats = json.loads((work / "partitions_k2" / "partition_stats.json").read_text())
    result = {"rows": 10_000_000, "steps": args.steps, "epochs": args.epochs, "batch": args.batch,
              "partition_k2": {"seconds": partition_s, "edge_cut": stats["edge_cut"]}, "k1": k1, "k2": k2}
    out = Path(__file__).resolve().parent / "results" / "two_hosts.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
