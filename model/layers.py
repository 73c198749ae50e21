r"""Message-passing layers, one per seed formula, in pure PyTorch over `Block` index tensors.

Every layer is called as `layer(block, h)` with `h` the features of the block's src nodes
([num_src, ...]) and returns the features of its dst nodes ([num_dst, ...]); h[:num_dst] are the dst
nodes' own features. Aggregation is `index_add_` / `scatter_reduce`, so the same code runs on CPU and CUDA.
Notation: N(i) the in-neighbours of i in the block, d_i a degree (`sym_norm`), w_ij the optional
`block.weight` (1 when absent), which every layer multiplies into its aggregation coefficients.
"""
from __future__ import annotations

import warnings
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .blocks import SOCIAL, Block, add_self_loops, sym_norm

warnings.filterwarnings("ignore", "Sparse CSR tensor support is in beta", UserWarning)


# ---- aggregation primitives -----------------------------------------------------------------------

def _expand(index: Tensor, like: Tensor) -> Tensor:
    return index.view(-1, *([1] * (like.dim() - 1))).expand_as(like)


def gather(h: Tensor, index: Tensor) -> Tensor:
    """h[index] (rows, for an index of any shape) by index_select: its backward (index_add_) sums
    repeated rows in a fixed order; advanced indexing's (index_put_ with accumulate) does not with 2+
    CPU threads, and a same-seed run would differ in the 8th digit."""
    return h.index_select(0, index.reshape(-1)).view(*index.shape, *h.shape[1:])


def scatter_sum(values: Tensor, index: Tensor, num: int) -> Tensor:
    """out[n] = sum of values[e] over edges e with index[e] == n."""
    return values.new_zeros((num, *values.shape[1:])).index_add_(0, index, values)


def scatter_max(values: Tensor, index: Tensor, num: int) -> Tensor:
    """out[n] = elementwise max of values[e] over index[e] == n; 0 where n receives nothing."""
    out = values.new_zeros((num, *values.shape[1:]))
    return out.scatter_reduce_(0, _expand(index, values), values, reduce="amax", include_self=False)


def segment_softmax(logits: Tensor, index: Tensor, num: int) -> Tensor:
    """Softmax of logits[e] over the edges sharing the same index[e] (e.g. each dst's incoming edges)."""
    peak = logits.new_full((num, *logits.shape[1:]), float("-inf"))
    peak = peak.scatter_reduce(0, _expand(index, logits), logits, reduce="amax", include_self=True)
    ex = torch.exp(logits - peak[index].detach())
    return ex / gather(scatter_sum(ex, index, num), index).clamp(min=1e-16)


def edge_coef(block: Block, norm: Optional[Tensor] = None) -> Tensor:
    """Aggregation coefficient per edge: `norm` (default sym_norm) times block.weight if present."""
    c = sym_norm(block) if norm is None else norm
    return c if block.weight is None else c * block.weight


def propagate(block: Block, h: Tensor, coef: Tensor) -> Tensor:
    """sum_{j in N(i)} coef_ij h_j for every dst node i.

    With constant coefficients this is one sparse-matrix product A @ h (A[i, j] = coef_ij, CSR; ~7x
    faster than gather + index_add on CPU, forward and backward), and its backward A^T @ grad over the
    block's by-src order (the sampler's thread sorts it; autograd's own transpose of A re-sorted it in
    the step: 0.22 s of a 1.8 s Gowalla step). A block that every layer shares with the same
    coefficients (samplers/neighbor.WholeGraph) builds both matrices once. Coefficients that need a
    gradient (attention) are one head of `attend`.
    """
    if h.dim() != 2:
        return scatter_sum(gather(h, block.src) * coef.unsqueeze(-1), block.dst, block.num_dst)
    if coef.requires_grad:
        return attend(block, coef.unsqueeze(1), h.unsqueeze(1)).squeeze(1)
    adjacency = _matrix(block, "dst", coef, h.dtype)
    if not h.requires_grad:
        return spmm(adjacency, h)
    return _SparseProduct.apply(h, adjacency, _matrix(block, "src", coef, h.dtype))


def _matrix(block: Block, by: str, coef: Tensor, dtype) -> Tensor:
    """The block's sparse CSR matrix with entries `coef`: A (rows: dst nodes) by "dst", A^T by "src".
    Built once per block and coefficients (a shared block's layers pass the same cached sym_norm)."""
    cached = block._matrices.get(by)
    if cached is None or cached[0] is not coef or cached[1].dtype != dtype:
        cached = block._matrices[by] = coef, _csr(block, by, coef.to(dtype))
    return cached[1]


