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
    out: str = Field("{workdir}/synth", description="output directory of the synthetic Parquet log")
    users: int = Field(10_000, ge=1, description="number of users")
    items: int = Field(5_000, ge=1, description="number of items")
    edges: int = Field(200_000, ge=1, description="interaction rows, repeats included (ingest collapses them)")
    communities: int = Field(16, ge=1, description="planted communities (each user and item belongs to one)")
    in_community: float = Field(0.8, ge=0, le=1, description="share of a user's edges inside its community")
    user_exponent: float = Field(0.9, ge=0, description="Zipf exponent of user activity")
    item_exponent: float = Field(0.9, ge=0, description="Zipf exponent of item popularity")
    timestamps: bool = Field(True, description="write a timestamp column (seconds, spanning one year)")
    drift: float = Field(0.0, ge=0, lt=1, description="tastes move: in this last share of the year a user's "
                         "community is the next one (needs timestamps)")
    weights: bool = Field(False, description="write a weight column (geometric draws, >= 1)")
    social_edges: int = Field(0, ge=0, description="social rows (user_id -> friend_id) to write; 0: none")
    homophily: float = Field(0.8, ge=0, le=1, description="share of social edges inside a community")
    item_feature_dim: int = Field(0, ge=0, description="item features: the item's community centroid plus noise")
    user_feature_dim: int = Field(0, ge=0, description="user features (a profile): the user's community centroid "
                                  "plus noise")
    string_ids: bool = Field(False, description="write IDs as strings ('u12', 'i7') instead of integers")
    chunk_edges: int = Field(1_000_000, ge=1, description="edges generated per chunk (bounds memory)")
    file_edges: int = Field(10_000_000, ge=1, description="edges per Parquet file")
    seed: int = Field(0, description="random seed: the same seed writes the same log")

    @model_validator(mode="after")
    def _check(self):
        if self.drift and not self.timestamps:
            raise ValueError("drift needs timestamps")
        return self


class EdgeInput(Section):
    """A Parquet edge list: a file, a directory of files, a glob, or a filesystem URI."""
    path: str = Field(description="a Parquet file, directory, glob or filesystem URI (s3://, gs://, hdfs://)")
    src_column: str = Field(description="column of the source's raw ID (the user; social: the follower)")
    dst_column: str = Field(description="column of the destination's raw ID (the item; social: the followee)")
    weight_column: Optional[str] = Field(None, description="column of edge weights, >= 0 (null: none); kept "
                                         "for interactions only")
    timestamp_column: Optional[str] = Field(None, description="column of timestamps: integer seconds or a "
                                            "Parquet timestamp (null: none); kept for interactions only")


class InteractionInput(EdgeInput):
    """The interaction log; rows weighing less than `min_weight` are dropped before deduplication."""
    min_weight: Optional[float] = Field(None, description="rows weighing less are dropped (needs weight_column; "
                                        "null: no minimum)")

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
    path: str = Field(description="a Parquet file, directory, glob or filesystem URI")
    id_column: str = Field("id", description="column of the node's raw ID")
    columns: Optional[list[str]] = Field(None, description="numeric feature columns (null: all but id_column)")


