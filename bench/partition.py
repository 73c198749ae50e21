"""Partitioning benchmark: edge cut, imbalance, wall time and peak RSS per method and K, as JSON.

    python bench/partition.py                       # Gowalla (if present) + synthetic 10M and 50M edges
    python bench/partition.py --synthetic 1000000 --parts 4   # small and quick

Every partitioning runs in a fresh subprocess so its peak RSS is its own; `marginal_rss_mb` is that
peak minus the RSS of the same subprocess right after its imports, and `bytes_per_edge` divides it by
the graph's edges (training interactions + social). Ratios are against anchors measured in the same
run: edge_cut(random-walk) / edge_cut(metis), and peak_rss(method) / peak_rss(DGL's partition_graph
with METIS, the whole-graph path) where that fits (--dgl-max-edges).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

GOWALLA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "gowalla"

CHILD = f"import sys; sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})" + r"""
import json, resource, sys, time
from gnnrec.launch.config import load_config
from gnnrec.partition import stage
import dgl_anchors  # imports dgl: a fixed cost, not a per-edge one
def rss(): return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
base = rss()
mode, overrides = sys.argv[1], sys.argv[2:]
cfg = load_config(None, overrides)
t = time.perf_counter()
if mode == "dgl":
    dgl_anchors.partition_graph_metis(cfg.path(cfg.partition.dataset) / "graph.dgl", cfg.path(cfg.partition.out),
                                      cfg.partition.parts)
    result = {}
else:
    result = stage.run(cfg)
print("RESULT " + json.dumps({**result, "wall_s": round(time.perf_counter() - t, 2), "base_rss_mb": round(base, 1),
                             "peak_rss_mb": round(rss(), 1)}))
"""


def child(mode: str, overrides: list[str], timeout: int) -> dict:
    t = time.perf_counter()
    try:
        run = subprocess.run([sys.executable, "-c", CHILD, mode, *overrides], capture_output=True, text=True,
                             timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout after {timeout}s"}
    for line in run.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    return {"error": (run.stderr.strip().splitlines() or ["no output"])[-1], "rc": run.returncode,
            "wall_s": round(time.perf_counter() - t, 2)}


def prepare(name: str, workdir: Path, overrides: list[str]) -> dict:
    """synth (if synthetic) + ingest into workdir/dataset, in a subprocess; the dataset's meta."""
    meta_path = workdir / "dataset" / "meta.json"
    if not meta_path.exists():
        stages = "[ingest]" if name == "gowalla" else "[synth, ingest]"
        cmd = [sys.executable, "-m", "gnnrec.launch.cli", "run", f"workdir={workdir}", f"run.stages={stages}", *overrides]
        subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(meta_path.read_text())


