"""Model and loss options from the config reach what they name; unknown or mistyped ones are refused."""
import pytest
import torch

from gnnrec import UserError
from gnnrec.launch.config import load_config
from gnnrec.model.blocks import Batch, graph_edges
from gnnrec.model.losses import view_contrast_loss
from gnnrec.model.models import Recommender, build_model, dense_optimizer, mixed_negatives, model_options

from test_models import N, SOCIAL, UI, N_USERS, sampled_blocks

# Every documented option, with a value that is not its default.
OPTIONS = [
    ("lightgcn", "residual", True), ("lightgcn", "edge_dropout", 0.5), ("lightgcn", "node_dropout", 0.5),
    ("graphsage", "aggr", "pool"), ("graphsage", "normalize", True),
    ("gat", "heads", 2), ("gat", "attn_dropout", 0.5), ("gat", "self_loops", False),
    ("socialgcn", "attention", False), ("ngcf", "dropout", 0.5), ("pinsage", "hidden", 4),
    ("gcn", "residual", True), ("graphsage", "combine", "mean"), ("pinsage", "combine", "mean"),
]


def train_mode_output(name, options):
    """The model's training-mode output on a fixed graph, weights and dropout draws seeded alike."""
    src, dst, etype = graph_edges(UI[0], UI[1], N_USERS, *SOCIAL)
    blocks = sampled_blocks(src, dst, etype, weight=torch.linspace(0.5, 1.5, len(src)))
    torch.manual_seed(0)
    model = build_model(name, 8, 2, options).train()
    h0 = torch.randn(N, 8, generator=torch.Generator().manual_seed(1))
    return model(h0, blocks)


@pytest.mark.parametrize("name, key, value", OPTIONS)
def test_each_option_changes_the_model(name, key, value):
    assert key in model_options(name)
    assert not torch.allclose(train_mode_output(name, {key: value}), train_mode_output(name, {}))


def test_layer_mean_is_the_mean_of_every_layer():
    src, dst, etype = graph_edges(UI[0], UI[1], N_USERS)
    blocks = sampled_blocks(src, dst, etype)
    gnn = build_model("graphsage", 8, 2, {"combine": "mean"}).eval()
    h0 = torch.randn(N, 8)
    layers = gnn.propagate(h0, blocks)
    assert torch.allclose(gnn(h0, blocks), (layers[0] + layers[1] + layers[2]) / 3)
    assert torch.equal(build_model("graphsage", 8, 2, {}).eval().output(layers), layers[-1])
    with pytest.raises(ValueError, match="combine must be 'own' or 'mean'"):
        build_model("gcn", 8, 2, {"combine": "max"})


def test_options_travel_from_the_config_to_the_model_and_loss():
    cfg = load_config(None, ["train.model=gat", "train.model_options.heads=2", "train.model_options.residual=true",
                             "train.loss=max_margin", "train.loss_options.margin=0.3"])
    rec = Recommender(cfg.train)
    assert rec.gnn.convs[0].heads == 2 and rec.gnn.residual is True
    assert rec.loss_options == {"margin": 0.3}


def test_dense_weights_get_their_learning_rate_and_l2_from_the_config():
    cfg = load_config(None, ["train.model=graphsage", "train.lr=0.05", "train.dense_lr=0.01", "train.dense_l2=0.5"])
    rec = Recommender(cfg.train)
    opt = dense_optimizer(rec, cfg.train)
    assert opt.param_groups[0]["lr"] == 0.01 and opt.param_groups[0]["weight_decay"] == 0.5
    before = [p.detach().clone() for p in rec.parameters()]
    for p in rec.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()  # no loss gradient: the decay's alone, 0.5 w, and Adam's first step is lr * its sign
    assert all(torch.allclose(p, b - 0.01 * b.sign(), atol=1e-4) for p, b in zip(rec.parameters(), before))
    t = load_config(None, []).train
    assert dense_optimizer(Recommender(t), t) is None  # LightGCN has no dense weights


@pytest.mark.parametrize("override, words", [
    ("train.model_options.residuals=true", ["train.model_options", "no option 'residuals'", "residual"]),
    ("train.model_options.edge_dropout=yes", ["train.model_options", "'edge_dropout' takes a float"]),
    ("train.model_options.residual=1", ["'residual' takes a bool"]),
    ("train.model_options.edge_dropout=1.5", ["edge_dropout must be in [0, 1)"]),
    ("train.loss_options.margin=0.3", ["train.loss_options", "bpr has no option 'margin'"]),
    ("train.model=gat train.model_options.heads=0", ["gat cannot be built with {'heads': 0}"]),
    ("train.model=pinsage train.model_options.hidden=-1", ["pinsage cannot be built", "negative dimension"]),
    ("train.contrast.weight=0.1", ["contrast.layer=1 needs"]),
])
def test_unknown_or_mistyped_option_is_refused_naming_it(override, words):
    with pytest.raises(UserError) as e:
        load_config(None, ["train.layers=0", "train.model=mf", "train.sampler=none", "train.fanouts=[]", override]
                    if "contrast" in override else override.split())
    assert all(w in str(e.value) for w in words), str(e.value)


