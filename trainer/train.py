"""The train stage: DistDGL graph servers + Ray Train workers, each a DistDGL client and a DDP rank.

    driver:  plan -> the job runtime (launch/job.py: graph servers, Ray Train workers, supervision),
             restarted from the last checkpoint when a server or trainer dies
    worker:  worker session (connect, ID tables) -> its share of training edges (local partition first) -> epochs of
             [sample batch (ahead of compute) -> fetch ID rows -> forward -> loss -> backward ->
              Adam on dense weights (DDP) + sparse Adam on the fetched rows (trainer/row_adam.py)]
             -> validation (layer-wise inference, ranking in user shards) -> checkpoint

ID embeddings live in the graph servers (DistTensors), sharded with their nodes; no trainer holds a
table. Every training edge is visited exactly once per epoch across trainers, in the same number of
steps on every trainer (the sparse optimizer is a collective). Checkpoints (trainer/checkpoint.py) are
written every `checkpoint_every` steps and at each epoch's end; when a trainer or server dies, the
driver restarts servers and trainers from the last one (up to `max_failures` times): a restarted Ray
Train worker could not rejoin, since DistDGL servers admit exactly `num_clients` clients and the ID
tables die with them. Output: `{train.out}/model/` (the final or best checkpoint), metrics.jsonl,
curves.png, ranks/rank{r}.json (steps, losses, dense-weight checksum, host, partition, peak RSS).
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from gnnrec import JobFailed, UserError, atomic_dir, exclusive
from gnnrec.faults import fail_point
from gnnrec.data.ingest import peak_rss_mb
from gnnrec.data.formats import Dataset, Partitions
from gnnrec.model.models import MODELS, Recommender, dense_optimizer, uses_social
from gnnrec.trainer import checkpoint
from gnnrec.trainer.batches import time_decay
from gnnrec.trainer.checkpoint import TrainState
from gnnrec.trainer.phases import Phases


# ---------------------------------------------------------------- the driver

def train(cfg) -> dict:
    """The stage: validate, start (or attach to) Ray, plan, train; an embedded Ray is stopped after."""
    from gnnrec.launch.cluster import ray_session

    t = cfg.train
    if t.model not in MODELS or t.model == "popularity":
        raise UserError(f"train.model={t.model}: unknown (trainable: {', '.join(m for m in MODELS if m != 'popularity')})")
    partitions = Partitions(cfg.path(t.partitions))
    with ray_session(cfg.launch):
        return _train(cfg, partitions)


def _train(cfg, partitions: Partitions) -> dict:
    from gnnrec.launch.cluster import plan
    from gnnrec.launch.job import Progress, format_plan, run_workers
    from gnnrec.trainer.curves import plot_curves

    t = cfg.train
    job = plan(partitions, t.trainers_per_partition, t.dim, t.use_gpu, t.batch_size * (2 + t.num_negatives))
    print(format_plan(job))
    out, checkpoints = cfg.path(t.out), cfg.path(t.checkpoints)
    _check_inputs(cfg, partitions, checkpoints)
    hard = cfg.path(t.hard_negatives).resolve() if t.hard_negatives else None
    init = _init_from(cfg, partitions)
    t0 = time.perf_counter()
    with _fresh_checkpoints(checkpoints, keep=t.resume), atomic_dir(out) as tmp_dir:
        tmp = tmp_dir.resolve()  # workers run elsewhere: absolute paths only
        seen = len(TrainState.read(checkpoint.latest(checkpoints)).history) if t.resume else 0  # not news
        progress = Progress(tmp / "metrics.jsonl", seen)
        for attempt in range(t.max_failures + 1):
            loop_config = {"out": str(tmp), "checkpoints": str(checkpoints.resolve()),
                           "resume": t.resume or checkpoint.latest(checkpoints) is not None,
                           "hard_negatives": hard and str(hard), "init_from": init}
            try:
                run_workers("train", cfg, partitions, job, train_loop, loop_config, tmp, progress)
                break
            except JobFailed as e:
                if attempt == t.max_failures or not e.restartable:
                    raise
                print(f"{e}\nrestarting from {checkpoint.latest(checkpoints) or 'the start'} "
                      f"(restart {attempt + 1} of {t.max_failures})", flush=True)
        state, final = TrainState.read(checkpoint.latest(checkpoints)), checkpoint.best(checkpoints)
        shutil.copytree(final, tmp / "model", copy_function=os.link)
        cfg.save(tmp)
        plot_curves(state.history, tmp / "curves.png")
        ranks = [json.loads(p.read_text()) for p in sorted((tmp / "ranks").glob("rank*.json"))]
    last = state.history[-1] if state.history else {}
    chosen = next((m for m in state.history if checkpoint.step_name(m["step"]) == final.name), last)  # the output's epoch
    return {"out": str(out), **{k: v for k, v in job.items() if k != "backend"}, "epochs": state.epoch,
            "steps": state.global_step, "restarts": attempt, "model": final.name,
            "model_epoch": chosen.get("epoch", -1) + 1,
            "edges_per_epoch": sum(r["edges_per_epoch"] for r in ranks),
            "peak_rss_mb_per_trainer": max(r["peak_rss_mb"] for r in ranks),
            "final_loss": round(last.get("loss", float("nan")), 4),
            **{k: round(v, 4) for k, v in chosen.items() if k.startswith(("recall@", "ndcg@"))},
            "seconds": round(time.perf_counter() - t0, 1)}


@contextlib.contextmanager
def _fresh_checkpoints(checkpoints: Path, keep: bool):
    """The checkpoints directory of a run, locked for it (one job per directory); unless `keep` (a
    resume), a previous run's checkpoints are moved aside to `<checkpoints>.previous` and removed once
    this run has a checkpoint of its own, or put back if it fails before writing one. What a stopped
    run's trainers were writing (`step-*.tmp`) is removed."""
    previous = checkpoints.with_name(checkpoints.name + ".previous")
    checkpoints.parent.mkdir(parents=True, exist_ok=True)
    with exclusive(checkpoints):
        if not keep and checkpoints.exists():
            shutil.rmtree(previous, ignore_errors=True)
            os.rename(checkpoints, previous)
        checkpoints.mkdir(exist_ok=True)
        try:
            yield
        finally:
            for partial in checkpoints.glob("step-*.tmp"):
                shutil.rmtree(partial, ignore_errors=True)
            if previous.exists() and checkpoint.latest(checkpoints) is None:
                shutil.rmtree(checkpoints)
                os.rename(previous, checkpoints)
            shutil.rmtree(previous, ignore_errors=True)


