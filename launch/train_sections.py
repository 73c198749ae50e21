"""The train section of the config (launch/sections.py has the others) and its samplers' and objectives'
sub-sections."""
from __future__ import annotations

from typing import Any, Literal, Optional, Union

from pydantic import Field, ValidationInfo, field_validator, model_validator

from gnnrec.launch.sections import Section


class ContrastConfig(Section):
    """XSimGCL's contrastive views, added to any loss: InfoNCE between the output and layer `layer`'s
    output of the batch's users (and of its items), every layer's output perturbed by `noise`."""
    weight: float = Field(0.0, ge=0, description="0: off; XSimGCL uses 0.05-0.2")
    noise: float = Field(0.1, ge=0, description="eps, the perturbation's norm")
    temperature: float = Field(0.2, gt=0, description="the InfoNCE temperature")
    layer: int = Field(1, ge=1, description="the layer whose output is the second view")
    sample: int = Field(4096, ge=2, description="users (and items) of a batch in the InfoNCE, at most")


class RandomWalkConfig(Section):
    """PinSage's random-walk blocks (train.sampler=random_walk, samplers/random_walk.py): each dst node's
    `neighbors` most visited nodes of the other type, over `walks` walks of up to `length` traversals."""
    walks: int = Field(20, ge=1, description="walks from each dst node of a training block")
    length: int = Field(3, ge=1, description="traversals per walk, at most")
    restart_prob: float = Field(0.5, ge=0, lt=1, description="a walk stops before each later traversal with this")
    neighbors: int = Field(10, ge=1, description="T: the most visited nodes that become a node's in-neighbours")
    inference_walks: int = Field(100, ge=1, description="walks per node in layer-wise inference and evaluation")


class NodeSamplingConfig(Section):
    """FastGCN's layer-wise importance sampling (train.sampler=node, samplers/importance.py): each layer
    draws `nodes` nodes of the whole graph with probability proportional to their column's squared norm
    in the normalized adjacency; a dst node hears the drawn ones among its neighbours, importance-weighted."""
    nodes: int = Field(4096, ge=1, description="nodes drawn per layer (with replacement)")


class SaintConfig(Section):
    """GraphSAINT's node sampler (train.sampler=saint, samplers/subgraph.py): the subgraph of `nodes` nodes drawn
    as node sampling's and the batch's, each message divided by its sender's inclusion probability."""
    nodes: int = Field(8192, ge=1, description="nodes drawn per batch (with replacement)")


class TimeDecayConfig(Section):
    """Recent interactions count more: every sampled interaction edge weighs exp(-rate * age) in the blocks
    (Block.weight, multiplied into every model's coefficients), its age the time from its timestamp to the
    newest training timestamp, in `unit`s. Needs timestamps (ingest.interactions.timestamp_column)."""
    rate: float = Field(0.0, ge=0, description="lambda per unit of age; 0: off")
    unit: Literal["second", "hour", "day", "week"] = Field("day", description="unit of an edge's age (`rate` "
                                                           "is per unit)")


