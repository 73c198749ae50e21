"""Checkpoints of a distributed training run: written by every trainer, each one complete or absent.

    {train.checkpoints}/step-000000120/
        state.json               epoch, step (batches done in that epoch), global_step, world, history
        dense.pt                 rank 0: dense weights (GNN layers, heads) and their Adam state
        ids-rank{r}-{type}.npy   rank r: rows [r*n/w, (r+1)*n/w) of the user or the item ID table, [rows, dim]
        adam-rank{r}-{type}.npy  rank r: the sparse Adam's state of those rows, [rows, 1 + 2 dim]: step count,
                                 first moment, second moment
        rng-rank{r}.pt           rank r: torch's random state (dropout)
    {train.checkpoints}/latest   the name of the newest complete checkpoint

`TrainState` is state.json (inference/trained.TrainOutput reads a `gnnrec train` output directory,
whose model/ is one of these checkpoints).

Every rank writes into `step-N.tmp`; after a barrier rank 0 adds state.json, renames the directory and
then points `latest` at it (temp file + rename), so a crash at any moment leaves the previous checkpoint
as `latest`. No rank ever holds a whole ID table, nor its own range of rows: each writes and reads its
range `CHUNK_ROWS` rows at a time (at 100M edges a rank's rows and their Adam state are 5.3 GB).
"""
from __future__ import annotations

import dataclasses
import io
import json
import os
import pickle
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from gnnrec import NODE_TYPES, OUTPUT_ERRORS, UserError, contained

CHUNK_ROWS = 1 << 18  # 64 MiB of a dim-64 table


@dataclass
class TrainState:
    """Where a training run is: what a checkpoint's state.json holds besides the tensors."""
    epoch: int = 0  # epochs completed
    step: int = 0  # batches done in the current epoch
    global_step: int = 0
    loss_sum: float = 0.0  # the current epoch's loss so far (rank 0 carries the sums of all ranks)
    loss_count: int = 0
    history: list = field(default_factory=list)  # one metrics dict per completed epoch
    best_score: float | None = None  # early stopping: the best validation NDCG so far,
    best_checkpoint: str | None = None  # the checkpoint of that epoch (the output),
    bad_epochs: int = 0  # and validations since without improvement
    stopped: bool = False
    hard_negatives: str | None = None  # the mined negatives of the current round, and its first epoch
    round_start_epoch: int = 0
    world: int = 1  # trainers that wrote the checkpoint
    dim: int | None = None  # of the ID tables

    @classmethod
    def read(cls, checkpoint: Path) -> "TrainState":
        """A checkpoint's state.json; UserError naming it when it is missing, damaged or not a TrainState."""
        path = Path(checkpoint) / "state.json"
        try:
            state = cls(**json.loads(path.read_text()))
        except FileNotFoundError:
            raise _missing(path) from None
        except (ValueError, TypeError) as e:  # not JSON, not an object, a key TrainState does not have
            raise UserError(f"{path}: damaged, not a checkpoint's state ({' '.join(str(e).split())})") from None
        counts = {"epoch": 0, "step": 0, "global_step": 0, "loss_count": 0, "bad_epochs": 0, "round_start_epoch": 0,
                  "world": 1}
        bad = [k for k, least in counts.items() if type(getattr(state, k)) is not int or getattr(state, k) < least]
        bad += [k for k in ("best_checkpoint", "hard_negatives") if not isinstance(getattr(state, k), str | None)]
        if bad or not isinstance(state.history, list) or not all(isinstance(m, dict) for m in state.history):
            raise UserError(f"{path}: damaged ({', '.join(bad) or 'history'} out of range)")
        return state

    def write(self, checkpoint: Path) -> None:
        (Path(checkpoint) / "state.json").write_text(json.dumps(dataclasses.asdict(self)))


class DenseState(NamedTuple):
    """dense.pt: the dense weights (GNN layers, heads: a state dict) and their Adam state (None without)."""
    model: dict
    optimizer: dict | None = None


