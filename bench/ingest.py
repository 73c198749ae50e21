"""Ingest throughput and memory against a bare pyarrow read + unique of the same files, in one run.

    python bench/ingest.py [--sizes 1000000 10000000] [--workdir /tmp/gnnrec-bench-ingest]

Each measurement runs in a fresh subprocess so its peak RSS is its own. Prints one JSON object:
per size, ingest edges/s and peak RSS, the anchor's seconds and peak RSS, their time ratio, and the
marginal memory per edge between the two largest sizes.
"""
import argparse
import json
import subprocess
import sys
import time

ANCHOR = """
import glob, json, resource, sys, time
import pyarrow.compute as pc, pyarrow.parquet as pq
t = time.perf_counter()
table = pq.read_table(glob.glob(sys.argv[1] + "/*.parquet"), columns=["user_id", "item_id"])
n = len(pc.unique(table["user_id"])) + len(pc.unique(table["item_id"]))
print(json.dumps({"seconds": time.perf_counter() - t,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

INGEST = """
import json, sys, time
from gnnrec.launch.config import load_config
from gnnrec.data.ingest import run as ingest
cfg = load_config(None, sys.argv[1:])
t = time.perf_counter()
stats = ingest(cfg)
print(json.dumps({"seconds": time.perf_counter() - t, "peak_rss_mb": stats["peak_rss_mb"],
                  "train_edges": stats["train_edges"]}))
"""

BASELINE = """
import resource; import gnnrec.data.ingest
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""


def python(code: str, *args) -> str:
    return subprocess.run([sys.executable, "-c", code, *args], check=True, capture_output=True, text=True).stdout


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    p.add_argument("--workdir", default="/tmp/gnnrec-bench-ingest")
    args = p.parse_args()

    from gnnrec.launch.config import load_config
    from gnnrec.data.synth import run as synth

    results = {"import_rss_mb": float(python(BASELINE))}
    for edges in args.sizes:
        work = f"{args.workdir}/{edges}"
        overrides = [f"workdir={work}", f"synth.edges={edges}", f"synth.users={max(edges // 50, 100)}",
                     f"synth.items={max(edges // 100, 100)}", "synth.social_edges=0", "synth.item_feature_dim=0",
                     "synth.timestamps=false", "ingest.interactions.timestamp_column=null",
                     "ingest.social=null", "ingest.item_features=null"]
        t = time.perf_counter()
        synth(load_config(None, overrides))
        synth_s = time.perf_counter() - t
        anchor = json.loads(python(ANCHOR, f"{work}/synth/interactions"))
        ours = json.loads(python(INGEST, *overrides))
        results[str(edges)] = {
            "synth_seconds": round(synth_s, 2),
            "ingest_seconds": round(ours["seconds"], 3),
            "ingest_edges_per_s": round(edges / ours["seconds"]),
            "ingest_peak_rss_mb": round(ours["peak_rss_mb"], 1),
            "anchor_read_unique_seconds": round(anchor["seconds"], 3),
            "anchor_peak_rss_mb": round(anchor["peak_rss_mb"], 1),
            "ratio_ingest_to_anchor_time": round(ours["seconds"] / anchor["seconds"], 2),
        }
    if len(args.sizes) >= 2:
        small, large = sorted(args.sizes)[-2:]
        grow = results[str(large)]["ingest_peak_rss_mb"] - results[str(small)]["ingest_peak_rss_mb"]
        results["marginal_bytes_per_edge"] = round(grow * 2**20 / (large - small), 1)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
