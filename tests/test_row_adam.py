"""trainer/row_adam.py against torch.optim.Adam: one Adam per row, stepped in the steps that read it.

Plain tensors stand in for DGL's distributed ones: a table in shared memory, halves of it as the two
machines' shards (the adapter's three calls replaced). Two trainers are two processes joined by gloo.
"""
import os
from datetime import timedelta
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from gnnrec import dgl_adapter
from gnnrec.trainer import row_adam
from gnnrec.trainer.row_adam import RowAdam

USERS, ITEMS, DIM, LR = 6, 8, 3, 0.05


def _reads(rank: int, step: int) -> torch.Tensor:
    """The distinct homogeneous node ids (users, then items) trainer `rank` reads at `step`: rows
    repeat across steps and across the two trainers, some rows are never read."""
    g = torch.Generator().manual_seed(100 * rank + step)
    return torch.randperm(USERS + ITEMS - 2, generator=g)[:7]


def _targets(rank: int, step: int) -> torch.Tensor:
    return torch.randn(7, DIM, generator=torch.Generator().manual_seed(1000 + 100 * rank + step))


def _with_shards(monkeypatch, tables: dict, parts: int, partition: int) -> SimpleNamespace:
    """The adapter over plain tensors: `parts` machines each holding an equal run of every table's rows."""
    def shard(n: int) -> slice:
        return slice(partition * n // parts, (partition + 1) * n // parts)
    monkeypatch.setattr(dgl_adapter, "dist_tensor", lambda graph, n, dim, name: torch.zeros(
        (len(tables[n]),) + (() if dim is None else (dim,))))
    monkeypatch.setattr(dgl_adapter, "dist_partition_of", lambda table, ids: ids * parts // len(table))
    monkeypatch.setattr(dgl_adapter, "dist_local_rows", lambda tensors, ids: (
        [t[shard(len(t))] for t in tensors], ids - shard(len(tensors[0])).start))
    return SimpleNamespace(get_partition_book=lambda: SimpleNamespace(partid=partition))


def _train(opt: RowAdam, rank: int, steps: int) -> None:
    for step in range(steps):
        h0 = opt.rows(_reads(rank, step), USERS, "cpu")
        ((h0 - _targets(rank, step)) ** 2).sum().backward()
        opt.step()


def _expected(tables: dict, ranks: int, steps: int) -> torch.Tensor:
    """Each row its own torch.optim.Adam, stepped with the mean gradient of the trainers that read it."""
    rows = [torch.nn.Parameter(r.clone()) for r in torch.cat([tables["user"], tables["item"]])]
    adams = [torch.optim.Adam([r], lr=LR) for r in rows]
    for step in range(steps):
        grads: dict[int, list] = {}
        for rank in range(ranks):
            for node, target in zip(_reads(rank, step).tolist(), _targets(rank, step)):
                grads.setdefault(node, []).append(2 * (rows[node].detach() - target))
        for node, gs in grads.items():
            rows[node].grad = torch.stack(gs).mean(0)
            adams[node].step()
    return torch.stack([r.detach() for r in rows])


def _tables() -> dict:
    g = torch.Generator().manual_seed(0)
    return {"user": torch.randn(USERS, DIM, generator=g), "item": torch.randn(ITEMS, DIM, generator=g)}


def test_one_trainer_is_adam_per_row(monkeypatch):
    tables = _tables()
    expected = _expected(tables, 1, steps=5)
    monkeypatch.setattr(row_adam, "CHUNK_ROWS", 2)  # several chunks a step
    opt = RowAdam(_with_shards(monkeypatch, tables, 1, 0), tables, LR)
    _train(opt, 0, steps=5)
    assert torch.allclose(torch.cat([tables["user"], tables["item"]]), expected, atol=1e-6)
    never = USERS + ITEMS - 1
    assert opt.state["item"][0][never - USERS] == 0  # a row never read has no step


def _trainer(rank: int, store: str, tables: dict, steps: int) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2,  # no port to collide
                            timeout=timedelta(seconds=60))  # a hang fails, it does not wait forever
    with pytest.MonkeyPatch.context() as monkeypatch:
        _train(RowAdam(_with_shards(monkeypatch, tables, 2, rank), tables, LR), rank, steps)
    # no destroy_process_group: with torch 2.2's gloo it hung one trainer in about 1 run of 5 on a loaded
    # machine once its peer had exited (seen with both the TCP and the file store); the process ends here
    os._exit(0)


def test_two_trainers_update_each_row_once_with_the_mean_gradient_on_its_machine(tmp_path):
    """Trainer r is machine r's: each row's update is done by the trainer whose shard holds it."""
    tables = {n: t.share_memory_() for n, t in _tables().items()}
    expected = _expected(tables, 2, steps=4)
    mp.start_processes(_trainer, args=(str(tmp_path / "store"), tables, 4), nprocs=2, start_method="spawn", join=True)
    assert torch.allclose(torch.cat([tables["user"], tables["item"]]), expected, atol=1e-6)