def _barrier() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def latest(directory: Path) -> Path | None:
    """The newest complete checkpoint under `directory`, or None; UserError when the pointer names a
    place outside `directory`."""
    pointer = Path(directory) / "latest"
    return contained(directory, pointer.read_text().strip(), pointer) if pointer.exists() else None


def best(directory: Path) -> Path:
    """The checkpoint a run's output is: the best validated one (state.best_checkpoint), else the latest."""
    newest = latest(directory)
    name = TrainState.read(newest).best_checkpoint
    return contained(directory, name, newest / "state.json") if name else newest


def step_name(global_step: int) -> str:
    return f"step-{global_step:09d}"


def _rows(n: int, rank: int, world: int) -> tuple[int, int]:
    return rank * n // world, (rank + 1) * n // world


def _widths(tensors: list) -> list[int]:
    return [t.shape[1] if len(t.shape) > 1 else 1 for t in tensors]  # a 1-d tensor is one column


def _write(path: Path, rows: tuple[int, int], tensors: list) -> None:
    """Rows [lo, hi) of (distributed) tensors side by side into one .npy, streamed (not a memory map,
    whose writes into a full disk are a SIGBUS, not an error)."""
    (lo, hi), width = rows, sum(_widths(tensors))
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (hi - lo, width)})
        for start in range(lo, hi, CHUNK_ROWS):
            ids = torch.arange(start, min(start + CHUNK_ROWS, hi))
            f.write(torch.column_stack([t[ids] for t in tensors]).to(torch.float32).numpy().tobytes())


def _save_torch(value, path: Path) -> None:
    """torch.save through Python's file writes, so that a full disk is an OSError naming the file."""
    buffer = io.BytesIO()
    torch.save(value, buffer)
    path.write_bytes(buffer.getbuffer())


def _read(path: Path, rows: tuple[int, int], tensors: list) -> None:
    """The inverse of `_write`: rows [lo, hi) of `tensors` from the .npy at `path`."""
    (lo, hi), widths = rows, _widths(tensors)
    array = _array(path)
    if array.shape != (hi - lo, sum(widths)):
        raise UserError(f"{path}: {list(array.shape)} values where the checkpoint needs {[hi - lo, sum(widths)]} (a "
                        f"checkpoint of another graph or train.dim?)")
    for start in range(lo, hi, CHUNK_ROWS):
        ids = torch.arange(start, min(start + CHUNK_ROWS, hi))
        block = torch.from_numpy(np.array(array[start - lo:start - lo + len(ids)]))
        for t, values in zip(tensors, block.split(widths, dim=1)):
            t[ids] = values.reshape(len(ids), *t.shape[1:])


def _array(path: Path) -> np.ndarray:
    """A checkpoint's .npy file, mapped; never pickled objects (np.load refuses them)."""
    try:
        return np.load(path, mmap_mode="r")
    except FileNotFoundError:  # a copy that left a file behind: a restart would meet it again
        raise _missing(path) from None
    except ValueError as e:
        raise UserError(f"{path}: not a complete array file ({e})") from None


def save(directory: Path, state: TrainState, tables: dict, sparse_opt, dense: DenseState | None, rank: int, world: int,
         keep: int = 2, protect: str | None = None) -> Path:
    """Write one checkpoint from every rank (all ranks call this at the same step). The `keep` newest
    checkpoints and the one named `protect` (the best so far) are kept, older ones removed."""
    directory = Path(directory)
    name = step_name(state.global_step)
    tmp = directory / f"{name}.tmp"
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    _barrier()
    try:
        for node_type, table in tables.items():
            rows = _rows(table.shape[0], rank, world)
            _write(tmp / f"ids-rank{rank}-{node_type}.npy", rows, [table])
            _write(tmp / f"adam-rank{rank}-{node_type}.npy", rows, list(sparse_opt.state[node_type]))
        _save_torch(torch.get_rng_state(), tmp / f"rng-rank{rank}.pt")
        if rank == 0:
            _save_torch(dense._asdict(), tmp / "dense.pt")
    except OSError as e:  # a full disk or quota: the user's to fix, and a restart would meet it again
        if world == 1:  # with several trainers the others may still write there: the driver removes it after
            shutil.rmtree(tmp, ignore_errors=True)
        if e.errno not in OUTPUT_ERRORS:
            raise
        raise UserError(f"{e.filename or tmp}: {e.strerror} (writing the checkpoint {tmp}; free space, or "
                        f"point train.checkpoints elsewhere)") from None
    _barrier()
    if rank == 0:
        dataclasses.replace(state, world=world).write(tmp)
        final = directory / name
        shutil.rmtree(final, ignore_errors=True)
        os.rename(tmp, final)
        pointer = directory / "latest.tmp"
        pointer.write_text(name)
        os.rename(pointer, directory / "latest")
        for old in sorted(directory.glob("step-*[0-9]"))[:-keep]:
            if old.name != protect:
                shutil.rmtree(old, ignore_errors=True)
    _barrier()
    return directory / name