def _check_inputs(cfg, partitions: Partitions, checkpoints: Path) -> None:
    t = cfg.train
    if t.hard_negatives and not any(cfg.path(t.hard_negatives).glob("part-*.parquet")):
        raise UserError(f"train.hard_negatives={t.hard_negatives}: no mined negatives there (run `gnnrec mine`)")
    if t.resume and checkpoint.latest(checkpoints) is None:
        raise UserError(f"train.resume=true: no checkpoint in train.checkpoints={checkpoints}")
    if t.resume:  # refused here: a worker failing on it would be restarted for nothing
        checkpoint.best(checkpoints)  # a name in state.json that leads out of the checkpoints is refused
        checkpoint.load_model(checkpoint.latest(checkpoints), t, f"train.resume=true: {checkpoint.latest(checkpoints)}",
                              partitions.stats.get("feature_dims"))
    time_decay(t, partitions)  # refused here, not in every worker
    if t.sampler == "cluster":
        partitions.clusters()
    if t.inputs != "id" and not partitions.stats.get("feature_dims"):
        raise UserError(f"train.inputs={t.inputs}: the partitions {partitions.path} have no node features "
                        "(ingest.item_features or ingest.user_features, then partition again)")
    if t.validate_split != "none" and not partitions.split_edges(t.validate_split):
        raise UserError(f"train.validate_split={t.validate_split}: the partitions have no "
                        f"{t.validate_split} edges (choose another split, or none)")


