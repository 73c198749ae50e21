"""docs/benchmarks.md from bench/results/*.json: one section per results file, its numbers as tables.

    python bench/report.py > docs/benchmarks.md      # or: make docs
"""
import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"

HEADER = """# Benchmarks

Generated from `bench/results/*.json` by `python bench/report.py > docs/benchmarks.md` (`make docs`); do not
edit by hand. What the figures say, with each run's date, machine and settings: [results.md](results.md).

`bench/` scripts print JSON; each figure is a ratio against an anchor measured in the same run.

```bash
$VENV/bin/python bench/ingest.py --sizes 1000000 10000000   # vs pyarrow read_table + compute.unique
$VENV/bin/python bench/partition.py                          # vs METIS and DGL's partition_graph
$VENV/bin/python bench/sampling.py --threads 1               # vs dgl NeighborSampler, PinSAGESampler
$VENV/bin/python bench/train.py --epochs 1                    # Gowalla through the runtime vs full-graph torch
$VENV/bin/python bench/infer.py                               # top-K scoring vs bare torch.topk(U @ I.T)
$VENV/bin/python bench/hard_negatives.py --epochs 6 --more 4  # Gowalla: mined negatives vs uniform only
$VENV/bin/python bench/time_decay.py                          # a drifting log: train.time_decay vs none
$VENV/bin/python bench/features.py                            # train.inputs: id, id+features, features
$VENV/bin/python bench/models.py --config configs/lastfm_social.yaml  # every model at one config's budget
$VENV/bin/python bench/models.py --losses --config configs/gowalla_lightgcn.yaml train.epochs=20  # every objective
$VENV/bin/python bench/models.py --samplers --config configs/quickstart.yaml --name synthetic-10m synth.edges=10000000 ...  # every training strategy (Results)
$VENV/bin/python bench/incremental.py                         # init_from yesterday's model vs a full retrain
$VENV/bin/python bench/cold_start.py train.epochs=4 train.validate_split=none  # 500 unseen Gowalla users vs popularity
$VENV/bin/python bench/scale.py --sizes 1e6 1e7 1e8             # every stage, seconds / peak GB / disk vs reading the log
$VENV/bin/python bench/topk_index.py --sizes 1e7 1e8           # top-K for every user: exact vs FAISS ivf / hnsw
$VENV/bin/python bench/scale_quality.py --sizes 1e7 --minutes 10 # recall vs training seconds vs plain-PyTorch MF
python3 bench/device.py --device cuda                          # on a GPU: models, losses, top-K, NCCL DDP vs CPU and plain torch
```

`make bench` runs the first three (ingest, sampling with one thread, partition of a 1M-edge synthetic log).
The results files below are those kept in `bench/results/`; the others print their JSON only.
"""

MEASURED = {  # results file -> what it measured, and how (the command list above has the others' options)
    "cold_start_synthetic": "Cold start from profile features (`bench/cold_start.py --synthetic`): 500 users "
    "held out, given features alone or with 1-5 items; a model on `train.inputs=features` and an ID model.",
    "device-h200": "One NVIDIA H200 (`bench/device.py --device cuda`): LightGCN's training edges/s against plain "
    "PyTorch; every model and loss against the CPU; top-K against a score matrix + `torch.topk`; NCCL DDP.",
    "features": "`train.inputs` id, id+features and features on the quickstart's log with 8 item features.",
    "incremental": "Fine-tunes from yesterday's model (`train.init_from`, `train.replay`) against a full retrain.",
    "losses-gowalla": "Each objective on Gowalla at one budget (`bench/models.py --losses`).",
    "models-gowalla": "Every model, and LightGCN on each training strategy's blocks, at Gowalla's budget.",
    "models-lastfm": "Every model at LastFM's budget (`bench/models.py --config configs/lastfm_social.yaml`).",
    "models-synthetic-10m": "Every training strategy on a synthetic 10M-row log, 240 steps each (`--samplers`).",
    "ray_job": "The multi-node recipe as a Ray job on one machine (`bench/ray_job.py`): a good job, a bad key.",
    "scale_quality": "Time to quality at scale (`bench/scale_quality.py`): test Recall@20 against seconds of "
    "training, one trainer, the plain-PyTorch MF-BPR anchor and gnnrec's paths; `scale_quality.png`.",
    "scale": "Every stage at 1M, 10M and 100M rows: seconds, peak GB (PSS of its process tree), disk; `scale.png`.",
    "topk_index": "Top-20 for every user at 10M and 100M rows (`bench/topk_index.py`): exact against each "
    "`infer.index`; seconds end to end, peak GB, the index's recall@20 against exact, test Recall@20 through it.",
    "time_decay": "`train.time_decay.rate` per day on a drifting log, chosen on a validation split in time.",
    "two_hosts": "K=2 on two simulated hosts against K=1 on one (`bench/two_hosts.py --steps 40 --epochs 2`).",
}