def bench_dataset(name: str, workdir: Path, overrides: list[str], args) -> dict:
    t = time.perf_counter()
    meta = prepare(name, workdir, overrides)
    edges = meta["edges"]["train"] + meta["social_edges"]
    result = {"users": meta["num_users"], "items": meta["num_items"], "graph_edges": edges,
              "prepare_s": round(time.perf_counter() - t, 1), "runs": {}}
    for method in args.methods:
        if method == "metis" and edges > args.metis_max_edges:
            result["runs"]["metis"] = {"skipped": f"over --metis-max-edges={args.metis_max_edges}"}
            continue
        for k in args.parts:
            r = child("ours", [f"workdir={workdir}", f"partition.method={method}", f"partition.parts={k}",
                               f"partition.out={workdir}/parts", f"partition.workers={args.workers}"], args.timeout)
            if "error" not in r:
                marginal = r["peak_rss_mb"] - r["base_rss_mb"]
                r = {key: r[key] for key in ("edge_cut", "halo_fraction", "imbalance", "imbalance_users",
                                               "imbalance_items", "imbalance_edges", "imbalance_train",
                                               "imbalance_val", "imbalance_test", "assign_seconds", "seconds",
                                               "wall_s", "peak_rss_mb", "base_rss_mb")}
                r["marginal_rss_mb"] = round(marginal, 1)
                r["bytes_per_edge"] = round(marginal * 2**20 / edges, 1)
            result["runs"].setdefault(method, {})[f"K={k}"] = r
            print(f"{name} {method} K={k}: {json.dumps(r)}", file=sys.stderr, flush=True)
    if edges <= args.dgl_max_edges:
        for k in args.parts:
            r = child("dgl", [f"workdir={workdir}", f"partition.parts={k}", f"partition.out={workdir}/dgl_parts"],
                      args.timeout)
            if "error" not in r:
                r["marginal_rss_mb"] = round(r["peak_rss_mb"] - r["base_rss_mb"], 1)
                r["bytes_per_edge"] = round(r["marginal_rss_mb"] * 2**20 / edges, 1)
            result["runs"].setdefault("dgl_partition_graph_metis", {})[f"K={k}"] = r
            print(f"{name} dgl K={k}: {json.dumps(r)}", file=sys.stderr, flush=True)
    ratios = {}
    runs = result["runs"]
    for k in args.parts:
        key = f"K={k}"
        get = lambda m, f: runs.get(m, {}).get(key, {}).get(f)
        if get("random-walk", "edge_cut") is not None and get("metis", "edge_cut"):
            ratios[f"edge_cut(random-walk)/edge_cut(metis) {key}"] = round(get("random-walk", "edge_cut") / get("metis", "edge_cut"), 3)
        if get("random", "edge_cut") is not None and get("metis", "edge_cut"):
            ratios[f"edge_cut(random)/edge_cut(metis) {key}"] = round(get("random", "edge_cut") / get("metis", "edge_cut"), 3)
        for m in ("random-walk", "random", "metis"):
            if get(m, "peak_rss_mb") and get("dgl_partition_graph_metis", "peak_rss_mb"):
                ratios[f"peak_rss({m})/peak_rss(dgl partition_graph metis) {key}"] = round(
                    get(m, "peak_rss_mb") / get("dgl_partition_graph_metis", "peak_rss_mb"), 3)
    result["ratios"] = ratios
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--synthetic", type=int, nargs="*", default=[10_000_000, 50_000_000],
                   help="synthetic graphs, by their (approximate) number of training edges")
    p.add_argument("--parts", type=int, nargs="+", default=[4, 8])
    p.add_argument("--methods", nargs="+", default=["metis", "random", "random-walk"])
    p.add_argument("--gowalla", default=str(GOWALLA), help="directory with train.parquet and test.parquet")
    p.add_argument("--no-gowalla", action="store_true")
    p.add_argument("--workdir", default="/tmp/gnnrec-bench-partition")
    p.add_argument("--workers", type=int, default=0, help="Ray tasks for the random walks")
    p.add_argument("--metis-max-edges", type=int, default=60_000_000)
    p.add_argument("--dgl-max-edges", type=int, default=20_000_000,
                   help="run DGL's partition_graph baseline (~260 B/edge) only up to this many edges")
    p.add_argument("--timeout", type=int, default=3600)
    args = p.parse_args(argv)
    out = {"parts": args.parts, "datasets": {}}
    root = Path(args.workdir)
    gowalla = Path(args.gowalla)
    if not args.no_gowalla and (gowalla / "train.parquet").exists():
        out["datasets"]["gowalla"] = bench_dataset("gowalla", root / "gowalla", [
            f"ingest.interactions.path={gowalla / 'train.parquet'}", "ingest.interactions.timestamp_column=null",
            "ingest.social=null", "ingest.item_features=null", "split.method=test_file",
            f"split.test_path={gowalla / 'test.parquet'}"], args)
    elif not args.no_gowalla:
        out["datasets"]["gowalla"] = {"skipped": f"{gowalla} not found"}
    for n in args.synthetic:
        # about n training edges: ~70% of generated interactions survive dedup, 80% of those are training
        raw = int(n / 0.8 / 0.7)
        out["datasets"][f"synthetic_{n}"] = bench_dataset(f"synthetic_{n}", root / f"synthetic_{n}", [
            f"synth.edges={raw}", f"synth.users={max(raw // 50, 100)}", f"synth.items={max(raw // 100, 100)}",
            "synth.communities=64", "synth.social_edges=0", "synth.item_feature_dim=0", "synth.timestamps=false",
            "ingest.social=null", "ingest.item_features=null", "ingest.interactions.timestamp_column=null"], args)
    floors = {}
    gw = out["datasets"].get("gowalla", {}).get("ratios", {})
    if "edge_cut(random-walk)/edge_cut(metis) K=4" in gw:
        floors["gowalla K=4 edge_cut(random-walk) <= 2 x metis"] = gw["edge_cut(random-walk)/edge_cut(metis) K=4"] <= 2
    for name, d in out["datasets"].items():
        for m, runs in d.get("runs", {}).items():
            for key, r in runs.items():
                if "imbalance" in r and m != "dgl_partition_graph_metis":
                    floors[f"{name} {m} {key} imbalance <= 0.10"] = r["imbalance"] <= 0.10
                if name.startswith("synthetic_5") and m in ("random", "random-walk") and "bytes_per_edge" in r:
                    floors[f"{name} {m} {key} marginal <= 40 B/edge"] = r["bytes_per_edge"] <= 40
    out["floors"] = floors
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