def share_transpose(block: Block) -> None:
    """A block of a whole graph whose every edge also runs the other way (users <-> items): its
    sym_norm adjacency is its own transpose, so `propagate`'s backward reuses the forward's matrix (no
    by-src sort and no second matrix: 2.4 GB of a 100M-edge log's 121M entries)."""
    coef = sym_norm(block)
    block._matrices["src"] = block._matrices["dst"] = coef, _csr(block, "dst", coef)


def _csr(block: Block, by: str, values: Tensor) -> Tensor:
    """A sparse CSR matrix of the block with one entry per edge: [dst, src] by "dst", [src, dst] by "src"."""
    order, crow = block.by_dst() if by == "dst" else block.by_src()
    columns = block.src if by == "dst" else block.dst
    if order is not None:  # samplers emit edges sorted by dst: no gather for the forward's matrix
        columns, values = columns.index_select(0, order), values.index_select(0, order)
    shape = (block.num_dst, block.num_src) if by == "dst" else (block.num_src, block.num_dst)
    return torch.sparse_csr_tensor(crow, columns, values, shape)


def spmm(sparse: Tensor, dense: Tensor) -> Tensor:
    """sparse @ dense, into an empty output in place (torch.addmm ignores its input when beta is 0): on
    CPU `sparse @ dense` fills a zero matrix and copies it into the output before MKL overwrites it, two
    passes over the output that cost ~30% of the product (Gowalla's whole-graph block: ~6 of ~19 ms)."""
    out = dense.new_empty(sparse.shape[0], dense.shape[1])
    return torch.addmm(out, sparse, dense, beta=0, out=out)


class _SparseProduct(torch.autograd.Function):
    """adjacency @ h, with the gradient transposed @ grad (transposed = adjacency^T, given)."""

    @staticmethod
    def forward(ctx, h: Tensor, adjacency: Tensor, transposed: Tensor) -> Tensor:
        ctx.transposed = transposed
        return spmm(adjacency, h)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return spmm(ctx.transposed, grad.contiguous()), None, None


def attend(block: Block, alpha: Tensor, z: Tensor) -> Tensor:
    """out[i, k] = sum_{j in N(i)} alpha_ij^k z_j^k for every dst node i and head k (alpha [E, K], z
    [num_src, K, D]): per head one sparse product with the attention as its entries; the attention's
    gradient grad_i^k . z_j^k is a sampled product at the block's edges (torch.sparse.sampled_addmm).
    No [E, K, D] messages: GAT over Gowalla's whole graph (3 layers, 1 thread) took 20-25 s a forward and
    backward with them (gather, multiply, index_add: 90% of it)."""
    return _Attention.apply(alpha, z, block)


class _Attention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, alpha: Tensor, z: Tensor, block: Block) -> Tensor:
        heads = z.transpose(0, 1).contiguous()  # [K, num_src, D]
        ctx.block = block
        ctx.save_for_backward(alpha, heads)
        return torch.stack([spmm(_csr(block, "dst", alpha[:, k]), heads[k]) for k in range(len(heads))], dim=1)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (alpha, heads), block = ctx.saved_tensors, ctx.block
        grads = grad.transpose(0, 1).contiguous()  # [K, num_dst, D]
        grad_alpha = grad_z = None
        if ctx.needs_input_grad[0]:
            order, _ = block.by_dst()
            pattern = _csr(block, "dst", alpha.new_zeros(block.num_edges))
            sampled = torch.stack([torch.sparse.sampled_addmm(pattern, grads[k], heads[k].T, beta=0).values()
                                   for k in range(len(heads))], dim=1)  # by dst order
            grad_alpha = sampled if order is None else torch.empty_like(sampled).index_copy_(0, order, sampled)
        if ctx.needs_input_grad[1]:
            grad_z = torch.stack([spmm(_csr(block, "src", alpha[:, k]), grads[k]) for k in range(len(heads))], dim=1)
        return grad_alpha, grad_z, None


def weighted_mean(block: Block, h: Tensor) -> Tensor:
    """sum_j w_ij h_j / sum_j w_ij over N(i) (plain mean when the block has no weight)."""
    w = block.weight if block.weight is not None else h.new_ones(block.num_edges)
    total = scatter_sum(w, block.dst, block.num_dst).clamp(min=1e-12)
    return propagate(block, h, w / total[block.dst])


# ---- layers --------------------------------------------------------------------------------------

