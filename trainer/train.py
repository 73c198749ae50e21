"""The train stage: DistDGL graph servers + Ray Train workers, each a DistDGL client and a DDP rank.

    driver:  plan -> GraphServers (one per partition) -> TorchTrainer.fit in a task, watched: a dead
             server fails the job with its name within launch.health_timeout_s, never a hang
    worker:  connect -> its share of training edges (local partition first) -> epochs of
             [sample batch (ahead of compute) -> forward -> loss -> DDP backward -> Adam step]

Every training edge is visited exactly once per epoch across trainers; DDP's join() lets trainers
with one batch fewer finish the epoch without hanging the others. Worker summaries (loss, edges,
parameter checksum) go to `{train.out}/ranks/rank{r}.json`, the model to `{train.out}/model.pt`.
"""
from __future__ import annotations

import contextlib
import json
import re
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import ray
import torch
from torch import nn

from gnnrec import JobFailed, UserError, atomic_dir
from gnnrec.trainer.blocks import Batch
from gnnrec.trainer.losses import LOSSES
from gnnrec.trainer.models import MODELS, NodeInput


# ---------------------------------------------------------------- the driver

def train(cfg) -> dict:
    """The stage: validate, start (or attach to) Ray, plan, train; an embedded Ray is stopped after."""
    from gnnrec.launch.cluster import start_ray

    t = cfg.train
    if t.model not in MODELS or t.model == "popularity":
        raise UserError(f"train.model={t.model}: unknown (trainable: {', '.join(m for m in MODELS if m != 'popularity')})")
    part_config = _part_config(cfg.path(t.partitions))
    started = start_ray(cfg.launch)
    try:
        return _train(cfg, part_config)
    finally:
        if started:
            ray.shutdown()


