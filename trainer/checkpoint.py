"""Checkpoints of a distributed training run: written by every trainer, each one complete or absent.

    {train.checkpoints}/step-000000120/
        state.json       epoch, step (batches done in that epoch), global_step, world, history
        dense.pt         rank 0: dense weights (GNN layers, heads) and their Adam state
        ids-rank{r}.pt   rank r: rows [r*n/w, (r+1)*n/w) of the user and the item ID tables
        sparse-opt_{r}   rank r: the sparse optimizer's state of its rows (DGL's own format)
        rng-rank{r}.pt   rank r: torch's random state (dropout)
    {train.checkpoints}/latest   the name of the newest complete checkpoint

`TrainState` is state.json; `TrainOutput` reads a `gnnrec train` output directory, whose model/ is one
of these checkpoints.

Every rank writes into `step-N.tmp`; after a barrier rank 0 adds state.json, renames the directory and
then points `latest` at it (temp file + rename), so a crash at any moment leaves the previous checkpoint
as `latest`. No rank ever holds a whole ID table: each saves and restores its own range of rows.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import pickle
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch

from gnnrec import NODE_TYPES, UserError


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
        return cls(**json.loads((Path(checkpoint) / "state.json").read_text()))

    def write(self, checkpoint: Path) -> None:
        (Path(checkpoint) / "state.json").write_text(json.dumps(dataclasses.asdict(self)))


def _barrier() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def latest(directory: Path) -> Path | None:
    """The newest complete checkpoint under `directory`, or None."""
    pointer = Path(directory) / "latest"
    return Path(directory) / pointer.read_text().strip() if pointer.exists() else None


def _rows(n: int, rank: int, world: int) -> torch.Tensor:
    return torch.arange(rank * n // world, (rank + 1) * n // world)


def save(directory: Path, state: TrainState, tables: dict, sparse_opt, dense: dict | None, rank: int, world: int,
         keep: int = 2, protect: str | None = None) -> Path:
    """Write one checkpoint from every rank (all ranks call this at the same step). The `keep` newest
    checkpoints and the one named `protect` (the best so far) are kept, older ones removed."""
    directory = Path(directory)
    name = f"step-{state.global_step:09d}"
    tmp = directory / f"{name}.tmp"
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    _barrier()
    ids = {}
    for node_type, table in tables.items():
        rows = _rows(table.num_embeddings, rank, world)
        ids[node_type] = (rows, table.weight[rows])
    torch.save(ids, tmp / f"ids-rank{rank}.pt")
    torch.save(torch.get_rng_state(), tmp / f"rng-rank{rank}.pt")
    sparse_opt.save(str(tmp / "sparse-opt"))  # a collective: barriers inside, writes sparse-opt_{rank}
    if rank == 0:
        torch.save(dense, tmp / "dense.pt")
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


def restore(path: Path, tables: dict, sparse_opt, rank: int, world: int) -> tuple[TrainState, dict | None]:
    """Load a checkpoint into the distributed tables and the sparse optimizer (None: inference only; all
    ranks call this); return
    (state, dense) for the caller to load into its dense modules. Rank r restores the row files
    r, r + world, ...: a checkpoint written by a different number of trainers loads too."""
    path = Path(path)
    state = TrainState.read(path)
    for shard in range(rank, state.world, world):
        saved = _load(path / f"ids-rank{shard}.pt")
        for node_type, table in tables.items():
            rows, values = saved[node_type]
            table.weight[rows] = values
    own_rng = path / f"rng-rank{rank}.pt"
    if own_rng.exists():
        torch.set_rng_state(_load(own_rng))
    if sparse_opt is not None:
        for shard in range(rank, state.world, world):
            sparse_opt.load_local_state_dict(_renamed(_load(path / f"sparse-opt_{shard}"), tables))
    _barrier()
    return state, _load(path / "dense.pt")


def _load(path: Path):
    """A checkpoint file's tensors and plain containers; never other pickled objects (checkpoints are
    files users copy between machines, and unpickling runs whatever they name)."""
    try:
        return torch.load(path, weights_only=True)
    except FileNotFoundError:  # a copy that left a file behind: a restart would meet it again
        raise UserError(f"{path}: missing (an incomplete copy of the checkpoint {path.parent}?)") from None
    except pickle.UnpicklingError:
        raise UserError(f"{path}: holds objects other than tensors and plain containers (not a gnnrec "
                        "checkpoint file, or an unsafe one): refusing to load it") from None


def _renamed(saved: dict, tables: dict) -> dict:
    """DGL's sparse-optimizer state (a `local_state_dict`) with its tensors renamed after this job's
    tables: every job prefixes its tensor names with its own graph name, "<graph>_<node type>_id"."""
    saved["params"].pop("world_size", None)
    states = {}
    for old, emb_state in saved["emb_states"].items():
        table = next(t for n, t in tables.items() if old.endswith(f"_{n}_id"))
        emb_state["states"] = {k.replace(old, table.name): v for k, v in emb_state["states"].items()}
        states[table.name] = emb_state
    saved["emb_states"] = states
    return saved


def load_tables(path: Path) -> dict[str, torch.Tensor]:
    """The whole ID tables ({node type: [n, dim]}, partition ids) of a checkpoint, in one process
    (evaluation on one machine)."""
    path = Path(path)
    if not (path / "state.json").exists():
        raise UserError(f"checkpoint {path}: incomplete or not a checkpoint (no state.json)")
    parts = [_load(path / f"ids-rank{r}.pt") for r in range(TrainState.read(path).world)]
    tables = {}
    for node_type in NODE_TYPES:
        rows = torch.cat([p[node_type][0] for p in parts])
        values = torch.cat([p[node_type][1] for p in parts])
        table = torch.empty(len(rows), values.shape[1])
        table[rows] = values
        tables[node_type] = table
    return tables


def load_model(path: Path, t, name: str):
    """The Recommender of train config `t` with checkpoint `path`'s dense weights; UserError naming
    `name` when the checkpoint does not fit `t` (another model, layers or dim)."""
    from gnnrec.model.models import Recommender

    model = Recommender(t)
    try:
        model.load_state_dict(_load(Path(path) / "dense.pt")["model"])
        fits = TrainState.read(path).dim in (None, t.dim)  # None: written before checkpoints said
    except RuntimeError:  # another shape or another set of weights
        fits = False
    if not fits:
        raise UserError(f"{name}: its weights do not fit train.model={t.model}, train.dim={t.dim} and the rest "
                        f"of the config (a checkpoint of another model?)")
    return model


class TrainOutput:
    """A `gnnrec train` output directory: config.yaml (the training config), model/ (the checkpoint the
    run chose), metrics.jsonl, curves.png, ranks/. `key` names the config key that pointed here."""

    def __init__(self, path, key: str = "checkpoint"):
        from gnnrec.launch.config import load_config

        self.path = Path(path)
        self.model_dir = self.path / "model"
        if not (self.model_dir / "state.json").exists() or not (self.path / "config.yaml").exists():
            raise UserError(f"{key}={self.path}: not a training output (no model/ and config.yaml; run `gnnrec train`)")
        self.config = load_config(self.path / "config.yaml")

    @functools.cached_property
    def partitions(self):
        from gnnrec.data.formats import Partitions
        return Partitions(self.config.path(self.config.train.partitions))

    @functools.cached_property
    def dataset(self):
        from gnnrec.data.formats import Dataset
        return Dataset(self.config.path(self.config.partition.dataset))

    def model(self):
        """The Recommender its config describes, with the dense weights; UserError if they do not fit."""
        return load_model(self.model_dir, self.config.train, f"{self.path}")

    def tables(self) -> dict[str, torch.Tensor]:
        """The whole ID tables in partition ids, in this process; UserError if their dim is not the config's."""
        tables = load_tables(self.model_dir)
        if tables["user"].shape[1] != self.config.train.dim:
            raise UserError(f"{self.path}: ID tables of dim {tables['user'].shape[1]}, config says "
                            f"{self.config.train.dim}")
        return tables
