"""The train stage: DistDGL graph servers + Ray Train workers, each a DistDGL client and a DDP rank.

    driver:  plan -> GraphServers (one per partition) -> TorchTrainer.fit in a task, watched: a dead
             server fails the job with its name within launch.health_timeout_s, never a hang
    worker:  connect -> its share of training edges (local partition first) -> epochs of
             [sample batch (ahead of compute) -> fetch ID rows -> forward -> loss -> backward ->
              Adam on dense weights (DDP) + sparse Adam on the fetched rows (in the servers)]
             -> validation (layer-wise inference, ranking in user shards) -> checkpoint

ID embeddings live in the graph servers (DistEmbedding), sharded with their nodes; no trainer holds a
table. Every training edge is visited exactly once per epoch across trainers, in the same number of
steps on every trainer (the sparse optimizer is a collective). Checkpoints (trainer/checkpoint.py) are
written every `checkpoint_every` steps and at each epoch's end; when a trainer or server dies, the
driver restarts servers and trainers from the last one (up to `max_failures` times): a restarted Ray
Train worker could not rejoin, since DistDGL servers admit exactly `num_clients` clients and the ID
tables die with them. Output: `{train.out}/model/` (the final or best checkpoint), metrics.jsonl,
curves.png, ranks/rank{r}.json (steps, losses, dense-weight checksum, host, partition).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import ray
import torch
from torch import nn
from tqdm import tqdm

from gnnrec import JobFailed, UserError, atomic_dir
from gnnrec.trainer import checkpoint
from gnnrec.trainer.blocks import Batch
from gnnrec.trainer.losses import LOSSES
from gnnrec.trainer.models import MODELS, uses_social


# ---------------------------------------------------------------- the driver

def train(cfg) -> dict:
    """The stage: validate, start (or attach to) Ray, plan, train; an embedded Ray is stopped after."""
    from gnnrec.launch.cluster import ray_session

    t = cfg.train
    if t.model not in MODELS or t.model == "popularity":
        raise UserError(f"train.model={t.model}: unknown (trainable: {', '.join(m for m in MODELS if m != 'popularity')})")
    part_config = _part_config(cfg.path(t.partitions))
    with ray_session(cfg.launch):
        return _train(cfg, part_config)


def _train(cfg, part_config: Path) -> dict:
    from gnnrec.launch.cluster import plan
    from gnnrec.trainer.curves import plot_curves

    t = cfg.train
    job = plan(part_config, t.trainers_per_partition, t.dim, t.use_gpu, t.batch_size * (2 + t.num_negatives))
    print(_format_plan(job))
    out, checkpoints = cfg.path(t.out), cfg.path(t.checkpoints)
    _check_inputs(cfg, part_config.parent, checkpoints)
    if not t.resume:
        shutil.rmtree(checkpoints, ignore_errors=True)
    checkpoints.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with atomic_dir(out) as tmp_dir:
        tmp = tmp_dir.resolve()  # workers run elsewhere: absolute paths only
        progress = _Progress(tmp / "metrics.jsonl")
        if t.resume:  # epochs of earlier runs are not news
            progress.seen = len(json.loads((checkpoint.latest(checkpoints) / "state.json").read_text())["history"])
        for attempt in range(t.max_failures + 1):
            resume = t.resume or checkpoint.latest(checkpoints) is not None
            try:
                _attempt(cfg, part_config, job, tmp, checkpoints.resolve(), resume, progress)
                break
            except JobFailed as e:
                if attempt == t.max_failures:
                    raise
                print(f"{e}\nrestarting from {checkpoint.latest(checkpoints) or 'the start'} "
                      f"(restart {attempt + 1} of {t.max_failures})", flush=True)
        state = json.loads((checkpoint.latest(checkpoints) / "state.json").read_text())
        final = checkpoints / state.get("best_checkpoint", checkpoint.latest(checkpoints).name)
        shutil.copytree(final, tmp / "model", copy_function=os.link)
        cfg.save(tmp)
        plot_curves(state["history"], tmp / "curves.png")
        ranks = [json.loads(p.read_text()) for p in sorted((tmp / "ranks").glob("rank*.json"))]
    last = state["history"][-1] if state["history"] else {}
    chosen = next((m for m in state["history"] if f"step-{m['step']:09d}" == final.name), last)  # the output's epoch
    return {"out": str(out), **{k: v for k, v in job.items() if k != "backend"}, "epochs": state["epoch"],
            "steps": state["global_step"], "restarts": attempt, "model": final.name,
            "model_epoch": chosen.get("epoch", -1) + 1,
            "edges_per_epoch": sum(r["edges_per_epoch"] for r in ranks),
            "final_loss": round(last.get("loss", float("nan")), 4),
            **{k: round(v, 4) for k, v in chosen.items() if k.startswith(("recall@", "ndcg@"))},
            "seconds": round(time.perf_counter() - t0, 1)}


def _check_inputs(cfg, partitions: Path, checkpoints: Path) -> None:
    t = cfg.train
    if t.hard_negatives and not any(cfg.path(t.hard_negatives).glob("part-*.parquet")):
        raise UserError(f"train.hard_negatives={t.hard_negatives}: no mined negatives there (run `gnnrec mine`)")
    if t.resume and checkpoint.latest(checkpoints) is None:
        raise UserError(f"train.resume=true: no checkpoint in train.checkpoints={checkpoints}")
    if t.validate_split != "none":
        stats = json.loads((partitions / "partition_stats.json").read_text())
        if not sum(p.get(f"{t.validate_split}_edges", 0) for p in stats["per_part"]):
            raise UserError(f"train.validate_split={t.validate_split}: the partitions have no "
                            f"{t.validate_split} edges (choose another split, or none)")


def _attempt(cfg, part_config: Path, job: dict, tmp: Path, checkpoints: Path, resume: bool, progress) -> None:
    """One start of graph servers and trainers; raises JobFailed when one of them dies."""
    hard = cfg.path(cfg.train.hard_negatives).resolve() if cfg.train.hard_negatives else None
    run_workers(cfg, part_config, job, train_loop, {"out": str(tmp), "checkpoints": str(checkpoints), "resume": resume,
                                                    "hard_negatives": hard and str(hard)}, tmp, progress)


def run_workers(cfg, part_config: Path, job: dict, loop, loop_config: dict, tmp: Path, progress=None) -> None:
    """Graph servers for the partitions and `job["trainers"]` Ray Train workers running `loop(config)`
    as DistDGL clients (config: loop_config + cfg, client info, partitions, heartbeats); raises JobFailed
    when a server or worker dies. Ray Train's own files go under `tmp` and are removed."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from gnnrec.launch.graph_servers import GraphServers

    tmp = Path(tmp).resolve()  # Ray Train wants an absolute storage path
    with GraphServers(part_config, num_clients=job["trainers"], start_timeout_s=cfg.launch.health_timeout_s) as servers:
        heartbeats = Heartbeats.remote()
        trainer = TorchTrainer(
            loop,
            train_loop_config={**loop_config, "cfg": cfg.model_dump(mode="json"), "client": servers.client_info,
                               "partitions": str(part_config.parent.resolve()), "heartbeats": heartbeats},
            scaling_config=ScalingConfig(num_workers=job["trainers"], use_gpu=job["gpus"] > 0,
                                         resources_per_worker={"CPU": 1}, placement_strategy="SPREAD"),
            torch_config=TorchConfig(backend=job["backend"], timeout_s=int(cfg.launch.health_timeout_s)),
            # restarts are the driver's (see the module docstring), not Ray Train's
            run_config=RunConfig(storage_path=str(tmp / ".ray"), name="workers",
                                 failure_config=FailureConfig(max_failures=0)),
        )
        error = _watch(trainer, servers, heartbeats, cfg.launch.health_timeout_s / 4, progress, job["trainers"])
        ray.kill(heartbeats)
        shutil.rmtree(tmp / ".ray", ignore_errors=True)
        if isinstance(error, UserError):  # bad input found by a worker: no restart would help
            raise error
        if error:
            raise JobFailed(f"{loop.__name__} failed: {error}")