def _train(cfg, part_config: Path) -> dict:
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from gnnrec.launch.cluster import plan
    from gnnrec.launch.graph_servers import GraphServers

    t = cfg.train
    job = plan(part_config, t.trainers_per_partition, t.dim, t.use_gpu)
    print(_format_plan(job))
    out = cfg.path(t.out)
    t0 = time.perf_counter()
    with atomic_dir(out) as tmp_dir, GraphServers(part_config, num_clients=job["trainers"],
                                              start_timeout_s=cfg.launch.health_timeout_s) as servers:
        tmp = tmp_dir.resolve()  # workers run elsewhere: absolute paths only
        heartbeats = Heartbeats.remote()
        trainer = TorchTrainer(
            train_loop,
            train_loop_config={"cfg": cfg.model_dump(mode="json"), "client": servers.client_info, "out": str(tmp),
                               "heartbeats": heartbeats},
            scaling_config=ScalingConfig(num_workers=job["trainers"], use_gpu=job["gpus"] > 0,
                                         resources_per_worker={"CPU": 1}, placement_strategy="SPREAD"),
            torch_config=TorchConfig(backend=job["backend"], timeout_s=int(cfg.launch.health_timeout_s)),
            # a restarted worker could not rejoin: DistDGL servers admit exactly num_clients clients
            run_config=RunConfig(storage_path=str(tmp / ".ray"), name="train",
                                 failure_config=FailureConfig(max_failures=0)),
        )
        error = _watch(trainer, servers, heartbeats, cfg.launch.health_timeout_s / 4,
                       _Progress(tmp / "metrics.jsonl"), job["trainers"])
        ray.kill(heartbeats)
        shutil.rmtree(tmp / ".ray", ignore_errors=True)
        if error:
            raise JobFailed(f"training failed: {error}")
        cfg.save(tmp)
        ranks = [json.loads(p.read_text()) for p in sorted((tmp / "ranks").glob("rank*.json"))]
    return {"out": str(out), **{k: v for k, v in job.items() if k != "backend"}, "epochs": t.epochs,
            "edges_per_epoch": sum(r["edges_per_epoch"] for r in ranks),
            "final_loss": round(float(np.mean([r["losses"][-1] for r in ranks])), 4),
            "seconds": round(time.perf_counter() - t0, 1)}


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
            progress.show()
            servers.check()
            silent, beating = ray.get(heartbeats.silent.remote(stale_after_s))
            if silent:
                raise JobFailed(f"training failed: trainer rank {silent[0]} stopped (no heartbeat for "
                                f"{stale_after_s:.0f} s)")
            if beating < world and time.time() - started > START_TIMEOUT_S:
                raise JobFailed(f"training failed: {world - beating} of {world} trainers did not start "
                                f"within {START_TIMEOUT_S} s")
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
    failure in one line, naming the trainer that died when Ray Train says which."""
    try:
        trainer.fit()
    except Exception as e:  # noqa: BLE001 - reported to the driver as the job's error
        text = " ".join(str(e).split())
        rank, pid, ip = (re.search(p, text) for p in (r"Rank (\d+)", r"pid=(\d+)", r"node_ip='([^']+)'"))
        if rank and "died" in text:
            where = f" (pid {pid.group(1)} on {ip.group(1)})" if pid and ip else ""
            return f"trainer rank {rank.group(1)}{where} died"
        return f"{type(e).__name__}: {text[:500]}"
    return None


@ray.remote(num_cpus=0)
class Heartbeats:
    """Last sign of life of each trainer, sent once a second by a thread of the trainer process."""

    def __init__(self):
        self.last = {}

    def beat(self, rank: int) -> None:
        self.last[rank] = time.time()

    def silent(self, seconds: float) -> tuple[list[int], int]:
        """The ranks silent for `seconds`, and how many ranks have ever beaten."""
        now = time.time()
        return [rank for rank, t in self.last.items() if now - t > seconds], len(self.last)


def _beat_forever(heartbeats, rank: int) -> None:
    while True:
        heartbeats.beat.remote(rank)
        time.sleep(1.0)


class _Progress:
    """Prints the epochs rank 0 appends to metrics.jsonl, as they come."""

    def __init__(self, path: Path):
        self.path, self.seen = path, 0

    def show(self) -> None:
        if self.path.exists():
            lines = self.path.read_text().splitlines()
            for line in lines[self.seen:]:
                m = json.loads(line)
                print(f"epoch {m['epoch'] + 1}: loss {m['loss']:.4f}, {m['edges_per_s']:,.0f} edges/s per trainer, "
                      f"{m['seconds']:.1f} s", flush=True)
            self.seen = len(lines)


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
    threading.Thread(target=_beat_forever, args=(config["heartbeats"], rank), daemon=True).start()
    device = get_device()
    graph = connect_client(config["client"])
    try:
        num_users, num_items = graph.num_nodes("user"), graph.num_nodes("item")
        my_edges = dgl_adapter.dist_train_edges(graph, rank, world)
        model = prepare_model(Recommender(num_users + num_items, t))
        optimizer = torch.optim.Adam(model.parameters(), lr=t.lr)
        batches = BatchMaker(graph, num_users, num_items, t)
        losses, out = [], Path(config["out"])
        for epoch in range(t.epochs):
            started = time.perf_counter()
            rng = np.random.default_rng([t.seed, epoch, rank])
            order = my_edges[rng.permutation(len(my_edges))]
            chunks = [order[s:s + t.batch_size] for s in range(0, len(order), t.batch_size)]
            epoch_loss = []
            with (model.join() if world > 1 else contextlib.nullcontext()):
                for batch in batches.ahead(chunks, rng):
                    loss = model(batch.to(device))
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
                    epoch_loss.append(loss.item())
            losses.append(float(np.mean(epoch_loss)) if epoch_loss else float("nan"))
            if t.record_visits:
                (out / "visits").mkdir(exist_ok=True)
                np.save(out / "visits" / f"rank{rank}_epoch{epoch}.npy", np.concatenate(chunks))
            seconds = time.perf_counter() - started
            metrics = {"epoch": epoch, "loss": losses[-1], "seconds": seconds, "edges_per_s": len(order) / seconds}
            if rank == 0:
                with open(out / "metrics.jsonl", "a") as f:
                    f.write(json.dumps(metrics) + "\n")
            ray.train.report(metrics)
        module = model.module if hasattr(model, "module") else model
        checksum = float(sum(p.detach().double().sum().item() for p in module.parameters()))
        (out / "ranks").mkdir(exist_ok=True)
        (out / "ranks" / f"rank{rank}.json").write_text(json.dumps(
            {"rank": rank, "world": world, "edges_per_epoch": int(len(my_edges)), "losses": losses,
             "param_checksum": checksum, "device": str(device), "node_ip": ray.util.get_node_ip_address(),
             "local_partition": int(graph.get_partition_book().partid)}))
        if rank == 0:
            torch.save(module.state_dict(), out / "model.pt")
    finally:
        dgl_adapter.disconnect()


class Recommender(nn.Module):
    """ID embeddings + a GNN from the registry + the loss, as one module for DDP.

    The ID table is a dense nn.Embedding replicated by DDP on every trainer; sharding it in the graph
    servers (DistEmbedding + sparse optimizer) is the models issue's next step.
    """

    def __init__(self, num_nodes: int, t):
        super().__init__()
        self.input = NodeInput(num_nodes, t.dim)
        self.gnn = MODELS[t.model](t.dim, t.layers)
        self.loss, self.l2 = LOSSES[t.loss], t.l2

    def forward(self, batch: Batch) -> torch.Tensor:
        h0 = self.input(batch.input_nodes)
        h = self.gnn(h0, batch.blocks)
        ego = (h0[batch.users], h0[batch.pos_items], h0[batch.neg_items])
        return self.loss(h[batch.users], h[batch.pos_items], h[batch.neg_items], ego=ego, l2=self.l2)


class BatchMaker:
    """Training-edge ids -> Batch: endpoints, negatives (never the user's positives when asked), blocks."""

    def __init__(self, graph, num_users: int, num_items: int, t):
        from gnnrec.partition import dgl_adapter
        from gnnrec.samplers.negatives import NEGATIVES

        self.graph, self.num_users, self.num_items, self.t = graph, num_users, num_items, t
        if t.negatives == "popularity":
            degree = dgl_adapter.dist_node_in_degrees(graph, "item", np.arange(num_items))
            self.negatives = NEGATIVES["popularity"](degree)
        else:
            self.negatives = NEGATIVES[t.negatives](num_items)
        self.sampler = None
        if t.sampler == "neighbor" and t.layers:
            from gnnrec.samplers.neighbor import DistNeighborhoods, NeighborSampler
            self.sampler = NeighborSampler(DistNeighborhoods(graph), t.fanouts, num_users, num_items,
                                           negatives=self.negatives, num_negatives=t.num_negatives, seed=t.seed)

    def make(self, eids: np.ndarray, rng) -> Batch:
        from gnnrec.partition import dgl_adapter
        from gnnrec.samplers.negatives import Positives

        users, items = dgl_adapter.dist_find_edges(self.graph, eids)
        if self.t.exclude_positives:
            their_users, their_items = dgl_adapter.dist_out_neighbors(self.graph, np.unique(users))
            self.negatives.positives = Positives(their_users, their_items, self.num_items)
        if self.sampler is not None:
            return self.sampler.sample(users, items)  # draws the negatives too
        neg = self.negatives.sample(users, items, self.t.num_negatives, rng)
        nodes, inverse = np.unique(np.concatenate([users, self.num_users + items, self.num_users + neg.ravel()]),
                                   return_inverse=True)
        b = len(users)
        local = torch.from_numpy(inverse)
        return Batch(torch.from_numpy(nodes), [], local[:b], local[b:2 * b], local[2 * b:].view(b, -1))

    def ahead(self, chunks, rng):
        """Batches for the chunks, sampled `prefetch` ahead of the consumer in a background thread."""
        made = (self.make(c, rng) for c in chunks)
        if not self.t.prefetch:
            return made
        from gnnrec.samplers.neighbor import Prefetcher
        return Prefetcher(made, depth=self.t.prefetch)
