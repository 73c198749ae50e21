"""GPU checks of the pure-PyTorch parts (models, losses, top-K, DDP over NCCL) and their throughput, as JSON.

    python bench/device.py [--device cuda] [--users 29858 --items 40981 --edges 810128] [--out FILE]
    python bench/device.py --device cpu --users 2000 --items 3000 --edges 40000   # a quick run on CPU

Imports only torch, numpy, `gnnrec.model`, `gnnrec.ranking` and bench/anchor.py: the machine lent for GPU
checks has no DGL, Ray or pydantic (DESIGN.md §3). Data: a synthetic user-item graph of Gowalla's shape
by default (users' degrees lognormal, items' Zipf-like, distinct edges, seeded). Figures, each a ratio
against an anchor measured in the same run on the same device:
- `gnnrec_edges_per_s`: training edges/s of the project's LightGCN (`Recommender`: 3 layers, dim 64, BPR
  with its sampled-product negative scores) over whole-graph blocks, batches of `--batch-size` positive
  edges x 16 uniform negatives, dense Adam on the ID table; `anchor_edges_per_s` the same steps in plain
  PyTorch (bench/anchor.py, bench/train.py's anchor), same batches, negatives and initial rows;
  `over_anchor` ours over it. 2 warm-up steps, then `--steps` timed; `peak_mem_gib` per path.
- `topk`: users/s of `gnnrec.ranking.topk.top_k` (top `--k`, training items masked) for every user, and of
  a plain score-matrix + mask + torch.topk in chunks (`anchor_users_per_s`) on the same device.
Checks (exit 1 after the JSON when one fails, listed under "checks"):
- `models`: every model of the registry (and every loss, on LightGCN) built on CPU, copied to the device,
  one forward + loss + backward on the same small sampled blocks on both: max relative difference of the
  loss and of every gradient (`models_max_rel_diff`) within 1e-3 and finite.
- `loss_vs_anchor`: the first step's loss of both training paths (the same formula, rows and batch) agree.
- `topk_agrees`: top_k's lists on the device equal a CPU brute force's item sets on `--check-users` users
  (where they differ, only by items tied with the k-th score), and name no training item.
- `ddp`: a process group (NCCL on CUDA, gloo on CPU; world size 1), 3 steps of the LightGCN Recommender
  and its ID table in DistributedDataParallel, an all_reduce.
- `no_dgl_ray_pydantic`: none of them was imported.
A part that raises is recorded under "errors" (traceback on stderr) and the others still run; "seconds"
gives each part's wall time. `--batch-size` defaults to 65,536 scaled by --edges / Gowalla's edges.
"""
from __future__ import annotations

import argparse
import copy
import datetime
import json
import math
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path
from types import SimpleNamespace
from typing import Optional

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from anchor import batches, initial_embeddings, lightgcn_steps, synchronize, timed_steps
from gnnrec.model.blocks import Batch, Block, full_graph_blocks, graph_edges
from gnnrec.model.losses import LOSSES
from gnnrec.model.models import MODELS, Recommender
from gnnrec.ranking.topk import top_k

GOWALLA = {"users": 29858, "items": 40981, "edges": 810128}
TOLERANCE = 1e-3  # relative, float32 CPU vs device


# ---- data -----------------------------------------------------------------------------------------