class LightGCNConv(nn.Module):
    r"""LightGCN (He et al., 2020): a normalized neighbour sum, no weights, no non-linearity.

    .. math:: e_i^{(l+1)} = \sum_{j \in N(i)} \frac{w_{ij}}{\sqrt{d_i}\sqrt{d_j}} e_j^{(l)}

    The model combines layers as :math:`e_i = \sum_{l=0}^{L} \alpha_l e_i^{(l)}`, :math:`\alpha_l = 1/(L+1)`.
    """

    def forward(self, block: Block, h: Tensor) -> Tensor:
        return propagate(block, h, edge_coef(block))


class NGCFConv(nn.Module):
    r"""NGCF (Wang et al., 2019): affinity-aware messages, degree-normalized, LeakyReLU, message dropout.

    .. math:: e_i^{(l+1)} = \mathrm{LeakyReLU}\Big(W_1 e_i + \sum_{j \in N(i)} \frac{w_{ij}}{\sqrt{d_i d_j}}
              \big(W_1 e_j + W_2 (e_j \odot e_i)\big)\Big)

    computed as W1 (e_i + s_i) + W2 (s_i ⊙ e_i) with s_i the normalized neighbour sum (W2 is linear).
    """

    def __init__(self, in_dim: int, out_dim: int, dropout: float = 0.1):
        super().__init__()
        self.w1, self.w2 = nn.Linear(in_dim, out_dim), nn.Linear(in_dim, out_dim)
        for w in (self.w1, self.w2):  # scale-preserving: a random bias would outweigh small embeddings
            nn.init.xavier_uniform_(w.weight)
            nn.init.zeros_(w.bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, block: Block, h: Tensor) -> Tensor:
        s, self_h = propagate(block, h, edge_coef(block)), h[: block.num_dst]
        return self.dropout(F.leaky_relu(self.w1(self_h + s) + self.w2(s * self_h), 0.2))


class SAGEConv(nn.Module):
    r"""GraphSAGE (Hamilton et al., 2017): aggregate neighbours, concat with self, dense layer.

    .. math:: h_{N(i)} = \mathrm{mean}_{j \in N(i)} h_j \;(\text{weighted by } w_{ij})
              \quad\text{or}\quad \max_{j \in N(i)} \sigma(W_{pool} h_j + b)

    .. math:: h_i' = \sigma\big(W [h_i \,\|\, h_{N(i)}]\big), \quad h_i' \leftarrow h_i' / \|h_i'\|_2 \text{ (optional)}
    """

    def __init__(self, in_dim: int, out_dim: int, aggr: str = "mean", act: bool = True, normalize: bool = False):
        super().__init__()
        if aggr not in ("mean", "pool"):
            raise ValueError(f"GraphSAGE aggregator must be 'mean' or 'pool', not {aggr!r}")
        self.aggr, self.act, self.normalize = aggr, act, normalize
        self.pool = nn.Linear(in_dim, in_dim) if aggr == "pool" else None
        self.lin = nn.Linear(2 * in_dim, out_dim)

    def forward(self, block: Block, h: Tensor) -> Tensor:
        if self.aggr == "mean":
            hn = weighted_mean(block, h)
        else:
            hn = scatter_max(gather(F.relu(self.pool(h)), block.src), block.dst, block.num_dst)
        out = self.lin(torch.cat([h[: block.num_dst], hn], dim=-1))
        out = F.relu(out) if self.act else out
        return F.normalize(out, dim=-1) if self.normalize else out


class PinSageConv(nn.Module):
    r"""PinSage convolution (Ying et al., 2018): importance pooling over random-walk neighbours.

    .. math:: n_i = \frac{\sum_{j \in N(i)} \alpha_{ij}\, \mathrm{ReLU}(Q h_j + q)}{\sum_{j \in N(i)} \alpha_{ij}}

    .. math:: z_i = \mathrm{ReLU}\big(W [h_i \,\|\, n_i] + w\big), \quad z_i \leftarrow z_i / \|z_i\|_2

    :math:`\alpha_{ij}` is the random-walk visit count, `block.weight` (uniform when absent).
    """

    def __init__(self, in_dim: int, out_dim: int, hidden: Optional[int] = None):
        super().__init__()
        hidden = hidden or in_dim
        self.q = nn.Linear(in_dim, hidden)
        self.w = nn.Linear(in_dim + hidden, out_dim)

    def forward(self, block: Block, h: Tensor) -> Tensor:
        n = weighted_mean(block, F.relu(self.q(h)))
        return F.normalize(F.relu(self.w(torch.cat([h[: block.num_dst], n], dim=-1))), dim=-1)


