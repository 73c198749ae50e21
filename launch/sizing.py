"""What a job needs per machine: the memory model `gnnrec train` plans with (launch/cluster.plan), and
`gnnrec plan`, which sizes a job before its data exists from the costs bench/scale.py measured.

`gnnrec plan` scales each stage from the largest size of the curve (`plan.curve`, a scale.json):
ingest and partition run on one machine, so their seconds and memory grow with the log's rows; training
and inference run on every machine, so their memory is the model's for one machine's partition and
their seconds divide by the trainers. Per trainer, a training step costs what it cost at the curve's
largest size: its fanouts bound a batch's frontier, which the curve's graphs fill more as they grow
(it is capped by the graph at small sizes), so a larger graph costs no more per edge. Top-K for every
user is scaled from bench/topk_index.py (`plan.topk_curve`), exactly and through the IVF index.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from gnnrec import UserError

# Memory, measured on Gowalla (batch 65,536 x 16 negatives, 3 full layers, dim 64: graph server 0.85 GB,
# trainer peak 3.3 GB, Ray's own ~2 GB), and the trainer's per-edge term with bench/scale.py at 10M and
# 100M rows (peaks 5.34 and 19.13 GB, 1.33 and 3.84 GB over this model without it: 2.51 GB for 110M more
# partition edges, 24 B each; the rest, ~1 GB, is the batch's two-hop frontier, left out here):
BYTES_PER_EDGE = 64  # partition graph in DistDGL's server (ids, CSC, edge data, shared-memory copy)
BYTES_PER_NODE = 48  # node maps, masks, degrees
BYTES_PER_ID_VALUE = 12  # ID-embedding rows in the servers, with SparseAdam's two moments (float32 each)
RAY_BYTES = 2 * 2**30  # per machine: Ray Train's controller, the driver's fit task, Ray's agents
TRAINER_BYTES = 0.7 * 2**30  # one Ray Train worker before its first batch: torch, dgl, the model
TRAINER_BYTES_PER_EDGE = 24  # per directed edge of its partition (its share): the training edges and
#                              their endpoints (12 B), the local in-edge lists (8 B), an epoch's order (4 B)
BATCH_BYTES_PER_VALUE = 36  # per float of the batch's (user, positive, negatives) rows: the rows, the
#                             model's outputs, their gradients and the prefetched blocks
# train.sampler=full_graph, per trainer: the whole-graph block (int64 src and dst, a float coefficient per
# directed edge) and the training pairs' key set; every node's h0, layer outputs and their gradients at
# once (a 100M-edge log's shape in pure torch, 2 layers, dim 64, 1M pairs: peak 17.7 GB, ~3 GB of it the
# test's own arrays)
FULL_GRAPH_BYTES_PER_EDGE = 28
FULL_GRAPH_BYTES_PER_VALUE = 24
CURVE = Path(__file__).resolve().parent.parent / "bench" / "results" / "scale.json"
TOPK_CURVE = CURVE.with_name("topk_index.json")


def machine_bytes(part_edges: int, part_nodes: int, dim: int, batch_rows: int, trainers: int,
                  full_graph: bool = False) -> int:
    """Memory of one machine of a training job: its graph server (a partition of `part_edges` directed
    edges and `part_nodes` nodes, their ID rows and Adam state), `trainers` trainers (each propagating the
    whole partition with `full_graph`), Ray's own."""
    server = part_edges * BYTES_PER_EDGE + part_nodes * (BYTES_PER_NODE + dim * BYTES_PER_ID_VALUE)
    trainer = TRAINER_BYTES + part_edges // trainers * TRAINER_BYTES_PER_EDGE + batch_rows * dim * BATCH_BYTES_PER_VALUE
    if full_graph:
        trainer += part_edges * FULL_GRAPH_BYTES_PER_EDGE + part_nodes * dim * FULL_GRAPH_BYTES_PER_VALUE
    return int(RAY_BYTES + server + trainers * trainer)


