"""The house rules that code can check: the pure-PyTorch layer imports on a machine without DGL or Ray."""
import subprocess
import sys

BLOCKED = r'''
import importlib.abc, sys

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in ("dgl", "ray"):
            raise ImportError(f"{name} is blocked: the pure-PyTorch layer must not import it")

sys.meta_path.insert(0, Block())
'''

PURE = ["gnnrec.model.blocks", "gnnrec.model.layers", "gnnrec.model.models", "gnnrec.model.losses",
        "gnnrec.ranking.metrics", "gnnrec.ranking.topk", "gnnrec.arrays"]


def test_pure_pytorch_layer_imports_without_dgl_and_ray():
    script = BLOCKED + f'''
import importlib
for name in {PURE!r}:
    importlib.import_module(name)
import torch
from types import SimpleNamespace
from gnnrec.model.blocks import full_graph_blocks, graph_edges, Batch
from gnnrec.model.models import Recommender
from gnnrec.ranking.topk import top_k
users, items = torch.tensor([0, 1, 2]), torch.tensor([0, 1, 1])
src, dst, etype = graph_edges(users, items, 3)
blocks = full_graph_blocks(src, dst, 5, 2, etype=etype)
model = Recommender(SimpleNamespace(model="lightgcn", dim=4, layers=2, model_options=dict(), inputs="id", loss="bpr", loss_options=dict(),
                                    l2=1e-4, contrast=SimpleNamespace(weight=0.0), negative_mixing=False))
h0 = torch.randn(5, 4, requires_grad=True)
loss = model(Batch(torch.arange(5), blocks, users, items + 3, torch.tensor([4, 3, 3])), h0)
loss.backward()
(_, top, _), = top_k(h0[:3], h0[3:], 1)
assert "dgl" not in sys.modules and "ray" not in sys.modules
print("pure", float(loss), top.tolist())
'''
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("pure ")
