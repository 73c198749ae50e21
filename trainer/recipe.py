"""The training worker, a recipe in torchtune's shape: setup -> restore or warm start -> epochs of
[train steps -> end of epoch] -> the rank's record. Each trainer is a Ray Train worker, a DistDGL client
and a DDP rank:

    setup:   worker session (connect, ID tables) -> model, optimizers -> its share of training edges
             (local partition first) -> the steps every trainer agrees on -> restore or warm start -> batches
    step:    sample batch (ahead of compute) -> fetch ID rows -> forward -> loss -> backward ->
             Adam on dense weights (DDP) + sparse Adam on the fetched rows (trainer/row_adam.py)
    epoch:   steps -> metrics -> validation (layer-wise inference, ranking in user shards) and early
             stopping -> metrics.jsonl -> checkpoint -> report

Every training edge is visited exactly once per epoch across trainers, in the same number of steps on
every trainer (the sparse optimizer is a collective). A checkpoint is written every
`train.checkpoint_every` steps and at each epoch's end.
"""
from __future__ import annotations

import functools
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import ray
import torch
from ray.train import report
from ray.train.torch import prepare_model
from torch.utils.tensorboard import SummaryWriter

from gnnrec import UserError, dgl_adapter
from gnnrec.data.ingest import peak_rss_mb
from gnnrec.faults import fail_point
from gnnrec.launch.job import WorkerContext, worker_session
from gnnrec.model.models import Recommender, dense_optimizer, uses_social
from gnnrec.ranking.metrics import sample_truth
from gnnrec.trainer import checkpoint
from gnnrec.trainer.batches import BatchMaker, node_inputs
from gnnrec.trainer.checkpoint import DenseState, TrainState
from gnnrec.inference.layerwise import LayerwiseInference, sharded_metrics
from gnnrec.samplers.full_graph import FullGraphSampler
from gnnrec.trainer.phases import Phases
from gnnrec.trainer.row_adam import RowAdam


@dataclass
class WarmStart:
    """train.init_from as the driver resolved it: the previous model's directory, the row of its tables
    for each partition id of this job (-1: a new node; checkpoint.init_rows), the new nodes' first rows
    (checkpoint.neighbour_means) and its newest training timestamp (for train.replay)."""
    model: str
    rows: dict
    means: dict
    since: int | None


@dataclass
class TrainArgs:
    """What the train stage hands its workers (WorkerContext.job)."""
    checkpoints: str
    resume: bool  # from the latest checkpoint in `checkpoints`
    hard_negatives: str | None  # mined negatives of this round
    init_from: WarmStart | None
    tensorboard: str | None = None  # the directory of rank 0's event files (train.tensorboard)


def train_loop(config: dict) -> None:
    """Ray Train's entry point: one trainer's whole run."""
    context: WorkerContext = config["context"]
    train_cfg = context.cfg.train
    with worker_session(context, train_cfg.dim, train_cfg.torch_threads, train_cfg.seed) as w:
        recipe = TrainingRecipe(w, context.job, Path(context.out))
        try:
            while recipe.state.epoch < train_cfg.epochs and not recipe.state.stopped:
                recipe.train_epoch()
            recipe.write_record()
        finally:
            recipe.close()