def _curve(path, key: str, bench: str) -> dict:
    """The largest size of a bench result (a list of rows with "edges")."""
    try:
        rows = json.loads(Path(path).read_text())
        return max(rows, key=lambda r: r["edges"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"{key}={path}: not a {bench} result ({e})") from None


def topk_hours(path, users: int, items: int, trainers: int) -> dict:
    """Hours of top-K for every one of `users` over `items` on `trainers` trainers, exactly and through
    the IVF index, from bench/topk_index.py's largest size: exact costs users x items scores at the rate it
    measured; an IVF search (4 sqrt(items) cells, a fixed number probed) reads a share of the catalog
    that shrinks as 1 / sqrt(items), so its cost per user grows as sqrt(items)."""
    at = _curve(path, "plan.topk_curve", "bench/topk_index.py")
    try:
        exact, ivf = at["paths"]["exact"], at["paths"]["ivf"]
        exact_rate = exact["users_ranked"] * at["items"] / exact["topk_seconds"]
        ivf_user_s = ivf["topk_seconds"] / ivf["users_ranked"] * math.sqrt(items / at["items"])
    except (KeyError, TypeError, ZeroDivisionError) as e:
        raise UserError(f"plan.topk_curve={path}: not a bench/topk_index.py result ({e!r})") from None
    return {"topk_all_users_hours (exact)": round(users * items / exact_rate / trainers / 3600, 2),
            "topk_all_users_hours (ivf)": round(users * ivf_user_s / trainers / 3600, 2),
            "topk_curve": f"bench/topk_index.py at {at['edges']:,} rows: exact {exact_rate:.3g} scores/s, ivf "
                          f"{1 / ivf_user_s:,.0f} users/s per trainer (at {items:,} items), recall@20 vs exact "
                          f"{ivf.get('index_recall')}"}


def run(cfg) -> dict:
    """`gnnrec plan`: machines, partitions, memory per machine and hours per stage for `plan.edges` rows."""
    p, train_cfg = cfg.plan, cfg.train
    at = _curve(cfg.path(p.curve) if p.curve else CURVE, "plan.curve", "bench/scale.py")
    stages, data, scale = at["stages"], at["dataset"], p.edges / at["edges"]
    users, items = p.users or p.edges // 20, p.items or p.edges // 50
    nodes, train_edges = users + items, round(data["train_edges"] * scale)  # the curve's share after dedup + split
    k4 = stages["partition_k4_random_walk"]
    halo = k4["max_part_nodes"] * 4 / (data["users"] + data["items"]) - 1  # a part's nodes beyond its 1/K share
    trainers, batch_rows = train_cfg.trainers_per_partition, train_cfg.batch_size * (2 + train_cfg.num_negatives)
    budget = p.machine_memory_gb * 2**30

    def need(machines: int) -> int:
        part_nodes = min(nodes, math.ceil(nodes / machines * (1 + halo))) if machines > 1 else nodes
        return machine_bytes(math.ceil(2 * train_edges / machines), part_nodes, train_cfg.dim, batch_rows, trainers)

    machines = p.machines or next((k for k in range(1, 100_001) if need(k) <= budget), None)
    if machines is None or need(machines) > budget:
        raise UserError(f"plan: {p.edges:,} rows need ~{need(machines or 100_000) / 2**30:.1f} GB per machine on "
                        f"{machines or 100_000:,} machines, over plan.machine_memory_gb={p.machine_memory_gb:g}: "
                        "fewer plan.machines, or more memory per machine")
    per_trainer = stages["train"]["train_loop_edges_per_s"]
    infer_node_s = stages["infer"]["seconds"] / (data["users"] + data["items"])
    hours = lambda seconds: round(seconds / 3600, 2)  # noqa: E731
    return {
        "rows": p.edges, "users": users, "items": items, "train_edges": train_edges,
        "machines": machines, "partitions": machines, "trainers": machines * trainers,
        "memory_per_machine_gb": p.machine_memory_gb,
        "train_est_memory_per_machine_gb": round(need(machines) / 2**30, 2),
        "train_hours_per_epoch": hours(train_edges / (machines * trainers * per_trainer)),
        "ingest_hours": hours(stages["ingest"]["seconds"] * scale),
        "ingest_memory_gb (one machine)": round(stages["ingest"]["peak_gb"] * scale, 1),
        "partition_hours": hours(k4["seconds"] * scale),
        "partition_memory_gb (one machine)": round(k4["peak_gb"] * scale, 1),
        "infer_embedding_hours": hours(infer_node_s * nodes / (machines * trainers)),
        "infer_memory_per_machine_gb": round(stages["infer"]["peak_gb"] * scale / machines, 1),
        "evaluate_hours (one process)": hours(stages["evaluate"]["seconds"] * scale),
        "evaluate_memory_gb (one process)": round(stages["evaluate"]["peak_gb"] * scale, 1),
        # evaluate.sharded: infer's layer-wise inference, then the one-process ranking split over the trainers
        "evaluate_hours (sharded)": hours((infer_node_s * nodes + stages["evaluate"]["seconds"] * scale)
                                          / (machines * trainers)),
        "evaluate_memory_per_machine_gb (sharded)": round(stages["infer"]["peak_gb"] * scale / machines, 1),
        "curve": f"bench/scale.py at {at['edges']:,} rows: {per_trainer:,} training edges/s per trainer",
        **topk_hours(cfg.path(p.topk_curve) if p.topk_curve else TOPK_CURVE, users, items, machines * trainers),
    }