def synthetic_graph(num_users: int, num_items: int, num_edges: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """(users, items) of `num_edges` distinct edges, sorted by user: users' activity lognormal (sigma 1),
    item popularity Zipf-like, 1 / (rank + 50)^0.8 over a random order of the items."""
    if num_edges > num_users * num_items // 2:
        raise ValueError(f"{num_edges} edges are too many for {num_users} x {num_items}")
    rng = np.random.default_rng(seed)
    activity = rng.lognormal(0.0, 1.0, num_users)
    popularity = (np.arange(num_items) + 50.0) ** -0.8
    popularity = popularity[rng.permutation(num_items)] / popularity.sum()
    keys, draw = np.empty(0, np.int64), 1.1
    while len(keys) < num_edges:  # duplicates are dropped: draw more until enough remain
        degree = np.clip(np.round(activity / activity.sum() * num_edges * draw), 1, num_items).astype(np.int64)
        users = np.repeat(np.arange(num_users), degree)
        keys = np.unique(users * num_items + rng.choice(num_items, len(users), p=popularity))
        draw *= 1.2
    keys = np.sort(rng.choice(keys, num_edges, replace=False))
    return torch.from_numpy(keys // num_items), torch.from_numpy(keys % num_items)


def recommender(model: str, layers: int, options: Optional[dict] = None, loss: str = "bpr",
                dim: int = 64) -> Recommender:
    """The project's Recommender for a training config of these fields (ID rows as inputs, no contrast)."""
    t = SimpleNamespace(model=model, dim=dim, layers=layers, model_options=options or {}, inputs="id", loss=loss,
                        loss_options={}, l2=1e-4, contrast=SimpleNamespace(weight=0.0), negative_mixing=False)
    return Recommender(t)


def whole_graph(users: Tensor, items: Tensor, num_users: int, num_items: int, layers: int, device) -> list:
    """`layers` whole-graph blocks on `device`, sorted both ways on CPU first (as the samplers do)."""
    src, dst, etype = graph_edges(users, items, num_users)
    block = full_graph_blocks(src, dst, num_users + num_items, 1, etype=etype)[0]
    block.by_dst(), block.by_src()
    return [block.to(device)] * layers


def reset_peak(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device):
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 3) if torch.device(device).type == "cuda" else None


# ---- 1. training throughput -----------------------------------------------------------------------

def gnnrec_steps(users: Tensor, items: Tensor, num_users: int, num_items: int, draws: list, warmup: int,
                 device, init: Tensor) -> tuple[dict, Recommender, Tensor, list]:
    """The anchor's steps through the project's Recommender (LightGCN, 3 layers, BPR) over whole-graph
    blocks. Returns (the anchor's dict, the model, the trained ID table, the blocks)."""
    blocks = whole_graph(users, items, num_users, num_items, 3, device)
    model = recommender("lightgcn", 3).to(device)
    emb = nn.Embedding.from_pretrained(init.clone(), freeze=False).to(device)
    opt = torch.optim.Adam([*emb.parameters(), *model.parameters()], lr=0.01)
    users_d, items_d = users.to(device), items.to(device)
    nodes = torch.arange(num_users + num_items, device=device)

    def step(pick, neg):
        loss = model(Batch(nodes, blocks, users_d[pick], items_d[pick] + num_users, neg + num_users), emb.weight)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss

    return timed_steps(step, draws, warmup, device), model, emb.weight.detach(), blocks


# ---- 2. every model and loss, CPU against the device -----------------------------------------------

def small_sample(seed: int = 0, num_users: int = 40, num_items: int = 60, num_edges: int = 300,
                 num_social: int = 40, sizes=((100, 70), (70, 40))):
    """A small random graph with social pairs and edge weights, node ids shuffled so that the seeds (the
    first 40 local ids) mix users and items, and a batch of pairs and 4 negatives among the seeds.
    Returns (src, dst, etype, weight, sizes, users, pos, neg), CPU tensors of local ids (as
    tests/test_models.py's sampled_blocks: local ids = node ids, layer l feeds the first sizes[l][1])."""
    g = torch.Generator().manual_seed(seed)
    n = num_users + num_items
    keys = torch.unique(torch.randint(0, num_users * num_items, (num_edges,), generator=g))
    a, b = torch.randint(0, num_users, (2, num_social), generator=g)
    src, dst, etype = graph_edges(keys // num_items, keys % num_items, num_users, a[a != b], b[a != b])
    local = torch.randperm(n, generator=g)  # local id of node v
    src, dst = local[src], local[dst]
    weight = torch.rand(src.numel(), generator=g) + 0.5
    is_user = torch.zeros(n, dtype=torch.bool)
    is_user[local[:num_users]] = True
    seeds = torch.arange(sizes[-1][1])
    seed_users, seed_items = seeds[is_user[seeds]], seeds[~is_user[seeds]]
    pick = lambda pool, shape: pool[torch.randint(0, len(pool), shape, generator=g)]  # noqa: E731
    return src, dst, etype, weight, sizes, pick(seed_users, (32,)), pick(seed_items, (32,)), pick(seed_items, (32, 4))


def sampled_batch(sample, social: bool, layers: int, device) -> Batch:
    """The sample's batch on `device` over a chain of `layers` sampled blocks (whole-graph degrees), social
    edges kept only when `social`."""
    src, dst, etype, weight, sizes, users, pos, neg = sample
    keep = torch.ones_like(src, dtype=torch.bool) if social else etype == 0
    src, dst, etype, weight = src[keep], dst[keep], etype[keep], weight[keep]
    deg = torch.bincount(dst, minlength=sizes[0][0]).float()
    blocks = []
    for num_src, num_dst in sizes[:layers]:
        e = (src < num_src) & (dst < num_dst)
        blocks.append(Block(src[e], dst[e], num_src, num_dst, weight=weight[e], etype=etype[e], deg=deg[:num_src]))
    inputs = torch.arange(sizes[0][0] if layers else sizes[-1][1])
    return Batch(inputs, blocks, users, pos, neg).to(device)


def rel_diff(a: Tensor, b: Tensor) -> float:
    """max |a - b| / max |a| (0 where both are 0; inf/nan where either is not finite)."""
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        return math.inf
    return float((a - b).abs().max() / a.abs().max().clamp(min=1e-30)) if a.numel() else 0.0


def cpu_vs_device(name: str, layers: int, options: dict, loss: str, device, sample, dim: int = 16) -> float:
    """Max relative difference of loss and gradients (h0 and every weight) between CPU and `device`."""
    torch.manual_seed(0)
    model = recommender(name, layers, options, loss, dim).eval()  # no dropout: the same function on both
    h0 = torch.randn(sample[4][0][0] if layers else sample[4][-1][1], dim, generator=torch.Generator().manual_seed(1))
    got = []
    for dev in ("cpu", device):
        m, x = copy.deepcopy(model).to(dev), h0.to(dev).detach().requires_grad_()  # a leaf on each device
        value = m(sampled_batch(sample, name == "socialgcn", layers, dev), x)
        value.backward()
        got.append([value, x.grad] + [p.grad if p.grad is not None else torch.zeros_like(p) for p in m.parameters()])
    return max(rel_diff(a, b) for a, b in zip(*got))


def model_diffs(device, errors: dict) -> tuple[dict, dict]:
    """({model: max rel diff}, {loss: max rel diff on LightGCN}) between CPU and `device`; None where it
    failed (the error in errors["model <name>"] or errors["loss <name>"])."""
    sample = small_sample()
    cases = {name: (name, 0 if name == "mf" else 2, {}) for name in MODELS if name != "popularity"}
    cases["graphsage_pool"] = ("graphsage", 2, {"aggr": "pool"})
    models = {key: attempt(errors, f"model {key}", cpu_vs_device, name, layers, options, "bpr", device, sample)
              for key, (name, layers, options) in cases.items()}
    losses = {loss: attempt(errors, f"loss {loss}", cpu_vs_device, "lightgcn", 2, {}, loss, device, sample)
              for loss in sorted(LOSSES)}
    return models, losses


# ---- 3. top-K -------------------------------------------------------------------------------------

def plain_topk(U: Tensor, I: Tensor, k: int, train_users: Tensor, train_items: Tensor, chunk: int = 4096) -> Tensor:
    """The anchor: top-k item ids of every row of U as a user would write it, a score matrix per chunk of
    users, -inf on their training items (row train_users[e], item train_items[e]), torch.topk."""
    order = torch.argsort(train_users)
    tu, ti = train_users[order], train_items[order]
    bounds = torch.searchsorted(tu, torch.arange(0, len(U) + chunk, chunk, device=tu.device)).tolist()
    out = []
    for c, start in enumerate(range(0, len(U), chunk)):
        scores = U[start:start + chunk] @ I.T
        a, b = bounds[c], bounds[c + 1]
        scores[tu[a:b] - start, ti[a:b]] = float("-inf")
        out.append(torch.topk(scores, k, dim=1).indices)
    return torch.cat(out)


def best_seconds(fn, device, repeats: int = 3) -> float:
    """The fastest of `repeats` calls of fn (after one untimed call), device work included."""
    fn()
    times = []
    for _ in range(repeats):
        synchronize(device)
        started = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - started)
    return min(times)


def topk_check(U: Tensor, I: Tensor, users: Tensor, items: Tensor, k: int, check_users: int, device) -> dict:
    """top_k on `device` for every user (training items masked) against the plain anchor's speed and a
    CPU brute force's lists on `check_users` users spread over the ids."""
    exclude = torch.stack([users, items]).to(device)
    tu, ti = users.to(device), items.to(device)
    ours = lambda: torch.cat([ids for _, ids, _ in top_k(U, I, k, exclude)])  # noqa: E731
    reset_peak(device)
    seconds = best_seconds(ours, device)
    top = ours().cpu()
    peak = peak_gib(device)
    anchor_seconds = best_seconds(lambda: plain_topk(U, I, k, tu, ti), device)
    # CPU brute force on a subset: the same plain code over the subset's rows and training items
    rows = torch.linspace(0, len(U) - 1, min(check_users, len(U))).round().long().unique()
    Uc, Ic = U.cpu(), I.cpu()
    position = torch.full((len(U),), -1, dtype=torch.long)
    position[rows] = torch.arange(len(rows))
    mine = position[users] >= 0
    want = plain_topk(Uc[rows], Ic, k, position[users[mine]], items[mine])
    known = set(zip(users[mine].tolist(), items[mine].tolist()))
    differ = disagree = masked = 0
    for r, u in enumerate(rows.tolist()):
        got_set, want_set = set(top[u].tolist()), set(want[r].tolist())
        masked += any((u, i) in known for i in got_set) or -1 in got_set
        if got_set != want_set:
            differ += 1
            scores = Uc[u] @ Ic.T
            kth = scores[want[r]].min()
            tie = 1e-5 * max(1.0, float(scores.abs().max()))
            disagree += any(abs(float(scores[i] - kth)) > tie for i in got_set ^ want_set)
    return {"k": k, "users_per_s": round(len(U) / seconds), "anchor_users_per_s": round(len(U) / anchor_seconds),
            "over_anchor": round(anchor_seconds / seconds, 3), "users_checked": len(rows),
            "rows_differing": differ, "rows_disagreeing": disagree, "rows_with_masked_items": masked,
            "agree": disagree == 0 and masked == 0, "peak_mem_gib": peak}


# ---- 4. DDP ---------------------------------------------------------------------------------------

class WithTable(nn.Module):
    """A Recommender and the ID table its h0 rows come from, as one module for DDP (LightGCN has no
    dense weights of its own: the table is what DDP synchronizes)."""

    def __init__(self, init: Tensor, model: Recommender):
        super().__init__()
        self.emb, self.model = nn.Embedding.from_pretrained(init.clone(), freeze=False), model

    def forward(self, batch: Batch) -> Tensor:
        return self.model(batch, self.emb(batch.input_nodes))


def ddp_check(users: Tensor, items: Tensor, num_users: int, num_items: int, init: Tensor, device) -> dict:
    """3 steps of DDP(LightGCN Recommender + ID table) in a one-rank process group, then an all_reduce."""
    cuda = torch.device(device).type == "cuda"
    backend = "nccl" if cuda else "gloo"
    if cuda:
        torch.cuda.set_device(device)
    with tempfile.TemporaryDirectory() as tmp:  # a file store: no port to collide; a hang ends in a minute
        dist.init_process_group(backend, init_method=f"file://{tmp}/store", rank=0, world_size=1,
                                timeout=datetime.timedelta(seconds=60))
        try:
            module = WithTable(init, recommender("lightgcn", 3)).to(device)
            ddp = nn.parallel.DistributedDataParallel(module, device_ids=[device.index] if cuda else None)
            opt = torch.optim.Adam(ddp.parameters(), lr=0.01)
            blocks = whole_graph(users, items, num_users, num_items, 3, device)
            nodes = torch.arange(num_users + num_items, device=device)
            users_d, items_d = users.to(device), items.to(device)
            losses = []
            for pick, neg in batches(len(users), num_items, 4096, 16, 3, seed=1):
                pick, neg = pick.to(device), neg.to(device)
                loss = ddp(Batch(nodes, blocks, users_d[pick], items_d[pick] + num_users, neg + num_users))
                opt.zero_grad()
                loss.backward()
                opt.step()
                losses.append(loss.item())
            total = torch.full((4,), 3.0, device=device)
            dist.all_reduce(total)
            ok = bool((total == 3.0).all()) and all(map(math.isfinite, losses)) \
                and not torch.equal(module.emb.weight.detach().cpu(), init)
        finally:
            dist.destroy_process_group()
    return {"backend": backend, "ok": ok, "losses": [round(x, 5) for x in losses]}


# ---- run ------------------------------------------------------------------------------------------

def device_name(device) -> str:
    if torch.device(device).type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def json_safe(x):
    """Non-finite floats as strings (JSON has no NaN or Infinity)."""
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, list):
        return [json_safe(v) for v in x]
    return str(x) if isinstance(x, float) and not math.isfinite(x) else x


