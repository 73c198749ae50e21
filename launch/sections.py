"""The typed sections of the config, one per stage (and Ray's launch settings; train's in
launch/train_sections.py): each forbids unknown keys, and its field validators make an error name the dotted key."""
from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from gnnrec.launch.stages import PIPELINE


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class SynthConfig(Section):
    """Synthetic interaction log: power-law degrees and planted communities."""
    out: str = "{workdir}/synth"
    users: int = Field(10_000, ge=1)
    items: int = Field(5_000, ge=1)
    edges: int = Field(200_000, ge=1)
    communities: int = Field(16, ge=1)
    in_community: float = Field(0.8, ge=0, le=1, description="share of a user's edges inside its community")
    user_exponent: float = Field(0.9, ge=0, description="Zipf exponent of user activity")
    item_exponent: float = Field(0.9, ge=0, description="Zipf exponent of item popularity")
    timestamps: bool = True
    drift: float = Field(0.0, ge=0, lt=1, description="tastes move: in this last share of the year a user's "
                         "community is the next one (needs timestamps)")
    weights: bool = False
    social_edges: int = Field(0, ge=0)
    homophily: float = Field(0.8, ge=0, le=1, description="share of social edges inside a community")
    item_feature_dim: int = Field(0, ge=0, description="item features: the item's community centroid plus noise")
    user_feature_dim: int = Field(0, ge=0, description="user features (a profile): the user's community centroid "
                                  "plus noise")
    string_ids: bool = False
    chunk_edges: int = Field(1_000_000, ge=1, description="edges generated per chunk (bounds memory)")
    file_edges: int = Field(10_000_000, ge=1, description="edges per Parquet file")
    seed: int = 0

    @model_validator(mode="after")
    def _check(self):
        if self.drift and not self.timestamps:
            raise ValueError("drift needs timestamps")
        return self


class EdgeInput(Section):
    """A Parquet edge list: a file, a directory of files, a glob, or a filesystem URI."""
    path: str
    src_column: str
    dst_column: str
    weight_column: Optional[str] = None
    timestamp_column: Optional[str] = None


class InteractionInput(EdgeInput):
    """The interaction log; rows weighing less than `min_weight` are dropped before deduplication."""
    min_weight: Optional[float] = None

    @field_validator("min_weight")
    @classmethod
    def _needs_weight(cls, min_weight, info):  # a field validator, so the error names the key
        if min_weight is not None and not info.data.get("weight_column"):
            raise ValueError("needs ingest.interactions.weight_column")
        return min_weight


class SocialInput(EdgeInput):
    """The social graph; with `min_overlap`, a tie is kept only when its users' training items overlap
    that much: noisy ties (friends who share no taste) leave before training."""
    overlap: Literal["jaccard", "count"] = Field("jaccard", description="|A∩B|/|A∪B| or |A∩B| of their training items")
    min_overlap: float = Field(0, ge=0, description="ties overlapping less are dropped (0: every tie is kept)")

    @field_validator("min_overlap")
    @classmethod
    def _jaccard_at_most_one(cls, min_overlap, info):  # a field validator, so the error names the key
        if info.data.get("overlap") == "jaccard" and min_overlap > 1:
            raise ValueError("a Jaccard overlap is at most 1")
        return min_overlap


class FeatureInput(Section):
    """A Parquet table of node features keyed by raw id; `columns` defaults to every other column."""
    path: str
    id_column: str = "id"
    columns: Optional[list[str]] = None


class IngestConfig(Section):
    out: str = "{workdir}/dataset"
    interactions: InteractionInput = InteractionInput(path="{workdir}/synth/interactions", src_column="user_id",
                                                      dst_column="item_id", timestamp_column="timestamp")
    social: Optional[SocialInput] = None
    user_features: Optional[FeatureInput] = None
    item_features: Optional[FeatureInput] = None
    nulls: Literal["drop", "reject"] = "drop"
    duplicate_weight: Literal["max", "sum"] = "max"
    duplicate_timestamp: Literal["latest", "earliest"] = "latest"
    min_user_degree: int = Field(0, ge=0, description="k-core: users with fewer distinct items lose their edges, "
                                 "repeated with min_item_degree until none does (0: no minimum)")
    min_item_degree: int = Field(0, ge=0, description="k-core: items with fewer distinct users lose their edges")
    base: Optional[str] = Field(None, description="a dataset this one grows (incremental training): its users "
                                "and items keep their ids, new ones are numbered after them")
    batch_rows: int = Field(1_000_000, ge=1)


