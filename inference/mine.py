"""The mine stage: hard negatives from a trained model, a stage of its own between training rounds.

For every user with training items, the model ranks the whole catalog with the user's training items
masked (layer-wise inference, then chunked scoring: inference/layerwise.py, ranking/topk.py), and
`mine.per_user` items are drawn without replacement from ranks [lo, hi] of that ranking (0 = top;
PinSage used ranks 2000-5000 of 3B items). A window value below 1 is a fraction of the catalog. The
draw for a user depends only on (mine.seed, the user's dataset id): the same file for any number of
workers. Each worker mines its share of the users:

    {mine.out}/part-{r}.parquet   user, item, rank (dataset ids; the schema samplers/negatives.py reads)

`train.hard_negatives={mine.out}` then trains with them, PinSage's curriculum: epoch n of the new round
adds n - 1 hard negatives per positive to the random ones.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from gnnrec import NODE_TYPES, UserError
from gnnrec.arrays import splitmix64
from gnnrec.ranking.topk import top_k
from gnnrec.inference.trained import TrainOutput
from gnnrec.inference.layerwise import known_items
from gnnrec.inference.model_job import model_job, model_session


def window_ranks(window, num_items: int) -> tuple[int, int]:
    """[lo, hi] as ranks in a catalog of `num_items` (values below 1 are fractions of it)."""
    lo, hi = (int(v * num_items) if v < 1 else int(v) for v in window)
    if hi >= num_items or hi <= lo:
        raise UserError(f"mine.window={list(window)}: ranks [{lo}, {hi}] are outside a catalog of {num_items} items")
    return lo, hi


def run(cfg) -> dict:
    m = cfg.mine
    trained, out = TrainOutput(cfg.path(m.checkpoint), "mine.checkpoint"), cfg.path(m.out)
    trained.model()  # weights that do not fit the config: refused here, before any worker starts
    lo, hi = window_ranks(m.window, trained.dataset.num_items)
    with model_job("mine", cfg, trained, out, mine_loop) as tmp:
        rows = sum(pq.read_metadata(f).num_rows for f in tmp.glob("part-*.parquet"))
    return {"out": str(out), "window": [lo, hi], "per_user": m.per_user, "negatives": rows}


def mine_loop(config: dict) -> None:
    context = config["context"]
    with model_session(context) as (w, inference):
        m = w.cfg.mine
        lo, hi = window_ranks(m.window, w.graph.num_nodes("item"))
        final = inference.run(w.progress)
        dataset_user, dataset_item = (w.partitions.orig_nids(n) for n in NODE_TYPES)
        users = inference.shares["user"]
        known = known_items(w.graph, users)
        users_with_items = np.unique(known[0].numpy())
        U = final["user"][torch.from_numpy(users)]
        I = final["item"][torch.arange(w.graph.num_nodes("item"))]
        parts, done = [], 0
        for rows, items, _ in top_k(U, I, hi + 1, known, users=torch.from_numpy(users_with_items)):
            done += len(rows)
            w.progress("mining", done, len(users_with_items))
            user_ids = dataset_user[users[rows.numpy()]]
            window = items[:, lo:].numpy()
            slots = draw_slots(user_ids, window.shape[1], m.per_user, m.seed)
            picked = np.take_along_axis(window, slots, axis=1)
            keep = picked >= 0  # a user with fewer candidates than the window has empty slots
            parts.append(pa.table({
                "user": np.repeat(user_ids, slots.shape[1])[keep.ravel()],
                "item": dataset_item[picked[keep]],
                "rank": (lo + slots[keep]).astype(np.int32)}))
        table = pa.concat_tables(parts) if parts else pa.table(
            {"user": pa.array([], pa.int64()), "item": pa.array([], pa.int64()), "rank": pa.array([], pa.int32())})
        Path(context.out).mkdir(parents=True, exist_ok=True)
        pq.write_table(table, Path(context.out) / f"part-{w.rank:05d}.parquet")


def draw_slots(users: np.ndarray, width: int, k: int, seed: int) -> np.ndarray:
    """[len(users), min(k, width)] distinct positions in [0, width) per user, a function of (seed, user)
    alone: the positions with the k smallest hashes of (seed, user, position)."""
    position = np.arange(width, dtype=np.uint64)
    keys = splitmix64(splitmix64(np.uint64(seed) ^ users.astype(np.uint64))[:, None] + position[None, :])
    return np.argsort(keys, axis=1, kind="stable")[:, :min(k, width)]