def attempt(errors: dict, name: str, fn, *args, **kwargs):
    """fn(*args, **kwargs), or None with the error under errors[name] (its traceback on stderr): one failing part
    must not hide the others' results on a machine lent for minutes."""
    try:
        return fn(*args, **kwargs)
    except Exception as e:  # noqa: BLE001
        traceback.print_exc()
        errors[name] = f"{type(e).__name__}: {e}"[:500]
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--users", type=int, default=GOWALLA["users"])
    parser.add_argument("--items", type=int, default=GOWALLA["items"])
    parser.add_argument("--edges", type=int, default=GOWALLA["edges"])
    parser.add_argument("--batch-size", type=int, default=None,
                        help="positive edges per batch (default 65,536 scaled with --edges as on Gowalla)")
    parser.add_argument("--negatives", type=int, default=16)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per path, after 2 warm-up steps")
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--check-users", type=int, default=2048, help="users whose top-K is checked on CPU")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default 1 with --device cpu)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="also write the JSON here")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: torch {torch.__version__} sees no CUDA device")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", 0)
    threads = args.threads or (1 if device.type == "cpu" else None)
    if threads:
        torch.set_num_threads(threads)
    batch_size = args.batch_size or max(1024, round(65536 * args.edges / GOWALLA["edges"]))
    errors, seconds = {}, {}  # errors: part -> message; seconds: part -> wall time

    clock = time.perf_counter()
    users, items = synthetic_graph(args.users, args.items, args.edges, args.seed)
    nu, ni = args.users, args.items
    out = {"device": device_name(device), "torch": torch.__version__, "cuda": torch.version.cuda,
           "numpy": np.__version__,
           "graph": {"users": nu, "items": ni, "edges": len(users), "seed": args.seed,
                     "max_user_degree": int(torch.bincount(users).max()),
                     "max_item_degree": int(torch.bincount(items).max()), "batch_size": batch_size,
                     "negatives": args.negatives, "warmup_steps": 2, "timed_steps": args.steps}}
    draws = batches(len(users), ni, batch_size, args.negatives, 2 + args.steps, args.seed)
    init = initial_embeddings(nu + ni, 64, args.seed)
    seconds["data"] = time.perf_counter() - clock

    clock, peak = time.perf_counter(), {}
    reset_peak(device)
    anchor = attempt(errors, "anchor", lightgcn_steps, users, items, nu, ni, draws, warmup=2, device=device, init=init)
    peak["anchor"] = peak_gib(device)
    reset_peak(device)
    ours = attempt(errors, "gnnrec", gnnrec_steps, users, items, nu, ni, draws, 2, device, init)
    peak["gnnrec"] = peak_gib(device)
    seconds["training"] = time.perf_counter() - clock
    if anchor:
        out["anchor_edges_per_s"] = round(anchor["edges_per_s"])
    if ours:
        ours, model, table, blocks = ours
        out["gnnrec_edges_per_s"] = round(ours["edges_per_s"])
    first, finite = math.nan, False
    if anchor and ours:
        out["over_anchor"] = round(ours["edges_per_s"] / anchor["edges_per_s"], 3)
        first = abs(anchor["losses"][0] - ours["losses"][0]) / abs(anchor["losses"][0])
        finite = all(map(math.isfinite, anchor["losses"] + ours["losses"]))
    out["peak_mem_gib"] = peak
    out["losses"] = {name: [round(x, 6) for x in run["losses"]]
                     for name, run in (("anchor", anchor), ("gnnrec", ours)) if run}
    out["loss_rel_diff_first_step"] = first

    clock = time.perf_counter()
    models, losses = model_diffs(device, errors)
    out["models_max_rel_diff"], out["losses_max_rel_diff"] = models, losses
    seconds["models"] = time.perf_counter() - clock

    clock = time.perf_counter()
    out["topk"] = None
    if ours:
        with torch.no_grad():
            h = model.gnn.eval()(table, blocks)
        del blocks
        out["topk"] = attempt(errors, "topk", topk_check, h[:nu], h[nu:], users, items, args.k, args.check_users,
                              device)
        if out["topk"]:
            peak["topk"] = out["topk"].pop("peak_mem_gib")
    seconds["topk"] = time.perf_counter() - clock

    clock = time.perf_counter()
    out["ddp"] = attempt(errors, "ddp", ddp_check, users, items, nu, ni, init, device)
    seconds["ddp"] = time.perf_counter() - clock

    leaked = sorted({m.split(".")[0] for m in sys.modules} & {"dgl", "ray", "pydantic"})
    out["checks"] = {
        "models": all(v is not None and v <= TOLERANCE for v in [*models.values(), *losses.values()]),
        "loss_vs_anchor": first <= TOLERANCE and finite,
        "topk_agrees": bool(out["topk"] and out["topk"]["agree"]),
        "ddp": bool(out["ddp"] and out["ddp"]["ok"]),
        "no_dgl_ray_pydantic": not leaked,
    }
    out["ok"] = all(out["checks"].values()) and not errors
    out["errors"], out["seconds"] = errors, {k: round(v, 1) for k, v in seconds.items()}
    text = json.dumps(json_safe(out), indent=2)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    if not out["ok"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