def _init_from(cfg, partitions: Partitions) -> dict | None:
    """train.init_from, checked here (its weights fit this config, its ids are this dataset's first):
    its model directory, the rows of its tables for this job's (checkpoint.init_rows) and the new nodes'
    first rows (checkpoint.neighbour_means, with train.init_new_from_neighbours)."""
    t = cfg.train
    if not t.init_from:
        if t.replay < 1:
            raise UserError(f"train.replay={t.replay}: replays the edges a previous model saw (set train.init_from)")
        return None
    key = f"train.init_from={t.init_from}"
    init = checkpoint.TrainOutput(cfg.path(t.init_from), key="train.init_from")
    checkpoint.load_model(init.model_dir, t, key, partitions.stats.get("feature_dims"))
    dataset = Dataset(cfg.path(cfg.partition.dataset))
    rows = checkpoint.init_rows(init, dataset, partitions, key)
    means = checkpoint.neighbour_means(init.model_dir, rows, dataset, partitions) if t.init_new_from_neighbours else {}
    since = init.partitions.stats.get("newest_timestamp")
    if t.replay < 1 and (since is None or "newest_timestamp" not in partitions.stats):
        raise UserError(f"train.replay={t.replay}: tells new edges from old by their timestamps, and {key} or "
                        f"{partitions.path} has none (ingest.interactions.timestamp_column)")
    return {"model": str(init.model_dir.resolve()), "rows": rows, "means": means, "since": since}


# ---------------------------------------------------------------- the worker