class TrainingRecipe:
    """One trainer's model, optimizers, edges, batches and TrainState (`state`)."""

    def __init__(self, w, args: TrainArgs, out: Path):
        self.w, self.args, self.out, self.train_cfg = w, args, out, w.cfg.train
        self.checkpoints, self.phases, self.steps_run = Path(args.checkpoints), Phases(), 0
        self._setup_model()
        self._setup_edges()
        self.state = self._restore_or_warm_start()
        self.batches = BatchMaker(w.graph, self.train_cfg, w.partitions, args.hard_negatives,
                                  uses_social(self.module.gnn))
        self.validate = None if self.train_cfg.validate_split == "none" else _validator(
            w, self.module.gnn, self.train_cfg, self.batches, self.inputs)
        if args.hard_negatives is not None and self.state.hard_negatives != args.hard_negatives:  # a new round
            self.state.hard_negatives, self.state.round_start_epoch = args.hard_negatives, self.state.epoch
        self.board = None  # rank 0's; a restart drops the events after its checkpoint, as metrics.jsonl does
        if args.tensorboard and w.rank == 0:
            self.board = SummaryWriter(args.tensorboard, purge_step=self.state.epoch + 1 if args.resume else None)

    def _setup_model(self) -> None:
        w, train_cfg = self.w, self.train_cfg
        self.module = Recommender(train_cfg, w.partitions.stats.get("feature_dims")).to(w.device)
        self.inputs = node_inputs(self.module, w.graph)
        self.dense_opt = dense_optimizer(self.module, train_cfg)
        self.model = prepare_model(self.module) if self.dense_opt and w.world > 1 else self.module
        self.sparse_opt = RowAdam(w.graph, w.tables, train_cfg.lr)
        self.num_users = w.graph.num_nodes("user")

    def _setup_edges(self) -> None:
        """This trainer's training edges, their endpoints (once, not a server round per step), which of
        them a previous model saw (`older`, with train.replay) and the steps of an epoch."""
        w, train_cfg, init = self.w, self.train_cfg, self.args.init_from
        self.my_edges = dgl_adapter.dist_train_edges(w.graph, w.rank, w.world)
        self.my_users, self.my_items = dgl_adapter.dist_find_edges(w.graph, self.my_edges)
        self.older = None
        if init and train_cfg.replay < 1:
            self.older = dgl_adapter.dist_values(w.graph, "interacts", "timestamp", self.my_edges) <= init.since
        visits = len(self.my_edges) if self.older is None else (
            int((~self.older).sum()) + _replay_count(self.older, train_cfg.replay))
        self.steps_per_epoch = _agreed_steps(visits, train_cfg.batch_size)
        self.steps = min(self.steps_per_epoch, train_cfg.max_steps_per_epoch or self.steps_per_epoch)

    def _restore_or_warm_start(self) -> TrainState:
        """The latest checkpoint's state (train.resume or a restart), a previous model's rows and weights
        (train.init_from), or a fresh state."""
        w, args, state = self.w, self.args, TrainState(dim=self.train_cfg.dim)
        if args.init_from and not args.resume:
            init = args.init_from
            dense = checkpoint.warm_start(w.tables, Path(init.model), init.rows, init.means, w.rank, w.world)
            self.module.load_state_dict(dense.model)
        if args.resume:
            state, dense = checkpoint.restore(checkpoint.latest(self.checkpoints), w.tables, self.sparse_opt,
                                              w.rank, w.world)
            self.module.load_state_dict(dense.model)
            if self.dense_opt is not None:
                self.dense_opt.load_state_dict(dense.optimizer)
            if w.rank:
                state.loss_sum, state.loss_count = 0.0, 0  # rank 0 carries the epoch's partial sums
            else:  # the checkpoint's epochs only: a restart drops those the killed attempt logged after it
                (self.out / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in state.history))
        return state

    def train_epoch(self) -> None:
        """The rest of the current epoch's steps (all of them unless resumed mid-epoch), then its end."""
        train_cfg, state, rank = self.train_cfg, self.state, self.w.rank
        epoch, started, first, rows = state.epoch, time.perf_counter(), state.step, 0
        rng = np.random.default_rng([train_cfg.seed, epoch, rank])
        visit = np.arange(len(self.my_edges)) if self.older is None else _replayed(self.older, train_cfg.replay, rng)
        order = visit[self.batches.epoch_order(self.my_users[visit], rng)]  # positions in my_edges
        chunks = np.array_split(order, self.steps_per_epoch)[first:self.steps]
        rngs = (np.random.default_rng([train_cfg.seed, epoch, rank, step]) for step in range(first, self.steps))
        self.batches.start_epoch(epoch - state.round_start_epoch)
        self.w.progress(f"epoch {epoch + 1}", first, self.steps, epoch=epoch)
        batches = self.batches.ahead(self.my_users, self.my_items, chunks, rngs)
        for batch in self.phases.timed("wait for batch", batches):
            rows += self._step(batch, epoch)
        self._end_epoch(chunks, rows, time.perf_counter() - started)

    def _step(self, batch, epoch: int) -> int:
        """One training step; returns the ID rows it pulled and updated."""
        w, phases, state = self.w, self.phases, self.state
        with phases("row pull"), dgl_adapter.RPC:
            h0 = self.sparse_opt.rows(batch.input_nodes, self.num_users, w.device, self.inputs)
        with phases("forward"):
            loss = self.model(batch.to(w.device), h0)
        if self.dense_opt is not None:
            self.dense_opt.zero_grad()
        with phases("backward"):
            loss.backward()
        with phases("dense update"):
            if self.dense_opt is not None:
                self.dense_opt.step()
        with phases("sparse update"):
            self.sparse_opt.step()
        loss_value = loss.item()
        if not math.isfinite(loss_value):  # stop before the values it made reach a checkpoint
            raise _diverged(f"the loss is {loss_value}", f"epoch {epoch + 1}, step {state.step + 1}", self.train_cfg)
        state.loss_sum, state.loss_count = state.loss_sum + loss_value, state.loss_count + 1
        state.step, state.global_step, self.steps_run = state.step + 1, state.global_step + 1, self.steps_run + 1
        w.progress(f"epoch {epoch + 1}", state.step, self.steps, epoch=epoch, loss=state.loss_sum / state.loss_count)
        fail_point("train.step")
        every = self.train_cfg.checkpoint_every
        if every and state.global_step % every == 0 and state.step < self.steps:
            total, count = _all_sum(state.loss_sum, state.loss_count)
            state.loss_sum, state.loss_count = (total, count) if w.rank == 0 else (0.0, 0)
            self.save()
        return len(batch.input_nodes)

    def _end_epoch(self, chunks: list, rows: int, seconds: float) -> None:
        """The epoch's metrics (validation and early stopping when due) into the history and metrics.jsonl,
        the visits (train.record_visits), a checkpoint and Ray Train's report."""
        train_cfg, state, epoch, done = self.train_cfg, self.state, self.state.epoch, len(chunks)
        total, count = _all_sum(state.loss_sum, state.loss_count)
        metrics = {"epoch": epoch, "step": state.global_step, "loss": total / max(count, 1), "seconds": seconds,
                   "edges_per_s": sum(len(c) for c in chunks) / seconds,
                   "input_rows_per_step": rows / max(done, 1),  # ID rows a batch pulls and updates
                   "phases": {**self.phases.per_step(done), **self.batches.phases.per_step(done, "sampler: ")}}
        share = None if self.batches.neighborhoods is None else self.batches.neighborhoods.remote_share()
        if share is not None:  # since the run started, this rank's
            metrics["remote_sampling_share"] = share
        if self.args.hard_negatives is not None:
            metrics["hard_negatives"] = self.batches.num_hard
        if self.validate is not None and ((epoch + 1) % train_cfg.validate_every == 0 or epoch + 1 == train_cfg.epochs):
            metrics.update(self.validate())
            _early_stopping(state, metrics, train_cfg)
        state.history.append(metrics)
        trained = sum(m["seconds"] for m in state.history)  # training seconds of every epoch so far
        if train_cfg.max_minutes and _all_max(trained) >= 60 * train_cfg.max_minutes:
            state.stopped = True
        state.epoch, state.step, state.loss_sum, state.loss_count = epoch + 1, 0, 0.0, 0
        if self.w.rank == 0:
            with open(self.out / "metrics.jsonl", "a") as f:
                f.write(json.dumps(metrics) + "\n")
        if self.board is not None:
            _add_epoch(self.board, metrics)
        if train_cfg.record_visits:
            (self.out / "visits").mkdir(exist_ok=True)
            np.save(self.out / "visits" / f"rank{self.w.rank}_epoch{epoch}.npy", self.my_edges[np.concatenate(chunks)])
        self.save()
        report(metrics)

    def save(self) -> None:
        """A checkpoint of every rank (rank 0 adds the dense state); never of non-finite dense weights."""
        w, state = self.w, self.state
        w.progress("checkpoint", 0, 0)
        if not all(torch.isfinite(p).all() for p in self.module.parameters()):
            raise _diverged("the dense weights are not finite", f"step {state.global_step}", self.train_cfg)
        dense = DenseState(self.module.state_dict(), self.dense_opt.state_dict() if self.dense_opt else None)
        checkpoint.save(self.checkpoints, state, w.tables, self.sparse_opt, dense if w.rank == 0 else None, w.rank,
                        w.world, protect=state.best_checkpoint)

    def close(self) -> None:
        if self.board is not None:
            self.board.close()

    def write_record(self) -> None:
        """ranks/rank{r}.json: steps, losses, dense-weight checksum, host, partition, peak RSS."""
        w, state = self.w, self.state
        checksum = float(sum(p.detach().double().sum().item() for p in self.module.parameters()))
        (self.out / "ranks").mkdir(exist_ok=True)
        (self.out / "ranks" / f"rank{w.rank}.json").write_text(json.dumps(
            {"rank": w.rank, "world": w.world, "edges_per_epoch": int(len(self.my_edges)),
             "steps_per_epoch": self.steps, "steps_run": self.steps_run, "global_step": state.global_step,
             "losses": [m["loss"] for m in state.history], "param_checksum": checksum, "device": str(w.device),
             "node_ip": ray.util.get_node_ip_address(), "local_partition": int(w.graph.get_partition_book().partid),
             "peak_rss_mb": round(peak_rss_mb(), 1)}))


