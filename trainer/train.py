"""The train stage's driver: DistDGL graph servers + Ray Train workers, each a DistDGL client and a
DDP rank running the training recipe (trainer/recipe.py).

    plan -> checks of the inputs -> the job runtime (launch/job.py: graph servers, Ray Train workers,
    supervision), restarted from the last checkpoint when a server or trainer dies -> the output

ID embeddings live in the graph servers (DistTensors), sharded with their nodes; no trainer holds a
table. When a trainer or server dies, the driver restarts servers and trainers from the last checkpoint
(up to `max_failures` times): a restarted Ray Train worker could not rejoin, since DistDGL servers admit
exactly `num_clients` clients and the ID tables die with them. Output: `{train.out}/model/` (the final
or best checkpoint), metrics.jsonl, curves.png, ranks/rank{r}.json (steps, losses, dense-weight
checksum, host, partition, peak RSS).
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from pathlib import Path

from gnnrec import JobFailed, UserError, atomic_dir, exclusive
from gnnrec.data.formats import Dataset, Partitions
from gnnrec.inference.trained import TrainOutput
from gnnrec.launch.cluster import plan, ray_session
from gnnrec.launch.job import Progress, run_workers
from gnnrec.model.models import MODELS
from gnnrec.trainer import checkpoint
from gnnrec.trainer.batches import time_decay
from gnnrec.trainer.checkpoint import TrainState
from gnnrec.trainer.curves import plot_curves
from gnnrec.trainer.recipe import TrainArgs, WarmStart, train_loop


def run(cfg) -> dict:
    """The stage: validate, start (or attach to) Ray, plan, train; an embedded Ray is stopped after."""
    train_cfg = cfg.train
    if train_cfg.model not in MODELS or train_cfg.model == "popularity":
        trainable = ", ".join(m for m in MODELS if m != "popularity")
        raise UserError(f"train.model={train_cfg.model}: unknown (trainable: {trainable})")
    partitions = Partitions(cfg.path(train_cfg.partitions))
    with ray_session(cfg.launch):
        return _train(cfg, partitions)


def _train(cfg, partitions: Partitions) -> dict:
    train_cfg = cfg.train
    full_graph = train_cfg.sampler == "full_graph"  # its negatives' rows are the graph's: no blocks of their own
    job = plan(partitions, train_cfg.trainers_per_partition, train_cfg.dim, train_cfg.use_gpu,
               train_cfg.batch_size * (2 + (0 if full_graph else train_cfg.num_negatives)), full_graph)
    print(job.line())
    out, checkpoints = cfg.path(train_cfg.out), cfg.path(train_cfg.checkpoints)
    _check_inputs(cfg, partitions, checkpoints)
    hard = str(cfg.path(train_cfg.hard_negatives).resolve()) if train_cfg.hard_negatives else None
    init = _init_from(cfg, partitions)
    t0 = time.perf_counter()
    with _fresh_checkpoints(checkpoints, keep=train_cfg.resume), atomic_dir(out) as tmp_dir:
        tmp = tmp_dir.resolve()  # workers run elsewhere: absolute paths only
        board = _tensorboard(cfg, tmp)
        seen = len(TrainState.read(checkpoint.latest(checkpoints)).history) if train_cfg.resume else 0  # not news
        progress = Progress(tmp / "metrics.jsonl", seen)
        for attempt in range(train_cfg.max_failures + 1):
            args = TrainArgs(str(checkpoints.resolve()), train_cfg.resume or checkpoint.latest(checkpoints) is not None,
                             hard, init, board)
            try:
                run_workers("train", cfg, partitions, job, train_loop, args, tmp, progress)
                break
            except JobFailed as e:
                if attempt == train_cfg.max_failures or not e.restartable:
                    raise
                print(f"{e}\nrestarting from {checkpoint.latest(checkpoints) or 'the start'} "
                      f"(restart {attempt + 1} of {train_cfg.max_failures})", flush=True)
        state, final = TrainState.read(checkpoint.latest(checkpoints)), checkpoint.best(checkpoints)
        shutil.copytree(final, tmp / "model", copy_function=os.link)
        cfg.save(tmp)
        plot_curves(state.history, tmp / "curves.png")
        ranks = [json.loads(p.read_text()) for p in sorted((tmp / "ranks").glob("rank*.json"))]
    last = state.history[-1] if state.history else {}
    chosen = next((m for m in state.history if checkpoint.step_name(m["step"]) == final.name), last)  # output's epoch
    return {"out": str(out), **job.summary(), "epochs": state.epoch,
            "steps": state.global_step, "restarts": attempt, "model": final.name,
            "model_epoch": chosen.get("epoch", -1) + 1,
            "edges_per_epoch": sum(r["edges_per_epoch"] for r in ranks),
            "peak_rss_mb_per_trainer": max(r["peak_rss_mb"] for r in ranks),
            "final_loss": round(last.get("loss", float("nan")), 4),
            **{k: round(v, 4) for k, v in chosen.items() if k.startswith(("recall@", "ndcg@"))},
            "seconds": round(time.perf_counter() - t0, 1)}


def _tensorboard(cfg, out: Path) -> str | None:
    """train.tensorboard's directory, absolute (workers run elsewhere): true is beside metrics.jsonl."""
    setting = cfg.train.tensorboard
    if not setting:
        return None
    return str(out / "tensorboard" if setting is True else cfg.path(setting).resolve())


