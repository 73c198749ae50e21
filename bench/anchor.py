"""The training benchmarks' anchor: full-graph LightGCN steps as a user would write them in plain PyTorch.

    from anchor import batches, lightgcn_steps   # beside it in bench/ (bench/train.py, bench/device.py)
    result = lightgcn_steps(users, items, num_users, num_items, batches(len(users), num_items, 65536, 16, 5))

As PyG's LightGCN example does: the normalized adjacency D^-1/2 A D^-1/2 once, `torch.sparse.mm` per
layer, the mean of the layers, BPR over batches of positive edges x uniform negatives with L2 on the ego
rows, dense Adam on an nn.Embedding. No gnnrec code and never tuned, so a change to the project's layers
or losses cannot move the yardstick. Runs on any device; the caller sets CPU threads.
"""
from __future__ import annotations

import time
from typing import Optional

import numpy as np
import torch
from torch import Tensor


def batches(num_edges: int, num_items: int, batch_size: int, num_negatives: int, steps: int,
            seed: int = 0) -> list[tuple[Tensor, Tensor]]:
    """`steps` batches, each (positions of its positive edges [B], negative items [B, num_negatives]):
    drawn uniformly with replacement, seeded."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(steps):
        pick = torch.from_numpy(rng.integers(0, num_edges, batch_size))
        out.append((pick, torch.from_numpy(rng.integers(0, num_items, (batch_size, num_negatives)))))
    return out


def initial_embeddings(num_nodes: int, dim: int = 64, seed: int = 0) -> Tensor:
    """Every node's starting embedding row, N(0, 0.1^2), seeded (on CPU)."""
    return torch.randn(num_nodes, dim, generator=torch.Generator().manual_seed(seed)) * 0.1


def normalized_adjacency(users: Tensor, items: Tensor, num_users: int, num_items: int) -> Tensor:
    """D^-1/2 A D^-1/2 of the symmetric user-item graph (users first, then items), sparse COO."""
    src, dst = torch.cat([users, items + num_users]), torch.cat([items + num_users, users])
    degree = torch.bincount(dst, minlength=num_users + num_items).float()
    values = (degree[src] * degree[dst]).rsqrt()
    n = num_users + num_items
    return torch.sparse_coo_tensor(torch.stack([dst, src]), values, (n, n)).coalesce()


def synchronize(device) -> None:
    """Wait for the device's queued work (CUDA runs asynchronously), so a timer reads finished work."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def timed_steps(step, batches: list, warmup: int, device) -> dict:
    """Runs `step(pick, neg) -> loss` (one optimizer step) per batch, on `device`. Returns {"edges_per_s":
    training edges per second of the batches after the first `warmup`, "seconds": their time, "losses":
    every step's loss}."""
    work = [(pick.to(device), neg.to(device)) for pick, neg in batches]
    losses = []
    synchronize(device)
    started = time.perf_counter()
    for n, (pick, neg) in enumerate(work):
        if n == warmup:
            synchronize(device)
            started = time.perf_counter()
        losses.append(step(pick, neg).detach())
    synchronize(device)
    seconds = time.perf_counter() - started
    timed = sum(len(pick) for pick, _ in work[warmup:])
    return {"edges_per_s": timed / seconds, "seconds": seconds, "losses": torch.stack(losses).tolist()}


def lightgcn_steps(users: Tensor, items: Tensor, num_users: int, num_items: int, batches: list,
                   warmup: int = 0, layers: int = 3, dim: int = 64, l2: float = 1e-4, lr: float = 0.01,
                   device="cpu", init: Optional[Tensor] = None) -> dict:
    """One training step per batch of `batches` (see `batches`) over the (users, items) training edges
    (item ids 0-based), on `device`: `timed_steps`'s figures."""
    users, items = users.long().to(device), items.long().to(device)
    adjacency = normalized_adjacency(users, items, num_users, num_items)
    if init is None:
        init = initial_embeddings(num_users + num_items, dim)
    emb = torch.nn.Embedding.from_pretrained(init.clone(), freeze=False).to(device)
    opt = torch.optim.Adam(emb.parameters(), lr=lr)

    def step(pick, neg):
        batch_size, num_negatives = neg.shape
        u, i, j = users[pick], items[pick] + num_users, neg + num_users
        e = [emb.weight]
        for _ in range(layers):
            e.append(torch.sparse.mm(adjacency, e[-1]))
        h = torch.stack(e).mean(0)
        scores = (h[u].unsqueeze(1) * h[j]).sum(-1)  # [B, n_neg]
        bpr = -torch.nn.functional.logsigmoid((h[u] * h[i]).sum(-1, keepdim=True) - scores).mean()
        ego = emb.weight
        reg = (ego[u].pow(2).sum() + ego[i].pow(2).sum() + ego[j].pow(2).sum() / num_negatives) / (2 * batch_size)
        loss = bpr + l2 * reg
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss

    return timed_steps(step, batches, warmup, device)