START_TIMEOUT_S = 300  # from fit() to every trainer's first heartbeat (imports, DDP and DistDGL set-up)


def _watch(trainer, servers, heartbeats, stale_after_s: float, progress, world: int) -> str | None:
    """Run TorchTrainer.fit in a task while checking the graph servers and the trainers' heartbeats
    (Ray Train notices a dead worker too, but not always: a trainer gone silent is a failure here);
    on a failure, stop the training and free what it held (Ray Train's own cleaner needs the
    dashboard's state API)."""
    from ray.util.placement_group import PlacementGroup, remove_placement_group

    groups_before = set(ray.util.placement_group_table())
    fit = ray.remote(num_cpus=0)(_fit).remote(trainer)
    try:
        started = time.time()
        while not ray.wait([fit], timeout=1.0)[0]:
            if progress is not None:
                progress.show(ray.get(heartbeats.position.remote()))
            servers.check()
            silent, beating = ray.get(heartbeats.silent.remote(stale_after_s))
            if silent:
                raise JobFailed(f"training failed: trainer rank {silent[0]} stopped (no heartbeat for "
                                f"{stale_after_s:.0f} s)")
            if beating < world and time.time() - started > START_TIMEOUT_S:
                raise JobFailed(f"training failed: {world - beating} of {world} trainers did not start "
                                f"within {START_TIMEOUT_S} s")
        if progress is not None:
            progress.show()
        return ray.get(fit)
    except BaseException:
        ray.kill(heartbeats)
        ray.cancel(fit, force=True)
        for group_id, info in ray.util.placement_group_table().items():
            if group_id not in groups_before and info["state"] != "REMOVED" and group_id != servers.group.id.hex():
                remove_placement_group(PlacementGroup(ray.PlacementGroupID(bytes.fromhex(group_id))))
        raise