@contextlib.contextmanager
def _fresh_checkpoints(checkpoints: Path, keep: bool):
    """The checkpoints directory of a run, locked for it (one job per directory); unless `keep` (a
    resume), a previous run's checkpoints are moved aside to `<checkpoints>.previous`: put back if the run
    ends before a checkpoint of its own, kept aside if it fails after one (nothing lost), removed once it
    ends well or is stopped on purpose (SIGINT, SIGTERM: a resume continues from its own). What the
    trainers were writing (`step-*.tmp`) is removed."""
    previous = checkpoints.with_name(checkpoints.name + ".previous")
    checkpoints.parent.mkdir(parents=True, exist_ok=True)
    with exclusive(checkpoints):
        if not keep and checkpoints.exists():
            shutil.rmtree(previous, ignore_errors=True)
            os.rename(checkpoints, previous)
        checkpoints.mkdir(exist_ok=True)
        drop_previous = True  # unless the run fails
        try:
            yield
        except Exception:
            drop_previous = False
            raise
        finally:
            for partial in checkpoints.glob("step-*.tmp"):
                shutil.rmtree(partial, ignore_errors=True)
            if previous.exists() and not (checkpoints / "latest").exists():
                shutil.rmtree(checkpoints)
                os.rename(previous, checkpoints)
            elif drop_previous:  # ended well, or a KeyboardInterrupt
                shutil.rmtree(previous, ignore_errors=True)


def _check_inputs(cfg, partitions: Partitions, checkpoints: Path) -> None:
    train_cfg = cfg.train
    if train_cfg.hard_negatives and not any(cfg.path(train_cfg.hard_negatives).glob("part-*.parquet")):
        raise UserError(f"train.hard_negatives={train_cfg.hard_negatives}: no mined negatives there "
                        "(run `gnnrec mine`)")
    if train_cfg.resume and checkpoint.latest(checkpoints) is None:
        raise UserError(f"train.resume=true: no checkpoint in train.checkpoints={checkpoints}")
    if train_cfg.resume:  # refused here: a worker failing on it would be restarted for nothing
        checkpoint.best(checkpoints)  # a name in state.json that leads out of the checkpoints is refused
        latest = checkpoint.latest(checkpoints)
        checkpoint.load_model(latest, train_cfg, f"train.resume=true: {latest}", partitions.stats.get("feature_dims"))
    time_decay(train_cfg, partitions)  # refused here, not in every worker
    if train_cfg.sampler == "cluster":
        partitions.clusters()
    if train_cfg.sampler == "full_graph" and len(partitions.stats["per_part"]) > 1:
        raise UserError(f"train.sampler=full_graph: {partitions.path} has {len(partitions.stats['per_part'])} "
                        "partitions; it propagates the whole graph on each machine (partition.parts=1)")
    if train_cfg.sampler == "full_graph" and train_cfg.model == "socialgcn":
        raise UserError("train.sampler=full_graph: propagates the interactions only, not socialgcn's social ties")
    if train_cfg.inputs != "id" and not partitions.stats.get("feature_dims"):
        raise UserError(f"train.inputs={train_cfg.inputs}: the partitions {partitions.path} have no node features "
                        "(ingest.item_features or ingest.user_features, then partition again)")
    if train_cfg.validate_split != "none" and not partitions.split_edges(train_cfg.validate_split):
        raise UserError(f"train.validate_split={train_cfg.validate_split}: the partitions have no "
                        f"{train_cfg.validate_split} edges (choose another split, or none)")


def _init_from(cfg, partitions: Partitions) -> WarmStart | None:
    """train.init_from, checked here (its weights fit this config, its ids are this dataset's first):
    its model directory, the rows of its tables for this job's (checkpoint.init_rows) and the new nodes'
    first rows (checkpoint.neighbour_means, with train.init_new_from_neighbours)."""
    train_cfg = cfg.train
    if not train_cfg.init_from:
        if train_cfg.replay < 1:
            raise UserError(f"train.replay={train_cfg.replay}: replays the edges a previous model saw "
                            "(set train.init_from)")
        return None
    key = f"train.init_from={train_cfg.init_from}"
    init = TrainOutput(cfg.path(train_cfg.init_from), key="train.init_from")
    checkpoint.load_model(init.model_dir, train_cfg, key, partitions.stats.get("feature_dims"))
    dataset = Dataset(cfg.path(cfg.partition.dataset))
    rows = checkpoint.init_rows(init, dataset, partitions, key)
    means = (checkpoint.neighbour_means(init.model_dir, rows, dataset, partitions)
             if train_cfg.init_new_from_neighbours else {})
    since = init.partitions.stats.get("newest_timestamp")
    if train_cfg.replay < 1 and (since is None or "newest_timestamp" not in partitions.stats):
        raise UserError(f"train.replay={train_cfg.replay}: tells new edges from old by their timestamps, and {key} or "
                        f"{partitions.path} has none (ingest.interactions.timestamp_column)")
    return WarmStart(str(init.model_dir.resolve()), rows, means, since)