def _add_epoch(board: SummaryWriter, metrics: dict) -> None:
    """An epoch's line of metrics.jsonl as TensorBoard scalars at step epoch + 1, a phase's seconds per
    step as phases/<name>."""
    for name, value in metrics.items():
        if name == "phases":
            for phase, seconds in value.items():
                board.add_scalar(f"phases/{phase}", seconds, metrics["epoch"] + 1)
        elif name not in ("epoch", "step"):
            board.add_scalar(name, value, metrics["epoch"] + 1)
    board.flush()


def _agreed_steps(num_edges: int, batch_size: int) -> int:
    """Steps per epoch, the same on every trainer: enough batches of `batch_size` for the largest share,
    and never more than the smallest share has edges."""
    need = torch.tensor([-(-num_edges // batch_size), -num_edges], dtype=torch.int64)
    if torch.distributed.is_initialized():
        torch.distributed.all_reduce(need, op=torch.distributed.ReduceOp.MAX)
    return int(max(1, min(need[0].item(), -need[1].item())))


def _replay_count(older: np.ndarray, share: float) -> int:
    """How many of the older edges an epoch visits under train.replay."""
    return round(share * int(older.sum()))


def _replayed(older: np.ndarray, share: float, rng: np.random.Generator) -> np.ndarray:
    """Positions of an epoch's edges under train.replay: every new one, and a `share` of the older ones."""
    chosen = rng.choice(np.flatnonzero(older), _replay_count(older, share), replace=False)
    return np.sort(np.concatenate([np.flatnonzero(~older), chosen]))


def _all_sum(total: float, count: int) -> tuple[float, int]:
    """(sum, count) over trainers."""
    if not torch.distributed.is_initialized():
        return total, count
    both = torch.tensor([total, count], dtype=torch.float64)
    torch.distributed.all_reduce(both)
    return both[0].item(), int(both[1].item())


def _all_max(value: float) -> float:
    """The largest of a value over trainers (their decisions from it agree)."""
    if not torch.distributed.is_initialized():
        return value
    largest = torch.tensor([value], dtype=torch.float64)
    torch.distributed.all_reduce(largest, op=torch.distributed.ReduceOp.MAX)
    return largest.item()


def _diverged(what: str, where: str, train_cfg) -> UserError:
    """The one line that stops a diverged run, before its non-finite values reach a checkpoint or an output."""
    return UserError(f"training diverged: {what} at {where}; lower train.lr (now {train_cfg.lr}) or train.dense_lr "
                     f"(now {train_cfg.dense_lr or train_cfg.lr})")


def _early_stopping(state: TrainState, metrics: dict, train_cfg) -> None:
    """Track the best validation NDCG@K (its checkpoint becomes the output) and stop after `patience`
    validations without improvement."""
    score = metrics[f"ndcg@{train_cfg.validate_k}"]
    if state.best_score is None or score > state.best_score:
        state.best_score, state.bad_epochs = score, 0
        state.best_checkpoint = checkpoint.step_name(state.global_step)  # the checkpoint saved this epoch
    else:
        state.bad_epochs += 1
        state.stopped = bool(train_cfg.patience) and state.bad_epochs >= train_cfg.patience


def _validator(w, gnn, train_cfg, batches, inputs):
    """A function computing this epoch's validation metrics (the same numbers on every trainer), over
    the graph back-end of the trainer's BatchMaker when it has one, with its edge weights and the model's
    `inputs` (trainer/batches.node_inputs)."""
    held_out = sample_truth(*w.partitions.held_out(train_cfg.validate_split), train_cfg.validate_users,
                            train_cfg.seed)  # the same on every rank
    k = train_cfg.validate_k
    if isinstance(batches.sampler, FullGraphSampler):  # one pass over the block it trains on
        my_users = dgl_adapter.dist_node_split(w.graph, "user", w.rank, w.world)
        final = functools.partial(batches.sampler.final, gnn, functools.partial(_all_rows, w, inputs))
    else:
        inference = LayerwiseInference(w, gnn, train_cfg, neighborhoods=batches.neighborhoods,
                                       time_decay=batches.time_decay, inputs=inputs)
        my_users, final = inference.shares["user"], functools.partial(inference.run, w.progress)

    def validate() -> dict:
        result = sharded_metrics(w.graph, final(), my_users, held_out, [k])
        return {f"recall@{k}": result[f"recall@{k}"], f"ndcg@{k}": result[f"ndcg@{k}"],
                "validated_users": result["num_users"]}
    return validate


def _all_rows(w, inputs, node_type: str) -> torch.Tensor:
    """h0 of every node of a type: its ID rows, or the model's inputs of them (trainer/batches.node_inputs)."""
    ids = torch.arange(w.graph.num_nodes(node_type))
    rows = w.tables[node_type][ids]
    return rows if inputs is None else inputs(node_type, ids, rows)