def _fit(trainer):
    """TorchTrainer.fit in a task, so the driver can watch the graph servers meanwhile; returns the
    failure in one line, naming the trainer that died when Ray Train says which, or the UserError a
    worker raised."""
    try:
        trainer.fit()
    except Exception as e:  # noqa: BLE001 - reported to the driver as the job's error
        user_error = next((f for f in getattr(e, "worker_failures", {}).values() if isinstance(f, UserError)), None)
        if user_error is not None:
            return UserError(str(getattr(user_error, "cause", user_error)))  # a RayTaskError's cause: the message alone
        text = " ".join(str(e).split())
        rank, pid, ip = (re.search(p, text) for p in (r"Rank (\d+)", r"pid=(\d+)", r"node_ip='([^']+)'"))
        if rank and "died" in text:
            where = f" (pid {pid.group(1)} on {ip.group(1)})" if pid and ip else ""
            return f"trainer rank {rank.group(1)}{where} died"
        return f"{type(e).__name__}: {text if len(text) <= 600 else text[:200] + ' ... ' + text[-400:]}"
    return None


@ray.remote(num_cpus=0)
class Heartbeats:
    """Last sign of life of each trainer, sent once a second by a thread of the trainer process, with
    where rank 0 is: {"epoch", "step", "steps", "loss"} (the epoch's mean loss so far)."""

    def __init__(self):
        self.last, self.where = {}, None

    def beat(self, rank: int, where: dict | None = None) -> None:
        self.last[rank] = time.time()
        if rank == 0:
            self.where = where

    def position(self) -> dict | None:
        return self.where

    def silent(self, seconds: float) -> tuple[list[int], int]:
        """The ranks silent for `seconds`, and how many ranks have ever beaten."""
        now = time.time()
        return [rank for rank, t in self.last.items() if now - t > seconds], len(self.last)


def _beat_forever(heartbeats, rank: int, where: dict) -> None:
    while True:
        heartbeats.beat.remote(rank, dict(where))
        time.sleep(1.0)


class _Progress:
    """Prints the epochs rank 0 appends to metrics.jsonl as they come, and a bar of the steps of the
    epoch in progress (on a terminal only)."""

    def __init__(self, path: Path):
        self.path, self.seen, self.bar, self.bar_epoch = path, 0, None, None

    def show(self, where: dict | None = None) -> None:
        if self.path.exists():
            lines = self.path.read_text().splitlines()
            for line in lines[self.seen:]:
                self._close_bar()
                m = json.loads(line)
                val = "".join(f", {k} {v:.4f}" for k, v in m.items() if k.startswith(("recall@", "ndcg@")))
                print(f"epoch {m['epoch'] + 1}: loss {m['loss']:.4f}{val}, {m['edges_per_s']:,.0f} edges/s per "
                      f"trainer, {m['seconds']:.1f} s", flush=True)
            self.seen = len(lines)
        if where and where["epoch"] >= self.seen:  # not an epoch already printed
            if self.bar_epoch != where["epoch"]:
                self._close_bar()
                self.bar_epoch = where["epoch"]
                self.bar = tqdm(total=where["steps"], desc=f"epoch {where['epoch'] + 1}", unit="step", disable=None,
                                leave=False)
            self.bar.n = where["step"]
            self.bar.set_postfix(loss=f"{where['loss']:.4f}")
        elif where is None:  # the job has ended
            self._close_bar()

    def _close_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self.bar, self.bar_epoch = None, None