class IngestConfig(Section):
    out: str = Field("{workdir}/dataset", description="output dataset directory")
    interactions: InteractionInput = InteractionInput(path="{workdir}/synth/interactions", src_column="user_id",
                                                      dst_column="item_id", timestamp_column="timestamp")
    social: Optional[SocialInput] = None
    user_features: Optional[FeatureInput] = None
    item_features: Optional[FeatureInput] = None
    nulls: Literal["drop", "reject"] = Field("drop", description="edge rows with a null in a read column: dropped "
                                             "(counted in stats.json) or an error")
    duplicate_weight: Literal["max", "sum"] = Field("max", description="weight of a collapsed duplicate edge: "
                                                    "its rows' max or sum")
    duplicate_timestamp: Literal["latest", "earliest"] = Field("latest", description="timestamp of a collapsed "
                                                               "duplicate edge: its rows' latest or earliest")
    min_user_degree: int = Field(0, ge=0, description="k-core: users with fewer distinct items lose their edges, "
                                 "repeated with min_item_degree until none does (0: no minimum)")
    min_item_degree: int = Field(0, ge=0, description="k-core: items with fewer distinct users lose their edges")
    base: Optional[str] = Field(None, description="a dataset this one grows (incremental training): its users "
                                "and items keep their ids, new ones are numbered after them")
    batch_rows: int = Field(1_000_000, ge=1, description="rows per Parquet record batch read (bounds memory)")


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
    method: Literal["ratio", "test_file", "temporal"] = Field("ratio", description="how held-out edges are "
                                                              "chosen (above)")
    ratios: tuple[float, float, float] = Field((0.8, 0.1, 0.1), description="per user: training, validation and "
                                               "test shares (method=ratio)")
    rounding: Literal["at_least_one", "random"] = Field("at_least_one", description="how a user's held-out "
                                                        "counts are rounded (ratios, val_ratio; above)")
    test_path: Optional[str] = Field(None, description="Parquet test edges, raw IDs in the interactions' "
                                     "columns (method=test_file)")
    val_ratio: float = Field(0.0, ge=0, lt=1, description="share of each user's training edges to validation "
                             "(method=test_file)")
    leave_last: int = Field(1, ge=1, description="each user's last edges to test (method=temporal)")
    val_last: int = Field(0, ge=0, description="each user's edges before those to validation (method=temporal)")
    refit: bool = Field(False, description="validation edges train too, the split otherwise unchanged (the same "
                        "test edges): the dataset of run.refit")
    seed: int = Field(0, description="seed of the split's random draws")

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
    out: str = Field("{workdir}/partitions", description="output directory: the partitions in DGL's format")
    dataset: str = Field("{workdir}/dataset", description="the `gnnrec ingest` dataset to partition")
    method: Literal["metis", "random", "random-walk"] = Field(
        "metis", description="DGL's METIS, a hash of the node id, or ours by random walks (graphs too big for METIS)")
    parts: int = Field(1, ge=1, description="K partitions, one per machine of the training job")
    halo_hops: int = Field(1, ge=0, description="hops of other parts' nodes (and, beyond 1, edges) each part "
                           "copies; 0 and 1 write the same")
    walks_per_seed: int = Field(4, ge=1, description="random-walk: walkers started from each cluster seed")
    walk_length: int = Field(8, ge=1, description="random-walk: steps each walker takes")
    restart_prob: float = Field(0.3, ge=0, lt=1, description="random-walk: a step jumps back to the seed with "
                                "this probability")
    mmap: bool = Field(True, description="memory-map the CSR from disk instead of loading it")
    workers: int = Field(0, ge=0, description="Ray tasks for the random walks; 0 = in-process")
    clusters: int = Field(0, ge=0, description="also split the graph into this many clusters with `method`, "
                          "saved per node for train.sampler=cluster (Cluster-GCN); 0: none")
    base: Optional[str] = Field(None, description="partitions of the dataset this one grew from: keep their parts")
    seed: int = Field(0, description="seed of the random and random-walk assignments (and of base's hashing)")


class LaunchConfig(Section):
    """Where the job runs: an embedded local Ray (address null) or an existing cluster."""
    address: Optional[str] = Field(None, description="null = embedded local Ray; 'auto' or ray://host:port")
    num_cpus: Optional[int] = Field(None, ge=1, description="CPUs of the embedded Ray (null = all)")
    health_timeout_s: float = Field(60, gt=0, description="a dead, frozen or stuck server or worker fails the job "
                                    "within this")
    start_timeout_s: float = Field(300, gt=0, description="every worker of a job is up within this (DDP, DistDGL)")


class IvfConfig(Section):
    """infer.index=ivf: an inverted file, k-means cells of the items (ranking/index.py)."""
    lists: Optional[int] = Field(None, ge=1, description="cells (null: 4 sqrt(items), at least 39 items a cell)")
    probes: int = Field(32, ge=1, description="cells searched per user: a probes/lists share of the catalog")


class HnswConfig(Section):
    """infer.index=hnsw: a graph of the items, each linked to `m` near ones (ranking/index.py)."""
    m: int = Field(32, ge=2, description="links per item")
    ef_search: int = Field(256, ge=1, description="candidates a search keeps (more: slower, closer to exact)")
    ef_construction: int = Field(40, ge=1, description="candidates kept while linking an item (build time)")


class InferConfig(Section):
    """Embeddings of every user and item and each user's top-K, from a trained model (`train.out`)."""
    checkpoint: str = Field("{workdir}/train", description="the `gnnrec train` output (train.out) to infer with")
    out: str = Field("{workdir}/infer", description="output directory: users/, items/, topk/ and manifest.json")
    k: int = Field(20, ge=1, description="recommendations per user")
    batch_size: int = Field(4096, ge=1, description="nodes per layer-wise inference batch")
    user_chunk: int = Field(4096, ge=1, description="users scored at once (fewer where their scores "
                            "would exceed 2^27 values: ranking/topk.MAX_SCORES)")
    item_chunk: Optional[int] = Field(None, ge=1, description="score the catalog in shards of this many items")
    users: Optional[int] = Field(None, ge=1, description="top-K for a seeded sample of N users (null: all); "
                                 "embeddings are written for all")
    seed: int = Field(0, description="seed of the `users` sample")
    index: Literal["auto", "exact", "ivf", "hnsw"] = Field(
        "auto", description="top-K by exact scoring of every item, or from a FAISS index of the items (ivf, "
        "hnsw; training items still masked); auto: ivf where the users ranked x items exceed 2e10, else exact")
    ivf: IvfConfig = IvfConfig()
    hnsw: HnswConfig = HnswConfig()
    check_users: int = Field(1000, ge=0, description="an index's top-K against exact top-K for a seeded sample "
                             "of this many users: manifest.json's index_recall")
    related_items: bool = Field(False, description="also every item's top-K items by the same score, the item "
                                "itself excluded: related/")