class GATConv(nn.Module):
    r"""GAT (Veličković et al., 2018): multi-head attention over each node's in-neighbours.

    .. math:: z_j = W h_j, \quad e_{ij} = \mathrm{LeakyReLU}_{0.2}\big(a_{dst}^\top z_i + a_{src}^\top z_j\big),
              \quad \alpha_{ij} = \frac{w_{ij} \exp e_{ij}}{\sum_{k \in N(i)} w_{ik} \exp e_{ik}}

    .. math:: h_i' = \big\Vert_{k=1}^{K} \sum_j \alpha^k_{ij} z^k_j \text{ (inner layers)}
              \quad\text{or}\quad \frac{1}{K} \sum_{k=1}^{K} \sum_j \alpha^k_{ij} z^k_j \text{ (last layer)}

    With `self_loops` every dst node also attends to itself; `act` applies ELU to the output.
    """

    def __init__(self, in_dim: int, out_dim: int, heads: int = 4, concat: bool = True,
                 attn_dropout: float = 0.0, self_loops: bool = True, act: bool = False):
        super().__init__()
        self.heads, self.out_dim, self.concat, self.self_loops = heads, out_dim, concat, self_loops
        self.act = act
        self.lin = nn.Linear(in_dim, heads * out_dim, bias=False)
        self.a_src = nn.Parameter(torch.empty(heads, out_dim))
        self.a_dst = nn.Parameter(torch.empty(heads, out_dim))
        nn.init.xavier_uniform_(self.a_src)
        nn.init.xavier_uniform_(self.a_dst)
        self.attn_dropout = nn.Dropout(attn_dropout)

    def forward(self, block: Block, h: Tensor, return_attention: bool = False):
        if self.self_loops:
            block = add_self_loops(block)
        z = self.lin(h).view(-1, self.heads, self.out_dim)
        logits = (gather((z * self.a_src).sum(-1), block.src)
                  + gather((z[: block.num_dst] * self.a_dst).sum(-1), block.dst))
        logits = F.leaky_relu(logits, 0.2)
        if block.weight is not None:
            logits = logits + block.weight.clamp(min=1e-12).log().unsqueeze(-1)
        alpha = segment_softmax(logits, block.dst, block.num_dst)  # [E, heads]
        out = attend(block, self.attn_dropout(alpha), z)
        out = out.flatten(1) if self.concat else out.mean(1)
        out = F.elu(out) if self.act else out
        return (out, alpha) if return_attention else out


class GCNConv(nn.Module):
    r"""GCN (Kipf & Welling, 2017): symmetric normalization with self-loops.

    .. math:: h_i' = \sigma\Big(W \sum_{j \in N(i) \cup \{i\}} \frac{w_{ij}}{\sqrt{\hat d_i \hat d_j}} h_j + b\Big),
              \quad \hat d = d + 1

    i.e. :math:`H' = \sigma(\hat D^{-1/2} \hat A \hat D^{-1/2} H W)` with :math:`\hat A = A + I`.
    """

    def __init__(self, in_dim: int, out_dim: int, act: bool = True):
        super().__init__()
        self.lin, self.act = nn.Linear(in_dim, out_dim), act

    def forward(self, block: Block, h: Tensor) -> Tensor:
        loops = add_self_loops(block)
        out = self.lin(propagate(loops, h, edge_coef(loops)))
        return F.relu(out) if self.act else out


class SocialConv(nn.Module):
    r"""SocialGCN propagation: one normalized sum over interaction (user-item) and social (user-user)
    edges combined, with social edges optionally down-weighted by a learned attention gate.

    .. math:: e_i^{(l+1)} = \sum_{j \in N_R(i) \cup N_S(i)} \frac{g_{ij}\, w_{ij}}{\sqrt{d_i d_j}} e_j^{(l)},
              \quad g_{ij} = \begin{cases} 1 & (i,j) \text{ interaction} \\
              \sigma\big(a^\top [e_i \,\|\, e_j] + b\big) & (i,j) \text{ social, with attention} \end{cases}

    d counts both edge types; layers are combined as in LightGCN.
    """

    def __init__(self, dim: int, attention: bool = True):
        super().__init__()
        self.gate = nn.Linear(2 * dim, 1) if attention else None

    def forward(self, block: Block, h: Tensor) -> Tensor:
        coef = edge_coef(block)
        if self.gate is not None and block.etype is not None:
            social = block.etype == SOCIAL
            s, d = block.src[social], block.dst[social]
            g = torch.sigmoid(self.gate(torch.cat([gather(h, d), gather(h, s)], dim=-1))).squeeze(-1)
            coef = coef.masked_scatter(social, coef[social] * g)
        return propagate(block, h, coef)