class SplitConfig(Section):
    """How held-out edges are chosen.

    ratio: per user, a random `ratios[1]` share to validation and `ratios[2]` to test, each user's count
      rounded by `rounding`: "at_least_one" (RecBole's): rounded down, but a user with a spare training
      edge gives at least one to each non-empty held-out split (on a log of light users the held-out
      shares grow: users of 3 edges give one of each); "random": rounded up with probability equal to
      its fraction (the shares hold on the whole log; a light user may hold out nothing). Either way a
      user keeps at least one training edge.
    test_file: `test_path` holds the test edges (raw ids, same columns); `val_ratio` of each user's
      training edges go to validation.
    temporal: per user, the last `leave_last` edges to test and the `val_last` before them to validation.
    """
    method: Literal["ratio", "test_file", "temporal"] = "ratio"
    ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)
    rounding: Literal["at_least_one", "random"] = "at_least_one"
    test_path: Optional[str] = None
    val_ratio: float = Field(0.0, ge=0, lt=1)
    leave_last: int = Field(1, ge=1)
    val_last: int = Field(0, ge=0)
    refit: bool = Field(False, description="validation edges train too, the split otherwise unchanged (the same "
                        "test edges): the dataset of run.refit")
    seed: int = 0

    @field_validator("ratios")
    @classmethod
    def _check_ratios(cls, ratios):  # a field validator, so the error names split.ratios
        if any(r < 0 for r in ratios) or abs(sum(ratios) - 1) > 1e-6:
            raise ValueError("ratios must be three non-negative shares summing to 1")
        return ratios

    @model_validator(mode="after")
    def _check(self):
        if self.method == "test_file" and not self.test_path:
            raise ValueError("method=test_file needs test_path")
        return self


class PartitionConfig(Section):
    """K partitions in DGL's format; `method` names a partitioner in the registry."""
    out: str = "{workdir}/partitions"
    dataset: str = "{workdir}/dataset"
    method: Literal["metis", "random", "random-walk"] = "metis"
    parts: int = Field(1, ge=1)
    halo_hops: int = Field(1, ge=0)
    walks_per_seed: int = Field(4, ge=1)
    walk_length: int = Field(8, ge=1)
    restart_prob: float = Field(0.3, ge=0, lt=1)
    mmap: bool = Field(True, description="memory-map the CSR from disk instead of loading it")
    workers: int = Field(0, ge=0, description="Ray tasks for the random walks; 0 = in-process")
    clusters: int = Field(0, ge=0, description="also split the graph into this many clusters with `method`, "
                          "saved per node for train.sampler=cluster (Cluster-GCN); 0: none")
    base: Optional[str] = Field(None, description="partitions of the dataset this one grew from: keep their parts")
    seed: int = 0


class LaunchConfig(Section):
    """Where the job runs: an embedded local Ray (address null) or an existing cluster."""
    address: Optional[str] = Field(None, description="null = embedded local Ray; 'auto' or ray://host:port")
    num_cpus: Optional[int] = Field(None, ge=1, description="CPUs of the embedded Ray (null = all)")
    health_timeout_s: float = Field(60, gt=0, description="a dead, frozen or stuck server or worker fails the job "
                                    "within this")
    start_timeout_s: float = Field(300, gt=0, description="every worker of a job is up within this (DDP, DistDGL)")