def test_contrastive_views_add_infonce_of_the_output_and_a_layer():
    cfg = load_config(None, ["train.contrast.weight=0.5", "train.contrast.noise=0", "train.dim=8"])
    src, dst, etype = graph_edges(UI[0], UI[1], N_USERS)
    batch = Batch(torch.arange(N), sampled_blocks(src, dst, etype), users=torch.tensor([0, 1, 1]),
                  pos_items=torch.tensor([2, 2, 1]), neg_items=torch.tensor([1, 0, 2]))
    h0 = torch.randn(N, 8, requires_grad=True)
    with_views = Recommender(cfg.train)
    plain = Recommender(cfg.train.model_copy(update={"contrast": cfg.train.contrast.model_copy(update={"weight": 0.0})}))
    layers = with_views.gnn.propagate(h0, batch.blocks)
    out = with_views.gnn.output(layers)
    views = sum(view_contrast_loss(out[n], layers[1][n], 0.2) for n in (torch.tensor([0, 1]), torch.tensor([1, 2])))
    loss = with_views(batch, h0)
    assert loss.item() == pytest.approx(plain(batch, h0).item() + 0.5 * views.item(), rel=1e-5)
    loss.backward()
    assert h0.grad.abs().sum() > 0
    noisy = with_views.gnn.propagate(h0, batch.blocks, noise=0.1)
    assert torch.equal(noisy[0], layers[0]) and not torch.allclose(noisy[2], layers[2])


def test_mixed_negatives_mix_each_candidate_with_the_positive_and_keep_the_users_best():
    torch.manual_seed(0)
    layers = [torch.randn(6, 4), torch.randn(6, 4)]
    users, pos, index = torch.tensor([0, 1]), torch.tensor([2, 3]), torch.tensor([[4, 5], [5, 2]])
    torch.manual_seed(1)
    got = mixed_negatives(layers, users, pos, index)
    torch.manual_seed(1)
    for h, negative in zip(layers, got):
        alpha = torch.rand(2, 1, 1)
        for b in range(2):
            mixes = [alpha[b, 0, 0] * h[pos[b]] + (1 - alpha[b, 0, 0]) * h[j] for j in index[b]]
            best = max(mixes, key=lambda m: float(h[users[b]] @ m))
            assert torch.allclose(negative[b], best)


def test_negative_mixing_reaches_the_loss_and_the_candidates():
    cfg = load_config(None, ["train.negative_mixing=true", "train.num_negatives=2", "train.dim=8"])
    src, dst, etype = graph_edges(UI[0], UI[1], N_USERS)
    batch = Batch(torch.arange(N), sampled_blocks(src, dst, etype), users=torch.tensor([0, 1]),
                  pos_items=torch.tensor([2, 2]), neg_items=torch.tensor([1, 0, 0, 1]))
    h0 = torch.randn(N, 8, requires_grad=True)
    mixing = Recommender(cfg.train)
    plain = Recommender(cfg.train.model_copy(update={"negative_mixing": False}))
    loss = mixing(batch, h0)
    assert loss.item() != pytest.approx(plain(batch, h0).item())
    loss.backward()
    assert h0.grad[[0, 1]].abs().sum() > 0
    with pytest.raises(UserError, match="negatives=in_batch has none"):
        load_config(None, ["train.negative_mixing=true", "train.negatives=in_batch"])


@pytest.mark.parametrize("model", ["lightgcn", "socialgcn", "gat", "lightgcn train.negative_mixing=true"])
def test_a_step_is_bitwise_reproducible_with_two_threads(model):
    """The same batch and weights give the same gradients to the last bit with 2 torch threads (with
    h[index] gathers, whose backward accumulates repeated rows in any order, they did not)."""
    import numpy as np

    from gnnrec.launch.config import load_config
    from gnnrec.model.models import Recommender
    from gnnrec.samplers.negatives import UniformNegatives
    from gnnrec.samplers.neighbor import NeighborSampler
    from gnnrec.samplers.neighborhoods import CSRNeighborhoods
    rng = np.random.default_rng(0)
    users, items = rng.integers(0, 3000, 60_000), rng.integers(0, 2000, 60_000)
    graph = CSRNeighborhoods.from_edges(users, items, 3000, 2000, social=tuple(rng.integers(0, 3000, (2, 8000))))
    t = load_config(None, ["workdir=/tmp/unused", f"train.model={model.split()[0]}", *model.split()[1:],
                           "train.layers=2", "train.fanouts=[5, 5]"]).train
    batch = NeighborSampler(graph, t.fanouts, 3000, 2000, UniformNegatives(2000), 4).sample(users[:4096], items[:4096])
    torch.manual_seed(0)
    recommender, table = Recommender(t), torch.randn(5000, t.dim) * 0.1
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        grads = []
        for _ in range(4):
            torch.manual_seed(1)  # the same mixing draws (MixGCF) in every step
            h0 = table[batch.input_nodes].clone().requires_grad_()
            recommender.zero_grad()
            recommender(batch, h0).backward()
            grads.append([h0.grad] + [p.grad.clone() for p in recommender.parameters()])
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for g in grads[1:] for a, b in zip(g, grads[0]))


def test_feature_inputs_add_to_or_replace_the_id_rows_of_the_types_with_features():
    t = load_config(None, ["train.inputs=id+features"]).train
    rows, x = torch.randn(4, t.dim), torch.randn(4, 3)
    both = Recommender(t, {"item": 3})
    assert torch.allclose(both.inputs("item", rows, x), rows + both.inputs.proj["item"](x))
    assert both.inputs("user", rows, None) is rows  # no user features: the ID rows
    alone = Recommender(t.model_copy(update={"inputs": "features"}), {"item": 3})
    assert torch.allclose(alone.inputs("item", rows, x), alone.inputs.proj["item"](x))
    assert Recommender(t.model_copy(update={"inputs": "id"}), {"item": 3}).inputs is None
    with pytest.raises(ValueError, match="train.inputs=features: the data has no node features"):
        Recommender(t.model_copy(update={"inputs": "features"}), {})