class MineConfig(Section):
    """Hard negatives from a trained model: items at ranks [lo, hi] of each training user's ranking."""
    checkpoint: str = Field("{workdir}/train", description="the `gnnrec train` output (train.out) to mine with")
    out: str = Field("{workdir}/mined", description="output directory of hard negatives (Parquet: user, item, rank)")
    window: list[float] = Field([0.01, 0.05], description="[lo, hi]: ranks (0 = top), or catalog fractions below 1")
    per_user: int = Field(20, ge=1, description="hard negatives drawn per user from the window")
    seed: int = Field(0, description="seed of the draws: a user's negatives depend on (seed, user) only")

    @model_validator(mode="after")
    def _check(self):
        if len(self.window) != 2 or not 0 <= self.window[0] < self.window[1]:
            raise ValueError("window is [lo, hi] with 0 <= lo < hi")
        return self


class RecommendConfig(Section):
    """Cold start: top-K for a new user from a few of their items (raw IDs), their profile features, or both."""
    checkpoint: str = Field("{workdir}/train", description="the `gnnrec train` output (train.out) to recommend with")
    items: list[str] = Field([], description="raw IDs of the new user's items (never recommended)")
    features: list[float] = Field([], description="the new user's features, in the order of the dataset's "
                                  "user feature columns (ingest.user_features)")
    similar_users: int = Field(20, ge=1, description="a model without a user feature projection: the new user "
                               "starts as the mean of this many training users with the nearest features")
    k: int = Field(20, ge=1, description="recommendations returned")


class EvaluateConfig(Section):
    """Full-ranking evaluation of a trained model (its `train.out` directory) on held-out edges."""
    checkpoint: str = Field("{workdir}/train", description="the `gnnrec train` output (train.out) to evaluate")
    out: str = Field("{workdir}/evaluate", description="output directory of metrics.json")
    split: Literal["val", "test"] = Field("test", description="held-out edges evaluated on: validation or test")
    ks: list[int] = Field([10, 20], description="cut-offs K of the metrics @K (Recall, NDCG, ...)")
    users: Optional[int] = Field(None, ge=1, description="evaluate a seeded sample of N users (null: all)")
    recommendations: Optional[str] = Field(None, description="also evaluate the top-K lists of this `gnnrec infer` output")
    sharded: bool = Field(False, description="rank in the workers of a job over the graph servers, each its share of "
                          "the users, the metrics summed (no process holds the graph or every training pair: for logs "
                          "too large for one process); false: one process")

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
    machine_memory_gb: float = Field(64.0, gt=0, description="memory of each machine, in GiB (2^30 bytes)")
    machines: Optional[int] = Field(None, ge=1, description="default: the fewest whose memory holds the job")
    curve: Optional[str] = Field(None, description="a bench/scale.py scale.json to scale from (null: "
                                 "bench/results/scale.json)")
    topk_curve: Optional[str] = Field(None, description="a bench/topk_index.py result for top-K of every user "
                                      "(null: bench/results/topk_index.json)")

    @field_validator("edges", "users", "items", mode="before")
    @classmethod
    def _whole(cls, value):  # 1e9 (YAML reads it as a string) and 1.0e9 are whole numbers too
        try:
            number = float(value) if isinstance(value, (str, float)) else None
        except ValueError:
            return value
        return int(number) if number is not None and number.is_integer() else value


class RunConfig(Section):
    stages: list[Literal[PIPELINE]] = Field(["synth", "ingest"], description="stages to run, in pipeline order")
    rounds: int = Field(1, ge=1, description="training rounds; each after the first mines hard negatives first")
    round_epochs: int = Field(1, ge=1, description="epochs of each later round")
    refit: bool = Field(False, description="after train, train again from scratch for the epochs validation chose, "
                        "on the training and validation edges (split.refit; outputs beside the first's, named "
                        "<path>-refit); the later stages use that model")
