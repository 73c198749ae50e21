"""Top-K scoring benchmark: ranking/topk.py's `top_k` vs bare torch.topk over U @ I^T, side by side, as JSON.

    python bench/infer.py [--users 29858] [--items 40981] [--catalog-users 20000] [--catalog-items 1000000]
                          [--measured-users 1024] [--threads 1]

gowalla: Gowalla-sized random embeddings (seeded normal, dim 64), U [29,858 x 64], I [40,981 x 64], K = 20,
    ~27 random excluded (user, item) pairs per user (an edge index, as training items are). Ours: every
    user through top_k(U, I, 20, exclude, user_chunk=4096) -> (users, item ids, scores), excluded items
    masked, -1 / -inf padding. Anchor: torch.topk(U[chunk] @ I.T, 20) over the same 4096-user chunks,
    no masking, no padding. Figure: users per second.
catalog: a synthetic 1,000,000-item catalog, 20,000 users, dim 64, K = 20, ~10 excluded items per user,
    chunks of 1024 users (a [1024 x 1M] float32 score matrix, 4 GB). Only the first `measured_users` users
    (default 1024, one chunk) are scored, to keep the run short; the rate per user does not depend on the
    number of users. Ours both unsplit and with item_chunk=250000 (4 item shards, the top 20 of each
    merged by one more topk, a 1 GB score buffer).
Ours reuses one score buffer across chunks (torch.mm(..., out=)); the anchor allocates a fresh score
matrix per chunk, as a plain `U @ I.T` does, and pays its page faults every chunk. Each side's time
includes releasing its memory at the end.
Each pass runs ours and the anchor alternately chunk by chunk (the anchor first every other pass), so
that load from other processes hits both alike; the best of `passes` passes is reported for each.
ratio = ours / anchor (the floor is 0.7).
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from gnnrec.ranking.topk import top_k

K, DIM = 20, 64


def embeddings(num_users: int, num_items: int, excl_per_user: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    U, I = torch.randn(num_users, DIM, generator=g), torch.randn(num_items, DIM, generator=g)
    n = num_users * excl_per_user
    exclude = torch.stack([torch.randint(num_users, (n,), generator=g), torch.randint(num_items, (n,), generator=g)])
    return U, I, exclude


def anchor(U, I, chunk: int, num_users: int):
    for start in range(0, num_users, chunk):
        yield torch.topk(U[start:start + chunk] @ I.T, K, dim=1)


def timed_next(it, last: bool) -> float:
    """Seconds for the next chunk; after the last one, also for releasing the generator (its buffer)."""
    start = time.perf_counter()
    next(it)
    if last:
        it.close()
    return time.perf_counter() - start


def compare(U, I, exclude, chunk: int, num_users: int, passes: int, item_chunk=None) -> dict:
    """Best-of-passes users/s of ours (unsplit, and with `item_chunk` if given) and of the anchor."""
    users = None if num_users == U.shape[0] else torch.arange(num_users)
    variants = {"ours": None} if item_chunk is None else {"ours": None, "ours_item_chunk": item_chunk}
    best = {name: float("inf") for name in [*variants, "anchor"]}
    n_chunks = -(-num_users // chunk)
    for p in range(passes):
        its = {name: top_k(U, I, K, exclude, users=users, user_chunk=chunk, item_chunk=ic)
               for name, ic in variants.items()}
        its["anchor"] = anchor(U, I, chunk, num_users)
        if p % 2:  # every other pass the anchor goes first
            its = dict(reversed(its.items()))
        seconds = dict.fromkeys(its, 0.0)
        for c in range(n_chunks):  # alternate chunk by chunk
            for name, it in its.items():
                seconds[name] += timed_next(it, c == n_chunks - 1)
        del its
        best = {name: min(best[name], s) for name, s in seconds.items()}
    rate = {name: num_users / s for name, s in best.items()}
    out = {"ours_users_per_s": round(rate["ours"]), "anchor_users_per_s": round(rate["anchor"]),
           "ratio": round(rate["ours"] / rate["anchor"], 3)}
    if item_chunk is not None:
        out.update({"item_chunk": item_chunk, "ours_item_chunk_users_per_s": round(rate["ours_item_chunk"]),
                    "ratio_item_chunk": round(rate["ours_item_chunk"] / rate["anchor"], 3)})
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--users", type=int, default=29858, help="gowalla case: users")
    p.add_argument("--items", type=int, default=40981, help="gowalla case: items")
    p.add_argument("--catalog-users", type=int, default=20000)
    p.add_argument("--catalog-items", type=int, default=1_000_000)
    p.add_argument("--measured-users", type=int, default=1024, help="catalog case: users actually scored")
    p.add_argument("--passes", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    result = {"k": K, "dim": DIM, "threads": args.threads, "passes": args.passes, "torch": torch.__version__}

    U, I, exclude = embeddings(args.users, args.items, 27, seed=0)
    result["gowalla"] = {"users": args.users, "items": args.items, "exclude_per_user": 27, "user_chunk": 4096,
                         **compare(U, I, exclude, 4096, args.users, args.passes)}
    del U, I, exclude

    U, I, exclude = embeddings(args.catalog_users, args.catalog_items, 10, seed=1)
    measured = min(args.measured_users, args.catalog_users)
    result["catalog"] = {"users": args.catalog_users, "items": args.catalog_items, "measured_users": measured,
                         "exclude_per_user": 10, "user_chunk": 1024,
                         **compare(U, I, exclude, 1024, measured, args.passes, item_chunk=250_000)}
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
