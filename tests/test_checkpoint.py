"""trainer/checkpoint.py's row files: written a chunk of rows at a time by each rank, read back by any
number of ranks. Plain tensors stand in for DGL's distributed ones (the same `t[ids]` get and set)."""
import threading
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from gnnrec import UserError
from gnnrec.trainer import checkpoint
from gnnrec.trainer.checkpoint import TrainState


def _job(seed: int, sizes=(("user", 23), ("item", 11)), dim: int = 4):
    """ID tables and their sparse Adam state (RowAdam.state: step count, moments) as the trainers see them."""
    g = torch.Generator().manual_seed(seed)
    tables = {n: torch.randn(rows, dim, generator=g) for n, rows in sizes}
    state = {n: (torch.rand(len(t), generator=g), torch.randn(len(t), dim, generator=g),
                 torch.rand(len(t), dim, generator=g)) for n, t in tables.items()}
    return tables, SimpleNamespace(state=state)


def _ranks(monkeypatch, world: int, call) -> list:
    """`call(rank)` on `world` threads that meet at the checkpoint's barriers, as trainers do."""
    monkeypatch.setattr(checkpoint, "_barrier", threading.Barrier(world, timeout=30).wait)
    with ThreadPoolExecutor(world) as pool:
        return list(pool.map(call, range(world)))


def _values(tables, opt):
    return list(tables.values()) + [s for states in opt.state.values() for s in states]


@pytest.mark.parametrize("restored_by", [1, 3])
def test_rows_written_in_chunks_by_two_ranks_restore_exactly_on_any_number(tmp_path, monkeypatch, restored_by):
    monkeypatch.setattr(checkpoint, "CHUNK_ROWS", 5)  # several chunks per rank, the last one short
    tables, opt = _job(0)
    path, _ = _ranks(monkeypatch, 2, lambda rank: checkpoint.save(tmp_path, TrainState(global_step=7), tables, opt,
                                                                  checkpoint.DenseState({}) if rank == 0 else None, rank, 2))
    assert checkpoint.latest(tmp_path) == path
    assert np.load(path / "ids-rank1-user.npy").shape == (23 - 23 // 2, 4)
    assert np.load(path / "adam-rank0-item.npy").shape == (11 // 2, 1 + 2 * 4)

    fresh, fresh_opt = _job(1)
    state, dense = _ranks(monkeypatch, restored_by, lambda rank: checkpoint.restore(path, fresh, fresh_opt, rank,
                                                                                    restored_by))[-1]
    assert state.global_step == 7 and state.world == 2 and dense == checkpoint.DenseState({})
    assert all(torch.equal(a, b) for a, b in zip(_values(fresh, fresh_opt), _values(tables, opt)))
    whole = checkpoint.load_tables(path)
    assert all(torch.equal(whole[n], tables[n]) for n in tables)


def test_a_row_file_of_another_shape_or_cut_short_is_one_clear_error(tmp_path):
    tables, opt = _job(0)
    path = checkpoint.save(tmp_path, TrainState(), tables, opt, checkpoint.DenseState({}), 0, world=1)
    wider, wider_opt = _job(0, dim=8)
    with pytest.raises(UserError, match=r"ids-rank0-user.npy: \[23, 4\] values where the checkpoint needs \[23, 8\]"):
        checkpoint.restore(path, wider, wider_opt, 0, 1)
    cut = path / "adam-rank0-item.npy"
    cut.write_bytes(cut.read_bytes()[:-16])
    with pytest.raises(UserError, match="adam-rank0-item.npy: not a complete array file"):
        checkpoint.restore(path, tables, opt, 0, 1)