def _part_config(directory: Path) -> Path:
    configs = sorted(directory.glob("*.json")) if directory.is_dir() else []
    configs = [c for c in configs if c.name != "partition_stats.json"]
    if len(configs) != 1 or not (directory / "partition_stats.json").exists():
        raise UserError(f"train.partitions={directory}: not a partition directory (run `gnnrec partition`)")
    return configs[0]


def _format_plan(job: dict) -> str:
    return "plan: " + ", ".join(f"{k}={v}" for k, v in job.items())


# ---------------------------------------------------------------- the worker

def train_loop(config: dict) -> None:
    import ray.train
    from ray.train.torch import get_device, prepare_model

    from gnnrec.launch.config import Config
    from gnnrec.launch.graph_servers import connect_client
    from gnnrec.partition import dgl_adapter

    cfg = Config.model_validate(config["cfg"])
    t = cfg.train
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(t.torch_threads)
    torch.manual_seed(t.seed)
    where = {"epoch": 0, "step": 0, "steps": 0, "loss": float("nan")}  # for the driver's progress bar
    threading.Thread(target=_beat_forever, args=(config["heartbeats"], rank, where), daemon=True).start()
    device = get_device()
    out, checkpoints = Path(config["out"]), Path(config["checkpoints"])
    graph = connect_client(config["client"])
    try:
        num_users, num_items = graph.num_nodes("user"), graph.num_nodes("item")
        tables = {n: dgl_adapter.dist_embedding(graph, n, t.dim, f"{n}_id") for n in checkpoint.NODE_TYPES}
        module = Recommender(t).to(device)
        dense = list(module.parameters())
        model = prepare_model(module) if dense and world > 1 else module
        dense_opt = torch.optim.Adam(dense, lr=t.dense_lr or t.lr) if dense else None
        sparse_opt = dgl_adapter.sparse_adam(list(tables.values()), t.lr)
        my_edges = dgl_adapter.dist_train_edges(graph, rank, world)
        steps = _agreed_steps(len(my_edges), t.batch_size)
        state = {"epoch": 0, "step": 0, "global_step": 0, "loss_sum": 0.0, "loss_count": 0, "history": []}
        if config["resume"]:
            state, saved = checkpoint.restore(checkpoint.latest(checkpoints), tables, sparse_opt, rank, world)
            module.load_state_dict(saved["model"])
            if dense_opt is not None:
                dense_opt.load_state_dict(saved["optimizer"])
            if rank:
                state["loss_sum"], state["loss_count"] = 0.0, 0  # rank 0 carries the epoch's partial sums
            elif state["history"]:
                (out / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in state["history"]))
        partitions, hard = Path(config["partitions"]), config["hard_negatives"]
        validate = None if t.validate_split == "none" else _validator(graph, module.gnn, tables, rank, world, t,
                                                                      partitions)
        batches = BatchMaker(graph, num_users, num_items, t, partitions, hard, uses_social(module.gnn))
        if hard is not None and state.get("hard_negatives") != str(hard):  # a new round starts here
            state["hard_negatives"], state["round_start_epoch"] = str(hard), state["epoch"]
        steps_run = 0

        def save():
            dense_state = {"model": module.state_dict(),
                           "optimizer": dense_opt.state_dict() if dense_opt is not None else None}
            checkpoint.save(checkpoints, state, tables, sparse_opt, dense_state if rank == 0 else None, rank, world,
                            protect=state.get("best_checkpoint"))

        while state["epoch"] < t.epochs and not state.get("stopped"):
            epoch, started, first = state["epoch"], time.perf_counter(), state["step"]
            order = my_edges[np.random.default_rng([t.seed, epoch, rank]).permutation(len(my_edges))]
            chunks = np.array_split(order, steps)
            rngs = (np.random.default_rng([t.seed, epoch, rank, step]) for step in range(first, steps))
            if hard is not None:  # the curriculum: epoch n of the round adds n - 1 hard negatives
                batches.negatives.num_hard = epoch - state["round_start_epoch"]
            for batch in batches.ahead(chunks[first:], rngs):
                with dgl_adapter.RPC:
                    h0 = _lookup(tables, batch.input_nodes, num_users, device)
                loss = model(batch.to(device), h0)
                if dense_opt is not None:
                    dense_opt.zero_grad()
                sparse_opt.zero_grad()  # else DGL keeps every past step's rows and re-applies their gradients
                loss.backward()
                if dense_opt is not None:
                    dense_opt.step()
                with dgl_adapter.RPC:
                    sparse_opt.step()
                state["loss_sum"] += loss.item()
                state["loss_count"] += 1
                state["step"] += 1
                state["global_step"] += 1
                steps_run += 1
                where.update(epoch=epoch, step=state["step"], steps=steps,
                             loss=state["loss_sum"] / state["loss_count"])
                if t.checkpoint_every and state["global_step"] % t.checkpoint_every == 0 and state["step"] < steps:
                    total, count = _all_sum(state["loss_sum"], state["loss_count"])
                    state["loss_sum"], state["loss_count"] = (total, count) if rank == 0 else (0.0, 0)
                    save()
            total, count = _all_sum(state["loss_sum"], state["loss_count"])
            seconds = time.perf_counter() - started
            metrics = {"epoch": epoch, "step": state["global_step"], "loss": total / max(count, 1),
                       "seconds": seconds, "edges_per_s": sum(len(c) for c in chunks[first:]) / seconds}
            if hard is not None:
                metrics["hard_negatives"] = batches.negatives.num_hard
            if validate is not None and ((epoch + 1) % t.validate_every == 0 or epoch + 1 == t.epochs):
                metrics.update(validate())
                _early_stopping(state, metrics, t)
            state["history"].append(metrics)
            state.update(epoch=epoch + 1, step=0, loss_sum=0.0, loss_count=0)
            if rank == 0:
                with open(out / "metrics.jsonl", "a") as f:
                    f.write(json.dumps(metrics) + "\n")
            if t.record_visits:
                (out / "visits").mkdir(exist_ok=True)
                np.save(out / "visits" / f"rank{rank}_epoch{epoch}.npy", np.concatenate(chunks[first:]))
            save()
            ray.train.report(metrics)
        checksum = float(sum(p.detach().double().sum().item() for p in module.parameters()))
        (out / "ranks").mkdir(exist_ok=True)
        (out / "ranks" / f"rank{rank}.json").write_text(json.dumps(
            {"rank": rank, "world": world, "edges_per_epoch": int(len(my_edges)), "steps_per_epoch": steps,
             "steps_run": steps_run, "global_step": state["global_step"],
             "losses": [m["loss"] for m in state["history"]], "param_checksum": checksum, "device": str(device),
             "node_ip": ray.util.get_node_ip_address(),
             "local_partition": int(graph.get_partition_book().partid)}))
    finally:
        dgl_adapter.disconnect()


