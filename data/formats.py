"""The readers of the on-disk formats that stages hand each other: one class per directory kind.

    Dataset(path)      `gnnrec ingest` output: meta.json, edges/{split}.parquet, edges/social.parquet,
                       ids/{user,item}.parquet (new id -> raw id), features/ (data/ingest.py writes it)
    Partitions(path)   `gnnrec partition` output: the DGL partition config (*.json), partition_stats.json,
                       orig_nids/{user,item}.npy (partition id -> dataset id), part*/edges/{split}.parquet
                       (held-out edges in partition ids) (partition/writer.py writes it)

A directory that is not what it should be is a UserError naming it. Node types are `gnnrec.NODE_TYPES`.
"""
from __future__ import annotations

import functools
import json
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from gnnrec import UserError, contained

FORMAT, VERSION = "gnnrec-dataset", 1
SPLITS = ("train", "val", "test")
PART_FILES = ("part_graph", "node_feats", "edge_feats")  # what DGL's partition config names for each part
META_KEYS = ("num_users", "num_items", "edges", "social_edges", "edge_columns", "id_types", "feature_dims")


class Dataset:
    def __init__(self, path):
        self.path = Path(path)

    @functools.cached_property
    def meta(self) -> dict:
        """meta.json, checked for completeness and version."""
        try:
            meta = json.loads((self.path / "meta.json").read_text())
        except (OSError, ValueError):
            raise UserError(f"{self.path}: not a gnnrec dataset (no readable meta.json)") from None
        if meta.get("format") != FORMAT or meta.get("version") != VERSION:
            raise UserError(f"{self.path}: dataset format {meta.get('format')} v{meta.get('version')}, "
                            f"expected {FORMAT} v{VERSION}: ingest it again")
        missing = [k for k in META_KEYS if k not in meta]
        if missing:
            raise UserError(f"{self.path}/meta.json: incomplete (no {', '.join(missing)}): ingest it again")
        return meta

    @property
    def num_users(self) -> int:
        return self.meta["num_users"]

    @property
    def num_items(self) -> int:
        return self.meta["num_items"]

    def edges(self, split: str) -> torch.Tensor:
        """[2, E] (user, item) pairs of a split, dataset ids."""
        table = pq.read_table(self.path / "edges" / f"{split}.parquet", columns=["user", "item"])
        return torch.from_numpy(np.stack([table["user"].to_numpy(), table["item"].to_numpy()]))

    def timestamps(self, split: str) -> np.ndarray:
        """The timestamp of each edge of a split (seconds), in the order of `edges`."""
        return pq.read_table(self.path / "edges" / f"{split}.parquet", columns=["timestamp"])["timestamp"].to_numpy()

    def features(self, node_type: str) -> np.ndarray:
        """[n, f] features of every node of a type, in dataset ids (ingest.*_features)."""
        return np.load(self.path / "features" / f"{node_type}.npy")

    def social(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(follower, followee) pairs, or None when the dataset has no social edges."""
        path = self.path / "edges" / "social.parquet"
        if not path.exists():
            return None
        table = pq.read_table(path, columns=["src", "dst"])
        return torch.tensor(table["src"].to_numpy()), torch.tensor(table["dst"].to_numpy())

    def raw_ids(self, node_type: str) -> pa.Array:
        """The input's raw IDs, indexed by dataset id."""
        return pq.read_table(self.path / "ids" / f"{node_type}.parquet", columns=["raw_id"])["raw_id"]


class Partitions:
    def __init__(self, path, key: str = "train.partitions"):
        self.path = Path(path)
        configs = [c for c in sorted(self.path.glob("*.json")) if c.name != "partition_stats.json"]
        if len(configs) != 1 or not (self.path / "partition_stats.json").exists():
            raise UserError(f"{key}={self.path}: not a partition directory (run `gnnrec partition`)")
        self.config = configs[0]  # DGL's partition config, what DistDGL loads

    @functools.cached_property
    def meta(self) -> dict:
        """DGL's partition config, its parts' files checked: each file it names (PART_FILES and any other)
        resolves inside this directory and is there (a job fails on neither after it has started servers)."""
        try:
            meta = json.loads(self.config.read_text())
            parts = [meta[f"part-{i}"] for i in range(meta["num_parts"])]
            files = [part[kind] for part in parts for kind in PART_FILES]
            files += [name for part in parts for kind, name in part.items() if kind not in PART_FILES]
            if not all(isinstance(name, str) for name in files + [meta["graph_name"]]):
                raise TypeError("a file or graph name that is not a string")
        except (ValueError, KeyError, TypeError) as e:
            raise UserError(f"{self.config}: damaged partition config ({type(e).__name__}: {e})") from None
        if not re.fullmatch(r"\w[\w.-]*", meta["graph_name"]):  # jobs name files and shared memory after it
            raise UserError(f"{self.config}: graph_name {meta['graph_name']!r} is not a plain name (a damaged or "
                            "tampered file)")
        for name in files:
            if not contained(self.path, name, self.config).is_file():
                raise UserError(f"{self.path / name}: missing (named by {self.config}; partition again)")
        return meta

    @functools.cached_property
    def stats(self) -> dict:
        return json.loads((self.path / "partition_stats.json").read_text())

    @functools.cache
    def orig_nids(self, node_type: str) -> np.ndarray:
        """Dataset id of every partition id of a node type."""
        return np.load(self.path / "orig_nids" / f"{node_type}.npy")

    @functools.cache
    def partition_ids(self, node_type: str) -> np.ndarray:
        """Partition id of every dataset id of a node type (the inverse of orig_nids)."""
        orig = self.orig_nids(node_type)
        inverse = np.empty_like(orig)
        inverse[orig] = np.arange(len(orig))
        return inverse

    def parts(self, node_type: str) -> np.ndarray:
        """The part of every partition id of a node type (partition ids run part by part)."""
        return np.repeat(np.arange(self.stats["parts"]), [s[f"inner_{node_type}s"] for s in self.stats["per_part"]])

    def clusters(self) -> np.ndarray:
        """Each node's cluster (partition.clusters), users then items by partition id; UserError without."""
        if not self.stats.get("clusters"):
            raise UserError(f"{self.path}: no clusters (partition with partition.clusters=N for train.sampler=cluster)")
        return np.concatenate([np.load(self.path / "clusters" / f"{t}.npy") for t in ("user", "item")])

    def raw_ids(self, dataset: Dataset, node_type: str) -> pa.Array:
        """The input's raw IDs indexed by partition id."""
        return dataset.raw_ids(node_type).take(self.orig_nids(node_type))

    def held_out(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """(user, item) pairs of a held-out split in partition ids, from every part's edges/{split}.parquet."""
        paths = sorted(self.path.glob(f"part*/edges/{split}.parquet"))
        if not paths:
            raise FileNotFoundError(f"no part*/edges/{split}.parquet under {self.path}")
        tables = [pq.read_table(path, columns=["user", "item"]) for path in paths]
        return (np.concatenate([t["user"].to_numpy() for t in tables]),
                np.concatenate([t["item"].to_numpy() for t in tables]))

    def split_edges(self, split: str) -> int:
        return sum(p.get(f"{split}_edges", 0) for p in self.stats["per_part"])
