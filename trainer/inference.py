"""Layer-wise inference over a DistGraph, and validation metrics computed in user shards.

Every node's representation, exactly as a full-graph forward computes it, without any machine holding
the graph or a whole layer: for l = 1..L, each trainer takes its share of the users and items (its own
partition's nodes first), builds in node batches the block of their whole in-neighbourhood (fanout -1),
reads layer l-1 of those neighbours from the servers' distributed tensors and writes layer l of its
nodes back. Then each node's final representation is the model's `output` of its layers 0..L.
Layer 0 is the ID tables themselves.

Validation ranks every item for each trainer's share of the users (items fetched in full: one
[num_items, d] matrix per trainer), with the users' training items masked, and sums the metrics across
trainers (`RankingStats.all_reduce`).
"""
from __future__ import annotations

import contextlib
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from gnnrec.trainer.metrics import RankingStats, evaluate
from gnnrec.trainer.models import uses_social

NODE_TYPES = ("user", "item")


class LayerwiseInference:
    """Final representations of all nodes in distributed tensors `self.final[node type]`.

    graph: a DistGraph; gnn: a model of trainer/models.py; tables: {node type: DistEmbedding}.
    The distributed tensors are created once (collectively, by every trainer) and reused per call.
    """

    def __init__(self, graph, gnn, tables: dict, rank: int, world: int, batch_size: int = 4096):
        from gnnrec.partition import dgl_adapter
        from gnnrec.samplers.neighbor import DistNeighborhoods, NeighborSampler

        self.graph, self.gnn, self.batch_size = graph, gnn, batch_size
        self.num_users, self.num_items = graph.num_nodes("user"), graph.num_nodes("item")
        self.sampler = NeighborSampler(DistNeighborhoods(graph, uses_social(gnn)), [], self.num_users, self.num_items)
        self.shares = {t: dgl_adapter.dist_node_split(graph, t, rank, world) for t in NODE_TYPES}
        dim = tables["user"].embedding_dim
        num_layers = len(gnn.convs)
        with torch.no_grad():
            out_dim = gnn.output([torch.zeros(1, dim)] * (num_layers + 1)).shape[1]
        self.layers = [{t: tables[t].weight for t in NODE_TYPES}] + [
            {t: dgl_adapter.dist_tensor(graph, t, dim, f"layer{l}_{t}") for t in NODE_TYPES}
            for l in range(1, num_layers + 1)]
        self.final = {t: dgl_adapter.dist_tensor(graph, t, out_dim, f"final_{t}") for t in NODE_TYPES}

    def _rows(self, layer: dict, nodes: np.ndarray) -> torch.Tensor:
        """Rows of homogeneous node ids (users, then items offset by num_users) from a layer's tensors."""
        users = nodes < self.num_users
        first = layer["user"][torch.from_numpy(nodes[users])]
        out = first.new_empty((len(nodes), first.shape[1]))
        out[torch.from_numpy(users)] = first
        out[torch.from_numpy(~users)] = layer["item"][torch.from_numpy(nodes[~users] - self.num_users)]
        return out

    def _batches(self):
        for node_type in NODE_TYPES:
            offset = 0 if node_type == "user" else self.num_users
            share = self.shares[node_type]
            for start in range(0, len(share), self.batch_size):
                ids = share[start:start + self.batch_size]
                yield node_type, ids, ids + offset

    @torch.no_grad()
    def run(self) -> dict:
        was_training = self.gnn.training
        self.gnn.eval()
        self.layer_seconds = []
        for index in range(len(self.gnn.convs)):
            started = time.perf_counter()
            for node_type, ids, nodes in self._batches():
                block, src_nodes = self.sampler.node_block(nodes, fanout=-1)
                h = self.gnn.layer(index, block, self._rows(self.layers[index], src_nodes))
                self.layers[index + 1][node_type][torch.from_numpy(ids)] = h
            _barrier()
            self.layer_seconds.append(time.perf_counter() - started)
        for node_type, ids, nodes in self._batches():
            layers = [self._rows(layer, nodes) for layer in self.layers]
            self.final[node_type][torch.from_numpy(ids)] = self.gnn.output(layers)
        _barrier()
        self.gnn.train(was_training)
        return self.final


def _barrier() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.barrier()


