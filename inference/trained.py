"""A `gnnrec train` output, read: `TrainOutput` (its directory: config, checkpoint, partitions, dataset)
and `TrainedModel` (the model loaded in this process, with the embeddings of every node, for evaluate
and recommend; infer and mine apply it across the job's workers instead, inference/model_job.py)."""
from __future__ import annotations

import functools
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from gnnrec import NODE_TYPES, UserError
from gnnrec.data.formats import Dataset, Partitions
from gnnrec.launch.config import load_config
from gnnrec.model.blocks import full_graph_blocks, graph_edges
from gnnrec.model.models import Recommender, uses_social
from gnnrec.samplers.neighborhoods import CSRNeighborhoods
from gnnrec.trainer.batches import block_sampler, time_decay
from gnnrec.trainer.checkpoint import load_model, load_tables


class TrainOutput:
    """A `gnnrec train` output directory: config.yaml (the training config), model/ (the checkpoint the
    run chose), metrics.jsonl, curves.png, ranks/. `key` names the config key that pointed here."""

    def __init__(self, path, key: str = "checkpoint"):
        self.path = Path(path)
        self.model_dir = self.path / "model"
        if not (self.model_dir / "state.json").exists() or not (self.path / "config.yaml").exists():
            raise UserError(f"{key}={self.path}: not a training output (no model/ and config.yaml; run `gnnrec train`)")
        self.config = load_config(self.path / "config.yaml")

    @functools.cached_property
    def partitions(self):
        return Partitions(self.config.path(self.config.train.partitions))

    @functools.cached_property
    def dataset(self):
        return Dataset(self.config.path(self.config.partition.dataset))

    def model(self, partitions=None):
        """The Recommender its config describes, with the dense weights; UserError if they do not fit.
        `partitions`: its partitions where this process has them resolved (a Ray worker's working directory
        is not the driver's, so the config's relative paths do not hold there)."""
        stats = (partitions or self.partitions).stats
        return load_model(self.model_dir, self.config.train, f"{self.path}", stats.get("feature_dims"))

    def tables(self) -> dict[str, torch.Tensor]:
        """The whole ID tables in partition ids, in this process; UserError if their dim is not the config's
        or their rows are not the partitions' nodes (partitions made again after training)."""
        tables = load_tables(self.model_dir)
        if tables["user"].shape[1] != self.config.train.dim:
            raise UserError(f"{self.path}: ID tables of dim {tables['user'].shape[1]}, config says "
                            f"{self.config.train.dim}")
        for node_type, table in tables.items():
            nodes = len(self.partitions.orig_nids(node_type))
            if len(table) != nodes:
                raise UserError(f"{self.path}: a model of {len(table)} {node_type}s, its partitions "
                                f"{self.partitions.path} have {nodes} (made again since it was trained? train again)")
        return tables


def input_embeddings(tables: dict, orig_user: np.ndarray, orig_item: np.ndarray) -> torch.Tensor:
    """h0 of every node in dataset ids (users, then items): the ID tables re-ordered from partition ids
    (orig_*: the dataset id of each partition id, Partitions.orig_nids)."""
    h0 = torch.empty(len(orig_user) + len(orig_item), tables["user"].shape[1])
    h0[torch.from_numpy(orig_user)] = tables["user"]
    h0[len(orig_user) + torch.from_numpy(orig_item)] = tables["item"]
    return h0


def social_edges(dataset: Dataset, model: Recommender):
    """The dataset's (follower, followee) pairs when the model propagates over them, else None."""
    return dataset.social() if uses_social(model.gnn) else None


class Interactions(NamedTuple):
    """The graph a model propagates over, in dataset ids: (user, item) pairs, the number of users (item
    rows follow theirs), and, when used, (follower, followee) pairs and the pairs' timestamps."""
    users: torch.Tensor
    items: torch.Tensor
    num_users: int
    social: tuple[torch.Tensor, torch.Tensor] | None = None
    timestamp: np.ndarray | None = None


def propagate_all(model: Recommender, h0: torch.Tensor, graph: Interactions, num_layers: int, train_cfg=None,
                  time_decay=None) -> torch.Tensor:
    """Final representations of all nodes: the model's GNN over the whole graph, every pair both ways;
    for a model trained on random-walk blocks (`train_cfg`, the training config: train.sampler), over
    random-walk blocks of that graph, and with `time_decay` (trainer/batches.time_decay), the pairs
    weighted by the age of their timestamp."""
    num_nodes, (users, items, num_users, social, timestamp) = h0.shape[0], graph
    if train_cfg is not None and (train_cfg.sampler == "random_walk" or time_decay is not None) and num_layers:
        num_items = num_nodes - num_users
        csr = CSRNeighborhoods.from_edges(users.numpy(), items.numpy(), num_users, num_items,
                                          None if social is None else tuple(x.numpy() for x in social), timestamp)
        sampler = block_sampler(train_cfg, csr, num_users, num_items, inference=True, time_decay=time_decay)
        blocks = [sampler.graph_block(num_nodes) for _ in range(num_layers)]
    else:
        src, dst, etype = graph_edges(users, items, num_users, *(social or ()))
        blocks = full_graph_blocks(src, dst, num_nodes, num_layers, etype=etype) if num_layers else []
    model.eval()
    with torch.no_grad():
        return model.gnn(h0, blocks)


class TrainedModel:
    """A `gnnrec train` output loaded in this process: the model with its dense weights, h0 of every node
    in dataset ids, the training edges (and social ones, for a social model) of its dataset."""

    def __init__(self, train_dir, key: str = "evaluate.checkpoint"):
        output = TrainOutput(train_dir, key)
        self.config, self.dataset, self.model = output.config, output.dataset, output.model()
        partitions = output.partitions
        if tuple(len(partitions.orig_nids(n)) for n in NODE_TYPES) != (self.dataset.num_users, self.dataset.num_items):
            raise UserError(f"{key}={train_dir}: trained on another dataset than {self.dataset.path}")
        self.h0 = input_embeddings(output.tables(), *(partitions.orig_nids(n) for n in NODE_TYPES))
        if self.model.inputs is not None:  # h0 from ID rows and features (train.inputs), in dataset ids
            with torch.no_grad():
                nu = self.dataset.num_users
                for node_type, rows in (("user", slice(0, nu)), ("item", slice(nu, None))):
                    features = torch.from_numpy(self.dataset.features(node_type)) \
                        if node_type in self.model.inputs.proj else None
                    self.h0[rows] = self.model.inputs(node_type, self.h0[rows], features)
        self.train = self.dataset.edges("train")
        self.social = social_edges(self.dataset, self.model)
        self.time_decay = time_decay(self.config.train, partitions)  # the edge weights it trained with
        self.timestamp = self.dataset.timestamps("train") if self.time_decay else None

    def embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(U, I) in dataset ids: h0 propagated over the training graph."""
        nu = self.dataset.num_users
        train_cfg = self.config.train
        graph = Interactions(self.train[0], self.train[1], nu, self.social, self.timestamp)
        h = propagate_all(self.model, self.h0, graph, train_cfg.layers, train_cfg, self.time_decay)
        return h[:nu], h[nu:]