def report(results: Path = RESULTS) -> str:
    """The Markdown text of docs/benchmarks.md."""
    lines = [HEADER]
    for path in sorted(results.glob("*.json")):
        lines += [f"## {path.name}", "", MEASURED.get(path.stem, ""), ""]
        lines += render(json.loads(path.read_text()))
    return "\n".join(lines)


def render(value, depth: int = 3) -> list[str]:
    """Tables of a JSON value: its scalars as one key/value table; children with like keys as one table
    of a row each; a lone child of children under its own heading; any other child as dotted scalars."""
    if isinstance(value, list):
        value = {_label(item, i): item for i, item in enumerate(value)}
    if not isinstance(value, dict):
        value = {"value": value}
    scalars, groups = {}, []
    for key, child in value.items():
        if isinstance(child, dict) and flatten(child):
            _add_to_group(groups, key, child)
        else:
            scalars.update(flatten(child, key))
    tables, sections = [], []
    for group in groups:
        if len(group) > 1:
            tables += rows_table({name: flatten(row) for name, row in group.items()})
            continue
        key, child = next(iter(group.items()))
        if all(isinstance(v, dict) for v in child.values()):
            sections += [f"{'#' * depth} {key}", "", *render(child, depth + 1)]
        else:
            scalars.update(flatten(child, key))
    key_values = table(["", "value"], [[k, v] for k, v in scalars.items()]) if scalars else []
    return key_values + tables + sections


def _add_to_group(groups: list, key: str, child: dict) -> None:
    """Put a child in the first group whose first member has like keys, else in a group of its own."""
    for group in groups:
        if _alike(flatten(next(iter(group.values()))), flatten(child)):
            group[key] = child
            return
    groups.append({key: child})


def flatten(value, prefix: str = "") -> dict:
    """Scalars of a JSON value by dotted key, as text; a list of up to 4 numbers joined, other lists left out."""
    if isinstance(value, dict):
        out = {}
        for key, child in value.items():
            out.update(flatten(child, f"{prefix}.{key}" if prefix else str(key)))
        return out
    if isinstance(value, list):
        numbers = value and len(value) <= 4 and all(isinstance(v, (int, float)) for v in value)
        return {prefix: ", ".join(_text(v) for v in value)} if numbers else {}
    return {prefix: _text(value)}


def rows_table(rows: dict) -> list[str]:
    """A row per name and a column per key; turned to a row per key when that is much narrower."""
    columns = list(dict.fromkeys(key for row in rows.values() for key in row))
    if len(columns) > 2 * len(rows):
        return table(["", *rows], [[c, *(row.get(c, "") for row in rows.values())] for c in columns])
    return table(["", *columns], [[name, *(row.get(c, "") for c in columns)] for name, row in rows.items()])


def table(header: list, body: list) -> list[str]:
    def line(cells):
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"
    return [line(header), "|" + "---|" * len(header), *map(line, body), ""]


def _alike(a: dict, b: dict) -> bool:
    """Two children share at least half their keys."""
    return len(a.keys() & b.keys()) >= 0.5 * len(a.keys() | b.keys())


def _label(item, index: int) -> str:
    """A list item's name: its first key=value (scale.json: edges=1000000), else its index."""
    first = next(iter(item.items()), None) if isinstance(item, dict) else None
    return f"{first[0]}={first[1]}" if first and not isinstance(first[1], (dict, list)) else str(index)


def _text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, (bool, float)):
        return json.dumps(value) if isinstance(value, bool) else f"{value:.5g}"
    return str(value)


if __name__ == "__main__":
    print(report(), end="")