def held_out_edges(partitions: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(user, item) held-out pairs of a split in partition ids, from every part's edges/{split}.parquet."""
    users, items = [], []
    paths = sorted(Path(partitions).glob(f"part*/edges/{split}.parquet"))
    if not paths:
        raise FileNotFoundError(f"no part*/edges/{split}.parquet under {partitions}")
    for path in paths:
        table = pq.read_table(path, columns=["user", "item"])
        users.append(table["user"].to_numpy())
        items.append(table["item"].to_numpy())
    empty = np.zeros(0, np.int64)
    return np.concatenate(users or [empty]), np.concatenate(items or [empty])


def sharded_metrics(graph, final: dict, my_users: np.ndarray, held_out: tuple, ks) -> dict:
    """Full-ranking metrics of `my_users` against every item, summed across trainers."""
    num_users, num_items = graph.num_nodes("user"), graph.num_nodes("item")
    position = np.full(num_users, -1, np.int64)
    position[my_users] = np.arange(len(my_users))
    users, items = held_out
    keep = position[users] >= 0
    truth = torch.from_numpy(np.stack([position[users[keep]], items[keep]]))
    known = known_items(graph, my_users)
    U = final["user"][torch.from_numpy(my_users)]
    I = final["item"][torch.arange(num_items)]
    stats = RankingStats(ks, num_items)
    evaluate(U, I, truth, known, stats=stats)
    return stats.all_reduce().result()


# ---------------------------------------------------------------- jobs over a trained model (infer, mine)

@contextlib.contextmanager
def model_job(cfg, trained, train_dir: Path, out: Path, loop, loop_config: dict):
    """Start (or attach to) Ray, serve the partitions the model in `train_dir` (training config
    `trained`, see evaluate.trained_model) was trained on, run `loop` in one worker per trainer of the
    original job writing into a temporary `out`, then yield that temporary directory for the caller to
    finish. `out` appears complete or not at all."""
    from gnnrec import atomic_dir
    from gnnrec.launch.cluster import plan, ray_session
    from gnnrec.trainer.train import _format_plan, _part_config, run_workers

    part_config = _part_config(trained.path(trained.train.partitions))
    with ray_session(cfg.launch):
        job = plan(part_config, trained.train.trainers_per_partition, trained.train.dim, trained.train.use_gpu)
        print(_format_plan(job))
        with atomic_dir(out) as tmp:
            run_workers(cfg, part_config, job, loop,
                        {**loop_config, "out": str(tmp.resolve()), "model": str((train_dir / "model").resolve()),
                         "trained": trained.model_dump(mode="json"),
                         "dataset": str(trained.path(trained.partition.dataset).resolve())}, tmp)
            yield tmp
            cfg.save(tmp)


def connect_model(config: dict):
    """Worker side of model_job: (graph, Recommender in eval mode, ID tables restored from the
    checkpoint, LayerwiseInference, rank, world)."""
    import ray.train

    from gnnrec.launch.config import Config
    from gnnrec.launch.graph_servers import connect_client
    from gnnrec.partition import dgl_adapter
    from gnnrec.trainer import checkpoint
    from gnnrec.trainer.train import Recommender

    t = Config.model_validate(config["trained"]).train
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(t.torch_threads)
    graph = connect_client(config["client"])
    tables = {n: dgl_adapter.dist_embedding(graph, n, t.dim, f"{n}_id") for n in NODE_TYPES}
    _, dense = checkpoint.restore(Path(config["model"]), tables, None, rank, world)
    model = Recommender(t)
    model.load_state_dict(dense["model"])
    model.eval()
    batch_size = Config.model_validate(config["cfg"]).infer.batch_size
    return graph, model, tables, LayerwiseInference(graph, model.gnn, tables, rank, world, batch_size), rank, world


def raw_ids(dataset: Path, partitions: Path, node_type: str):
    """The input's raw IDs indexed by partition id (a pyarrow array): ids/ maps dataset ids to raw
    IDs, orig_nids/ partition ids to dataset ids."""
    raw = pq.read_table(Path(dataset) / "ids" / f"{node_type}.parquet", columns=["raw_id"])["raw_id"]
    return raw.take(np.load(Path(partitions) / "orig_nids" / f"{node_type}.npy"))


def known_items(graph, users: np.ndarray) -> torch.Tensor:
    """[2, E] (position in `users`, item) of the users' training items (to mask from rankings)."""
    from gnnrec.partition import dgl_adapter

    position = np.full(graph.num_nodes("user"), -1, np.int64)
    position[users] = np.arange(len(users))
    src, dst = dgl_adapter.dist_out_neighbors(graph, users)
    return torch.from_numpy(np.stack([position[src], dst]))