class InferConfig(Section):
    """Embeddings of every user and item and each user's top-K, from a trained model (`train.out`)."""
    checkpoint: str = "{workdir}/train"
    out: str = "{workdir}/infer"
    k: int = Field(20, ge=1, description="recommendations per user")
    batch_size: int = Field(4096, ge=1, description="nodes per layer-wise inference batch")
    user_chunk: int = Field(4096, ge=1, description="users scored at once (fewer where their scores "
                            "would exceed 2^27 values: ranking/topk.MAX_SCORES)")
    item_chunk: Optional[int] = Field(None, ge=1, description="score the catalog in shards of this many items")
    users: Optional[int] = Field(None, ge=1, description="top-K for a seeded sample of N users (null: all); "
                                 "embeddings are written for all")
    seed: int = 0


class MineConfig(Section):
    """Hard negatives from a trained model: items at ranks [lo, hi] of each training user's ranking."""
    checkpoint: str = "{workdir}/train"
    out: str = "{workdir}/mined"
    window: list[float] = Field([0.01, 0.05], description="[lo, hi]: ranks (0 = top), or catalog fractions below 1")
    per_user: int = Field(20, ge=1, description="hard negatives drawn per user from the window")
    seed: int = 0

    @model_validator(mode="after")
    def _check(self):
        if len(self.window) != 2 or not 0 <= self.window[0] < self.window[1]:
            raise ValueError("window is [lo, hi] with 0 <= lo < hi")
        return self


class RecommendConfig(Section):
    """Cold start: top-K for a new user from a few of their items (raw IDs), their profile features, or both."""
    checkpoint: str = "{workdir}/train"
    items: list[str] = []
    features: list[float] = Field([], description="the new user's features, in the order of the dataset's "
                                  "user feature columns (ingest.user_features)")
    similar_users: int = Field(20, ge=1, description="a model without a user feature projection: the new user "
                               "starts as the mean of this many training users with the nearest features")
    k: int = Field(20, ge=1)


class EvaluateConfig(Section):
    """Full-ranking evaluation of a trained model (its `train.out` directory) on held-out edges."""
    checkpoint: str = "{workdir}/train"
    out: str = "{workdir}/evaluate"
    split: Literal["val", "test"] = "test"
    ks: list[int] = [10, 20]
    users: Optional[int] = Field(None, ge=1, description="evaluate a seeded sample of N users (null: all)")
    recommendations: Optional[str] = Field(None, description="also evaluate the top-K lists of this `gnnrec infer` output")

    @model_validator(mode="after")
    def _check(self):
        if not self.ks or min(self.ks) < 1:
            raise ValueError("ks must be positive cut-offs")
        return self


class PlanConfig(Section):
    """`gnnrec plan`: the machines, partitions, memory and hours of a job of a given size, before its data
    exists: the memory model `gnnrec train` plans with, and the costs bench/scale.py measured (`curve`,
    its scale.json; default bench/results/scale.json), scaled from the curve's largest size. The train
    section gives the job's dim, batch, negatives and trainers per machine."""
    edges: int = Field(1_000_000_000, ge=1, description="rows of the interaction log")
    users: Optional[int] = Field(None, ge=1, description="default edges / 20, as bench/scale.py's logs")
    items: Optional[int] = Field(None, ge=1, description="default edges / 50")
    machine_memory_gb: float = Field(64.0, gt=0)
    machines: Optional[int] = Field(None, ge=1, description="default: the fewest whose memory holds the job")
    curve: Optional[str] = None

    @field_validator("edges", "users", "items", mode="before")
    @classmethod
    def _whole(cls, value):  # 1e9 (YAML reads it as a string) and 1.0e9 are whole numbers too
        try:
            number = float(value) if isinstance(value, (str, float)) else None
        except ValueError:
            return value
        return int(number) if number is not None and number.is_integer() else value


class RunConfig(Section):
    stages: list[Literal[PIPELINE]] = ["synth", "ingest"]
    rounds: int = Field(1, ge=1, description="training rounds; each after the first mines hard negatives first")
    round_epochs: int = Field(1, ge=1, description="epochs of each later round")
    refit: bool = Field(False, description="after train, train again from scratch for the epochs validation chose, "
                        "on the training and validation edges (split.refit; outputs beside the first's, named "
                        "<path>-refit); the later stages use that model")