class TrainConfig(Section):
    """Mini-batch training: Ray Train workers are DistDGL clients and DDP ranks."""
    out: str = Field("{workdir}/train", description="output directory: model/, metrics.jsonl, curves.png, "
                     "config.yaml")
    partitions: str = Field("{workdir}/partitions", description="the `gnnrec partition` output to train on")
    model: str = Field("lightgcn", description="lightgcn, ngcf, graphsage, pinsage, gat, gcn, socialgcn or mf "
                       "(model/models.py)")
    dim: int = Field(64, ge=1, description="embedding dimension")
    layers: int = Field(2, ge=0, description="message-passing layers (mf: always 0, its fanouts [])")
    model_options: dict[str, Any] = Field({}, description="the model's own options, e.g. residual, edge_dropout, "
                                          "node_dropout, combine, aggr, normalize, heads, attn_dropout, attention, "
                                          "dropout")
    inputs: Literal["id", "id+features", "features"] = Field(
        "id", description="a node's input embedding where its type has features (ingest.*_features): its ID "
        "embedding, plus its projected features, or its projected features alone (types without: the ID)")
    sampler: Literal["neighbor", "random_walk", "node", "cluster", "saint", "full_graph", "none"] = Field(
        "neighbor", description="blocks: uniform `fanouts` per layer, random walks (`random_walk`, pinsage's default), "
        "FastGCN's importance sampling (`node`), Cluster-GCN's subgraph of the batch's clusters (`cluster`; "
        "needs partition.clusters), GraphSAINT's of sampled nodes (`saint`) or the whole graph every step "
        "(`full_graph`: one partition, large batches; 4x the sampled path's edges/s at 10M rows)")
    random_walk: RandomWalkConfig = RandomWalkConfig()
    node_sampling: NodeSamplingConfig = NodeSamplingConfig()
    saint: SaintConfig = SaintConfig()
    time_decay: TimeDecayConfig = TimeDecayConfig()
    fanouts: list[int] = Field([10, 5], description="sampler=neighbor: neighbours drawn per relation, per layer "
                               "(first layer first); -1: all")
    batch_size: int = Field(1024, ge=1, description="positive (user, item) pairs per step of each trainer")
    epochs: int = Field(1, ge=1, description="epochs in all (a resumed run continues up to this)")
    max_steps_per_epoch: Optional[int] = Field(None, ge=1, description="end each epoch after N steps (null: every "
                                               "edge once); for benchmarks and smoke runs on large logs")
    lr: float = Field(1e-3, gt=0, description="learning rate of the ID embeddings (and of dense weights)")
    dense_lr: Optional[float] = Field(None, gt=0, description="learning rate of dense weights (null: lr)")
    l2: float = Field(1e-4, ge=0, description="L2 penalty on the batch's input (layer-0) embeddings, in every loss")
    dense_l2: float = Field(0.0, ge=0, description="L2 penalty on dense weights (Adam's weight_decay)")
    loss: Literal["bpr", "max_margin", "cosine_contrastive", "softmax", "alignment_uniformity"] = Field(
        "bpr", description="the training loss (formulas in model/losses.py)")
    loss_options: dict[str, Any] = Field({}, description="the loss's own options, e.g. margin, negative_weight, "
                                         "temperature, gamma")
    contrast: ContrastConfig = ContrastConfig()
    negatives: Literal["uniform", "popularity", "in_batch"] = Field(
        "uniform", description="negative items: uniform, by degree^0.75, or the batch's other pairs' positives")
    num_negatives: int = Field(1, ge=1, description="negatives per positive pair")
    negative_mixing: bool = Field(False, description="MixGCF: each pair's num_negatives negatives are candidates "
                                  "for one negative synthesized from them and the positive, layer by layer")
    init_from: Optional[str] = Field(None, description="a `gnnrec train` output to start from: its weights and "
                                     "its users' and items' rows (a dataset grown by ingest.base)")
    init_new_from_neighbours: bool = Field(True, description="init_from: new rows start at their old neighbours' mean")
    replay: float = Field(1.0, gt=0, le=1, description="init_from: an epoch visits the edges newer than its model's "
                          "and this share of the others, drawn anew each epoch (1: every edge)")
    hard_negatives: Optional[str] = Field(None, description="a `gnnrec mine` output: epoch n adds n - 1 of them per pair")
    exclude_positives: bool = Field(True, description="a user's negatives are never its training items")
    trainers_per_partition: int = Field(1, ge=1, description="Ray Train workers per partition (machine), each a "
                                        "DistDGL client and DDP rank")
    use_gpu: Optional[bool] = Field(None, description="null = use GPUs when the cluster has them")
    torch_threads: Optional[int] = Field(None, ge=1, description="torch threads per worker (null: the machine's "
                                         "cores shared by its workers, one left to each sampler thread)")
    prefetch: int = Field(2, ge=0, description="mini-batches sampled ahead of compute")
    record_visits: bool = Field(False, description="write the training edge ids each trainer visits (audit)")
    tensorboard: Union[bool, str] = Field(False, description="TensorBoard event files of each epoch's loss, "
                                          "validation metrics, edges/s and phases: true for {train.out}/tensorboard, "
                                          "or a directory")
    checkpoints: str = Field("{workdir}/checkpoints", description="kept across runs: resume reads them")
    checkpoint_every: int = Field(0, ge=0, description="also checkpoint every N steps (0: at epoch ends only)")
    resume: bool = Field(False, description="continue from the newest checkpoint in `checkpoints`")
    max_failures: int = Field(1, ge=0, description="restarts from the last checkpoint after a trainer or server dies")
    validate_split: Literal["val", "test", "none"] = Field("val", description="held-out edges validated per epoch")
    validate_k: int = Field(20, ge=1, description="validation reports Recall/NDCG@K; early stopping watches NDCG@K")
    validate_every: int = Field(1, ge=1, description="validate every N epochs (and after the last)")
    validate_users: Optional[int] = Field(None, ge=1, description="validate on a seeded sample of N users (null: all)")
    patience: int = Field(0, ge=0, description="stop after this many validations without a better NDCG@K (0: never)")
    max_minutes: Optional[float] = Field(None, gt=0, description="stop after the first epoch that ends past this "
                                         "many minutes of training (validation not counted; null: never)")
    seed: int = Field(0, description="seed of the ID tables, batches, negatives and neighbourhoods")

    @field_validator("model_options")
    @classmethod
    def _check_model_options(cls, options, info: ValidationInfo):  # a field validator: errors name the key
        if options and {"model", "dim", "layers"} <= info.data.keys():
            from gnnrec.model.models import MODELS, build_model  # torch, only when options are given
            if info.data["model"] in MODELS:
                try:
                    build_model(info.data["model"], info.data["dim"], info.data["layers"], options)
                except (TypeError, RuntimeError, ZeroDivisionError) as e:  # torch's or a layer's own check
                    raise ValueError(f"{info.data['model']} cannot be built with {options}: {e}") from None
        return options

    @field_validator("loss_options")
    @classmethod
    def _check_loss_options(cls, options, info: ValidationInfo):
        if options and "loss" in info.data:
            from gnnrec.model.losses import LOSSES
            from gnnrec.model.options import check, defaults
            check(info.data["loss"], defaults(LOSSES[info.data["loss"]], skip=("neg", "ego", "l2")), options)
        return options

    @model_validator(mode="before")
    @classmethod
    def _model_defaults(cls, data):
        """PinSage trains on random-walk blocks unless train.sampler says otherwise; MF has no layers, so
        the layers and fanouts a config gives a GNN (the quickstart's [10, 5]) do not apply to it."""
        if isinstance(data, dict) and data.get("model") == "pinsage" and "sampler" not in data:
            data = {**data, "sampler": "random_walk"}
        if isinstance(data, dict) and data.get("model") == "mf":
            data = {**data, "layers": 0, "fanouts": []}
        return data

    @model_validator(mode="after")
    def _check(self):
        if self.contrast.weight and not 1 <= self.contrast.layer <= self.layers:
            raise ValueError(f"contrast.layer={self.contrast.layer} needs 1 <= it <= layers={self.layers}")
        if self.contrast.weight and self.model == "ngcf":
            raise ValueError("contrast: ngcf's output (every layer concatenated) is no view of one layer")
        if self.negative_mixing and self.negatives == "in_batch":
            raise ValueError("negative_mixing mixes sampled candidates: negatives=in_batch has none")
        if self.sampler == "neighbor" and len(self.fanouts) != self.layers:
            raise ValueError(f"fanouts has {len(self.fanouts)} entries but layers={self.layers}")
        if any(f == 0 or f < -1 for f in self.fanouts):
            raise ValueError("fanouts are positive, or -1 for all neighbours")
        return self
