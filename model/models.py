"""Recommendation models: a layer stack over blocks, one small class per seed model, and a registry.

Every model is built as `MODELS[name](dim, num_layers, **options)` and called as `model(h0, blocks)`:
h0 [num_input_nodes, dim] are the input nodes' embeddings (rows of the ID tables: fetched from the
graph servers in training, in memory for evaluation; or `NodeInput`), blocks the batch's blocks (first
layer first). It returns the
representations of the last block's dst nodes; a user-item score is their dot product (`score`).
The exception is the untrained `Popularity` baseline, built from item degrees (see its docstring).
`Recommender` joins a model and its loss for training. Pure PyTorch: no DGL, no Ray.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .blocks import Batch, drop_edges, drop_nodes
from .layers import GATConv, GCNConv, LightGCNConv, NGCFConv, PinSageConv, SAGEConv, SocialConv, gather
from .losses import LOSSES, Rows, pair_scores, view_contrast_loss
from .options import check, defaults


def score(users: Tensor, items: Tensor) -> Tensor:
    """Preference score: the dot product of user and item representations (last dimension)."""
    return (users * items).sum(-1)


class NodeInput(nn.Module):
    """Input embeddings h0 of a set of nodes: a learnable ID embedding, projected features, or their sum.

    For a model trained in one process. The distributed trainer does not use it: it fetches h0 rows of
    the ID tables in the graph servers (trainer/row_adam.py); models never see a table, only
    h0. `features` ([num_nodes, f], zero rows for nodes without features) can
    also be passed per call as `feats` (rows for `nodes`), e.g. fetched from a distributed tensor.
    """

    def __init__(self, num_nodes: int, dim: int, features: Optional[Tensor] = None, use_id: bool = True,
                 feat_dim: Optional[int] = None, init_std: float = 0.1):
        super().__init__()
        feat_dim = features.shape[1] if features is not None else feat_dim
        if not use_id and not feat_dim:
            raise ValueError("NodeInput needs ID embeddings, features, or both")
        self.emb = nn.Embedding(num_nodes, dim) if use_id else None
        if self.emb is not None:
            nn.init.normal_(self.emb.weight, std=init_std)
        self.proj = nn.Linear(feat_dim, dim) if feat_dim else None
        self.register_buffer("features", None if features is None else features.float(), persistent=False)

    def forward(self, nodes: Tensor, feats: Optional[Tensor] = None) -> Tensor:
        h = self.emb(nodes) if self.emb is not None else 0
        if self.proj is not None:
            h = h + self.proj(feats if feats is not None else self.features[nodes])
        return h


class FeatureInputs(nn.Module):
    r"""Input embeddings of the node types that have features (`train.inputs`):

    .. math:: h^{(0)}_v = e_v + W_t x_v \;\; (\text{id+features}) \quad\text{or}\quad
              h^{(0)}_v = W_t x_v \;\; (\text{features: inductive, no ID row})

    for a node v of type t with features x_v; a type without features keeps its ID row e_v. No bias: a
    vector shared by every node of a type, propagated with degree normalization, becomes a degree-shaped
    component of every representation (measured, quickstart log, id+features: with a bias validation
    Recall@20 peaked at epoch 3 and fell from 0.366 to 0.285 by epoch 6; without, it rose to 0.388 at 10).
    """

    def __init__(self, feature_dims: dict[str, int], dim: int, use_id: bool):
        super().__init__()
        self.proj = nn.ModuleDict({t: nn.Linear(f, dim, bias=False) for t, f in sorted(feature_dims.items())})
        self.use_id = use_id

    def forward(self, node_type: str, id_rows: Tensor, features: Optional[Tensor]) -> Tensor:
        if node_type not in self.proj:
            return id_rows
        projected = self.proj[node_type](features.to(id_rows.dtype))
        return id_rows + projected if self.use_id else projected


class GNN(nn.Module):
    """A stack of convolutions: h^{l+1} = conv_l(block_l, h^l), then a combination of all layers' outputs.

    residual: h^{l+1} += h^l[:num_dst] where the shapes match (against over-smoothing).
    edge_dropout / node_dropout: drop edges, or src nodes with their messages, in training.
    combine: how the layers' outputs combine: "own" (the model's: the last layer's unless it says
        otherwise) or "mean" (of h^(0..L), LightGCN's; jumping knowledge's mean pooling, Xu et al. 2018:
        the output keeps the node's own ID embedding).
    """

    def __init__(self, convs: list, residual: bool = False, edge_dropout: float = 0.0,
                 node_dropout: float = 0.0, combine: str = "own", head: Optional[nn.Module] = None):
        super().__init__()
        for name, p in (("edge_dropout", edge_dropout), ("node_dropout", node_dropout)):
            if not 0 <= p < 1:
                raise ValueError(f"{name} must be in [0, 1), got {p}")
        if combine not in ("own", "mean"):
            raise ValueError(f"combine must be 'own' or 'mean', got {combine!r}")
        self.convs = nn.ModuleList(convs)
        self.residual, self.edge_dropout, self.node_dropout = residual, edge_dropout, node_dropout
        self.layer_combination, self.head = combine, head

    def forward(self, h0: Tensor, blocks: list) -> Tensor:
        return self.output(self.propagate(h0, blocks))

    def propagate(self, h0: Tensor, blocks: list, noise: float = 0.0) -> list:
        """Every layer's output for the last block's dst nodes, layer 0 (h0) first. `noise` > 0 perturbs
        each layer's output as XSimGCL does: h += sign(h) * eps * r / ||r||, r ~ U(0, 1)^d."""
        if len(blocks) != len(self.convs):
            raise ValueError(f"{type(self).__name__} has {len(self.convs)} layers but got {len(blocks)} blocks")
        n_out = blocks[-1].num_dst if blocks else h0.shape[0]
        # h itself when the outputs are every row (a whole-graph block): a slice's backward would copy it
        out = lambda h: h if len(h) == n_out else h[:n_out]  # noqa: E731
        h, layers = h0, [out(h0)]
        for index, block in enumerate(blocks):
            h = self.layer(index, block, h)
            if noise:
                h = h + torch.sign(h) * F.normalize(torch.rand_like(h), dim=-1) * noise
            layers.append(out(h))
        return layers

    def layer(self, index: int, block, h: Tensor) -> Tensor:
        """Layer `index` alone: the block's dst representations from its src ones (layer-wise inference
        calls this over whole neighbourhoods, one layer at a time)."""
        if self.training:
            block = drop_nodes(drop_edges(block, self.edge_dropout), self.node_dropout)
        out = self.convs[index](block, h)
        return out + h[: block.num_dst] if self.residual and out.shape[1:] == h.shape[1:] else out

    def output(self, layers: list) -> Tensor:
        """The final representation from every layer's output of the same nodes (layer 0 first)."""
        out = self.combine(layers) if self.layer_combination == "own" else layer_mean(layers)
        return self.head(out) if self.head is not None else out

    def combine(self, layers: list) -> Tensor:
        return layers[-1]


def layer_mean(layers: list) -> Tensor:
    # a sum, not torch.stack(layers).mean(0): 18 ms instead of 87-150 ms with its backward
    # (4 layers of a Gowalla batch, 63k x 64, 1 thread)
    return sum(layers[1:], layers[0]) / len(layers)


class LightGCN(GNN):
    """LightGCN: `LightGCNConv` layers, combined with alpha_l = 1/(L+1) (the mean of e^(0..L))."""

    def __init__(self, dim: int, num_layers: int = 3, **opts):
        super().__init__([LightGCNConv() for _ in range(num_layers)], **opts)

    def combine(self, layers):
        return layer_mean(layers)


class NGCF(GNN):
    """NGCF: `NGCFConv` layers; the output concatenates e^(0) with the L2-normalized e^(1..L)
    (dimension dim * (L + 1)), as in the authors' code."""

    def __init__(self, dim: int, num_layers: int = 3, dropout: float = 0.1, **opts):
        super().__init__([NGCFConv(dim, dim, dropout) for _ in range(num_layers)], **opts)

    def combine(self, layers):
        return torch.cat([layers[0]] + [F.normalize(h, dim=-1) for h in layers[1:]], dim=-1)


class GraphSAGE(GNN):
    """GraphSAGE: `SAGEConv` layers (aggr 'mean' or 'pool'), ReLU between layers, optional L2 norm."""

    def __init__(self, dim: int, num_layers: int = 2, aggr: str = "mean", normalize: bool = False, **opts):
        super().__init__([SAGEConv(dim, dim, aggr, act=i < num_layers - 1, normalize=normalize)
                          for i in range(num_layers)], **opts)


class PinSage(GNN):
    """PinSage: `PinSageConv` layers over importance-weighted random-walk neighbourhoods (block.weight),
    then the dense head G2 ReLU(G1 z + g). Trained with the max-margin loss."""

    def __init__(self, dim: int, num_layers: int = 2, hidden: Optional[int] = None, **opts):
        head = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim))
        super().__init__([PinSageConv(dim, dim, hidden) for _ in range(num_layers)], head=head, **opts)