def restore(path: Path, tables: dict, sparse_opt, rank: int, world: int) -> tuple[TrainState, DenseState]:
    """Load a checkpoint into the distributed tables and the sparse optimizer (None: inference only; all
    ranks call this); return (state, dense) for the caller to load into its dense modules. Rank r restores
    the row files r, r + world, ...: a checkpoint written by a different number of trainers loads too."""
    path = Path(path)
    state = TrainState.read(path)
    for shard in range(rank, state.world, world):
        for node_type, table in tables.items():
            rows = _rows(table.shape[0], shard, state.world)
            _read(path / f"ids-rank{shard}-{node_type}.npy", rows, [table])
            if sparse_opt is not None:
                _read(path / f"adam-rank{shard}-{node_type}.npy", rows, list(sparse_opt.state[node_type]))
    own_rng = path / f"rng-rank{rank}.pt"
    if own_rng.exists():
        torch.set_rng_state(_load(own_rng))
    _barrier()
    return state, _dense(path)


def _missing(path: Path) -> UserError:
    return UserError(f"{path}: missing (an incomplete copy of the checkpoint {path.parent}?)")


def _load(path: Path):
    """A checkpoint file's tensors and plain containers; never other pickled objects (checkpoints are
    files users copy between machines, and unpickling runs whatever they name)."""
    try:
        return torch.load(path, weights_only=True, map_location="cpu")  # saved from a GPU, read anywhere
    except FileNotFoundError:  # a copy that left a file behind: a restart would meet it again
        raise _missing(path) from None
    except (PermissionError, MemoryError):  # the machine's, not the file's
        raise
    except pickle.UnpicklingError as e:
        if "Unsupported operand" in str(e):  # bytes that are no pickle: damage, not a refused object
            raise _damaged(path, e) from None
        raise UserError(f"{path}: holds objects other than tensors and plain containers (not a gnnrec "
                        "checkpoint file, or an unsafe one): refusing to load it") from None
    except Exception as e:  # noqa: BLE001 - truncated, not a torch file: torch raises a different type for each
        raise _damaged(path, e) from None


def _dense(checkpoint: Path) -> DenseState:
    path = checkpoint / "dense.pt"
    try:
        return DenseState(**_load(path))
    except TypeError as e:  # a torch file of something else
        raise _damaged(path, e) from None


def _damaged(path: Path, error: Exception) -> UserError:
    detail = " ".join(str(error).split()).rpartition("WeightsUnpickler error: ")[2][-160:]  # not torch's advice
    return UserError(f"{path}: damaged or not a checkpoint file ({type(error).__name__}: {detail})")


def load_tables(path: Path) -> dict[str, torch.Tensor]:
    """The whole ID tables ({node type: [n, dim]}, partition ids) of a checkpoint, in one process
    (evaluation on one machine)."""
    path = Path(path)
    if not (path / "state.json").exists():
        raise UserError(f"checkpoint {path}: incomplete or not a checkpoint (no state.json)")
    world = TrainState.read(path).world
    return {node_type: torch.from_numpy(np.concatenate([_array(path / f"ids-rank{r}-{node_type}.npy")
                                                        for r in range(world)]))
            for node_type in NODE_TYPES}