def train_loop(config: dict) -> None:
    from ray.train import report
    from ray.train.torch import prepare_model

    from gnnrec import dgl_adapter
    from gnnrec.launch.config import Config
    from gnnrec.launch.job import worker_session
    from gnnrec.trainer.batches import BatchMaker, node_inputs
    from gnnrec.trainer.row_adam import RowAdam

    t = Config.model_validate(config["cfg"]).train
    with worker_session(config, t.dim, t.torch_threads, t.seed) as w:
        rank, world, graph, tables = w.rank, w.world, w.graph, w.tables
        out, checkpoints, hard = Path(config["out"]), Path(config["checkpoints"]), config["hard_negatives"]
        num_users = graph.num_nodes("user")
        module = Recommender(t, w.partitions.stats.get("feature_dims")).to(w.device)
        inputs = node_inputs(module, graph)
        dense_opt = dense_optimizer(module, t)
        model = prepare_model(module) if dense_opt and world > 1 else module
        sparse_opt = RowAdam(graph, tables, t.lr)
        my_edges = dgl_adapter.dist_train_edges(graph, rank, world)
        my_users, my_items = dgl_adapter.dist_find_edges(graph, my_edges)  # once, not a server round per step
        older = None  # with train.replay: which of my_edges a previous model saw
        if config["init_from"] and t.replay < 1:
            older = dgl_adapter.dist_values(graph, "interacts", "timestamp", my_edges) <= config["init_from"]["since"]
        visits = len(my_edges) if older is None else int((~older).sum()) + _replay_count(older, t.replay)
        steps_per_epoch = _agreed_steps(visits, t.batch_size)
        steps = min(steps_per_epoch, t.max_steps_per_epoch or steps_per_epoch)
        state = TrainState(dim=t.dim)
        if config["init_from"] and not config["resume"]:  # incremental: a previous model's rows and weights
            init = config["init_from"]
            saved = checkpoint.warm_start(tables, Path(init["model"]), init["rows"], init["means"], rank, world)
            module.load_state_dict(saved["model"])
        if config["resume"]:
            state, saved = checkpoint.restore(checkpoint.latest(checkpoints), tables, sparse_opt, rank, world)
            module.load_state_dict(saved["model"])
            if dense_opt is not None:
                dense_opt.load_state_dict(saved["optimizer"])
            if rank:
                state.loss_sum, state.loss_count = 0.0, 0  # rank 0 carries the epoch's partial sums
            else:  # the checkpoint's epochs only: a restart drops those the killed attempt logged after it
                (out / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in state.history))
        batches = BatchMaker(graph, t, w.partitions, hard, uses_social(module.gnn))
        validate = None if t.validate_split == "none" else _validator(w, module.gnn, t, batches, inputs)
        if hard is not None and state.hard_negatives != str(hard):  # a new round starts here
            state.hard_negatives, state.round_start_epoch = str(hard), state.epoch
        steps_run, phases = 0, Phases()

        def save():
            w.progress("checkpoint", 0, 0)
            if not all(torch.isfinite(p).all() for p in module.parameters()):
                _check_finite(float("nan"), epoch, state.step, t, "the dense weights are")
            dense_state = {"model": module.state_dict(),
                           "optimizer": dense_opt.state_dict() if dense_opt is not None else None}
            checkpoint.save(checkpoints, state, tables, sparse_opt, dense_state if rank == 0 else None, rank, world,
                            protect=state.best_checkpoint)

        while state.epoch < t.epochs and not state.stopped:
            epoch, started, first, rows = state.epoch, time.perf_counter(), state.step, 0
            rng = np.random.default_rng([t.seed, epoch, rank])
            visit = np.arange(len(my_edges)) if older is None else _replayed(older, t.replay, rng)
            order = visit[batches.epoch_order(my_users[visit], rng)]  # positions in my_edges
            chunks = np.array_split(order, steps_per_epoch)[:steps]
            rngs = (np.random.default_rng([t.seed, epoch, rank, step]) for step in range(first, steps))
            if hard is not None:  # the curriculum: epoch n of the round adds n - 1 hard negatives
                batches.negatives.num_hard = epoch - state.round_start_epoch
            w.progress(f"epoch {epoch + 1}", first, steps, epoch=epoch)
            for batch in phases.timed("wait for batch", batches.ahead(my_users, my_items, chunks[first:], rngs)):
                with phases("row pull"), dgl_adapter.RPC:
                    h0 = sparse_opt.rows(batch.input_nodes, num_users, w.device, inputs)
                rows += len(batch.input_nodes)
                with phases("forward"):
                    loss = model(batch.to(w.device), h0)
                    loss_value = loss.item()
                _check_finite(loss_value, epoch, state.step, t)
                if dense_opt is not None:
                    dense_opt.zero_grad()
                with phases("backward"):
                    loss.backward()
                with phases("dense update"):
                    if dense_opt is not None:
                        dense_opt.step()
                with phases("sparse update"):
                    sparse_opt.step()
                state.loss_sum += loss_value
                state.loss_count += 1
                state.step += 1
                state.global_step += 1
                steps_run += 1
                w.progress(f"epoch {epoch + 1}", state.step, steps, epoch=epoch, loss=state.loss_sum / state.loss_count)
                fail_point("train.step")
                if t.checkpoint_every and state.global_step % t.checkpoint_every == 0 and state.step < steps:
                    total, count = _all_sum(state.loss_sum, state.loss_count)
                    state.loss_sum, state.loss_count = (total, count) if rank == 0 else (0.0, 0)
                    save()
            total, count = _all_sum(state.loss_sum, state.loss_count)
            seconds = time.perf_counter() - started
            metrics = {"epoch": epoch, "step": state.global_step, "loss": total / max(count, 1),
                       "seconds": seconds, "edges_per_s": sum(len(c) for c in chunks[first:]) / seconds,
                       "input_rows_per_step": rows / max(steps - first, 1),  # ID rows a batch pulls and updates
                       "phases": {**phases.per_step(steps - first), **batches.phases.per_step(steps - first, "sampler: ")}}
            if hasattr(batches.neighborhoods, "remote_share"):  # since the run started, this rank's
                metrics["remote_sampling_share"] = batches.neighborhoods.remote_share()
            if hard is not None:
                metrics["hard_negatives"] = batches.negatives.num_hard
            if validate is not None and ((epoch + 1) % t.validate_every == 0 or epoch + 1 == t.epochs):
                metrics.update(validate())
                _early_stopping(state, metrics, t)
            state.history.append(metrics)
            state.epoch, state.step, state.loss_sum, state.loss_count = epoch + 1, 0, 0.0, 0
            if rank == 0:
                with open(out / "metrics.jsonl", "a") as f:
                    f.write(json.dumps(metrics) + "\n")
            if t.record_visits:
                (out / "visits").mkdir(exist_ok=True)
                np.save(out / "visits" / f"rank{rank}_epoch{epoch}.npy", my_edges[np.concatenate(chunks[first:])])
            save()
            report(metrics)
        checksum = float(sum(p.detach().double().sum().item() for p in module.parameters()))
        (out / "ranks").mkdir(exist_ok=True)
        (out / "ranks" / f"rank{rank}.json").write_text(json.dumps(
            {"rank": rank, "world": world, "edges_per_epoch": int(len(my_edges)), "steps_per_epoch": steps,
             "steps_run": steps_run, "global_step": state.global_step,
             "losses": [m["loss"] for m in state.history], "param_checksum": checksum, "device": str(w.device),
             "node_ip": _node_ip(), "local_partition": int(graph.get_partition_book().partid),
             "peak_rss_mb": round(peak_rss_mb(), 1)}))