class GAT(GNN):
    """GAT: `GATConv` layers, heads concatenated (ELU) in inner layers and averaged in the last."""

    def __init__(self, dim: int, num_layers: int = 2, heads: int = 4, attn_dropout: float = 0.0,
                 self_loops: bool = True, **opts):
        if dim % heads:
            raise ValueError(f"GAT: dim {dim} must be divisible by heads {heads}")
        convs = [GATConv(dim, dim // heads, heads, True, attn_dropout, self_loops, act=True)
                 for _ in range(num_layers - 1)]
        convs.append(GATConv(dim, dim, heads, False, attn_dropout, self_loops))
        super().__init__(convs, **opts)


class GCN(GNN):
    """GCN: `GCNConv` layers (symmetric normalization with self-loops), ReLU between layers."""

    def __init__(self, dim: int, num_layers: int = 2, **opts):
        super().__init__([GCNConv(dim, dim, act=i < num_layers - 1) for i in range(num_layers)], **opts)


class SocialGCN(LightGCN):
    """SocialGCN: `SocialConv` propagation over interaction and social edges combined (block.etype),
    with optional attention gates on social edges; layers combined as in LightGCN."""

    def __init__(self, dim: int, num_layers: int = 3, attention: bool = True, **opts):
        GNN.__init__(self, [SocialConv(dim, attention) for _ in range(num_layers)], **opts)


class MF(GNN):
    """MF-BPR: no propagation, the representation is the ID embedding itself (num_layers must be 0)."""

    def __init__(self, dim: int, num_layers: int = 0, **opts):
        if num_layers:
            raise ValueError("MF has no layers (train.layers=0)")
        super().__init__([], **opts)


class Popularity(nn.Module):
    """Popularity baseline: every user's score for item i is the item's training degree. Not trained:
    `embeddings()` gives (U [num_users, 1] of ones, I [num_items, 1] = degree) for the evaluator."""

    def __init__(self, num_users: int, item_degree: Tensor):
        super().__init__()
        self.num_users = num_users
        self.register_buffer("item_degree", item_degree.float())

    @classmethod
    def from_interactions(cls, users: Tensor, items: Tensor, num_users: int, num_items: int) -> "Popularity":
        return cls(num_users, torch.bincount(items.long(), minlength=num_items))

    def embeddings(self):
        ones = self.item_degree.new_ones(self.num_users, 1)
        return ones, self.item_degree.unsqueeze(1)


def uses_social(gnn: nn.Module) -> bool:
    """Whether a model propagates over user-user (social) edges too."""
    return isinstance(gnn, SocialGCN)


MODELS = {
    "lightgcn": LightGCN,
    "ngcf": NGCF,
    "graphsage": GraphSAGE,
    "pinsage": PinSage,
    "gat": GAT,
    "gcn": GCN,
    "socialgcn": SocialGCN,
    "mf": MF,
    "popularity": Popularity,
}


def model_options(name: str) -> dict:
    """The options of `MODELS[name]` beside dim and num_layers, with their defaults: the model's own
    and the layer stack's (`GNN`: residual, edge_dropout, node_dropout)."""
    options = {}
    for cls in reversed(MODELS[name].__mro__):
        if issubclass(cls, GNN) and "__init__" in vars(cls):
            options.update(defaults(cls.__init__, skip=("num_layers", "head")))
    return options


def build_model(name: str, dim: int, num_layers: int, options: dict) -> nn.Module:
    """`MODELS[name](dim, num_layers, **options)`; a ValueError names an unknown or mistyped option."""
    return MODELS[name](dim, num_layers, **check(name, model_options(name), options))


def mixed_negatives(layers: list, users: Tensor, pos: Tensor, index: Tensor) -> list:
    r"""MixGCF's synthesized hard negatives (Huang et al., 2021), one per pair from its candidates
    index [B, K], layer by layer: each candidate mixed with the positive, then the mix the user scores
    highest at that layer:

    .. math:: e'^{(l)}_j = \alpha^{(l)} e^{(l)}_i + (1 - \alpha^{(l)}) e^{(l)}_j, \quad \alpha^{(l)} \sim U(0, 1),
              \qquad e^{(l)}_{j^-} = e'^{(l)}_{j^*}, \quad j^* = \arg\max_j \, e^{(l)}_u \cdot e'^{(l)}_j

    layers: every layer's output (`GNN.propagate`); returns the negatives' per-layer rows [B, d], for
    the model's own combination (`GNN.output`). A pair's candidates share alpha (as MixGCF's code), so
    e_u · e'_j = alpha e_u · e_i + (1 - alpha) e_u · e_j and j* is the candidate the user scores highest:
    found from sampled scores without a gradient, then only j*'s rows are mixed (no [B, K, d] tensor
    through autograd; the gradient, through j*'s mix alone, is the same)."""
    rows = torch.arange(len(users), device=users.device)
    negatives = []
    for h in layers:
        alpha = torch.rand(len(users), 1, device=h.device)
        positive = gather(h, pos)
        with torch.no_grad():
            _, scores = pair_scores(gather(h, users), positive, Rows(h, index))
        best = index[rows, scores.argmax(1)]
        negatives.append(alpha * positive + (1 - alpha) * gather(h, best))
    return negatives


class Recommender(nn.Module):
    """A GNN from the registry and the loss, as one module for DDP; the ID embeddings h0 of the batch's
    input nodes come from outside (rows of the distributed tables, or of a table in memory).

    t: the training config section (model, dim, layers, model_options, inputs, loss, loss_options, l2,
    contrast, negative_mixing); feature_dims: {node type: feature width} of the data (for train.inputs).
    `inputs` (FeatureInputs, None for ID rows only) turns a type's ID rows and features into its h0."""

    def __init__(self, train_cfg, feature_dims: Optional[dict] = None):
        super().__init__()
        if train_cfg.inputs != "id" and not feature_dims:
            raise ValueError(f"train.inputs={train_cfg.inputs}: the data has no node features (ingest.item_features, "
                             "ingest.user_features)")
        self.inputs = None if train_cfg.inputs == "id" else FeatureInputs(
            feature_dims, train_cfg.dim, use_id=train_cfg.inputs == "id+features")
        self.gnn = build_model(train_cfg.model, train_cfg.dim, train_cfg.layers, train_cfg.model_options)
        self.loss, self.loss_options, self.l2 = LOSSES[train_cfg.loss], train_cfg.loss_options, train_cfg.l2
        self.contrast, self.negative_mixing = train_cfg.contrast, train_cfg.negative_mixing

    def forward(self, batch: Batch, h0: Tensor) -> Tensor:
        c = self.contrast
        layers = self.gnn.propagate(h0, batch.blocks, noise=c.noise if c.weight else 0.0)
        h, own = self.gnn.output(layers), layers[0]  # own: h0 of the output nodes, all the ego terms read
        ego, neg = (gather(own, batch.users), gather(own, batch.pos_items)), None
        if batch.neg_items is not None:
            index = batch.neg_items.view(len(batch.users), -1)  # [B, n_neg], n_neg >= 1
            ego, neg = (*ego, Rows(own, index)), Rows(h, index)
            if self.negative_mixing:
                neg = self.gnn.output(mixed_negatives(layers, batch.users, batch.pos_items, index))
        u, pos = gather(h, batch.users), gather(h, batch.pos_items)
        loss = self.loss(u, pos, neg, ego=ego, l2=self.l2, **self.loss_options)
        if c.weight:  # XSimGCL: the output and one layer's output, both perturbed, as two views
            for nodes in (batch.users, batch.pos_items):
                nodes = torch.unique(nodes)
                nodes = nodes[torch.randperm(len(nodes), device=nodes.device)[:c.sample]]
                loss = loss + c.weight * view_contrast_loss(h[nodes], layers[c.layer][nodes], c.temperature)
        return loss


def dense_optimizer(module: nn.Module, train_cfg) -> Optional[torch.optim.Optimizer]:
    """Adam over a module's dense weights (None when it has none) at train.dense_lr (null: train.lr),
    with train.dense_l2 as its weight decay."""
    params = list(module.parameters())
    if not params:
        return None
    return torch.optim.Adam(params, lr=train_cfg.dense_lr or train_cfg.lr, weight_decay=train_cfg.dense_l2)