def init_rows(init, dataset, partitions, key: str) -> dict[str, np.ndarray]:
    """train.init_from (`init`: inference/trained.TrainOutput): per node type, the row of `init`'s tables
    that holds each partition id of `partitions` (the same dataset id), -1 for users and items `init`'s
    dataset did not have. UserError naming `key` unless `init`'s dataset is where this `dataset` started
    (ingest.base)."""
    rows = {}
    for node_type in NODE_TYPES:
        old_raw, new_raw = init.dataset.raw_ids(node_type), dataset.raw_ids(node_type)
        if len(new_raw) < len(old_raw) or not new_raw.slice(0, len(old_raw)).equals(old_raw):
            raise UserError(f"{key}: the {node_type}s of its dataset {init.dataset.path} do not keep their ids in "
                            f"{dataset.path} (ingest the new log with ingest.base={init.dataset.path})")
        dataset_ids, old_ids = partitions.orig_nids(node_type), init.partitions.partition_ids(node_type)
        known = dataset_ids < len(old_ids)
        rows[node_type] = np.where(known, old_ids[np.where(known, dataset_ids, 0)], -1)
    return rows


def neighbour_means(model_dir: Path, rows: dict, dataset, partitions) -> dict:
    """The first rows of the new users and items (`rows` -1): the mean of the old rows of their neighbours
    over the dataset's training edges, {node type: (partition ids, rows)}; nodes with no old neighbour are
    left out (they keep a fresh row). Reads the previous tables whole, in this process."""
    old = load_tables(model_dir)
    ends = dict(zip(NODE_TYPES, dataset.edges("train").numpy()))
    means = {}
    for node_type, other in zip(NODE_TYPES, reversed(NODE_TYPES)):
        at = partitions.partition_ids(node_type)[ends[node_type]]
        source = rows[other][partitions.partition_ids(other)[ends[other]]]
        use = (rows[node_type][at] < 0) & (source >= 0)
        nodes, slot = np.unique(at[use], return_inverse=True)
        sums = torch.zeros(len(nodes), old[other].shape[1]).index_add_(0, torch.from_numpy(slot),
                                                                       old[other][torch.from_numpy(source[use])])
        means[node_type] = (nodes, sums / torch.from_numpy(np.bincount(slot, minlength=len(nodes))).unsqueeze(1))
    return means


def warm_start(tables: dict, model_dir: Path, rows: dict, means: dict, rank: int, world: int) -> DenseState:
    """A previous model's ID rows into the distributed tables (rows: `init_rows`, -1 keeps the fresh row),
    then the new nodes' `neighbour_means` ({} for none); all ranks call this, each for its own share.
    Returns the previous model's dense state for the caller."""
    old = load_tables(model_dir)
    for node_type, table in tables.items():
        lo, hi = _rows(table.shape[0], rank, world)
        for start in range(lo, hi, CHUNK_ROWS):
            ids = np.arange(start, min(start + CHUNK_ROWS, hi))
            source = rows[node_type][ids]
            known = source >= 0
            if known.any():
                table[torch.from_numpy(ids[known])] = old[node_type][torch.from_numpy(source[known])]
        if node_type in means:
            nodes, values = means[node_type]
            mine = (nodes >= lo) & (nodes < hi)
            if mine.any():
                table[torch.from_numpy(nodes[mine])] = values[torch.from_numpy(mine)]
    _barrier()
    return _dense(Path(model_dir))


def load_model(path: Path, train_cfg, name: str, feature_dims: dict | None = None):
    """The Recommender of train config `t` (over features of `feature_dims`) with checkpoint `path`'s dense
    weights; UserError naming `name` when the checkpoint does not fit `t` (another model, layers or dim)."""
    from gnnrec.model.models import Recommender

    model = Recommender(train_cfg, feature_dims)
    try:
        model.load_state_dict(_dense(Path(path)).model)
        fits = TrainState.read(path).dim in (None, train_cfg.dim)  # None: written before checkpoints said
    except RuntimeError:  # another shape or another set of weights
        fits = False
    if not fits:
        raise UserError(f"{name}: its weights do not fit train.model={train_cfg.model}, train.dim={train_cfg.dim} "
                        "and the rest of the config (a checkpoint of another model?)")
    return model