def _agreed_steps(num_edges: int, batch_size: int) -> int:
    """Steps per epoch, the same on every trainer: enough batches of `batch_size` for the largest share,
    and never more than the smallest share has edges."""
    need = torch.tensor([-(-num_edges // batch_size), -num_edges], dtype=torch.int64)
    if torch.distributed.is_initialized():
        torch.distributed.all_reduce(need, op=torch.distributed.ReduceOp.MAX)
    return int(max(1, min(need[0].item(), -need[1].item())))


def _all_sum(total: float, count: int) -> tuple[float, int]:
    """(sum, count) over trainers."""
    if not torch.distributed.is_initialized():
        return total, count
    both = torch.tensor([total, count], dtype=torch.float64)
    torch.distributed.all_reduce(both)
    return both[0].item(), int(both[1].item())


def _early_stopping(state: dict, metrics: dict, t) -> None:
    """Track the best validation NDCG@K (its checkpoint becomes the output) and stop after `patience`
    validations without improvement."""
    score = metrics[f"ndcg@{t.validate_k}"]
    if score > state.get("best_score", float("-inf")):
        state["best_score"], state["bad_epochs"] = score, 0
        state["best_checkpoint"] = f"step-{state['global_step']:09d}"  # the checkpoint saved this epoch
    else:
        state["bad_epochs"] = state.get("bad_epochs", 0) + 1
        state["stopped"] = bool(t.patience) and state["bad_epochs"] >= t.patience


def _validator(graph, gnn, tables, rank: int, world: int, t, partitions: Path):
    """A function computing this epoch's validation metrics (the same numbers on every trainer)."""
    from gnnrec.trainer.inference import LayerwiseInference, held_out_edges, sharded_metrics

    inference = LayerwiseInference(graph, gnn, tables, rank, world)
    held_out = held_out_edges(partitions, t.validate_split)
    k = t.validate_k

    def validate() -> dict:
        result = sharded_metrics(graph, inference.run(), inference.shares["user"], held_out, [k])
        return {f"recall@{k}": result[f"recall@{k}"], f"ndcg@{k}": result[f"ndcg@{k}"]}
    return validate


def _lookup(tables: dict, nodes: torch.Tensor, num_users: int, device) -> torch.Tensor:
    """h0 of homogeneous node ids from the distributed user and item tables (rows recorded for the
    sparse optimizer)."""
    users = nodes < num_users
    at = torch.cat([torch.nonzero(users).squeeze(1), torch.nonzero(~users).squeeze(1)])
    rows = torch.cat([tables["user"](nodes[users], device), tables["item"](nodes[~users] - num_users, device)])
    return rows[torch.argsort(at)]


class Recommender(nn.Module):
    """A GNN from the registry and the loss, as one module for DDP; the ID embeddings h0 of the batch's
    input nodes come from outside (rows of the distributed tables, or of a table in memory)."""

    def __init__(self, t):
        super().__init__()
        self.gnn = MODELS[t.model](t.dim, t.layers)
        self.loss, self.l2 = LOSSES[t.loss], t.l2

    def forward(self, batch: Batch, h0: torch.Tensor) -> torch.Tensor:
        h = self.gnn(h0, batch.blocks)
        ego = (h0[batch.users], h0[batch.pos_items], h0[batch.neg_items])
        return self.loss(h[batch.users], h[batch.pos_items], h[batch.neg_items], ego=ego, l2=self.l2)


def _dataset_to_partition_ids(partitions: Path) -> tuple[np.ndarray, np.ndarray]:
    """(user map, item map): dataset id -> partition id (the inverse of orig_nids)."""
    maps = []
    for node_type in ("user", "item"):
        orig = np.load(partitions / "orig_nids" / f"{node_type}.npy")
        inverse = np.empty_like(orig)
        inverse[orig] = np.arange(len(orig))
        maps.append(inverse)
    return maps[0], maps[1]


class BatchMaker:
    """Training-edge ids -> Batch: endpoints, negatives (never the user's positives when asked), blocks."""

    def __init__(self, graph, num_users: int, num_items: int, t, partitions: Path, hard_negatives=None,
                 social: bool = False):
        from gnnrec.partition import dgl_adapter
        from gnnrec.samplers.negatives import NEGATIVES, HardNegatives, WithHard

        self.graph, self.num_users, self.num_items, self.t = graph, num_users, num_items, t
        if t.negatives == "popularity":
            degree = dgl_adapter.dist_node_in_degrees(graph, "item", np.arange(num_items))
            self.negatives = NEGATIVES["popularity"](degree)
        else:
            self.negatives = NEGATIVES[t.negatives](num_items)
        if hard_negatives is not None:
            self.negatives = WithHard(self.negatives, HardNegatives(hard_negatives, num_users, num_items,
                                                                    id_maps=_dataset_to_partition_ids(partitions)))
        self.sampler = None
        if t.sampler == "neighbor" and t.layers:
            from gnnrec.samplers.neighbor import DistNeighborhoods, NeighborSampler
            self.sampler = NeighborSampler(DistNeighborhoods(graph, social), t.fanouts, num_users, num_items,
                                           negatives=self.negatives, num_negatives=t.num_negatives, seed=t.seed)

    def make(self, eids: np.ndarray, rng: np.random.Generator) -> Batch:
        from gnnrec.partition import dgl_adapter
        from gnnrec.samplers.negatives import Positives

        users, items = dgl_adapter.dist_find_edges(self.graph, eids)
        if self.t.exclude_positives:
            their_users, their_items = dgl_adapter.dist_out_neighbors(self.graph, np.unique(users))
            self.negatives.positives = Positives(their_users, their_items, self.num_items)
        if self.sampler is not None:
            self.sampler.rng = rng  # negatives reproducible per step (the servers draw the neighbours)
            return self.sampler.sample(users, items)
        neg = self.negatives.sample(users, items, self.t.num_negatives, rng)
        nodes, inverse = np.unique(np.concatenate([users, self.num_users + items, self.num_users + neg.ravel()]),
                                   return_inverse=True)
        b = len(users)
        local = torch.from_numpy(inverse)
        return Batch(torch.from_numpy(nodes), [], local[:b], local[b:2 * b], local[2 * b:].view(b, -1))

    def ahead(self, chunks, rngs):
        """Batches for the chunks (one random generator each), sampled `prefetch` ahead of the consumer
        in a background thread."""
        made = (self.make(c, rng) for c, rng in zip(chunks, rngs))
        if not self.t.prefetch:
            return made
        from gnnrec.samplers.neighbor import Prefetcher
        return Prefetcher(made, depth=self.t.prefetch)