def _node_ip() -> str:
    import ray
    return ray.util.get_node_ip_address()


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


def _check_finite(value: float, epoch: int, step: int, t, what: str = "the loss is") -> None:
    """A diverged run stops here, before its non-finite values reach a checkpoint or an output."""
    if not math.isfinite(value):
        raise UserError(f"training diverged: {what} {value} at epoch {epoch + 1}, step {step + 1}; lower train.lr "
                        f"(now {t.lr}) or train.dense_lr (now {t.dense_lr or t.lr})")


def _early_stopping(state: TrainState, metrics: dict, t) -> None:
    """Track the best validation NDCG@K (its checkpoint becomes the output) and stop after `patience`
    validations without improvement."""
    score = metrics[f"ndcg@{t.validate_k}"]
    if state.best_score is None or score > state.best_score:
        state.best_score, state.bad_epochs = score, 0
        state.best_checkpoint = checkpoint.step_name(state.global_step)  # the checkpoint saved this epoch
    else:
        state.bad_epochs += 1
        state.stopped = bool(t.patience) and state.bad_epochs >= t.patience


def _validator(w, gnn, t, batches, inputs):
    """A function computing this epoch's validation metrics (the same numbers on every trainer), over
    the graph back-end of the trainer's BatchMaker when it has one, with its edge weights and the model's
    `inputs` (trainer/batches.node_inputs)."""
    from gnnrec.ranking.metrics import sample_truth
    from gnnrec.trainer.layerwise import LayerwiseInference, sharded_metrics

    inference = LayerwiseInference(w.graph, gnn, w.tables, t, w.rank, w.world, neighborhoods=batches.neighborhoods,
                                   time_decay=batches.time_decay, inputs=inputs)
    held_out = sample_truth(*w.partitions.held_out(t.validate_split), t.validate_users, t.seed)  # same on every rank
    k = t.validate_k

    def validate() -> dict:
        result = sharded_metrics(w.graph, inference.run(w.progress), inference.shares["user"], held_out, [k])
        return {f"recall@{k}": result[f"recall@{k}"], f"ndcg@{k}": result[f"ndcg@{k}"],
                "validated_users": result["num_users"]}
    return validate
